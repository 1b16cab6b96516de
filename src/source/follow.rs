//! Following a source: the one loop that keeps a consumer in step with where its secrets live,
//! whatever the consumer does with a change (the daemon's refresh rounds, the supervised
//! launcher's restarts; the node agent and the broker next).
//!
//! - A source that watches (a server) is asked again as soon as it answers: its long-poll,
//!   `since` the revision last seen, is the wait. After a failure the next round is a plain
//!   read (no revision), which says at once that the source is back and brings what changed
//!   meanwhile.
//! - A source that does not watch (the local store, a directory) is looked at every `every`:
//!   first its marks (files whose `stat` a change moves: the store's database and write-ahead
//!   log, a directory's used files), and the source is asked only when they moved, after a
//!   failure, or every `full_every` regardless (a commit that rewrites the log in place inside
//!   the clock's granularity leaves size and mtime as they were).
//! - A failing round keeps what the consumer has; the loop waits 200 ms, doubling to 5 s,
//!   between tries. The outage is reported when it starts and when its cause changes, never
//!   per retry; the recovery once.
//!
//! [`FirstLook::spawn`] runs the loop on a thread for a consumer that wants only the names that changed,
//! told through a pipe it can `poll` beside its other descriptors (the supervisor's signals).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Source, SourceError};
use crate::secret::{SecretKind, SecretName, ValueStamp};

/// The first wait after a failed round, doubled after each further failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a source is followed.
#[derive(Debug, Clone)]
pub struct Pace {
    /// How long a source that watches holds one round (a server caps it at 60 s).
    pub long_poll: Duration,
    /// Between looks at a source that does not watch; `None`: such a source is not followed
    /// (a mount without `--refresh`).
    pub every: Option<Duration>,
    /// A source that does not watch: the files whose change prompts a round (empty: every look
    /// is a round).
    pub marks: Vec<PathBuf>,
    /// With marks: a round at least this often, moved or not.
    pub full_every: Duration,
}

/// What one round decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Go on; the source's revision after the round (a watching source's), for the next.
    Continue(Option<String>),
    /// The consumer is gone: the loop ends.
    Stop,
}

/// A source that watches is asked with the revision last seen and how long to hold the round.
pub type Watch<'a> = Option<(&'a str, Duration)>;

/// Told of the source's health: when an outage starts or its cause changes, and when it ends.
pub trait Report<E> {
    fn failing(&mut self, error: &E);
    fn recovered(&mut self);
}

/// One file as the marks see it.
type Seen = Option<(u64, u64, u64, i64, i64)>;

