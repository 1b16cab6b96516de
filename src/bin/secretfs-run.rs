//! `secretfs-run`: the launcher alone, for container entrypoints where start-up time counts.
//! It is `secretfs run` built without the management, daemon and server code: it reads
//! directory sources itself and hands the local store and servers to `secretfs run`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    secretfs::launch::lean_main(&args)
}
