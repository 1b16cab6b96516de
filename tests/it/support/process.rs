//! Processes a test starts, stopped when the test ends however it ends: a test that fails
//! half-way must not leave a server, a supervisor or its workload running (scripts/reap fails
//! the run when one does).

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process is given to end after SIGTERM before SIGKILL: a supervisor stops its
/// workload in that time (its own stop timeout is shorter in the tests that wait for it).
const GRACE: Duration = Duration::from_secs(5);

/// A child process, ended when dropped: SIGTERM (so a supervisor stops its workload, a server
/// closes its store), then SIGKILL if it is still there after [`GRACE`].
pub struct Running {
    child: Child,
    name: String,
}

impl Running {
    /// Starts `cmd`; `name` says what it is in a failure.
    pub fn spawn(name: &str, cmd: &mut Command) -> Running {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Running::adopt(name, child)
    }

    /// Takes over a child started elsewhere.
    pub fn adopt(name: &str, child: Child) -> Running {
        Running {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` and waits, at most `limit`, for the process to end: its status, or a failed
    /// test naming the process.
    pub fn signal_and_wait(&mut self, sig: Signal, limit: Duration) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.pid()), sig);
        self.wait_within(limit)
    }

    /// Waits at most `limit` for the process to end; fails the test when it does not.
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        match end_within(&mut self.child, limit) {
            Some(status) => status,
            None => panic!(
                "{} (pid {}) did not end within {limit:?}",
                self.name,
                self.pid()
            ),
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Ends `child` if it still runs (SIGTERM, then SIGKILL after [`GRACE`]) and reaps it. Never
/// panics: it runs in `Drop`, maybe while a failed test unwinds.
pub fn stop(child: &mut Child) {
    end_with(child, Signal::SIGTERM);
}

/// Sends `sig` to `child` if it still runs, then SIGKILL if it has not ended after [`GRACE`],
/// and reaps it. Never panics.
pub fn end_with(child: &mut Child, sig: Signal) {
    if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
    // A stopped process takes the signal only once it runs again.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
    if end_within(child, GRACE).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The child's status once it ends, or `None` when it has not ended within `limit`.
fn end_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}
