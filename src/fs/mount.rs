//! The daemon's lifecycle: check the mount point, load the secrets, mount, refresh, and unmount
//! on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, SystemTime};

use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::Signal;

pub use super::error::MountError;
use super::fuse::{SecretFs, SharedTree};
pub use super::probe::unmount;
use super::probe::{self, Probe};
use super::refresh::{Mounted, apply, check_only, fetch_with_retry, keep_fresh};
use super::rendered::Renderer;
pub use super::signals::{block_shutdown_signals, shutdown_signals};
use super::status::MountStatus;
use super::tree::{Ownership, Tree};
use crate::notify::Notifier;
use crate::secret::SecretName;
use crate::source::Feed;

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub dir: PathBuf,
    /// Only these secrets (all of them when empty).
    pub only: Vec<SecretName>,
    pub owner: Ownership,
    /// How often to re-read a source that cannot watch; `None` never.
    pub refresh: Option<Duration>,
    pub audit: bool,
    /// How long to keep trying a source that is unavailable at start.
    pub start_timeout: Duration,
    /// Where to serve `/metrics` (none: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Files rendered from the secrets (`--files`).
    pub files: Vec<crate::render::RenderedFile>,
    /// What was wrong with the files spec before the source was read (a missing template, say):
    /// reported with what the source shows (names taken by secrets, a template naming a missing
    /// secret), every problem at once.
    pub file_problems: Vec<String>,
}

/// Checks the mount point: it must exist and be a directory, and not be a live secretfs mount.
/// A stale mount (its daemon died) is detached so it can be mounted over, and so is a mount whose
/// daemon does not answer (its connection is aborted first, where the kernel lets us).
pub fn prepare_mount_point(dir: &Path) -> Result<PathBuf, MountError> {
    // Before anything touches the path: a stat of a dead mount whose connection is still held
    // open waits forever, so a secretfs mount there is asked through a bounded probe instead.
    if let Some(at) = lexical_mount_point(dir)
        && let Some(entry) = super::mountinfo::secretfs_at(&super::mountinfo::read(), &at)
    {
        match probe::probe(&at, probe::LIMIT) {
            // A mount that may be alive is not taken over.
            Probe::Answered | Probe::Unknown(_) => {
                return Err(MountError::AlreadyMounted(dir.to_owned()));
            }
            Probe::Disconnected => {}
            Probe::Silent => {
                let aborted = probe::abort_connection(&entry);
                tracing::warn!(
                    dir = %dir.display(),
                    connection_aborted = aborted,
                    "recovering a mount whose daemon does not answer (its connection is held open by another process)"
                );
                detach(dir)?;
            }
        }
    }
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(dir = %dir.display(), "recovering a stale mount (its daemon is gone)");
            detach(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::NoMountPoint(dir.to_owned()));
        }
        Err(cause) => {
            return Err(MountError::Inspect {
                path: dir.to_owned(),
                cause,
            });
        }
        Ok(_) => {}
    }
    let meta = std::fs::metadata(dir).map_err(|cause| MountError::Inspect {
        path: dir.to_owned(),
        cause,
    })?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(dir.to_owned()));
    }
    let canonical = dir.canonicalize().map_err(|cause| MountError::Inspect {
        path: dir.to_owned(),
        cause,
    })?;
    if is_secretfs_mount(&canonical) {
        return Err(MountError::AlreadyMounted(dir.to_owned()));
    }
    Ok(canonical)
}

/// Takes the mount at `dir` out of the tree without a word to its daemon (`MNT_DETACH`).
fn detach(dir: &Path) -> Result<(), MountError> {
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(|cause| MountError::Stale {
        path: dir.to_owned(),
        cause,
    })
}

/// `dir` as mountinfo names it, found without touching `dir` itself: its parent resolved (the
/// parent is not the mount), its own name joined on. `None` for a path with no final name.
fn lexical_mount_point(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(parent.join(name))
}

/// Whether a secretfs filesystem is mounted at `dir` (per /proc/self/mountinfo).
pub fn is_secretfs_mount(dir: &Path) -> bool {
    super::mountinfo::secretfs_at(&super::mountinfo::read(), dir).is_some()
}

/// What the daemon tells its caller once the mount is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    pub dir: PathBuf,
    pub secrets: usize,
    pub source: String,
    pub locked: bool,
    /// Whether a killed daemon's mount will be taken away (the guard is armed, or fusermount3's
    /// auto-unmount helper runs).
    pub cleaned_up_if_killed: bool,
    /// Where `/metrics` is served, if asked.
    pub metrics: Option<std::net::SocketAddr>,
}

