//! `secretfs serve`: the flags, then `server::serve`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, printed when ready).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The store: sqlite://PATH, or postgres://... for replicas sharing one PostgreSQL [env:
    /// SECRETFS_DATABASE_URL]
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// The master key file [env: SECRETFS_KEY_FILE] [default: the SQLite path + ".key";
    /// required with PostgreSQL, the same file on every replica]
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM), with --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// On a new store, create the "default" workspace's admin and write its token to a file.
    #[arg(long)]
    pub init: bool,
    /// Where --init writes the admin token [default: the database path + ".admin-token"].
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Refuse admins minting tokens for other users: no admin can then act as a user and read
    /// their private secrets (user add still hands the new user a first token, once).
    #[arg(long)]
    pub no_admin_impersonation: bool,
    /// Workload identity: the least time between two fetches of an issuer's keys prompted by a
    /// token naming a key the cached set lacks (a flood of such tokens costs one fetch each).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwks_refetch_interval: Duration,
    /// Failed authentications (and refused identity exchanges) a client address may have
    /// answered at once, refilled at one per 6 s; past them, each is answered later than the
    /// last (50 ms doubling to 2 s). Raise it behind a proxy that makes all clients one address.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub failure_burst: u32,
    /// How long workload-read audit records may wait to be written together.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub audit_interval: Duration,
    /// Repeated events (a token's reads of a secret, failed authentications from an address)
    /// within this interval are one audit record with a count; 10s to 1h. A workspace may
    /// set its own (`secretfs workspace audit`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = coalesce_interval)]
    pub audit_coalesce: Duration,
    /// Records of repeated events (reads, brokered calls, refused credentials and exchanges)
    /// are deleted after this long; records of changes are kept. At least 1h. A workspace may
    /// set its own.
    #[arg(long, value_name = "DURATION", default_value = "90days", value_parser = retention)]
    pub audit_retention: Duration,
    /// How often records past their retention are looked for and deleted, in small batches.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub audit_prune_every: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics, apart from the API and without a token:
    /// keep ADDR internal (port 0 picks a free port, printed when ready).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// A duration `problem` finds nothing wrong with, for clap.
fn checked(s: &str, problem: fn(Duration) -> Option<String>) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (e.g. 60s, 10m, 90days)"))?;
    problem(d).map_or(Ok(d), Err)
}

fn coalesce_interval(s: &str) -> Result<Duration, String> {
    checked(s, crate::service::coalesce_problem)
}

fn retention(s: &str) -> Result<Duration, String> {
    checked(s, crate::service::retention_problem)
}

pub fn serve(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let database = match a.database {
        Some(d) => d,
        None => super::env_var("SECRETFS_DATABASE_URL")
            .map(|v| {
                v.into_string()
                    .map_err(|_| anyhow::anyhow!("SECRETFS_DATABASE_URL is not valid UTF-8"))
            })
            .transpose()?
            .unwrap_or_else(|| "sqlite://secretfs.db".to_owned()),
    };
    let opts = crate::server::ServeOptions {
        listen: a.listen,
        database,
        key_file: a.key_file.or_else(|| g.key_file.clone()),
        tls: a.tls_cert.zip(a.tls_key),
        init: a.init,
        admin_token_file: a.admin_token_file,
        audit_interval: a.audit_interval,
        audit_coalesce: a.audit_coalesce,
        audit_retention: a.audit_retention,
        audit_prune_every: a.audit_prune_every.max(Duration::from_secs(1)),
        admin_impersonation: !a.no_admin_impersonation,
        jwks_refetch: a.jwks_refetch_interval,
        failure_burst: a.failure_burst,
        metrics_listen: a.metrics_listen,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::serve(opts, |l| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "secretfs: serving the workspace API on {} ({}){}",
            l.url,
            l.store,
            l.metrics
                .map(|m| format!("; metrics on http://{m}/metrics"))
                .unwrap_or_default()
        );
        let _ = out.flush();
    }))?;
    Ok(ExitCode::SUCCESS)
}
