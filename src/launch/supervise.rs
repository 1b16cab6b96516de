//! `secretfs run --watch`: the launcher stays as the workload's small parent and follows
//! rotations of the secrets it uses, read from a directory (a secretfs mount, a Kubernetes or
//! Docker secret volume).
//!
//! One thread, no runtime: the signals it handles are blocked and read from a `signalfd`, which
//! `poll` waits on with the directory check's interval as its timeout. A change is a change of
//! a used file as `stat` sees it through symlinks (device, inode, size, mtime), so a secretfs
//! rotation (a new inode) and a Kubernetes `..data` swap (new targets) are both seen, and an
//! unrelated file is never looked at. Changes are debounced; a restart re-resolves everything
//! first and never starts a workload whose secrets cannot all be resolved; restarts are
//! budgeted. Every signal it is sent goes on to the workload; it reaps whatever it inherits as
//! PID 1, and ends with the workload's status.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::plan::{ExecPlan, SourcePlan};
use super::resolve::{self, Fetch};
use super::watch::{OnChange, WatchPlan};

/// What the supervisor passes on to the workload.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// One file as the cheap check sees it; `None` when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

fn look(paths: &[PathBuf]) -> Vec<Option<Seen>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Seen {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
            })
        })
        .collect()
}

fn say(message: &str) {
    eprintln!("secretfs run: {message}");
}

/// The workload's status as a shell reports it: its code, or 128+N after signal N.
fn status_of(w: WaitStatus) -> Option<u8> {
    match w {
        WaitStatus::Exited(_, code) => Some(code as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as u8)),
        _ => None,
    }
}

struct Supervisor<'a, F: Fetch> {
    plan: &'a ExecPlan,
    watch: &'a WatchPlan,
    fetcher: &'a F,
    signals: SignalFd,
    /// The mask the workload starts with: this process's before supervision blocked anything.
    child_mask: SigSet,
    child: Pid,
    /// Set once the supervisor was told to stop: no more restarts, the workload's end is ours.
    stopping: bool,
    restarts: VecDeque<Instant>,
}

/// Runs the plan's command under supervision until it ends; returns its status.
pub fn run(plan: &ExecPlan, watch: &WatchPlan, fetcher: &impl Fetch) -> ExitCode {
    let SourcePlan::Dir { path: dir, .. } = &plan.source else {
        // plan() refuses --watch with any other source.
        return fail(&["--watch needs a directory source".into()]);
    };
    let names = plan.secret_names();
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n.as_str())).collect();

    if let Some(dir) = &plan.workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        return fail(&[format!("cannot change to workdir {}: {e}", dir.display())]);
    }
    // Looked at before the values are read: a change in between is seen at the first check.
    // Resolved before any signal is blocked, so a TERM during `--wait` ends the launcher with
    // nothing started.
    let mut seen = look(&paths);
    let resolved = match resolve::resolve(plan, fetcher) {
        Ok(r) => r,
        Err(problems) => return fail(&problems),
    };
    // Re-resolving never waits: a supervisor inside `--wait` would be deaf to signals and to
    // its workload's end; a missing file is a failed round, retried.
    let mut replan = plan.clone();
    if let SourcePlan::Dir { wait, .. } = &mut replan.source {
        *wait = None;
    }

    let mut handled = SigSet::empty();
    for s in FORWARDED {
        handled.add(s);
    }
    handled.add(Signal::SIGCHLD);
    let child_mask = match handled.thread_swap_mask(SigmaskHow::SIG_BLOCK) {
        Ok(old) => old,
        Err(e) => return fail(&[format!("cannot block signals: {}", e.desc())]),
    };
    let signals =
        match SignalFd::with_flags(&handled, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => return fail(&[format!("cannot read signals: {}", e.desc())]),
        };
    let child = match super::exec::spawn(
        &plan.command,
        &resolved.env,
        resolve::child_path(&resolved.env).as_deref(),
        &child_mask,
        watch.process_group,
    ) {
        Ok(pid) => pid,
        Err(f) => {
            eprintln!("error: {}", f.message);
            return ExitCode::from(f.code);
        }
    };
    // The values now live in the workload only.
    drop(resolved);
    let mut s = Supervisor {
        plan: &replan,
        watch,
        fetcher,
        signals,
        child_mask,
        child,
        stopping: false,
        restarts: VecDeque::new(),
    };

    // A change waiting for its debounce (or for a retry) to pass: which names, when it is
    // due, and when the first of them was seen.
    let mut pending: Option<(Vec<usize>, Instant, Instant)> = None;
    loop {
        let wait = match &pending {
            Some((_, due, _)) => due
                .saturating_duration_since(Instant::now())
                .min(watch.poll),
            None => watch.poll,
        };
        if let Some(status) = s.wait_for_signals(wait) {
            return ExitCode::from(status);
        }
        if s.stopping {
            // Told to stop: nothing more is due; wait (without spinning) for the workload.
            pending = None;
            continue;
        }
        let now = look(&paths);
        if now != seen {
            let changed: Vec<usize> = (0..paths.len()).filter(|&i| now[i] != seen[i]).collect();
            seen = now;
            let at = Instant::now();
            let (mut all, first) = match pending.take() {
                Some((c, _, first)) => (c, first),
                None => (Vec::new(), at),
            };
            all.extend(changed);
            all.sort_unstable();
            all.dedup();
            // Every change restarts the debounce (a burst is one action, with the last values),
            // up to ten debounces after the first: a file touched without end still gets its
            // action.
            let due = (at + watch.debounce).min(first + watch.debounce * 10);
            pending = Some((all, due, first));
        }
        if let Some((changed, due, first)) = &pending
            && Instant::now() >= *due
        {
            let shown: Vec<String> = changed
                .iter()
                .map(|&i| format!("\"{}\"", names[i]))
                .collect();
            match s.act(&shown.join(", ")) {
                Act::Done => pending = None,
                Act::RetryAt(at) => pending = Some((changed.clone(), at, *first)),
                Act::Exit(code) => return ExitCode::from(code),
            }
        }
    }
}

