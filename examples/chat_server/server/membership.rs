//! Which messages a user may read: every range of ids they were a member for.
//!
//! The library keeps one membership per (user, conversation): re-adding a removed member
//! starts a new one and forgets the old range. So before a re-add the server records the
//! range the user is about to lose, and the new membership's start, in `memberships.jsonl`;
//! reads by such a user go through [`visible_ranges`] (everybody else reads through the
//! library's own checks).
//!
//! A membership change and the read of the conversation's last id it depends on hold the
//! conversation's write lock; sends hold its read lock. So the start recorded for a re-added
//! member is exactly the one the library gives them.

use std::collections::HashMap;
use std::path::Path;

use chatstore::{ChatError, ConversationId, Error, Message, MessageId, UserId};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::jsonlog::JsonLog;
use super::AppState;

/// Written before a removed member is added again.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    conv: u64,
    user: u64,
    /// The ids the user could read in the membership that ended (`from > to`: none).
    from: u64,
    to: u64,
    /// The conversation's last id when they are added again: they see the ones after it.
    joined_after: u64,
}

/// An inclusive range of message ids.
pub type Range = (u64, u64);

pub struct Memberships {
    log: Mutex<JsonLog>,
    past: RwLock<HashMap<(u64, u64), Vec<Record>>>,
    locks: Vec<RwLock<()>>,
}

impl Memberships {
    pub fn open(path: &Path) -> Result<Memberships, String> {
        let (log, records) = JsonLog::open::<Record>(path)?;
        let mut past: HashMap<(u64, u64), Vec<Record>> = HashMap::new();
        for r in records {
            past.entry((r.conv, r.user)).or_default().push(r);
        }
        Ok(Memberships {
            log: Mutex::new(log),
            past: RwLock::new(past),
            locks: (0..64).map(|_| RwLock::new(())).collect(),
        })
    }

    fn lock_of(&self, conv: ConversationId) -> &RwLock<()> {
        &self.locks[(conv.0 % self.locks.len() as u64) as usize]
    }

    /// Held while appending a message to `conv`.
    pub fn appending(&self, conv: ConversationId) -> RwLockReadGuard<'_, ()> {
        self.lock_of(conv).read()
    }

    /// Held while changing the membership of `conv`.
    pub fn changing(&self, conv: ConversationId) -> RwLockWriteGuard<'_, ()> {
        self.lock_of(conv).write()
    }

    /// Records, before `user` is added to `conv` again, the range they could read until now
    /// and where the new membership starts (`last`, the conversation's last id; the caller
    /// holds [`Memberships::changing`]). Does nothing for a user who never was a member.
    /// Blocking.
    pub fn before_rejoin(
        &self,
        st: &AppState,
        conv: ConversationId,
        user: UserId,
        last: u64,
    ) -> ApiResult<()> {
        let (from, to) = match st.store.is_member(user, conv) {
            Ok(true) => return Ok(()), // adding a member again changes nothing
            Ok(false) => match library_range(st, conv, user)? {
                Some(r) => r,
                None => return Ok(()), // never a member
            },
            Err(e) => return Err(e.into()),
        };
        let record = Record {
            conv: conv.0,
            user: user.0,
            from,
            to,
            joined_after: last,
        };
        self.log.lock().append(&record).map_err(|e| {
            eprintln!("chat_server: memberships: {e}");
            ApiError::internal("could not save the membership")
        })?;
        self.past
            .write()
            .entry((conv.0, user.0))
            .or_default()
            .push(record);
        Ok(())
    }
}

