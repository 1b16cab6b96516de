//! The launcher, `secretfs run`: job spec and flags in, the workload exec'd with its secrets in
//! its environment.
//!
//! `spec` and `args` parse, `plan` and `watch` decide (pure), `resolve` reads the secrets, `exec`
//! replaces the process, or `supervise` stays as its parent (`--watch`), with `follow` telling
//! it of changes in the store or on a server. The path from a
//! directory source to exec starts no runtime, opens no database and touches no network: it is
//! on every container's start path.

pub mod args;
pub mod broker;
pub mod exec;
pub mod mask;
pub mod peer;
pub mod plan;
pub mod proxy;
pub mod resolve;
pub mod spec;
pub mod supervise;
mod unfold;
pub mod watch;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The launcher's status for any failure before exec, so a workload's own 1 or 2 is never
/// mistaken for the launcher's.
pub const LAUNCH_FAILED: u8 = 125;

fn failed(problems: &[String], hint: Option<&str>) -> ExitCode {
    let mut err = std::io::stderr().lock();
    for p in problems {
        let _ = writeln!(err, "error: {p}");
    }
    if let Some(h) = hint {
        let _ = writeln!(err, "hint: {h}");
    }
    let _ = writeln!(err, "secretfs run: the workload was not started");
    ExitCode::from(LAUNCH_FAILED)
}

fn read_text(what: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Runs the launcher with the arguments after `run`. Returns only when the workload did not
/// start (or for `--help` and `--dry-run`), or, with `--watch`, with the workload's status.
pub fn main(raw: &[OsString]) -> ExitCode {
    launch(raw, &resolve::AnySource, None)
}

/// The lean launcher (`secretfs-run`): directory sources in-process; for the store or a server
/// it execs `secretfs run` with the same arguments (the `secretfs` next to it, else on PATH).
pub fn lean_main(raw: &[OsString]) -> ExitCode {
    // A workload's start under its supervisor (exec::handover_command names /proc/self/exe).
    if raw.first().is_some_and(|a| a == exec::HANDOVER_ARG) {
        return exec::handover(&raw[1..]);
    }
    launch(raw, &resolve::DirOnly, Some(delegate))
}

/// Replaces this process with `secretfs run RAW...`.
fn delegate(raw: &[OsString]) -> ExitCode {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("secretfs")))
        .filter(|p| p.is_file());
    let program: OsString = sibling.map_or_else(|| "secretfs".into(), PathBuf::into_os_string);
    let mut command = vec![program, "run".into()];
    command.extend(raw.iter().cloned());
    let failure = exec::exec(&command, &resolve::EnvBlock::inherited(), None, None);
    failed(
        &[format!(
            "secretfs-run reads directory sources itself and hands the store and servers to \
             secretfs run, which could not be started: {}",
            failure.message
        )],
        Some("install the secretfs binary next to secretfs-run or on PATH"),
    )
}

