//! The data model the engine stores: ids, messages and their fields.

use std::fmt;

use bytes::Bytes;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }
    };
}

id_type!(
    /// A user of the chat service.
    UserId
);
id_type!(
    /// A conversation (a 1:1 chat or a group).
    ConversationId
);
id_type!(
    /// A message's id inside its conversation: the first message is 1 and each append takes the
    /// next id, with no gaps, across crashes and restarts.
    MessageId
);

/// What a message is. Stored as one byte; the values never change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum MessageKind {
    /// A message written by a user.
    #[default]
    Normal = 0,
    /// A message written by the service (member joined, group renamed...).
    System = 1,
    /// A placeholder for a message its sender deleted for everyone: no content.
    Deleted = 2,
}

impl MessageKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(MessageKind::Normal),
            1 => Some(MessageKind::System),
            2 => Some(MessageKind::Deleted),
            _ => None,
        }
    }
}

/// A message to append. Build one with [`NewMessage::text`] or [`NewMessage::new`] and the
/// `with_*` methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct NewMessage {
    /// Who sends it.
    pub sender: UserId,
    /// The message body (usually UTF-8 text, but any bytes are accepted).
    pub content: Bytes,
    /// The kind of message.
    pub kind: MessageKind,
    /// A link to an attachment (the URL an asset service returned).
    pub attachment: Option<Bytes>,
    /// The message this one replies to; it must exist in the same conversation.
    pub reply_to: Option<MessageId>,
    /// Users this message mentions (the chat model counts unread mentions from these).
    pub mentions: Vec<UserId>,
}

impl NewMessage {
    /// A normal message with the given content.
    pub fn new(sender: UserId, content: impl Into<Bytes>) -> Self {
        NewMessage {
            sender,
            content: content.into(),
            ..NewMessage::default()
        }
    }

    /// A normal text message.
    pub fn text(sender: UserId, text: &str) -> Self {
        NewMessage::new(sender, Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: MessageKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the attachment link.
    pub fn with_attachment(mut self, link: impl Into<Bytes>) -> Self {
        self.attachment = Some(link.into());
        self
    }

    /// Sets the message this one replies to.
    pub fn with_reply_to(mut self, id: MessageId) -> Self {
        self.reply_to = Some(id);
        self
    }

    /// Sets the mentioned users.
    pub fn with_mentions(mut self, users: Vec<UserId>) -> Self {
        self.mentions = users;
        self
    }

    /// Bytes counted against [`Options::max_message_bytes`](crate::Options::max_message_bytes).
    pub fn size(&self) -> usize {
        self.content.len() + self.attachment.as_ref().map_or(0, Bytes::len)
    }

    /// The row this message becomes in `conv`, with the smallest id and timestamp a commit
    /// may give it: what the formats' limits are checked on before the commit.
    pub(crate) fn as_row(&self, conv: ConversationId) -> MessageRef<'_> {
        MessageRef {
            conversation: conv,
            id: MessageId(1),
            sender: self.sender,
            timestamp_ms: 0,
            kind: self.kind,
            content: &self.content,
            attachment: self.attachment.as_deref(),
            reply_to: self.reply_to,
            mentions: &self.mentions,
        }
    }
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message {
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Its id in the conversation.
    pub id: MessageId,
    /// Who sent it.
    pub sender: UserId,
    /// Server time of the append, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The kind of message.
    pub kind: MessageKind,
    /// The body. Shares memory with the block it was read from where possible.
    pub content: Bytes,
    /// A link to an attachment.
    pub attachment: Option<Bytes>,
    /// The message this one replies to.
    pub reply_to: Option<MessageId>,
    /// Users this message mentions.
    pub mentions: Vec<UserId>,
    /// When the sender last edited (or deleted) it, ms since the Unix epoch.
    pub edited_ms: Option<u64>,
}

/// A message's stored fields, borrowed from wherever they live (a [`Message`], a memtable
/// row), so encoders need no owned copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MessageRef<'a> {
    pub conversation: ConversationId,
    pub id: MessageId,
    pub sender: UserId,
    pub timestamp_ms: u64,
    pub kind: MessageKind,
    pub content: &'a [u8],
    pub attachment: Option<&'a [u8]>,
    pub reply_to: Option<MessageId>,
    pub mentions: &'a [UserId],
}

impl Message {
    /// The stored fields, borrowed.
    pub(crate) fn as_ref(&self) -> MessageRef<'_> {
        MessageRef {
            conversation: self.conversation,
            id: self.id,
            sender: self.sender,
            timestamp_ms: self.timestamp_ms,
            kind: self.kind,
            content: &self.content,
            attachment: self.attachment.as_deref(),
            reply_to: self.reply_to,
            mentions: &self.mentions,
        }
    }

    /// The content as text, if it is valid UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.content).ok()
    }
}