fn look(paths: &[PathBuf]) -> Vec<Seen> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// Runs rounds until `round` says [`Step::Stop`] or `stop` (which waits up to its argument for
/// a request to stop, and says whether one came) ends it. `revision`: what the consumer's first
/// look saw.
pub fn follow<E: std::fmt::Display>(
    watches: bool,
    pace: &Pace,
    mut revision: Option<String>,
    stop: &dyn Fn(Duration) -> bool,
    round: &mut dyn FnMut(Watch<'_>) -> Result<Step, E>,
    report: &mut dyn Report<E>,
) {
    let mut failing: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut seen = look(&pace.marks);
    let mut last_round = Instant::now();
    loop {
        if watches {
            if stop(Duration::ZERO) {
                return;
            }
        } else {
            let Some(every) = pace.every else { return };
            if stop(every) {
                return;
            }
            if !pace.marks.is_empty() {
                let now = look(&pace.marks);
                let moved = now != seen;
                seen = now;
                if !moved && failing.is_none() && last_round.elapsed() < pace.full_every {
                    continue;
                }
            }
        }
        let watch = match (&revision, watches) {
            (Some(r), true) => Some((r.as_str(), pace.long_poll)),
            _ => None,
        };
        last_round = Instant::now();
        match round(watch) {
            Ok(Step::Stop) => return,
            Ok(Step::Continue(r)) => {
                revision = r;
                if failing.take().is_some() {
                    report.recovered();
                }
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    report.failing(&e);
                    failing = Some(text);
                }
                revision = None;
                if stop(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What a consumer uses of its source.
#[derive(Debug, Clone, Default)]
pub struct Followed {
    /// Secrets by name, sorted.
    pub names: Vec<SecretName>,
    /// Kinds whose every secret counts (a built-in rendered file of a set): a name of one
    /// coming or going is a change.
    pub kinds: Vec<SecretKind>,
    /// Names told as changed when the source refuses the consumer's credential (a revoked
    /// token), and again once it answers: a broker must stop using its values at once, not at
    /// the workload's next change.
    pub on_refusal: Vec<SecretName>,
}

/// The names whose stamp differs between `before` and `after`, or that are in only one.
fn changed(names: &[SecretName], before: &[ValueStamp], after: &[ValueStamp]) -> Vec<SecretName> {
    let of = |list: &[ValueStamp], n: &SecretName| list.iter().find(|s| &s.name == n).cloned();
    names
        .iter()
        .filter(|n| of(before, n) != of(after, n))
        .cloned()
        .collect()
}

/// The consumer's end: a descriptor that becomes readable when names changed, and the names.
pub struct Follower {
    wake: OwnedFd,
    changes: mpsc::Receiver<Vec<SecretName>>,
}

impl Follower {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The names that changed since the last call (each once), emptying the pipe.
    pub fn take(&self) -> Vec<SecretName> {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
        let mut names: Vec<SecretName> = self.changes.try_iter().flatten().collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The thread's end.
struct Tell {
    wake: OwnedFd,
    changes: mpsc::Sender<Vec<SecretName>>,
}

impl Tell {
    /// Sends the names; false once the consumer is gone.
    fn send(&self, names: Vec<SecretName>) -> bool {
        if self.changes.send(names).is_err() {
            return false;
        }
        // Non-blocking: a full pipe already wakes the consumer.
        let _ = nix::unistd::write(&self.wake, &[1]);
        true
    }
}

/// The first look at what a consumer uses, taken before it reads the values (so that a change
/// in between is seen by the first round), and the source to follow from there.
pub struct FirstLook {
    source: Box<dyn Source>,
    followed: Followed,
    revision: Option<String>,
    stamps: Vec<ValueStamp>,
}

impl FirstLook {
    /// Looks once. A directory's look is a `stat` per file and starts no thread, so a consumer
    /// may take it before it blocks its signals.
    pub fn take(source: Box<dyn Source>, followed: Followed) -> Result<Self, SourceError> {
        let (revision, stamps) = source.stamps(&followed.names, &followed.kinds, None)?;
        Ok(FirstLook {
            source,
            followed,
            revision,
            stamps,
        })
    }

    /// Follows from the first look on a thread of its own (started with whatever signal mask
    /// the caller has), telling the names that changed; `say` reports the source's health.
    /// The thread ends once the [`Follower`] is dropped and a change is to be told.
    pub fn spawn(self, every: Duration, say: fn(&str)) -> Result<Follower, String> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| format!("cannot follow the source: {}", e.desc()))?;
        let (tx, rx) = mpsc::channel();
        let tell = Tell {
            wake: write,
            changes: tx,
        };
        let FirstLook {
            source,
            followed,
            revision,
            mut stamps,
        } = self;
        let pace = Pace {
            long_poll: Duration::from_secs(55),
            every: Some(every),
            marks: source.marks(&followed.names),
            full_every: Duration::from_secs(5),
        };
        std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || {
                let described = source.describe();
                let mut round = |watch: Watch<'_>| -> Result<Step, SourceError> {
                    let (revision, now) =
                        match source.stamps(&followed.names, &followed.kinds, watch) {
                            Err(refused @ SourceError::Refused(_)) => {
                                // Told once; forgetting the stamps makes every name a change
                                // when the source answers again.
                                let told: Vec<SecretName> = followed
                                    .on_refusal
                                    .iter()
                                    .filter(|n| stamps.iter().any(|s| &s.name == *n))
                                    .cloned()
                                    .collect();
                                if !told.is_empty() {
                                    stamps.retain(|s| !told.contains(&s.name));
                                    if !tell.send(told) {
                                        return Ok(Step::Stop);
                                    }
                                }
                                return Err(refused);
                            }
                            other => other?,
                        };
                    // The sources list only secrets named or of a followed kind: with kinds,
                    // each listed name counts.
                    let mut relevant = followed.names.clone();
                    if !followed.kinds.is_empty() {
                        relevant.extend(stamps.iter().chain(&now).map(|s| s.name.clone()));
                        relevant.sort();
                        relevant.dedup();
                    }
                    let moved = changed(&relevant, &stamps, &now);
                    stamps = now;
                    if !moved.is_empty() && !tell.send(moved) {
                        return Ok(Step::Stop);
                    }
                    Ok(Step::Continue(revision))
                };
                let mut report = Said { described, say };
                follow(
                    source.watches(),
                    &pace,
                    revision,
                    &|d| {
                        std::thread::sleep(d);
                        false
                    },
                    &mut round,
                    &mut report,
                );
            })
            .map_err(|e| format!("cannot follow the source: {e}"))?;
        Ok(Follower {
            wake: read,
            changes: rx,
        })
    }
}

/// Health reported in sentences, for a consumer whose workload goes on meanwhile.
struct Said {
    described: String,
    say: fn(&str),
}

impl Report<SourceError> for Said {
    fn failing(&mut self, e: &SourceError) {
        (self.say)(&format!(
            "cannot follow {}: {e}; the workload keeps running, trying again",
            self.described
        ));
    }

    fn recovered(&mut self) {
        (self.say)(&format!(
            "{} answers again; following its changes",
            self.described
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Timestamp;
    use std::cell::RefCell;

    fn stamp(name: &str, version: u64) -> ValueStamp {
        ValueStamp {
            name: SecretName::parse(name).unwrap(),
            version,
            updated_at: Timestamp::from_nanos(version as i64 * 1000),
        }
    }

    #[test]
    fn only_used_names_whose_stamp_moved_or_that_came_and_went_count() {
        let names: Vec<SecretName> = ["A", "B", "C"]
            .iter()
            .map(|n| SecretName::parse(n).unwrap())
            .collect();
        let before = [stamp("A", 1), stamp("B", 1), stamp("UNUSED", 1)];
        let after = [stamp("A", 1), stamp("C", 1), stamp("UNUSED", 2)];
        let moved: Vec<String> = changed(&names, &before, &after)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        // B went, C came; A and the unused name changed nothing.
        assert_eq!(moved, ["B", "C"]);
        assert!(changed(&names, &before, &before).is_empty());
        assert_eq!(changed(&names, &[stamp("A", 1)], &[stamp("A", 2)]).len(), 1);
    }

    /// What the loop did, in order.
    #[derive(Default)]
    struct Log(RefCell<Vec<String>>);

    impl Report<String> for &Log {
        fn failing(&mut self, e: &String) {
            self.0.borrow_mut().push(format!("failing: {e}"));
        }
        fn recovered(&mut self) {
            self.0.borrow_mut().push("recovered".into());
        }
    }

    /// A watching source's rounds: each asks with the last revision; a failure is reported
    /// when its cause changes, not per retry, the next round asks without a revision, and the
    /// recovery is reported once; the waits between failures double.
    #[test]
    fn a_watching_source_is_asked_since_its_revision_and_outages_are_said_once() {
        let answers: RefCell<Vec<Result<Step, String>>> = RefCell::new(vec![
            Ok(Step::Continue(Some("r2".into()))),
            Err("down".into()),
            Err("down".into()),
            Err("refused".into()),
            Ok(Step::Continue(Some("r3".into()))),
            Ok(Step::Stop),
        ]);
        let asked = RefCell::new(Vec::new());
        let waits = RefCell::new(Vec::new());
        let log = Log::default();
        let pace = Pace {
            long_poll: Duration::from_secs(30),
            every: None,
            marks: Vec::new(),
            full_every: Duration::ZERO,
        };
        follow(
            true,
            &pace,
            Some("r1".into()),
            &|d| {
                waits.borrow_mut().push(d);
                false
            },
            &mut |watch| {
                asked
                    .borrow_mut()
                    .push(watch.map(|(r, t)| format!("{r}/{}", t.as_secs())));
                answers.borrow_mut().remove(0)
            },
            &mut &log,
        );
        assert_eq!(
            *asked.borrow(),
            [
                Some("r1/30".to_owned()),
                Some("r2/30".to_owned()),
                None,
                None,
                None,
                Some("r3/30".to_owned())
            ]
        );
        assert_eq!(
            *log.0.borrow(),
            ["failing: down", "failing: refused", "recovered"]
        );
        let backoffs: Vec<u128> = waits
            .borrow()
            .iter()
            .filter(|d| !d.is_zero())
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(backoffs, [200, 400, 800]);
    }

    /// A polled source with marks is asked only when a mark moved (or after a failure, or
    /// when `full_every` has passed); without `every` it is not followed at all.
    #[test]
    fn a_polled_source_is_asked_when_its_marks_move() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("store.db");
        std::fs::write(&mark, b"1").unwrap();
        let pace = Pace {
            long_poll: Duration::ZERO,
            every: Some(Duration::from_millis(1)),
            marks: vec![mark.clone()],
            full_every: Duration::from_secs(3600),
        };
        let looks = RefCell::new(0);
        let rounds = RefCell::new(0);
        let log = Log::default();
        follow(
            false,
            &pace,
            None,
            &|_| {
                let mut n = looks.borrow_mut();
                *n += 1;
                // Looks 1-3: nothing moved; 4: the file is rewritten; 6: stop after a while.
                if *n == 4 {
                    std::fs::write(&mark, b"22").unwrap();
                }
                *n > 6
            },
            &mut |watch| {
                assert!(watch.is_none(), "a polled source is never waited on");
                *rounds.borrow_mut() += 1;
                Ok::<_, String>(Step::Continue(None))
            },
            &mut &log,
        );
        assert_eq!(*rounds.borrow(), 1, "one round, for the one change");
        let unfollowed = Pace {
            every: None,
            ..pace
        };
        follow(
            false,
            &unfollowed,
            None,
            &|_| false,
            &mut |_| -> Result<Step, String> { panic!("asked") },
            &mut &log,
        );
        assert!(log.0.borrow().is_empty());
    }
}