fn launch(
    raw: &[OsString],
    fetcher: &impl resolve::Fetch,
    delegate: Option<fn(&[OsString]) -> ExitCode>,
) -> ExitCode {
    let args = match args::parse(raw) {
        Ok(a) => a,
        Err(e) => return failed(&[e], Some("run \"secretfs run --help\" for usage")),
    };
    if args.help {
        print!("{}", args::USAGE);
        return ExitCode::SUCCESS;
    }
    // Logging costs start-up time; set it up only when asked for.
    if args.verbose > 0 || std::env::var_os("RUST_LOG").is_some() {
        init_logging(args.verbose);
    }
    // Not dumpable while values are in this process's memory (exec resets it for the workload).
    let _ = nix::sys::prctl::set_dumpable(false);

    // --spec, else $SECRETFS_SPEC (how a container image or a pod names its spec without
    // changing the entrypoint; it must exist), else ./secretfs.toml when there is one.
    let spec_path = args
        .spec
        .clone()
        .or_else(|| {
            std::env::var_os("SECRETFS_SPEC")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            let default = PathBuf::from("secretfs.toml");
            default.is_file().then_some(default)
        });
    let spec = match &spec_path {
        Some(path) => match read_text("job spec", path).and_then(|text| {
            spec::parse(&text).map_err(|e| format!("job spec {}: {e}", path.display()))
        }) {
            Ok(spec) => Some(spec),
            Err(e) => return failed(&[e], None),
        },
        None => None,
    };
    let lepton = match &args.lepton_job {
        Some(path) => match read_text("Lepton job", path).and_then(|text| {
            spec::parse_lepton_job(&text).map_err(|e| format!("Lepton job {}: {e}", path.display()))
        }) {
            Ok(job) => Some(job),
            Err(e) => return failed(&[e], None),
        },
        None => None,
    };
    let spec_dir = spec_path
        .as_deref()
        .and_then(Path::parent)
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(Path::new("."));
    let base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return failed(&[format!("cannot read the working directory: {e}")], None),
    };
    // The spec's rendered files: templates read (relative to the spec) and parsed before
    // anything else; their problems are reported with the plan's, every problem at once.
    let (files, file_problems) = match spec.as_ref().filter(|s| !s.files.is_empty()) {
        Some(s) => crate::render::load_each(&s.files, &cwd.join(spec_dir), |p| {
            resolve::read_template(&cwd.join(spec_dir), p)
        }),
        None => (Vec::new(), Vec::new()),
    };
    let planned = plan::plan(plan::Inputs {
        files: &files,
        args: &args,
        spec: spec.as_ref().map(|s| (s, spec_dir)),
        lepton: lepton.as_ref(),
        base_env: &base_env,
        cwd: &cwd,
    });
    let plan = match planned {
        Ok(p) if file_problems.is_empty() => p,
        Ok(_) => return failed(&file_problems, None),
        Err(problems) => {
            let all: Vec<String> = file_problems.into_iter().chain(problems).collect();
            return failed(&all, None);
        }
    };
    // The broker (an HTTP server and client) is `secretfs run`'s only.
    if let Some(delegate) = delegate
        && (!matches!(plan.source, plan::SourcePlan::Dir { .. }) || !plan.brokers.is_empty())
    {
        return delegate(raw);
    }
    for note in &plan.notes {
        eprintln!("warning: {note}");
    }
    if args.dry_run {
        print!("{}", plan.render());
    }
    if args.dry_run && !plan.brokers.is_empty() {
        match supervise::broker_routes(&plan, fetcher) {
            Ok(routes) => print!("{}", broker::render(&routes)),
            Err(problems) => return failed(&problems, None),
        }
    }
    if (plan.watch.is_some() || plan.mask || !plan.brokers.is_empty()) && !args.dry_run {
        return supervise::run(&plan, fetcher);
    }
    let resolved = match resolve::resolve(&plan, fetcher) {
        Ok(r) => r,
        Err(problems) => {
            // A hint about names only when names are what went wrong (not a refused token).
            let missing = problems.iter().all(|p| p.contains("not found"));
            let no_dir = problems.iter().any(|p| p.contains("does not exist"));
            let hint = match &plan.source {
                // No directory at all: most often no source was named, and the default is not
                // there; say how to name one.
                plan::SourcePlan::Dir { .. } if no_dir => Some(
                    "name the source: --dir DIR (a secretfs mount or a secret volume), --store \
                     PATH or --url URL, or [source] in the spec, or SECRETFS_DIR, \
                     SECRETFS_STORE or SECRETFS_URL; with none, the launcher reads /run/secrets \
                     (--wait waits for a mount still starting)",
                ),
                plan::SourcePlan::Dir { .. } => Some(
                    "check the names (ls the directory), or pass --wait if a mount is still starting",
                ),
                _ if missing => {
                    Some("run \"secretfs secret list\" to see the secrets this source holds")
                }
                _ => None,
            };
            return failed(&problems, hint);
        }
    };
    tracing::info!(
        secrets = plan.secret_names().len(),
        variables = resolved.env.len(),
        "resolved; exec"
    );
    if args.dry_run {
        return ExitCode::SUCCESS;
    }
    let failure = exec::exec(
        &plan.command,
        &resolved.env,
        plan.workdir.as_deref(),
        resolve::child_path(&resolved.env).as_deref(),
    );
    eprintln!("error: {}", failure.message);
    ExitCode::from(failure.code)
}