enum Event {
    Signal(Signal),
    SessionEnded(std::io::Result<()>),
}

/// Mounts `source` at `cfg.dir` and serves it until SIGTERM, SIGINT or SIGHUP (or an external
/// unmount). `on_ready` runs once the mount is live. The caller must have called
/// [`block_shutdown_signals`] before starting any thread.
pub fn run(
    source: Box<dyn Feed>,
    cfg: MountConfig,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), MountError> {
    block_shutdown_signals();
    crate::harden::harden_process();
    let dir = prepare_mount_point(&cfg.dir)?;
    let description = source.describe();

    let status = Arc::new(MountStatus::new(
        &cfg.dir,
        Notifier::from_env(),
        cfg.metrics_listen.is_some(),
    ));
    // Bound before anything is fetched: a metrics address in use fails the start, like a mount
    // point that cannot be used.
    let metrics = cfg
        .metrics_listen
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|e| MountError::Metrics(format!("cannot listen on {addr}: {e}")))
        })
        .transpose()?;
    let started = std::time::Instant::now();
    let mut first = fetch_with_retry(&*source, &cfg.only, cfg.start_timeout)?;
    let first_latency = started.elapsed();
    // Fail closed at start: a mount that silently lacks a secret is worse than no mount.
    check_only(&first, &cfg.only)?;
    if let Some(e) = first.errors.drain(..).next() {
        return Err(MountError::Source(e));
    }
    let revision = first.revision.take();
    let mut renderer = Renderer::new(cfg.files.clone());
    let listed: Vec<SecretName> = first.secrets.iter().map(|(m, _)| m.name.clone()).collect();
    let mut file_problems = cfg.file_problems.clone();
    file_problems.extend(renderer.collisions(&listed));
    let mut tree = Tree::new(cfg.owner, SystemTime::now());
    tree.reserve_rendered(renderer.names());
    let tree: SharedTree = Arc::new(RwLock::new(tree));
    renderer.set_kinds(std::mem::take(&mut first.kinds));
    apply(&tree, first, &cfg.only)?;
    if let Err(more) = renderer.refresh(&tree, true) {
        file_problems.extend(more);
    }
    if !file_problems.is_empty() {
        return Err(MountError::Render(file_problems));
    }
    let count = tree.read().unwrap_or_else(|e| e.into_inner()).len();

    // The guard first, while this process holds no FUSE descriptor it could inherit.
    let mut guard = match super::guard::spawn(&dir) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the unmount guard");
            None
        }
    };
    let auto_unmount = super::doctor::find_in_path("fusermount3").is_some();
    if !auto_unmount && guard.is_none() {
        tracing::warn!(
            "fusermount3 not found (install fuse3) and no unmount guard: if this daemon is \
             killed, the mount stays behind until the next start recovers it"
        );
    }
    let config = session_config(auto_unmount, cfg.audit);
    let fs = SecretFs::new(tree.clone(), cfg.audit);
    let mut session =
        fuser::Session::new(fs, &dir, &config).map_err(|cause| MountError::Mount {
            dir: cfg.dir.clone(),
            cause,
            problems: super::doctor::problems(),
        })?;
    // Arm the guard with this mount's identity; from here on a killed daemon is cleaned up.
    let armed = guard.as_mut().is_some_and(|g| arm(g, &dir));
    let notifier = session.notifier();
    let mut unmounter = session.unmount_callable();

    let (events, inbox) = mpsc::channel();
    let session_events = events.clone();
    let fuse_thread = thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let result = session.run();
            let _ = session_events.send(Event::SessionEnded(result));
        })
        .map_err(MountError::Thread)?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                if let Ok(sig) = shutdown_signals().wait()
                    && events.send(Event::Signal(sig)).is_err()
                {
                    return;
                }
            }
        })
        .map_err(MountError::Thread)?;

    let metrics_addr = match metrics {
        Some((addr, listener)) => {
            serve_metrics(listener, &status)?;
            Some(addr)
        }
        None => None,
    };
    let (stop_refresh, refresh_stopped) = mpsc::channel::<()>();
    if !source.watches() && cfg.refresh.is_none() {
        // Nothing will be fetched again: close the store (its connection, its file descriptor,
        // its cache) instead of holding it for the life of the mount.
        drop(source);
    } else {
        let tree = tree.clone();
        let only = cfg.only.clone();
        let interval = cfg.refresh;
        let status = status.clone();
        // Not joined at exit: it may be inside a long-poll, and the process is ending anyway.
        thread::Builder::new()
            .name("refresh".into())
            .spawn(move || {
                let mounted = Mounted {
                    tree: &tree,
                    notifier: &notifier,
                    status: &status,
                };
                keep_fresh(
                    &*source,
                    mounted,
                    &only,
                    interval,
                    revision,
                    &refresh_stopped,
                    &mut renderer,
                )
            })
            .map_err(MountError::Thread)?;
    }

    on_ready(&Ready {
        dir: cfg.dir.clone(),
        secrets: count,
        source: description.clone(),
        locked: !super::memory::mlock_failed(),
        cleaned_up_if_killed: armed || auto_unmount,
        metrics: metrics_addr,
    });
    status.ready(count, &description, first_latency);
    if let Some(interval) = crate::notify::watchdog_interval() {
        watchdog(tree.clone(), status.clone(), interval)?;
    }

    wait_for_the_end(&inbox, &dir, &mut unmounter, &status);
    drop(stop_refresh);
    if fuse_thread.is_finished() {
        let _ = fuse_thread.join();
    }
    // Closing the pipe lets the guard go; it finds the mount gone and exits quietly.
    drop(guard);
    Ok(())
}

