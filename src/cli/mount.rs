//! `secretfs mount DIR` and `secretfs doctor`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::fs::mount::{self, MountConfig};
use crate::fs::tree::Ownership;
use crate::secret::SecretName;
use crate::service::LocalPaths;
use crate::source::choose::{Fallback, Named, SourceSpec, choose};
use crate::source::{Credential, Feed, LocalSource, ServerSource};

#[derive(Debug, Args)]
#[command(
    mut_arg("url", |a| a.help("The server to mount from (comma-separated replicas) [env: SECRETFS_URL]; without it, the local store")),
    mut_arg("token_file", |a| a.help("A file holding the workload token [env: SECRETFS_TOKEN_FILE, or the token itself in SECRETFS_TOKEN]; a flag wins over the environment, and two credentials at one level are refused")),
)]
pub struct MountArgs {
    /// The directory to mount the secrets on (must exist).
    pub dir: PathBuf,
    #[command(flatten)]
    pub store: super::StoreOpts,
    #[command(flatten)]
    pub server: super::ServerOpts,
    /// Mount only this secret (repeatable); default: every secret the source allows.
    #[arg(long = "secret", short = 's', value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Owner of the files: a user name or uid [default: the user running the mount].
    #[arg(long, value_name = "USER", value_parser = parse_uid)]
    pub uid: Option<u32>,
    /// Group of the files: a group name or gid [default: the group running the mount].
    #[arg(long, value_name = "GROUP", value_parser = parse_gid)]
    pub gid: Option<u32>,
    /// File mode, read bits only: 0400, 0440 or 0444.
    #[arg(long, default_value = "0400", value_parser = parse_mode)]
    pub mode: u32,
    /// How often to re-read the source ("30s", "5m"; "0" never).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_refresh)]
    pub refresh: Refresh,
    /// Log every open with the caller's uid, gid and pid (opens then cost a round trip).
    #[arg(long)]
    pub audit: bool,
    /// With a server: how long to keep retrying one that is unavailable at start.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    /// Serve Prometheus metrics (secrets held, refresh rounds and failures, last success,
    /// source latency) at http://ADDR/metrics; no names or values, no token.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Files rendered from the secrets (authorized_keys, git-credentials, templates...): a TOML
    /// file of [files."NAME"] tables; template paths are relative to it.
    #[arg(long, value_name = "FILES.toml")]
    pub files: Option<PathBuf>,
    /// Workload identity, in place of a workload token: a file holding the platform's signed
    /// token (Kubernetes and Lepton: /var/run/secrets/kubernetes.io/serviceaccount/token),
    /// exchanged for a workload token, and again (the file re-read) before that expires.
    /// [env: SECRETFS_IDENTITY_TOKEN_FILE]
    #[arg(long, value_name = "PATH")]
    pub identity_token_file: Option<PathBuf>,
    /// The identity binding to ask for, when several might admit the token.
    #[arg(long, value_name = "NAME")]
    pub identity_binding: Option<String>,
}

/// Reads and checks a files spec: the files that load, and every problem of the others (a
/// missing template, an `env =`), which the mount reports together with what only the source
/// can show. A spec that cannot be read or parsed at all is an error at once.
pub fn load_files(
    path: &std::path::Path,
) -> anyhow::Result<(Vec<crate::render::RenderedFile>, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the files spec {}", path.display()))?;
    let spec: crate::render::FilesSpec = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("the files spec {} is not valid: {e}", path.display()))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let base = if base.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        base
    };
    let (files, mut problems) = crate::render::load_each(&spec.files, base, |p| {
        crate::launch::resolve::read_template(base, p)
    });
    for f in &files {
        if f.env.is_some() {
            problems.push(format!(
                "[files.{:?}]: env = is the launcher's (the variable that gets a memory file's \
                 path); a mount serves each file at DIR/NAME: remove it",
                f.name
            ));
        }
    }
    let problems = problems
        .into_iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect();
    Ok((files, problems))
}

