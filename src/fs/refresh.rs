//! The daemon's refresh rounds: each asks the source for what changed (one request to a server:
//! its long-poll answers with the changes, the values the tree holds left out), puts new values
//! in locked memory, makes the tree serve exactly what the source lists, and tells the kernel.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use fuser::{INodeNo, Notifier};

use super::error::MountError;
use super::fuse::SharedTree;
use super::memory::LockedPool;
use super::rendered::Renderer;
use super::status::MountStatus;
use super::tree::{Changes, ROOT};
use crate::secret::{SecretName, SecretValue, ValueStamp};
use crate::source::follow::{Pace, Report, Step, follow};
use crate::source::{Feed, Fetched, SourceError};

/// Fails closed at start: every name of `only` must be there.
pub(super) fn check_only(fetched: &Fetched, only: &[SecretName]) -> Result<(), MountError> {
    let missing: Vec<SecretName> = only
        .iter()
        .filter(|n| !fetched.secrets.iter().any(|(m, _)| &m.name == *n))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MountError::Missing(missing))
    }
}

/// Applies one round: the fetched values into locked memory, and the tree made to serve exactly
/// the secrets listed (of `only`, when it names any). A secret that came without a value keeps
/// the value the tree holds (its last known good one, or none yet if it is new).
pub(super) fn apply(
    tree: &SharedTree,
    fetched: Fetched,
    only: &[SecretName],
) -> Result<Changes, MountError> {
    let (metas, values): (Vec<ValueStamp>, Vec<Option<SecretValue>>) = fetched
        .secrets
        .into_iter()
        .filter(|(m, _)| only.is_empty() || only.contains(&m.name))
        .unzip();
    let fresh: Vec<(&SecretName, &SecretValue)> = metas
        .iter()
        .zip(&values)
        .filter_map(|(m, v)| Some((&m.name, v.as_ref()?)))
        .collect();
    let slots = LockedPool::store(fresh.iter().map(|(_, v)| v.expose_secret()))
        .map_err(MountError::Memory)?;
    let fresh = fresh
        .into_iter()
        .map(|(n, _)| n.clone())
        .zip(slots)
        .collect();
    Ok(tree
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .apply(&metas, fresh, SystemTime::now()))
}

/// Tells the kernel what changed. Called after the tree's lock is released: the kernel may need
/// the daemon to answer a pending request before it can process the notification.
pub(super) fn notify(notifier: &Notifier, changes: &Changes) {
    for (name, ino) in changes.replaced.iter().chain(&changes.removed) {
        // Drops the name's dentry and unlinks the old inode in the kernel, so the next open
        // looks the name up again and the old inode is forgotten once no one holds it open.
        if let Err(e) = notifier.delete(INodeNo(ROOT), INodeNo(*ino), name.as_ref()) {
            // ENOENT: the kernel never looked the name up; nothing is cached.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(secret = %name, error = %e, "kernel invalidation of an entry failed");
            }
        }
    }
    for name in &changes.added {
        let _ = notifier.inval_entry(INodeNo(ROOT), name.as_ref());
    }
    if !changes.is_empty() {
        // The directory's listing and attributes (mtime) changed.
        let _ = notifier.inval_inode(INodeNo(ROOT), 0, 0);
    }
}

fn log_changes(changes: &Changes, tree: &SharedTree) {
    if changes.is_empty() && changes.shadowed.is_empty() {
        return;
    }
    let versions = tree.read().unwrap_or_else(|e| e.into_inner()).versions();
    let version_of = |n: &str| versions.iter().find(|(v, _)| v == n).map_or(0, |v| v.1);
    for name in &changes.added {
        tracing::info!(secret = %name, version = version_of(name), "secret added");
    }
    for (name, _) in &changes.replaced {
        tracing::info!(secret = %name, version = version_of(name), "secret rotated");
    }
    for (name, _) in &changes.removed {
        tracing::info!(secret = %name, "secret removed");
    }
    for name in &changes.shadowed {
        tracing::warn!(secret = %name, "a rendered file has this secret's name; the secret is not served as a file");
    }
}

