//! Coalescing of repeated audit events: a workload that reads its secret ten thousand times a
//! minute, or a client that keeps presenting a revoked token, is a handful of records with a
//! count, not ten thousand rows.
//!
//! Events are alike when everything but their time is the same: the same token (actor) reading
//! the same version of the same secret from the same address, or failed authentications from
//! one address for one reason (and one token, when it names a real one). The first event of a
//! kind is written at once, as its own record; alike events within the interval that follows
//! are counted, and written as one record (`count`, `first_at`, `at` the last) when the
//! interval ends, which starts the next interval if any came. So a steady stream of reads is one
//! record per interval, a read of a new version (a new kind: its version differs) is written at
//! once, and the count of every event is kept.
//!
//! Pure: the caller says what time it is, so tests replay histories against a model.

use std::collections::HashMap;
use std::time::Duration;

use crate::secret::Timestamp;
use crate::store::{AuditAction, AuditRecord, TargetKind};

/// What makes events alike: the record without its time and count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    workspace: String,
    actor: String,
    actor_id: String,
    action: AuditAction,
    target_kind: TargetKind,
    target: String,
    target_id: String,
    version: u64,
    detail: String,
    address: String,
}

impl Kind {
    /// The kind of `r`, grouped by `group` instead of its detail when given (a refusal whose
    /// detail holds what the client sent, which it may vary at will).
    fn of(r: &AuditRecord, group: Option<&str>) -> Self {
        Kind {
            workspace: r.workspace.clone(),
            actor: r.actor.clone(),
            actor_id: r.actor_id.clone(),
            action: r.action,
            target_kind: r.target_kind,
            target: r.target.clone(),
            target_id: r.target_id.clone(),
            version: r.version,
            detail: group.unwrap_or(&r.detail).to_owned(),
            address: r.address.clone(),
        }
    }

    /// What keeping it open costs, roughly: its text twice (the key and the counted record)
    /// and the maps' and records' own sizes.
    fn cost(&self) -> usize {
        let text = self.workspace.len()
            + self.actor.len()
            + self.actor_id.len()
            + self.target.len()
            + self.target_id.len()
            + self.detail.len()
            + self.address.len();
        2 * text + 512
    }
}

/// An open interval of one kind: when it started, how long it lasts, and the events counted in
/// it so far (a record not yet written).
struct Window {
    opened: Timestamp,
    interval: Duration,
    pending: Option<AuditRecord>,
}

impl Window {
    fn ends(&self) -> Timestamp {
        let nanos = i64::try_from(self.interval.as_nanos()).unwrap_or(i64::MAX);
        Timestamp::from_nanos(self.opened.nanos().saturating_add(nanos))
    }
}

/// The open intervals, in at most `budget` bytes.
pub struct Coalescer {
    open: HashMap<Kind, Window>,
    budget: usize,
    used: usize,
}

impl Coalescer {
    /// Past `budget` bytes of open kinds (a flood of distinct events), a new kind is written
    /// as it comes, uncounted: memory stays bounded and no event is lost.
    pub fn new(budget: usize) -> Self {
        Coalescer {
            open: HashMap::new(),
            budget,
            used: 0,
        }
    }

    /// Takes an event (a record of one, its `at` the time it happened) to be coalesced over
    /// `interval`, alike others of its kind (`group` standing for its detail, when given);
    /// answers the record to write now, if any.
    pub fn offer(
        &mut self,
        record: AuditRecord,
        interval: Duration,
        group: Option<&str>,
    ) -> Option<AuditRecord> {
        let kind = Kind::of(&record, group);
        let at = record.at;
        match self.open.get_mut(&kind) {
            // An interval of its kind is open: counted, written when the interval ends.
            Some(w) if at < w.ends() => {
                match &mut w.pending {
                    Some(p) => {
                        p.count += record.count.max(1);
                        p.at = p.at.max(at);
                    }
                    None => {
                        let mut first = record;
                        first.first_at = Some(first.first_at.unwrap_or(at));
                        w.pending = Some(first);
                    }
                }
                None
            }
            // Its interval has ended but was not collected yet: what it counted is written
            // now, and this event opens the next interval, counted there (events came in the
            // last one: a stream) or written at once (it was quiet).
            Some(w) => {
                let counted = w.pending.take();
                w.opened = at;
                w.interval = interval;
                match counted {
                    Some(p) => {
                        let mut first = record;
                        first.first_at = Some(first.first_at.unwrap_or(at));
                        w.pending = Some(first);
                        Some(p)
                    }
                    None => Some(record),
                }
            }
            None => {
                let cost = kind.cost();
                if self.used + cost <= self.budget {
                    self.used += cost;
                    self.open.insert(
                        kind,
                        Window {
                            opened: at,
                            interval,
                            pending: None,
                        },
                    );
                }
                Some(record)
            }
        }
    }

    /// The records of the intervals that have ended by `now`. An interval that counted events
    /// starts the next one (a steady stream is one record per interval); one that counted none
    /// is closed, and the kind's next event is written at once again.
    pub fn due(&mut self, now: Timestamp) -> Vec<AuditRecord> {
        let mut out = Vec::new();
        let mut freed = 0;
        self.open.retain(|kind, w| {
            if now < w.ends() {
                return true;
            }
            match w.pending.take() {
                Some(p) => {
                    out.push(p);
                    w.opened = now;
                    true
                }
                None => {
                    freed += kind.cost();
                    false
                }
            }
        });
        self.used -= freed;
        out.sort_by_key(|r| r.at);
        out
    }

    /// Every counted event not yet written (the server stopping), and no interval open.
    pub fn drain(&mut self) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = self.open.drain().filter_map(|(_, w)| w.pending).collect();
        out.sort_by_key(|r| r.at);
        out
    }

    /// How many kinds have an open interval.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests;
