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
    for candidate in &candidates(program, &argv[0], path) {
        // execve only returns on failure.
        let Err(errno) = nix::unistd::execve(candidate, &argv, &envp);
        if let Some(failure) = judge(errno, &shown, &mut denied) {
            return failure;
        }
    }
    not_started(&shown, denied)
}

/// Starts `command` with exactly `env` as a child, with `sigmask` as its signal mask and, with
/// `group`, in a process group of its own. Its working directory is this process's.
pub fn spawn(
    command: &[OsString],
    env: &EnvBlock,
    path: Option<&OsStr>,
    sigmask: &nix::sys::signal::SigSet,
    group: bool,
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
        // Every signal the supervisor handles is at its default in the child.
        attr.set_sigdefault(&nix::sys::signal::SigSet::all())?;
        Ok((attr, PosixSpawnFileActions::init()?))
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