enum Act {
    Done,
    RetryAt(Instant),
    Exit(u8),
}

impl<F: Fetch> Supervisor<'_, F> {
    /// Waits up to `timeout` for signals and handles them: forwards, reaps. Returns the
    /// workload's status once it has ended on its own (or after being told to stop).
    fn wait_for_signals(&mut self, timeout: Duration) -> Option<u8> {
        // Rounded up: a remainder below a millisecond must not become a zero timeout.
        let millis = u16::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&self.signals),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if sig == Signal::SIGCHLD {
                if let Some(status) = self.reap() {
                    return Some(status);
                }
            } else {
                if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
                    self.stopping = true;
                }
                self.send(sig);
            }
        }
        None
    }

    /// Reaps every child that ended (orphans too, when this is PID 1); the workload's status
    /// if it was one of them.
    fn reap(&mut self) -> Option<u8> {
        let mut workload = self.workload_ended();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Ok(w) => {
                    if w.pid() == Some(self.child) {
                        workload = workload.or(status_of(w));
                    }
                }
                // nix names only the standard signals: a child ended by a real-time one is
                // reaped all the same, and answered EINVAL. Go on reaping.
                Err(_) => {}
            }
        }
        if workload.is_none() && kill(self.child, None) == Err(nix::Error::ESRCH) {
            // Reaped above with a status nix could not decode, in the moment between the
            // check and the loop.
            say("the workload ended; its status could not be read");
            workload = Some(255);
        }
        workload
    }

    /// Whether the workload has ended, and its status; reaps it. Looked at without reaping
    /// first, so that a status nix cannot decode (a real-time signal) is read from /proc.
    fn workload_ended(&self) -> Option<u8> {
        use nix::sys::wait::{Id, waitid};
        let peek = waitid(
            Id::Pid(self.child),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let status = match peek {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return None,
            Ok(w) => status_of(w),
            Err(_) => zombie_status(self.child),
        };
        let _ = waitpid(self.child, Some(WaitPidFlag::WNOHANG));
        Some(status.unwrap_or(255))
    }

    fn send(&self, sig: Signal) {
        let _ = if self.watch.process_group {
            killpg(self.child, sig)
        } else {
            kill(self.child, sig)
        };
    }

    /// The change is due: re-resolve, then do what the policy says.
    fn act(&mut self, changed: &str) -> Act {
        let retry =
            || Act::RetryAt(Instant::now() + self.watch.debounce.max(Duration::from_secs(1)));
        let resolved = match resolve::resolve(self.plan, self.fetcher) {
            Ok(r) => r,
            Err(problems) => {
                for p in &problems {
                    say(&format!(
                        "after a change of {changed}: {p}; the workload keeps running on its \
                         old values, trying again"
                    ));
                }
                return retry();
            }
        };
        match self.watch.on_change {
            OnChange::Signal(sig) => {
                say(&format!(
                    "{changed} changed: sending SIG{} to the workload",
                    sig.as_str().trim_start_matches("SIG")
                ));
                self.send(sig);
                Act::Done
            }
            OnChange::Exit(code) => {
                say(&format!(
                    "{changed} changed: stopping the workload and exiting with {code}"
                ));
                match self.stop_workload() {
                    Ok(()) => Act::Exit(code),
                    Err(status) => Act::Exit(status),
                }
            }
            OnChange::Restart => {
                let now = Instant::now();
                while self
                    .restarts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.watch.budget.window)
                {
                    self.restarts.pop_front();
                }
                if self.restarts.len() >= self.watch.budget.count as usize {
                    let next = self.restarts[0] + self.watch.budget.window;
                    say(&format!(
                        "error: {changed} changed, but the workload was restarted {} times in the \
                         last {}: it keeps running on its old values until {} from now",
                        self.restarts.len(),
                        humantime::format_duration(self.watch.budget.window),
                        humantime::format_duration(Duration::from_secs(
                            next.saturating_duration_since(now).as_secs() + 1
                        ))
                    ));
                    return Act::RetryAt(next);
                }
                if let Err(status) = self.stop_workload() {
                    // Told to stop while restarting: the workload's end is the supervisor's.
                    return Act::Exit(status);
                }
                // The values as they are now: a rotation during the stop is not started stale
                // (and, if they cannot be read now, the ones checked before the stop serve).
                let resolved = resolve::resolve(self.plan, self.fetcher).unwrap_or(resolved);
                match super::exec::spawn(
                    &self.plan.command,
                    &resolved.env,
                    resolve::child_path(&resolved.env).as_deref(),
                    &self.child_mask,
                    self.watch.process_group,
                ) {
                    Ok(pid) => {
                        self.child = pid;
                        self.restarts.push_back(Instant::now());
                        say(&format!(
                            "{changed} changed: restarted the workload (pid {pid})"
                        ));
                        Act::Done
                    }
                    Err(f) => {
                        say(&format!(
                            "error: cannot start the workload again: {}",
                            f.message
                        ));
                        Act::Exit(f.code)
                    }
                }
            }
        }
    }

    /// Stops the workload with its stop signal, then SIGKILL after the timeout; signals that
    /// arrive meanwhile are handled. `Err(status)` when the supervisor was told to stop
    /// meanwhile (its status is then the workload's).
    fn stop_workload(&mut self) -> Result<(), u8> {
        self.send(self.watch.stop_signal);
        let deadline = Instant::now() + self.watch.stop_timeout;
        let mut killed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !killed {
                say("the workload did not stop in time: SIGKILL");
                self.send(Signal::SIGKILL);
                killed = true;
            }
            let wait = if killed {
                Duration::from_millis(100)
            } else {
                left
            };
            if let Some(status) = self.wait_for_signals(wait) {
                if self.watch.process_group {
                    // The leader is gone; what it left in its group goes with it.
                    let _ = killpg(self.child, Signal::SIGKILL);
                }
                return if self.stopping { Err(status) } else { Ok(()) };
            }
        }
    }
}

/// A zombie's status as the kernel keeps it (`/proc/PID/stat`, field 52: the raw wait status),
/// as a shell reports it.
fn zombie_status(pid: Pid) -> Option<u8> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let raw: i32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(49)?
        .parse()
        .ok()?;
    let signal = raw & 0x7f;
    Some(if signal == 0 {
        ((raw >> 8) & 0xff) as u8
    } else {
        128u8.wrapping_add(signal as u8)
    })
}

fn fail(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    eprintln!("secretfs run: the workload was not started");
    ExitCode::from(super::LAUNCH_FAILED)
}
