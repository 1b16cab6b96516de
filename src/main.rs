//! The `secretfs` binary: parse arguments, run the command, map errors to exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose {
        // A long-running daemon reports what it does (rotations, outages, audit lines); a
        // one-shot command only what went wrong. fuser's own info lines ("Mounting DIR") only
        // repeat the mount's ready line.
        0 if daemon => "info,fuser=warn",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    // The launcher is on every container's start path: it skips clap and everything else the
    // management commands need.
    let mut raw = std::env::args_os().peekable();
    let _program = raw.next();
    match raw.next() {
        Some(a) if a == "run" => {
            let rest: Vec<std::ffi::OsString> = raw.collect();
            return secretfs::launch::main(&rest);
        }
        // The mount daemon's unmount guard (fs::guard), started by `secretfs mount` itself.
        // `secretfs help run`: the launcher's options are its own, not clap's.
        Some(a) if a == "help" && raw.peek().is_some_and(|b| b == "run") => {
            return secretfs::launch::main(&["--help".into()]);
        }
        // A supervised workload's start (launch::exec::handover_command).
        Some(a) if a == secretfs::launch::exec::HANDOVER_ARG => {
            let rest: Vec<std::ffi::OsString> = raw.collect();
            return secretfs::launch::exec::handover(&rest);
        }
        Some(a) if a == secretfs::fs::guard::ARG => {
            let rest: Vec<std::ffi::OsString> = raw.collect();
            return secretfs::fs::guard::main(&rest);
        }
        _ => {}
    }
    let cli = match secretfs::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return secretfs::cli::usage_error(e),
    };
    init_logging(cli.verbose, cli.command.is_daemon());
    match secretfs::cli::run(cli) {
        Ok(code) => code,
        Err(err) => secretfs::cli::report(&err),
    }
}
