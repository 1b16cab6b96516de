//! A mount seen from outside its daemon: whether the daemon answers (asked without ever waiting
//! for good), aborting a connection nobody reads, and taking the mount away.
//!
//! A FUSE mount whose daemon died is normally disconnected: the kernel answers every request
//! with `ENOTCONN`. But when another process still holds the daemon's `/dev/fuse` descriptor (a
//! helper stopped between handing it over and closing its copy, a debugger), the connection stays
//! open with nobody reading it, and any request that reaches it waits forever. So the daemon (is
//! the mount point taken by a live mount?) and the guard (is this dead daemon's mount still
//! there, or a successor's?) ask through [`probe`]: a lookup no cache can answer, on a thread,
//! for a bounded time.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use super::mountinfo::MountEntry;

/// How long a daemon has to answer. A live one answers in microseconds (milliseconds on a loaded
/// machine); a connection nobody reads never does.
pub const LIMIT: Duration = Duration::from_secs(2);

/// What the daemon of a mount said to a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered (the name exists, or `ENOENT`, which only a daemon says of a name nobody
    /// made): a daemon serves the mount.
    Answered,
    /// The kernel answered for it: the connection is gone (`ENOTCONN`, `ECONNABORTED`).
    Disconnected,
    /// Nothing within the limit: nobody reads the connection.
    Silent,
    /// Another error (`EACCES` from the kernel's own permission check, say): the daemon was not
    /// asked, so nothing is known of it.
    Unknown(i32),
}

/// Looks up, under `dir`, a name nobody has asked for before (so no cached entry answers), for at
/// most `limit`. A thread left waiting on a silent connection returns once the connection is
/// aborted, or stays parked until the process exits; it holds nothing else.
pub fn probe(dir: &Path, limit: Duration) -> Probe {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!(".secretfs-probe-{}-{nanos}", std::process::id()));
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("mount-probe".into())
        .spawn(move || {
            let _ = tx.send(std::fs::symlink_metadata(&path).map(|_| ()));
        });
    if spawned.is_err() {
        // Without a thread the question cannot be bounded: count the mount as alive, the answer
        // that leaves it alone.
        return Probe::Answered;
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Probe::Answered,
        Ok(Err(e)) => match e.raw_os_error() {
            Some(libc::ENOENT) => Probe::Answered,
            Some(libc::ENOTCONN | libc::ECONNABORTED) => Probe::Disconnected,
            other => Probe::Unknown(other.unwrap_or(0)),
        },
        Err(_) => Probe::Silent,
    }
}

/// Aborts the FUSE connection of `entry` through the fusectl filesystem
/// (`/sys/fs/fuse/connections/N/abort`, N the minor number of the mount's device), mounting
/// fusectl there first when it is not (systemd does at boot; containers often do not). Every
/// request waiting on the connection then fails with `ENOTCONN`. Whether it was aborted (it
/// takes root).
pub fn abort_connection(entry: &MountEntry) -> bool {
    const CONNECTIONS: &str = "/sys/fs/fuse/connections";
    let Some(minor) = entry.dev.split(':').nth(1) else {
        return false;
    };
    let abort = Path::new(CONNECTIONS).join(minor).join("abort");
    if !abort.exists() {
        let _ = nix::mount::mount(
            Some("fusectl"),
            CONNECTIONS,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::write(&abort, b"1").is_ok()
}

/// Unmounts `dir`: a plain unmount, lazily if it is busy (a process has a file or its working
/// directory there), through `fusermount3 -u` when this process may not unmount itself.
pub fn unmount(dir: &Path) -> std::io::Result<()> {
    use nix::mount::{MntFlags, umount2};
    match umount2(dir, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::Error::EBUSY) => umount2(dir, MntFlags::MNT_DETACH).map_err(Into::into),
        Err(nix::Error::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(dir)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "fusermount3 -u failed: {status}"
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}