/// The range the library lets `user` read in `conv` under their current (or last)
/// membership, found through its public reads; `None` if they never were a member.
fn library_range(st: &AppState, conv: ConversationId, user: UserId) -> ApiResult<Option<Range>> {
    let hi = match st.store.latest(user, conv, 1) {
        Ok(m) => m.last().map_or(0, |m| m.id.0),
        Err(Error::Chat(ChatError::NotAMember { .. })) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if hi == 0 {
        return Ok(Some((1, 0)));
    }
    // The first readable id: ids the library lets the user `get` form one run ending at
    // `hi`, so search for where it starts.
    let (mut lo, mut top) = (1u64, hi);
    while lo < top {
        let mid = lo + (top - lo) / 2;
        if st.store.get(user, conv, MessageId(mid))?.is_some() {
            top = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some((lo, hi)))
}

/// Every range of ids `user` may read in `conv`, oldest first, or `None` when the library's
/// single membership says it all (the user was never added again after a removal).
pub fn visible_ranges(
    st: &AppState,
    conv: ConversationId,
    user: UserId,
) -> ApiResult<Option<Vec<Range>>> {
    let Some(records) = st.memberships.past.read().get(&(conv.0, user.0)).cloned() else {
        return Ok(None);
    };
    let mut ranges: Vec<Range> = records.iter().map(|r| (r.from, r.to)).collect();
    let joined_after = records.last().map_or(0, |r| r.joined_after);
    let last = st.store.last_id(conv)?.0;
    let hi = if st.store.is_member(user, conv)? {
        last
    } else {
        // Removed again: up to where the library's membership ends (if the re-add that
        // the last record announced never happened, that is before `joined_after` and the
        // range is empty: the record's own range covers it).
        st.store.latest(user, conv, 1)?.last().map_or(0, |m| m.id.0)
    };
    ranges.push((joined_after + 1, hi));
    Ok(Some(merge(ranges, last)))
}

fn merge(mut ranges: Vec<Range>, last: u64) -> Vec<Range> {
    ranges.retain(|&(lo, hi)| lo <= hi && lo <= last);
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        let hi = hi.min(last);
        match out.last_mut() {
            Some(prev) if lo <= prev.1.saturating_add(1) => prev.1 = prev.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The last id `user` may read in `conv` (0: none). Blocking.
pub fn last_visible(st: &AppState, conv: ConversationId, user: UserId) -> ApiResult<u64> {
    match visible_ranges(st, conv, user)? {
        Some(r) => Ok(r.last().map_or(0, |r| r.1)),
        None => Ok(st.store.latest(user, conv, 1)?.last().map_or(0, |m| m.id.0)),
    }
}

/// May `user` read message `id` of `conv`? Blocking.
pub fn can_see(
    st: &AppState,
    conv: ConversationId,
    user: UserId,
    id: MessageId,
) -> ApiResult<bool> {
    match visible_ranges(st, conv, user)? {
        Some(r) => Ok(r.iter().any(|&(lo, hi)| (lo..=hi).contains(&id.0))),
        None => match st.store.get(user, conv, id) {
            Ok(m) => Ok(m.is_some()),
            Err(Error::IdOutOfRange { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

/// Which page of history.
#[derive(Clone, Copy, Debug)]
pub enum Page {
    Latest,
    Before(u64),
    After(u64),
    /// The message with up to `.1` messages before it and `.2` after it.
    Around(u64, usize, usize),
}

/// Reads a page of `conv` as `user` across all the ranges they may read. Blocking.
pub fn read_page(
    st: &AppState,
    conv: ConversationId,
    ranges: &[Range],
    page: Page,
    limit: usize,
) -> ApiResult<Vec<Message>> {
    let out_of_range = |id: u64| -> ApiError {
        Error::IdOutOfRange {
            conversation: conv,
            id: MessageId(id),
            last: MessageId(ranges.last().map_or(0, |r| r.1)),
        }
        .into()
    };
    let visible = |id: u64| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&id));
    let ids_before = |id: u64, n: usize| -> Vec<u64> {
        let mut ids = Vec::new();
        for &(lo, hi) in ranges.iter().rev() {
            let mut x = hi.min(id.saturating_sub(1));
            while x >= lo && ids.len() < n {
                ids.push(x);
                x -= 1;
            }
            if ids.len() >= n {
                break;
            }
        }
        ids.reverse();
        ids
    };
    let ids_after = |id: u64, n: usize| -> Vec<u64> {
        let mut ids = Vec::new();
        for &(lo, hi) in ranges {
            let mut x = lo.max(id.saturating_add(1));
            while x <= hi && ids.len() < n {
                ids.push(x);
                x += 1;
            }
            if ids.len() >= n {
                break;
            }
        }
        ids
    };
    let ids = match page {
        Page::Latest => ids_before(u64::MAX, limit),
        Page::Before(id) => {
            if !visible(id) {
                return Err(out_of_range(id));
            }
            ids_before(id, limit)
        }
        Page::After(id) => {
            if id > ranges.last().map_or(0, |r| r.1) {
                return Err(out_of_range(id));
            }
            ids_after(id, limit)
        }
        Page::Around(id, before, after) => {
            if !visible(id) {
                return Err(out_of_range(id));
            }
            let mut ids = ids_before(id, before);
            ids.push(id);
            ids.extend(ids_after(id, after));
            ids
        }
    };
    // Read runs of consecutive ids at once.
    let mut out = Vec::with_capacity(ids.len());
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        let (lo, n) = (ids[i], j - i + 1);
        out.extend(st.store.raw_after(conv, MessageId(lo - 1), n)?);
        i = j + 1;
    }
    Ok(out)
}
