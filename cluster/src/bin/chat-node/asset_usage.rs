//! Upload quotas across nodes: bytes stored per uploader and in all, as of the last listing
//! of the asset bucket plus what this node stored since.
//!
//! Each node lists the bucket on its own (every sweep, and before its first upload), so a
//! user's uploads through any node count against their quota. Between two listings a node
//! does not see what other nodes stored: a user racing uploads through k nodes at once can
//! go over the quota (or the total) by up to what k − 1 nodes accept in one listing interval.

use std::collections::HashMap;
use std::time::Instant;

use chatstore::UserId;

/// An upload through this node that the last listing may not hold.
struct Recent {
    ticket: u64,
    owner: UserId,
    size: u64,
    /// When its object was stored; `None` while in flight.
    done: Option<Instant>,
}

#[derive(Default)]
pub struct Usage {
    /// From the last listing.
    listed: HashMap<UserId, u64>,
    listed_total: u64,
    listed_once: bool,
    recent: Vec<Recent>,
    next_ticket: u64,
}

impl Usage {
    pub fn listed_once(&self) -> bool {
        self.listed_once
    }

    /// Bytes of `owner`, and of everyone.
    pub fn of(&self, owner: UserId) -> (u64, u64) {
        let mut mine = self.listed.get(&owner).copied().unwrap_or(0);
        let mut total = self.listed_total;
        for r in &self.recent {
            total = total.saturating_add(r.size);
            if r.owner == owner {
                mine = mine.saturating_add(r.size);
            }
        }
        (mine, total)
    }

    /// Counts an upload in flight; the ticket settles it.
    pub fn reserve(&mut self, owner: UserId, size: u64) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.recent.push(Recent {
            ticket,
            owner,
            size,
            done: None,
        });
        ticket
    }

    /// The upload was stored (`true`) or refused.
    pub fn settle(&mut self, ticket: u64, stored: bool) {
        if stored {
            if let Some(r) = self.recent.iter_mut().find(|r| r.ticket == ticket) {
                r.done = Some(Instant::now());
            }
        } else {
            self.recent.retain(|r| r.ticket != ticket);
        }
    }

    /// Replaces the counts with a listing that began at `started`: uploads stored before it
    /// are in the listing. One that finished during it may count twice until the next one
    /// (the safe side).
    pub fn listed(&mut self, started: Instant, objects: impl IntoIterator<Item = (UserId, u64)>) {
        self.listed.clear();
        self.listed_total = 0;
        for (owner, size) in objects {
            *self.listed.entry(owner).or_default() += size;
            self.listed_total = self.listed_total.saturating_add(size);
        }
        self.listed_once = true;
        self.recent.retain(|r| r.done.is_none_or(|d| d >= started));
    }
}
