use std::time::Duration;

use proptest::prelude::*;

use super::Coalescer;
use crate::secret::Timestamp;
use crate::store::{AuditAction, AuditRecord, TargetKind};

const SECOND: i64 = 1_000_000_000;
const INTERVAL: Duration = Duration::from_secs(60);

fn read(at_secs: f64, token: &str, version: u64) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: Timestamp::from_nanos((at_secs * SECOND as f64) as i64),
        first_at: None,
        count: 1,
        workspace: "default".into(),
        actor: format!("workload:{token}"),
        actor_id: "u1".into(),
        action: AuditAction::Read,
        target_kind: TargetKind::Secret,
        target: "OPENAI_API_KEY".into(),
        target_id: "s1".into(),
        version,
        detail: "user=alice".into(),
        address: "127.0.0.1".into(),
    }
}

impl Coalescer {
    fn offer_read(&mut self, r: AuditRecord, interval: Duration) -> Option<AuditRecord> {
        self.offer(r, interval, None)
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_nanos(secs * SECOND)
}

#[test]
fn a_burst_is_its_first_event_and_one_counted_record() {
    let mut c = Coalescer::new(1 << 20);
    let first = c
        .offer_read(read(0.0, "t1", 1), INTERVAL)
        .expect("the first read is written");
    assert_eq!((first.count, first.first_at), (1, None));
    for i in 1..10_000 {
        assert!(
            c.offer_read(read(i as f64 * 0.001, "t1", 1), INTERVAL)
                .is_none()
        );
    }
    assert!(c.due(at(59)).is_empty(), "the interval has not ended");
    let counted = c.due(at(60));
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].count, 9_999);
    assert_eq!(
        counted[0].first_at,
        Some(Timestamp::from_nanos(SECOND / 1000))
    );
    assert_eq!(counted[0].at, Timestamp::from_nanos(9_999_000_000));
    // Nothing more came: the next interval closes empty, and the next read is written at once.
    assert!(c.due(at(120)).is_empty());
    assert_eq!(c.open(), 0);
    assert_eq!(
        c.offer_read(read(121.0, "t1", 1), INTERVAL)
            .map(|r| r.count),
        Some(1)
    );
}

#[test]
fn a_new_version_another_token_or_address_is_written_at_once() {
    let mut c = Coalescer::new(1 << 20);
    assert!(c.offer_read(read(0.0, "t1", 1), INTERVAL).is_some());
    assert!(c.offer_read(read(1.0, "t1", 1), INTERVAL).is_none());
    assert!(
        c.offer_read(read(2.0, "t1", 2), INTERVAL).is_some(),
        "a new version"
    );
    assert!(
        c.offer_read(read(3.0, "t2", 1), INTERVAL).is_some(),
        "another token"
    );
    let mut elsewhere = read(4.0, "t1", 1);
    elsewhere.address = "10.0.0.9".into();
    assert!(
        c.offer(elsewhere, INTERVAL, None).is_some(),
        "another address"
    );
    let drained = c.drain();
    assert_eq!(drained.iter().map(|r| r.count).sum::<u64>(), 1);
    assert_eq!(c.open(), 0);
}

#[test]
fn past_its_budget_every_new_kind_is_written_and_none_is_lost() {
    // Room for two kinds of read.
    let mut c = Coalescer::new(2 * 700);
    for t in 0..5 {
        assert!(
            c.offer_read(read(0.0, &format!("t{t}"), 1), INTERVAL)
                .is_some()
        );
        assert!(
            c.offer_read(read(1.0, &format!("t{t}"), 1), INTERVAL)
                .is_some()
                == (t >= 2),
            "kinds past the budget are not counted"
        );
    }
    assert_eq!(c.open(), 2);
}

proptest! {
    /// Against the model "every event is counted exactly once, in a record of its own kind,
    /// no record spans more than its interval, the first event of a kind (or the first after
    /// a quiet interval) is written when it happens": any history of reads by two tokens of
    /// two versions, with collections at any times.
    #[test]
    fn every_event_is_counted_once(
        steps in proptest::collection::vec((0u8..6, 0u64..5_000), 1..300),
        interval_secs in 10u64..120,
    ) {
        let interval = Duration::from_secs(interval_secs);
        let mut c = Coalescer::new(1 << 20);
        let mut now = 0i64; // milliseconds
        let mut written: Vec<AuditRecord> = Vec::new();
        let mut offered: std::collections::HashMap<(String, u64), u64> = Default::default();
        for (what, gap) in steps {
            now += gap as i64;
            let t = Timestamp::from_nanos(now * 1_000_000);
            if what >= 4 {
                written.extend(c.due(t));
                continue;
            }
            let token = if what & 1 == 0 { "a" } else { "b" };
            let version = u64::from(what >> 1) + 1;
            let mut r = read(0.0, token, version);
            r.at = t;
            *offered.entry((r.actor.clone(), version)).or_default() += 1;
            written.extend(c.offer(r, interval, None));
        }
        written.extend(c.drain());
        let mut counted: std::collections::HashMap<(String, u64), u64> = Default::default();
        let span = i64::try_from(interval.as_nanos()).unwrap();
        for r in &written {
            *counted.entry((r.actor.clone(), r.version)).or_default() += r.count;
            prop_assert!(r.count >= 1);
            match r.first_at {
                None => prop_assert_eq!(r.count, 1),
                Some(first) => {
                    prop_assert!(first <= r.at);
                    prop_assert!(r.at.nanos() - first.nanos() <= span);
                }
            }
        }
        prop_assert_eq!(counted, offered);
    }
}

#[test]
fn a_refusal_grouped_by_its_reason_coalesces_whatever_the_client_sent() {
    let mut c = Coalescer::new(1 << 20);
    let refusal = |at: f64, sub: &str| {
        let mut r = read(at, "x", 0);
        r.action = AuditAction::IdentityExchangeRefused;
        r.detail = format!("issuer - sub {sub}: no identity binding admits the token");
        r
    };
    let group = Some("no identity binding admits the token");
    let first = c.offer(refusal(0.0, "a"), INTERVAL, group).unwrap();
    assert_eq!(
        first.detail,
        "issuer - sub a: no identity binding admits the token"
    );
    for i in 1..100 {
        assert!(
            c.offer(refusal(i as f64 * 0.1, &format!("s{i}")), INTERVAL, group)
                .is_none()
        );
    }
    let counted = c.drain();
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].count, 99);
}
