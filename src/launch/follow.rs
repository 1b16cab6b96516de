//! How a supervised run (`--watch`) learns that a secret it uses changed in the local store or
//! on a server: a thread that compares the used secrets' stamps (name, version, written at)
//! and tells the supervisor's single-threaded loop by a byte on a pipe, which its `poll` waits
//! on beside its signals.
//!
//! - A server: its long-poll (`since` the revision last seen), asking for stamps only (no
//!   value crosses the wire for the check). The revision covers the token's whole set, so an
//!   answer may bring nothing used: the stamps decide.
//! - The local store: one writer process at a time and no notification between processes, so
//!   the trigger is its files as `stat` sees them (the database and its write-ahead log, which
//!   every commit changes), checked every `--poll`; a change of them is followed by a listing
//!   (no value read, nothing audited). Audit records written by reads change the files too:
//!   the listing then finds nothing.
//!
//! Only names the plan uses count (and, for a built-in rendered file of a set such as
//! `authorized_keys`, every secret of its kind: the server is then asked for the token's whole
//! set, the stamps filtered here), so an unrelated update never counts. A secret that
//! disappears (deleted, revoked, no longer visible) is a change: the supervisor's re-resolve
//! then fails and the workload keeps its old values.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::secret::{SecretKind, SecretName, ValueStamp};
use crate::source::{LocalSource, ServerSource};

/// How long one long-poll is held (the server caps it at 60 s).
const LONG_POLL: Duration = Duration::from_secs(55);
/// Between attempts while the source does not answer.
const RETRY: Duration = Duration::from_secs(1);

/// The supervisor's end: a descriptor that becomes readable when names changed, and the names.
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
    /// Sends the names; false once the supervisor is gone.
    fn send(&self, names: Vec<SecretName>) -> bool {
        if self.changes.send(names).is_err() {
            return false;
        }
        // Non-blocking: a full pipe already wakes the supervisor.
        let _ = nix::unistd::write(&self.wake, &[1]);
        true
    }
}

fn channel() -> Result<(Follower, Tell), String> {
    use nix::fcntl::OFlag;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("cannot follow the source: {}", e.desc()))?;
    let (tx, rx) = mpsc::channel();
    Ok((
        Follower {
            wake: read,
            changes: rx,
        },
        Tell {
            wake: write,
            changes: tx,
        },
    ))
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

fn say(message: &str) {
    eprintln!("secretfs run: {message}");
}

/// What a supervised run uses of its source.
#[derive(Debug, Clone, Default)]
pub struct Followed {
    /// The plan's secrets, sorted.
    pub names: Vec<SecretName>,
    /// Kinds whose every secret counts (a built-in rendered file of a set): a name of one
    /// coming or going is a change.
    pub kinds: Vec<SecretKind>,
}

/// What a follower thread keeps between looks: the stamps last seen, and whether the source is
/// failing (said once when it starts, once when it ends).
struct Looks {
    followed: Followed,
    stamps: Vec<ValueStamp>,
    failing: bool,
    described: String,
    tell: Tell,
}

impl Looks {
    /// The supervisor's end and the thread's, after the first look (`stamps`).
    fn start(
        described: String,
        followed: Followed,
        stamps: Vec<ValueStamp>,
    ) -> Result<(Follower, Looks), Vec<String>> {
        let (follower, tell) = channel().map_err(|e| vec![e])?;
        let looks = Looks {
            followed,
            stamps,
            failing: false,
            described,
            tell,
        };
        Ok((follower, looks))
    }

    /// A look succeeded with `now`: tells the supervisor what moved. False once it is gone.
    fn saw(&mut self, now: Vec<ValueStamp>) -> bool {
        if self.failing {
            say(&format!(
                "{} answers again; following its changes",
                self.described
            ));
            self.failing = false;
        }
        // The sources list only secrets named or of a followed kind: with kinds, each listed
        // name counts.
        let mut relevant = self.followed.names.clone();
        if !self.followed.kinds.is_empty() {
            relevant.extend(self.stamps.iter().chain(&now).map(|s| s.name.clone()));
            relevant.sort();
            relevant.dedup();
        }
        let moved = changed(&relevant, &self.stamps, &now);
        self.stamps = now;
        moved.is_empty() || self.tell.send(moved)
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) {
        if !self.failing {
            say(&format!(
                "cannot follow {}: {e}; the workload keeps running, trying again",
                self.described
            ));
            self.failing = true;
        }
    }
}

/// Follows `names` on a server. The first look happens here, before the caller resolves, so
/// a change in between is seen at the first long-poll.
pub fn server(source: ServerSource, followed: Followed) -> Result<Follower, Vec<String>> {
    let (revision, stamps) = source
        .stamps(&followed.names, &followed.kinds, None)
        .map_err(|e| vec![e.to_string()])?;
    let (follower, mut looks) =
        Looks::start(crate::source::Source::describe(&source), followed, stamps)?;
    std::thread::Builder::new()
        .name("follow-server".into())
        .spawn(move || {
            let mut revision = revision;
            loop {
                // After a failure, a plain read first: it says at once that the server is
                // back, and brings what changed meanwhile.
                let watch = (!looks.failing).then_some((revision.as_str(), LONG_POLL));
                let f = &looks.followed;
                match source.stamps(&f.names, &f.kinds, watch) {
                    Ok((r, now)) => {
                        revision = r;
                        if !looks.saw(now) {
                            return;
                        }
                    }
                    Err(e) => {
                        looks.failed(&e);
                        std::thread::sleep(RETRY);
                    }
                }
            }
        })
        .map_err(|e| vec![format!("cannot follow the source: {e}")])?;
    Ok(follower)
}

/// One file of the store as the trigger sees it.
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

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Follows `names` in the local store, its files checked every `every`. The first look
/// happens here, before the caller resolves.
pub fn store(
    source: LocalSource,
    followed: Followed,
    every: Duration,
) -> Result<Follower, Vec<String>> {
    let db = source.store_path().to_owned();
    let files = vec![sibling(&db, "-wal"), db];
    let mut seen = look(&files);
    let stamps = source
        .stamps(&followed.names, &followed.kinds)
        .map_err(|e| vec![e.to_string()])?;
    let (follower, mut looks) =
        Looks::start(crate::source::Source::describe(&source), followed, stamps)?;
    std::thread::Builder::new()
        .name("follow-store".into())
        .spawn(move || {
            let mut ticks = 0u32;
            loop {
                std::thread::sleep(every);
                let now = look(&files);
                ticks += 1;
                // A listing every 5 s regardless: a commit that rewrites the write-ahead log in
                // place inside the clock's granularity leaves size and mtime as they were.
                let due = Duration::from_secs(5).as_millis() / every.as_millis().max(1);
                if now == seen && !looks.failing && u128::from(ticks) < due {
                    continue;
                }
                ticks = 0;
                match source.stamps(&looks.followed.names, &looks.followed.kinds) {
                    Ok(listed) => {
                        seen = now;
                        if !looks.saw(listed) {
                            return;
                        }
                    }
                    Err(e) => {
                        looks.failed(&e);
                        std::thread::sleep(RETRY.saturating_sub(every));
                    }
                }
            }
        })
        .map_err(|e| vec![format!("cannot follow the source: {e}")])?;
    Ok(follower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Timestamp;

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
}
