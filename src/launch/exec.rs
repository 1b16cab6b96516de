//! The only place secretfs execs: the workload replaces the launcher, keeping its PID (PID 1 in a
//! container) and receiving signals directly; or, under `--watch`, is spawned as its child.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::resolve::EnvBlock;

/// Why the workload could not be started, with the launcher's exit status for it.
#[derive(Debug, PartialEq, Eq)]
pub struct ExecFailure {
    /// 127 not found, 126 not executable, 125 anything else.
    pub code: u8,
    pub message: String,
}

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Changes to `workdir` and execs `command` with exactly `env`. Returns only on failure; `env`
/// is wiped by its owner when this returns.
pub fn exec(
    command: &[OsString],
    env: &EnvBlock,
    workdir: Option<&Path>,
    path: Option<&OsStr>,
) -> ExecFailure {
    let fail = |code, message| ExecFailure { code, message };
    let Some(program) = command.first() else {
        return fail(125, "no command to run".into());
    };
    let argv: Result<Vec<CString>, _> =
        command.iter().map(|a| CString::new(a.as_bytes())).collect();
    let Ok(argv) = argv else {
        return fail(125, "a command argument contains a NUL byte".into());
    };
    let envp: Vec<&CStr> = env
        .entries()
        .map(|e| CStr::from_bytes_with_nul(e).expect("entries end with their only NUL"))
        .collect();
    if let Some(dir) = workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        return fail(
            125,
            format!("cannot change to workdir {}: {e}", dir.display()),
        );
    }

    let shown = program.to_string_lossy();
    let mut denied = false;
    let _sigpipe = SigpipeDefault::set();
    for candidate in &candidates(program, &argv[0], path) {
        // execve only returns on failure.
        let Err(errno) = nix::unistd::execve(candidate, &argv, &envp);
        if let Some(failure) = judge(errno, &shown, &mut denied) {
            return failure;
        }
    }
    not_started(&shown, denied)
}

/// SIGPIPE at its default for as long as this lives (around an exec). The Rust runtime ignores
/// SIGPIPE in this process before `main`, and an ignored signal stays ignored across exec: the
/// workload would get EPIPE where a shell tool expects to end quietly (`yes | head -1`), as
/// `std::process::Command` avoids by the same reset. Ignored again if the exec fails, so this
/// process's own failure message to a closed pipe is an error, not its death.
struct SigpipeDefault;

impl SigpipeDefault {
    #[allow(unsafe_code)]
    fn set() -> SigpipeDefault {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: installs no handler (SIG_DFL), on one thread about to exec; nothing between
        // here and the exec writes to a pipe.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
        SigpipeDefault
    }
}

impl Drop for SigpipeDefault {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: as in `set`: SIG_IGN, which is what the runtime had installed.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    }
}

