//! The chat model's own refusals. They travel inside [`Error::Chat`](crate::Error::Chat): the
//! engine underneath never produces them (it stores any bytes for anyone).

use crate::types::{ConversationId, MessageId, UserId};

/// Why the chat model refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum ChatError {
    /// A message with no content and no attachment.
    #[error("message is empty (no content and no attachment)")]
    EmptyMessage,

    /// A user the store does not know (see [`ChatStore::register_user`](crate::ChatStore::register_user)).
    #[error("user {0} is unknown")]
    UnknownUser(UserId),

    /// The user is not (or no longer) a member of the conversation.
    #[error("user {user} is not a member of conversation {conversation}")]
    NotAMember {
        /// The user.
        user: UserId,
        /// The conversation.
        conversation: ConversationId,
    },

    /// Only a message's sender may edit or delete it.
    #[error("user {user} did not send message {id} of conversation {conversation}")]
    NotTheSender {
        /// Who tried.
        user: UserId,
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
    },

    /// A group must have at least one member.
    #[error("a group needs at least one member")]
    EmptyGroup,
}
