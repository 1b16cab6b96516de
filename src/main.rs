//! The `secretfs` binary: parse arguments, run the command, map errors to exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose {
        // A long-running daemon reports what it does (rotations, outages, audit lines); a
        // one-shot command only what went wrong.
        0 if daemon => "info",
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
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == "run") {
        let rest: Vec<std::ffi::OsString> = raw.collect();
        return secretfs::launch::main(&rest);
    }
    let cli = match secretfs::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return secretfs::cli::usage_error(e),
    };
    init_logging(cli.global.verbose, cli.command.is_daemon());
    match secretfs::cli::run(cli) {
        Ok(code) => code,
        Err(err) => secretfs::cli::report(&err),
    }
}