/// `/metrics` from a thread of its own with a one-thread runtime: the FUSE and refresh threads
/// never wait on a scrape.
fn serve_metrics(
    listener: std::net::TcpListener,
    status: &Arc<MountStatus>,
) -> Result<(), MountError> {
    let Some(registry) = status.registry() else {
        return Ok(());
    };
    let registry = Arc::new(registry);
    listener
        .set_nonblocking(true)
        .map_err(|e| MountError::Metrics(e.to_string()))?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the metrics listener");
                    return;
                }
            };
            runtime.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => crate::metrics::serve(l, registry).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        })
        .map_err(MountError::Thread)?;
    Ok(())
}

/// `WATCHDOG=1` while the tree answers: a thread that takes the tree's read lock each time, so
/// a wedged tree (a lock never released) stops the pings and systemd restarts the mount.
fn watchdog(tree: SharedTree, status: Arc<MountStatus>, every: Duration) -> Result<(), MountError> {
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                drop(tree.read().unwrap_or_else(|e| e.into_inner()));
                if let Some(n) = status.notifier() {
                    n.watchdog();
                }
                thread::sleep(every);
            }
        })
        .map_err(MountError::Thread)?;
    Ok(())
}

/// The FUSE session's options: read-only, no devices, setuid or exec; the kernel decides access
/// from owner and mode (default_permissions), and allow_other lets the workload's uid reach the
/// files at all.
pub(super) fn session_config(auto_unmount: bool, audit: bool) -> Config {
    let mut options = vec![
        MountOption::FSName("secretfs".into()),
        MountOption::Subtype("secretfs".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::DefaultPermissions,
    ];
    if auto_unmount {
        options.push(MountOption::AutoUnmount);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = SessionACL::All;
    config.n_threads = Some(if audit { 2 } else { 1 });
    config
}

/// Arms the guard with the new mount's identity; from then on a killed daemon is cleaned up.
fn arm(guard: &mut super::guard::Guard, dir: &Path) -> bool {
    let Some(entry) = super::mountinfo::secretfs_at(&super::mountinfo::read(), dir) else {
        tracing::warn!(dir = %dir.display(), "the new mount is not in mountinfo; the unmount guard stays idle");
        return false;
    };
    match guard.arm(&entry) {
        Ok(()) => {
            tracing::debug!(
                guard_pid = guard.pid(),
                mount_id = entry.id,
                "unmount guard armed"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot arm the unmount guard");
            false
        }
    }
}

/// Serves until a shutdown signal (then unmounts) or until the session ends from outside.
fn wait_for_the_end(
    inbox: &mpsc::Receiver<Event>,
    dir: &Path,
    unmounter: &mut fuser::SessionUnmounter,
    status: &MountStatus,
) {
    match inbox.recv() {
        Ok(Event::Signal(sig)) => {
            tracing::info!(signal = %sig, "unmounting");
            status.stopping();
            // Unmount here rather than through fuser: with auto_unmount, fuser only closes its
            // socket to fusermount3, which unmounts only a filesystem whose daemon is already
            // gone, so a clean shutdown would leave the mount behind.
            if let Err(e) = unmount(dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "unmount failed");
            }
            let _ = unmounter.unmount();
            // Wait for the session to see the unmount, briefly: a lazy unmount completes
            // asynchronously, and the process exiting ends the session anyway.
            let _ = inbox.recv_timeout(Duration::from_secs(5));
        }
        Ok(Event::SessionEnded(result)) => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "the FUSE session ended with an error");
            } else {
                tracing::info!("unmounted from outside; exiting");
            }
        }
        Err(_) => {}
    }
}
