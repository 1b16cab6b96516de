//! `secretfs serve`: opens the store, bootstraps the first admin, serves the API over HTTP or
//! TLS, and shuts down cleanly (in-flight requests finished, audit records flushed).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::api::{self, AppState};
use crate::service::{LocalPaths, OpenMode, Service};

/// How `secretfs serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// `sqlite://PATH`, `sqlite:PATH` or a bare path.
    pub database: String,
    pub key_file: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub init: bool,
    pub admin_token_file: Option<PathBuf>,
    /// How long workload-read audit records may wait before they are written.
    pub audit_interval: Duration,
    /// Whether admins may mint tokens for other users (`--no-admin-impersonation`: not).
    pub admin_impersonation: bool,
}

/// What the server says once it listens.
#[derive(Debug, Clone)]
pub struct Listening {
    pub addr: SocketAddr,
    pub url: String,
    pub store: String,
}

/// Whether a `--database` value names PostgreSQL.
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// The SQLite path of a `--database` value.
pub fn sqlite_path(database: &str) -> anyhow::Result<PathBuf> {
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .unwrap_or(database);
    if path.is_empty() {
        bail!("--database is empty; give sqlite://PATH");
    }
    Ok(PathBuf::from(path))
}

/// Writes a token to a new file with mode 0600, never over an existing one.
fn write_token_file(path: &Path, token: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create admin token file {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// Serves until SIGTERM or SIGINT. `on_ready` runs once the socket listens.
pub async fn serve(opts: ServeOptions, on_ready: impl FnOnce(&Listening)) -> anyhow::Result<()> {
    crate::client::install_crypto_provider();
    // Values pass through this process on every workload read, and it holds the master key.
    crate::harden::harden_process();
    raise_fd_limit();
    let options = crate::service::Options {
        admin_impersonation: opts.admin_impersonation,
    };
    let (service, default_token_path) = if is_postgres(&opts.database) {
        let key = opts.key_file.clone().context(
            "a PostgreSQL store needs --key-file PATH (or SECRETFS_KEY_FILE): every replica must \
             use the same key file",
        )?;
        (
            Service::open_postgres(&opts.database, &key, 16).await?,
            None,
        )
    } else {
        let db = sqlite_path(&opts.database)?;
        let paths = LocalPaths::resolve(Some(db.clone()), opts.key_file.clone())?;
        let service = Service::open_local(&paths, OpenMode::CreateIfMissing, 8).await?;
        let mut token = db.into_os_string();
        token.push(".admin-token");
        (service, Some(PathBuf::from(token)))
    };
    let service = Arc::new(service.with_options(options));
    let store_desc = service.describe();
    tracing::info!(store = %store_desc, "store opened");

    if opts.init {
        match service.first_admin("admin").await? {
            Some(admin) => {
                let token_path = opts
                    .admin_token_file
                    .clone()
                    .or(default_token_path)
                    .context("with a PostgreSQL store, --init needs --admin-token-file PATH")?;
                // The file first: a token that cannot be handed over must not exist.
                write_token_file(&token_path, admin.token.expose_secret())?;
                match service.create_first_admin(admin).await {
                    Ok(true) => eprintln!(
                        "secretfs: initialised: user \"admin\" in workspace \"default\"; its token \
                         is in {} (mode 0600)",
                        token_path.display()
                    ),
                    Ok(false) => {
                        let _ = std::fs::remove_file(&token_path);
                        tracing::info!("--init: another replica initialised the store");
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&token_path);
                        return Err(e.into());
                    }
                }
            }
            None => tracing::info!("--init: the store already has an admin; nothing to initialise"),
        }
    } else if !service.has_admin().await? {
        tracing::warn!("the store has no admin yet: start once with --init to create one");
    }

    let audit_task = service.batch_reads(opts.audit_interval);
    let state = AppState::new(service.clone());
    watch_other_processes(service.clone());
    let app = api::router(state.clone());

    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let ready = Listening {
        addr,
        url: format!("{scheme}://{addr}"),
        store: store_desc,
    };
    match &opts.tls {
        Some((cert, key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "cannot load the TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle);
            on_ready(&ready);
            server.serve(make_service).await?;
        }
        None => {
            let server = axum_server::from_tcp(listener)?.handle(handle);
            on_ready(&ready);
            server.serve(make_service).await?;
        }
    }
    // Every request is done: flush the audit records still queued, then close the store.
    drop(state);
    service.flush_reads();
    let _ = tokio::time::timeout(Duration::from_secs(10), audit_task).await;
    service.close().await;
    Ok(())
}

/// Every held long-poll is an open connection: lift the soft file-descriptor limit to the hard
/// one, and say how many connections that allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            tracing::warn!(soft, hard, "cannot raise the file-descriptor limit");
        }
        let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |l| l.0);
        tracing::info!(
            limit = now,
            "file descriptors: one per client connection (long-polls included) plus the store's pool"
        );
    }
}

/// How often a replica re-checks for changes on its own, so that a lost notification cannot
/// stall a long-poll forever.
const RECHECK: Duration = Duration::from_secs(5);

/// Wakes this replica's long-polls and drops its caches when another replica commits a change
/// (PostgreSQL LISTEN/NOTIFY), and every few seconds regardless. A SQLite store has no
/// notifications, yet another process (the local CLI, a second server) may write the same file:
/// the periodic re-check bounds how long a held long-poll goes without noticing.
fn watch_other_processes(service: Arc<Service>) {
    let listener = service.clone();
    let shared = service.shared();
    tokio::spawn(async move {
        if !shared {
            return;
        }
        let mut failing = false;
        loop {
            match listener.next_change().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("change notifications from other replicas resumed");
                        failing = false;
                    }
                    listener.changed_elsewhere();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot listen for other replicas' changes; re-checking every few seconds");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECHECK);
        loop {
            tick.tick().await;
            service.recheck();
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