/// One refresh round: (with `watch`) wait for a change, fetch what changed, apply, invalidate;
/// returns the source's revision. Errors keep the last known good state and are logged by the
/// caller.
pub(super) fn refresh(
    source: &dyn Feed,
    tree: &SharedTree,
    notifier: &Notifier,
    only: &[SecretName],
    watch: Option<(&str, Duration)>,
    renderer: &mut Renderer,
) -> Result<Option<String>, MountError> {
    let held = tree.read().unwrap_or_else(|e| e.into_inner()).held();
    let mut fetched = source.fetch(only, &held, watch)?;
    for e in std::mem::take(&mut fetched.errors) {
        tracing::warn!(error = %e, "cannot fetch a changed secret; serving its last known good value");
    }
    let revision = fetched.revision.take();
    renderer.set_kinds(std::mem::take(&mut fetched.kinds));
    let changes = apply(tree, fetched, only)?;
    // Not strict: a file that cannot be built keeps its last good rendering (logged there, as
    // is what it renders: these changes are told to the kernel, not logged as secrets').
    let rendered = renderer.refresh(tree, false).unwrap_or_else(|e| {
        tracing::warn!(problem = %e.join("; "), "cannot render the files");
        Changes::default()
    });
    // Logged first: the kernel may hold a notification until a pending request is answered.
    log_changes(&changes, tree);
    notify(notifier, &changes);
    notify(notifier, &rendered);
    Ok(revision)
}

/// The first round, retried with backoff while the source is unavailable, up to `timeout`.
pub(super) fn fetch_with_retry(
    source: &dyn Feed,
    only: &[SecretName],
    timeout: Duration,
) -> Result<Fetched, MountError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        match source.fetch(only, &[], None) {
            Ok(fetched) => return Ok(fetched),
            Err(SourceError::Unavailable(e)) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(MountError::StartTimeout {
                        waited: humantime::format_duration(timeout).to_string(),
                        last: e,
                    });
                }
                let pause = delay.min(left);
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "source unavailable at start; retrying");
                thread::sleep(pause);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a round brings in step: the tree, the kernel's caches of it, and the status reported.
pub(super) struct Mounted<'a> {
    pub tree: &'a SharedTree,
    pub notifier: &'a Notifier,
    pub status: &'a MountStatus,
}

/// Keeps the tree in step with the source until `stop` is dropped, through the one follow loop
/// (`source::follow`): long-polls a source that watches (each round one [`Feed::fetch`], which
/// returns what changed), polls every `interval` one that does not. Failures keep the last
/// known good values; the outage and the recovery are logged once each.
pub(super) fn keep_fresh(
    source: &dyn Feed,
    mounted: Mounted<'_>,
    only: &[SecretName],
    interval: Option<Duration>,
    revision: Option<String>,
    stop: &mpsc::Receiver<()>,
    renderer: &mut Renderer,
) {
    let Mounted {
        tree,
        notifier,
        status,
    } = mounted;
    let stopped = |wait: Duration| {
        !matches!(
            stop.recv_timeout(wait),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    };
    let pace = Pace {
        long_poll: Duration::from_secs(30),
        every: interval,
        marks: Vec::new(),
        full_every: Duration::ZERO,
    };
    let mut round = |watch: Option<(&str, Duration)>| -> Result<Step, MountError> {
        let started = std::time::Instant::now();
        match refresh(source, tree, notifier, only, watch, renderer) {
            Ok(revision) => {
                // A round that waited for a change measures the wait, not the source.
                let latency = watch.is_none().then(|| started.elapsed());
                status.round(
                    tree.read().unwrap_or_else(|e| e.into_inner()).len(),
                    latency,
                );
                Ok(Step::Continue(revision))
            }
            Err(e) => {
                status.failed(&e.to_string());
                Err(e)
            }
        }
    };
    follow(
        source.watches(),
        &pace,
        revision,
        &stopped,
        &mut round,
        &mut Logged,
    );
}

/// The daemon's health, in its log.
struct Logged;

impl Report<MountError> for Logged {
    fn failing(&mut self, e: &MountError) {
        // An outage is said as one; a refusal (a revoked token, a refused identity) or a bad
        // answer is not.
        if matches!(e, MountError::Source(SourceError::Unavailable(_))) {
            tracing::warn!(error = %e, "source unavailable; serving the last known good values");
        } else {
            tracing::warn!(error = %e, "cannot refresh from the source; serving the last known good values");
        }
    }

    fn recovered(&mut self) {
        tracing::info!("source reachable again; updates flow");
    }
}
