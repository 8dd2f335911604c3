//! Presence: who is online, and when offline users were last seen.
//!
//! In memory, with an injectable clock. A user is online from their first heartbeat until
//! [`PresenceOptions::offline_after`] passes without one (the reference timings are a heartbeat
//! every 3 s and offline after 10 s). Memory holds only online users. Last-seen times are
//! written to the [`ChatStore`] when a user goes offline (and at most every
//! [`PresenceOptions::persist_every`] while active), so they survive a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::chat::ChatStore;
use crate::error::Result;
use crate::types::UserId;

/// A source of wall-clock time in ms since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Presence timings.
#[derive(Clone, Debug)]
pub struct PresenceOptions {
    /// How often clients are expected to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// A user with no heartbeat for this long is offline.
    pub offline_after: Duration,
    /// While a user is active, last seen is persisted at most this often.
    pub persist_every: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        PresenceOptions {
            heartbeat_interval: Duration::from_secs(3),
            offline_after: Duration::from_secs(10),
            persist_every: Duration::from_secs(60),
        }
    }
}

/// A user's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceStatus {
    /// Online now.
    Online,
    /// Offline; last seen at this time (ms since the Unix epoch), if ever.
    Offline {
        /// Last heartbeat or activity.
        last_seen_ms: Option<u64>,
    },
}

/// A change worth telling others about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The user came online.
    Online(UserId),
    /// The user went offline.
    Offline {
        /// Who.
        user: UserId,
        /// Their last heartbeat or activity.
        last_seen_ms: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    last_ms: u64,
    persisted_ms: u64,
}

/// The presence tracker.
#[derive(Debug)]
pub struct Presence {
    clock: Arc<dyn Clock>,
    opts: PresenceOptions,
    store: Option<ChatStore>,
    online: Mutex<HashMap<UserId, Seen>>,
}

impl Presence {
    /// A tracker; `store` (if any) persists last-seen times.
    pub fn new(opts: PresenceOptions, clock: Arc<dyn Clock>, store: Option<ChatStore>) -> Self {
        Presence {
            clock,
            opts,
            store,
            online: Mutex::new(HashMap::new()),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &PresenceOptions {
        &self.opts
    }

    /// Records a heartbeat (or any activity). Returns `Online` if the user was offline.
    pub fn heartbeat(&self, user: UserId) -> Result<Option<PresenceEvent>> {
        let now = self.clock.now_ms();
        let persist_every = self.opts.persist_every.as_millis() as u64;
        let (event, persist) = {
            let mut online = self.online.lock();
            match online.get_mut(&user) {
                Some(seen) => {
                    seen.last_ms = seen.last_ms.max(now);
                    let due = now.saturating_sub(seen.persisted_ms) >= persist_every;
                    if due {
                        seen.persisted_ms = now;
                    }
                    (None, due)
                }
                None => {
                    online.insert(
                        user,
                        Seen {
                            last_ms: now,
                            persisted_ms: now,
                        },
                    );
                    (Some(PresenceEvent::Online(user)), true)
                }
            }
        };
        if persist {
            self.persist(user, now)?;
        }
        Ok(event)
    }

    /// Marks users without a recent heartbeat offline and returns them. Call it about once a
    /// heartbeat interval.
    pub fn sweep(&self) -> Result<Vec<PresenceEvent>> {
        let now = self.clock.now_ms();
        let limit = self.opts.offline_after.as_millis() as u64;
        let gone: Vec<(UserId, u64)> = {
            let mut online = self.online.lock();
            let gone: Vec<(UserId, u64)> = online
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_ms) >= limit)
                .map(|(u, s)| (*u, s.last_ms))
                .collect();
            for (u, _) in &gone {
                online.remove(u);
            }
            gone
        };
        let mut events = Vec::with_capacity(gone.len());
        for (user, last_seen_ms) in gone {
            self.persist(user, last_seen_ms)?;
            events.push(PresenceEvent::Offline { user, last_seen_ms });
        }
        Ok(events)
    }

    /// Marks a user offline at once (their last connection closed).
    pub fn disconnect(&self, user: UserId) -> Result<Option<PresenceEvent>> {
        let removed = self.online.lock().remove(&user);
        match removed {
            Some(seen) => {
                let last = seen.last_ms.max(self.clock.now_ms());
                self.persist(user, last)?;
                Ok(Some(PresenceEvent::Offline {
                    user,
                    last_seen_ms: last,
                }))
            }
            None => Ok(None),
        }
    }

    /// The user's presence.
    pub fn status(&self, user: UserId) -> Result<PresenceStatus> {
        if self.online.lock().contains_key(&user) {
            return Ok(PresenceStatus::Online);
        }
        let last_seen_ms = match &self.store {
            Some(s) => s.last_seen(user)?,
            None => None,
        };
        Ok(PresenceStatus::Offline { last_seen_ms })
    }

    /// Users online now.
    pub fn online_count(&self) -> usize {
        self.online.lock().len()
    }

    fn persist(&self, user: UserId, ms: u64) -> Result<()> {
        match &self.store {
            Some(s) => s.set_last_seen(user, ms),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_timeout_and_events() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let p = Presence::new(PresenceOptions::default(), clock.clone(), None);
        let u = UserId(1);
        assert_eq!(
            p.status(u).unwrap(),
            PresenceStatus::Offline { last_seen_ms: None }
        );
        assert_eq!(p.heartbeat(u).unwrap(), Some(PresenceEvent::Online(u)));
        assert_eq!(p.heartbeat(u).unwrap(), None);
        for _ in 0..5 {
            clock.advance(Duration::from_secs(3));
            p.heartbeat(u).unwrap();
            assert!(p.sweep().unwrap().is_empty());
        }
        let last = clock.now_ms();
        clock.advance(Duration::from_millis(9_999));
        assert!(p.sweep().unwrap().is_empty());
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            p.sweep().unwrap(),
            vec![PresenceEvent::Offline {
                user: u,
                last_seen_ms: last
            }]
        );
        assert_eq!(p.online_count(), 0);
        assert_eq!(p.disconnect(u).unwrap(), None);
    }
}
