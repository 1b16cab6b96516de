//! The unmount guard: a small process of its own that outlives a killed daemon and takes its
//! mount away, so that a `kill -9` never leaves a dead mount behind.
//!
//! Why not only fusermount3's `auto_unmount`: fusermount3 (3.14) decides whether the daemon is
//! gone by opening the mount point and looking for `ENOTCONN`. Once the daemon has answered one
//! `opendir` with `ENOSYS` (the zero-message fast path, see `fuse`), the kernel opens the
//! directory without asking anyone, on a dead connection too, so fusermount3 concludes the
//! filesystem is alive and leaves it mounted. Answering `opendir` instead would cost every `ls`
//! two round trips to the daemon. The guard learns of the daemon's death from the end of a pipe
//! only the daemon holds, which no cache can fake; fusermount3's helper stays as a second line.
//!
//! The protocol: the daemon starts the guard (this binary with [`ARG`] and the mount point, stdin
//! the read end of a pipe, nothing else inherited: no environment beyond `PATH`, no file but
//! stderr) before it mounts, so the guard can never hold the FUSE device open. Once mounted, it
//! writes the mount's identity (`ID MAJOR:MINOR`, from mountinfo). When the pipe ends (the daemon
//! exited, however it died), the guard unmounts the mount point if, and only if, that very mount
//! is still there and does not answer: a daemon that unmounted itself leaves nothing to do, and a
//! successor's new mount at the same place answers (it may carry the same identity: the kernel
//! reuses mount ids and device numbers).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::mountinfo::{self, MountEntry};
use super::probe::{self, Probe};

/// The hidden first argument that makes `secretfs` run as a guard (dispatched in `main`).
pub const ARG: &str = "__mount-guard";

/// The daemon's end of the pipe: held for the daemon's whole life, closed by its exit.
pub struct Guard {
    pipe: std::fs::File,
    pid: u32,
}

/// Starts a guard for `dir` (canonical). Call before mounting.
pub fn spawn(dir: &Path) -> std::io::Result<Guard> {
    // The daemon's end is close-on-exec, so no other child (fusermount3) keeps the pipe open.
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = Command::new("/proc/self/exe");
    // Named like the daemon in `ps`: "secretfs __mount-guard DIR".
    cmd.arg0("secretfs")
        .arg(ARG)
        .arg(dir)
        .env_clear()
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Not inside the mount (it would keep it busy), and out of the terminal's process group,
        // so a Ctrl-C meant for the daemon does not take the guard with it.
        .current_dir("/")
        .process_group(0);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let child = cmd.spawn()?;
    Ok(Guard {
        pipe: std::fs::File::from(write),
        pid: child.id(),
    })
}

impl Guard {
    /// Tells the guard which mount to take away if the daemon dies.
    pub fn arm(&mut self, mount: &MountEntry) -> std::io::Result<()> {
        writeln!(self.pipe, "{} {}", mount.id, mount.dev)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// The guard process: waits for the daemon's end of the pipe to close, then unmounts what the
/// daemon left behind. `args` are the arguments after [`ARG`].
pub fn main(args: &[OsString]) -> ExitCode {
    // The signals that would end it are held, not delivered: a `kill` or a terminal's Ctrl-C
    // aimed at the daemon's whole group must not end the guard before it has done its work.
    // It ends by itself as soon as the daemon has.
    let _ = super::signals::shutdown_signals().thread_block();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("secretfs: {ARG} is started by secretfs mount, not by hand");
        return ExitCode::from(2);
    };
    let mut told = Vec::new();
    // Returns at end of file: the daemon is gone (a read error means the same).
    let _ = std::io::stdin().lock().read_to_end(&mut told);
    let Some((id, dev)) = identity(&told) else {
        // The daemon never mounted (or never said so): nothing of its can be there.
        return ExitCode::SUCCESS;
    };
    let wanted = dir.to_string_lossy();
    let Some(entry) = mountinfo::read()
        .into_iter()
        .find(|e| e.id == id && e.dev == dev && e.point == wanted)
    else {
        return ExitCode::SUCCESS;
    };
    // The kernel reuses mount ids and device numbers: a successor's mount at the same place can
    // carry this one's identity once this one is gone. The daemon is dead, so its mount cannot
    // answer; a mount that answers is a successor's, and stays. Anything else is this one.
    match probe::probe(&dir, probe::LIMIT) {
        Probe::Answered => return ExitCode::SUCCESS,
        Probe::Disconnected | Probe::Unknown(_) => {}
        Probe::Silent => {
            // Held open by another process: abort it, so nothing waits on it for good.
            probe::abort_connection(&entry);
        }
    }
    match probe::unmount(&dir) {
        Ok(()) => {
            eprintln!(
                "secretfs: the mount daemon is gone; unmounted {} (mount {id})",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "secretfs: the mount daemon is gone, but unmounting {} failed: {e}; run \"umount \
                 -l {}\"",
                dir.display(),
                dir.display()
            );
            ExitCode::from(1)
        }
    }
}

/// The last `ID MAJOR:MINOR` line the daemon wrote.
fn identity(told: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(told).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let (id, dev) = line.trim().split_once(' ')?;
    Some((id.parse().ok()?, dev.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::identity;

    #[test]
    fn what_the_daemon_told() {
        assert_eq!(identity(b"45 0:40\n"), Some((45, "0:40".into())));
        assert_eq!(identity(b"45 0:40\n46 0:41\n"), Some((46, "0:41".into())));
        assert_eq!(identity(b""), None);
        assert_eq!(identity(b"half"), None);
        assert_eq!(identity(b"x 0:1\n"), None);
    }
}