/// Starts `command` with exactly `env` as a child, with `sigmask` as its signal mask, with
/// `group` in a process group of its own, and with each `(n, fd)` of `redirect` as its
/// descriptor `n`. Its working directory is this process's.
pub fn spawn(
    command: &[OsString],
    env: &EnvBlock,
    path: Option<&OsStr>,
    sigmask: &nix::sys::signal::SigSet,
    group: bool,
    redirect: &[(i32, std::os::fd::BorrowedFd<'_>)],
) -> Result<nix::unistd::Pid, ExecFailure> {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
    let fail = |code, message| ExecFailure { code, message };
    let Some(program) = command.first() else {
        return Err(fail(125, "no command to run".into()));
    };
    let Ok(argv) = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<CString>, _>>()
    else {
        return Err(fail(125, "a command argument contains a NUL byte".into()));
    };
    let envp: Vec<&CStr> = env
        .entries()
        .map(|e| CStr::from_bytes_with_nul(e).expect("entries end with their only NUL"))
        .collect();
    let setup = || -> nix::Result<(PosixSpawnAttr, PosixSpawnFileActions)> {
        let mut attr = PosixSpawnAttr::init()?;
        let mut flags =
            PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF;
        if group {
            flags |= PosixSpawnFlags::POSIX_SPAWN_SETPGROUP;
            attr.set_pgroup(nix::unistd::Pid::from_raw(0))?;
        }
        attr.set_flags(flags)?;
        attr.set_sigmask(sigmask)?;
        // Every signal at its default in the child, but those this process was started with
        // ignored (`nohup`, a shell's background job): exec would have kept them ignored.
        // SIGPIPE is the Rust runtime's own: at its default, as `exec` does it.
        let mut default = nix::sys::signal::SigSet::all();
        for s in ignored_signals() {
            if s != nix::sys::signal::Signal::SIGPIPE {
                default.remove(s);
            }
        }
        attr.set_sigdefault(&default)?;
        let mut actions = PosixSpawnFileActions::init()?;
        for (n, fd) in redirect {
            actions.add_dup2(std::os::fd::AsRawFd::as_raw_fd(fd), *n)?;
        }
        Ok((attr, actions))
    };
    let (attr, actions) =
        setup().map_err(|e| fail(125, format!("cannot prepare to start: {}", e.desc())))?;
    let shown = program.to_string_lossy();
    let mut denied = false;
    for candidate in &candidates(program, &argv[0], path) {
        match posix_spawn(candidate.as_c_str(), &actions, &attr, &argv, &envp) {
            Ok(pid) => return Ok(pid),
            Err(errno) => {
                if let Some(failure) = judge(errno, &shown, &mut denied) {
                    return Err(failure);
                }
            }
        }
    }
    Err(not_started(&shown, denied))
}

/// The hidden first argument of `secretfs` that makes it the hand-over: `secretfs ARG VAR...
/// -- COMMAND...`.
pub const HANDOVER_ARG: &str = "__secretfs-handover";

/// The command a supervisor spawns for each start of its workload: this binary again, which
/// ties the workload's life to the supervisor's (`PR_SET_PDEATHSIG`: a supervisor killed with
/// SIGKILL takes its workload with it), rewrites `/proc/self/` in `vars` to its own PID, so the
/// workload's memory files are named by the workload's PID, and execs the workload (exec keeps
/// the PID and the death signal). posix_spawn can do neither (it sets no death signal and gives
/// the PID only once the child runs); fork and doing both in the child is unsafe code this crate
/// keeps out of the launcher. The cost is one more exec per start.
pub fn handover_command(supervisor: u32, vars: &[OsString], command: &[OsString]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        "/proc/self/exe".into(),
        HANDOVER_ARG.into(),
        supervisor.to_string().into(),
    ];
    argv.extend(vars.iter().cloned());
    argv.push("--".into());
    argv.extend(command.iter().cloned());
    argv
}

/// The hand-over's own run (see [`handover_command`]): `SUPERVISOR_PID VAR... -- COMMAND...`.
/// Its environment holds the workload's values: the copies it makes on the way are gone with its
/// address space at exec, and it exits at once when exec fails.
pub fn handover(raw: &[OsString]) -> std::process::ExitCode {
    let usage = || {
        eprintln!("error: {HANDOVER_ARG} is secretfs run's own; it needs PID VAR... -- COMMAND");
        std::process::ExitCode::from(125)
    };
    let Some((supervisor, raw)) = raw.split_first() else {
        return usage();
    };
    let Some(split) = raw.iter().position(|a| a == "--") else {
        return usage();
    };
    // Set before the check: a supervisor that dies after the check is caught by the signal, one
    // that died before it by the check (this process was re-parented by then).
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || supervisor.to_str() != Some(&nix::unistd::getppid().to_string())
    {
        eprintln!("error: the supervisor ended before the workload started");
        return std::process::ExitCode::from(125);
    }
    let (vars, command) = (&raw[..split], &raw[split + 1..]);
    let own = format!("/proc/{}/", std::process::id());
    let inherited: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let size = inherited
        .iter()
        .map(|(k, v)| EnvBlock::entry_len(k.as_bytes(), v.as_bytes()) + own.len())
        .sum();
    let mut env = EnvBlock::with_capacity(size, inherited.len());
    for (k, v) in &inherited {
        match v.as_bytes().strip_prefix(b"/proc/self/") {
            Some(rest) if vars.contains(k) => {
                let mut path = own.as_bytes().to_vec();
                path.extend_from_slice(rest);
                env.push(k.as_bytes(), &path);
            }
            _ => env.push(k.as_bytes(), v.as_bytes()),
        }
    }
    let path = super::resolve::child_path(&env);
    let failure = exec(command, &env, None, path.as_deref());
    eprintln!("error: {}", failure.message);
    std::process::ExitCode::from(failure.code)
}

/// The signals this process ignores, from `/proc/self/status` (`SigIgn`, a hex mask: bit N-1
/// for signal N), which says it without `sigaction`'s unsafe interface.
fn ignored_signals() -> Vec<nix::sys::signal::Signal> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    nix::sys::signal::Signal::iterator()
        .filter(|s| mask & (1u64 << (*s as i32 - 1)) != 0)
        .collect()
}

/// Where `program` may be: itself when it names a path, else each directory of `path` (or
/// PATH, or a default).
fn candidates(program: &OsStr, argv0: &CString, path: Option<&OsStr>) -> Vec<CString> {
    if program.as_bytes().contains(&b'/') {
        return vec![argv0.clone()];
    }
    let search = path
        .map(OsStr::to_owned)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&search)
        .map(|d| {
            let d = if d.as_os_str().is_empty() {
                ".".into()
            } else {
                d
            };
            CString::new(d.join(program).into_os_string().into_vec())
        })
        .filter_map(Result::ok)
        .collect()
}

/// One candidate failed: try the next (`None`), or stop with this failure.
fn judge(errno: nix::Error, shown: &str, denied: &mut bool) -> Option<ExecFailure> {
    let fail = |code, message| Some(ExecFailure { code, message });
    match errno {
        nix::Error::ENOENT | nix::Error::ENOTDIR => None,
        nix::Error::EACCES => {
            *denied = true;
            None
        }
        nix::Error::ENOEXEC => fail(
            126,
            format!("cannot execute {shown}: not an executable format"),
        ),
        e => fail(126, format!("cannot execute {shown}: {}", e.desc())),
    }
}

fn not_started(shown: &str, denied: bool) -> ExecFailure {
    if denied {
        ExecFailure {
            code: 126,
            message: format!("cannot execute {shown}: permission denied"),
        }
    } else {
        ExecFailure {
            code: 127,
            message: format!("command not found: {shown}"),
        }
    }
}

use std::os::unix::ffi::OsStringExt;