/// A user name (looked up in the system's user database, as `chown` does) or a numeric uid.
fn parse_uid(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!(
            "no user named {s:?} on this system; give a user name from /etc/passwd or a numeric uid"
        )),
        Err(e) => Err(format!("cannot look up user {s:?}: {e}")),
    }
}

/// A group name or a numeric gid.
fn parse_gid(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!(
            "no group named {s:?} on this system; give a group name from /etc/group or a numeric gid"
        )),
        Err(e) => Err(format!("cannot look up group {s:?}: {e}")),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .map_err(|_| format!("invalid mode {s:?}: give octal digits such as 0400 or 0440"))
}

/// A refresh interval, or never.
#[derive(Debug, Clone, Copy)]
pub struct Refresh(pub Option<Duration>);

fn parse_refresh(s: &str) -> Result<Refresh, String> {
    if matches!(s.trim(), "0" | "never" | "off") {
        return Ok(Refresh(None));
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 30s, 5m or 0 for never"))?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "refresh interval {s:?} is too short; use at least 100ms"
        ));
    }
    Ok(Refresh(Some(d)))
}

pub fn mount(g: &GlobalArgs, a: MountArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists (the store's connections start threads), so that no thread can
    // receive SIGTERM and die with it instead of unmounting.
    mount::block_shutdown_signals();
    crate::fs::memory::limit_malloc_arenas();
    let owner = Ownership::new(
        a.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
        a.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw()),
        a.mode,
    )
    .map_err(anyhow::Error::msg)?;
    let (files, file_problems) = match &a.files {
        Some(p) => load_files(p)?,
        None => (Vec::new(), Vec::new()),
    };
    let only = a
        .secrets
        .iter()
        .map(|s| SecretName::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    // The source and its credential by the rule of every consumer (`source::choose`): flags,
    // then the environment, else the local store.
    let mut flags = g.flags.clone();
    flags.identity_file = a
        .identity_token_file
        .clone()
        .map(|f| Named::new(f, "--identity-token-file"));
    flags.identity_binding = a.identity_binding.clone();
    let env = super::config::environment_level();
    let spec = super::config::chosen(choose(&[&flags, &env], Fallback::Store))?;
    let source: Box<dyn Feed> = match spec {
        SourceSpec::Server {
            urls,
            credential,
            ca_file,
        } => {
            let credential = Credential::open(&credential).map_err(anyhow::Error::msg)?;
            Box::new(ServerSource::connect(
                &urls,
                credential,
                ca_file.as_deref(),
            )?)
        }
        SourceSpec::Store { path, key_file } => {
            let paths = LocalPaths::resolve(path, key_file)?;
            Box::new(LocalSource::open(paths)?)
        }
        SourceSpec::Dir { path, .. } => anyhow::bail!(
            "{} is a directory of files already; mount serves the local store (--store) or a \
             server (--url)",
            path.display()
        ),
    };
    let cfg = MountConfig {
        dir: a.dir,
        only,
        owner,
        refresh: a.refresh.0,
        audit: a.audit,
        start_timeout: a.start_timeout,
        metrics_listen: a.metrics_listen,
        files,
        file_problems,
    };
    mount::run(source, cfg, |ready| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "secretfs: mounted {} secret{} at {} from {}{}{}",
            ready.secrets,
            if ready.secrets == 1 { "" } else { "s" },
            ready.dir.display(),
            ready.source,
            if ready.locked {
                ""
            } else {
                " (memory NOT locked)"
            },
            ready
                .metrics
                .map(|m| format!("; metrics on http://{m}/metrics"))
                .unwrap_or_default(),
        );
        let _ = out.flush();
    })
    .context("mount failed")?;
    Ok(ExitCode::SUCCESS)
}

pub fn doctor() -> anyhow::Result<ExitCode> {
    let checks = crate::fs::doctor::checks();
    for c in &checks {
        println!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.what,
            c.detail
        );
    }
    if checks.iter().all(|c| c.ok) {
        println!("FUSE mounts should work here");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FUSE mounts will not work here until the FAIL lines are fixed");
        Ok(ExitCode::from(1))
    }
}
