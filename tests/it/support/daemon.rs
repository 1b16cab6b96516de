//! Mount daemons: whether FUSE tests can run here, a running `secretfs mount`, what is mounted,
//! and waiting for a condition.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Scratch;

/// Whether this machine can run FUSE tests (root and /dev/fuse). Without it a FUSE test prints
/// why and returns, except under `CI=true`, where it fails: CI must never pass by skipping.
pub fn fuse_available(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if root && dev {
        return true;
    }
    let why = format!("{test}: cannot mount FUSE here (root: {root}, /dev/fuse usable: {dev})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true requires FUSE tests to run");
    }
    eprintln!("skipping {why}");
    false
}

/// A running `secretfs mount` daemon, stopped (SIGTERM, then a lazy unmount as a fallback) when
/// dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub dir: PathBuf,
    pub ready_line: String,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `secretfs mount DIR ARGS` for `scratch`'s store and waits for its ready line.
    pub fn start(scratch: &Scratch, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_with(scratch, dir, args, |_| {})
    }

    pub fn start_with(
        scratch: &Scratch,
        dir: &Path,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        Self::start_wrapped(scratch, dir, args, &[], adjust)
    }

    /// Like `start_with`, run through `wrapper` (e.g. `setpriv ...`), whose last step execs
    /// secretfs, so the pid is still the daemon's.
    pub fn start_wrapped(
        scratch: &Scratch,
        dir: &Path,
        args: &[&str],
        wrapper: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        // Whatever is mounted there is not touched: a stale mount cannot be stat'ed, and a dead
        // one whose connection another process holds would never answer. It exists, and the
        // daemon must cope with it.
        if !is_mounted(dir) {
            let _ = std::fs::create_dir_all(dir);
        }
        let stderr_path = scratch.path().join(format!(
            "daemon-{}.log",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let mut cmd = scratch.cmd(&["mount", dir.to_str().unwrap()]);
        if let Some((program, rest)) = wrapper.split_first() {
            let inner = cmd;
            cmd = Command::new(program);
            cmd.args(rest)
                .arg(inner.get_program())
                .args(inner.get_args());
            cmd.env_clear().current_dir(scratch.path());
            for (k, v) in inner.get_envs() {
                if let Some(v) = v {
                    cmd.env(k, v);
                }
            }
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn secretfs mount");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready_line = match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if !line.is_empty() => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "secretfs mount did not become ready: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        Daemon {
            child,
            dir: dir.to_owned(),
            ready_line,
            stderr_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `sig` and waits for the daemon to exit, returning its exit code.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> Option<i32> {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not exit after {sig}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Not `stop`, which fails the test: this may run while a failed test unwinds.
        super::stop(&mut self.child);
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether anything is mounted at `dir` (per /proc/self/mountinfo). Only `dir`'s parent is
/// resolved: resolving `dir` itself would ask the mount, which may never answer.
pub fn is_mounted(dir: &Path) -> bool {
    let dir = match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or_else(|_| dir.to_owned(), |p| p.join(name)),
        _ => dir.to_owned(),
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = dir.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|p| p.replace("\\040", " ") == wanted)
    })
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// Makes `dir` and its ancestors up to `/tmp` searchable by every uid (a 0700 temp dir refuses
/// other uids before the mount is even asked).
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == Path::new("/") || p == std::env::temp_dir() {
            break;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        d = p.parent();
    }
}
