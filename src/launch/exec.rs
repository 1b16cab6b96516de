//! The only place secretfs execs: the workload replaces the launcher, keeping its PID (PID 1 in a
//! container) and receiving signals directly.

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
    let candidates: Vec<CString> = if program.as_bytes().contains(&b'/') {
        vec![argv[0].clone()]
    } else {
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
    };
    let mut denied = false;
    for candidate in &candidates {
        // execve only returns on failure.
        let Err(errno) = nix::unistd::execve(candidate, &argv, &envp);
        match errno {
            nix::Error::ENOENT | nix::Error::ENOTDIR => continue,
            nix::Error::EACCES => denied = true,
            nix::Error::ENOEXEC => {
                return fail(
                    126,
                    format!("cannot execute {shown}: not an executable format"),
                );
            }
            e => return fail(126, format!("cannot execute {shown}: {}", e.desc())),
        }
    }
    if denied {
        fail(126, format!("cannot execute {shown}: permission denied"))
    } else {
        fail(127, format!("command not found: {shown}"))
    }
}

use std::os::unix::ffi::OsStringExt;
