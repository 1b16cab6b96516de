//! `secretfs serve`: opens the store, bootstraps the first admin, serves the API over HTTP or
//! TLS, and shuts down cleanly (in-flight requests finished, audit records flushed).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, AppState};
use crate::service::{LocalError, LocalPaths, OpenMode, Service, ServiceError};

/// Why the server could not start or stopped; the CLI adds the hint.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A flag or its absence: the message says which and what to give.
    #[error("{0}")]
    Usage(String),
    /// An IO step that failed; `what` names the file or address.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Names the IO step an error came from.
trait IoContext<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, ServeError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, ServeError> {
        self.map_err(|source| ServeError::Io {
            what: what(),
            source,
        })
    }
}

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
    /// How long repeated events are coalesced into one audit record (a workspace may say).
    pub audit_coalesce: Duration,
    /// How long records of repeated events are kept (a workspace may say).
    pub audit_retention: Duration,
    /// How often records past their retention are pruned.
    pub audit_prune_every: Duration,
    /// Whether admins may mint tokens for other users (`--no-admin-impersonation`: not).
    pub admin_impersonation: bool,
    /// Workload identity: the least time between refetches of an issuer's keys.
    pub jwks_refetch: Duration,
    /// Failures a client address may have answered at once before they are slowed down.
    pub failure_burst: u32,
    /// Where `/metrics` is served, apart from the API (none: not served).
    pub metrics_listen: Option<SocketAddr>,
}

/// What the server says once it listens.
#[derive(Debug, Clone)]
pub struct Listening {
    pub addr: SocketAddr,
    pub url: String,
    pub store: String,
    /// The metrics listener's address, if one was asked for.
    pub metrics: Option<SocketAddr>,
}

/// Whether a `--database` value names PostgreSQL.
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// The SQLite path of a `--database` value.
pub fn sqlite_path(database: &str) -> Result<PathBuf, ServeError> {
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .unwrap_or(database);
    if path.is_empty() {
        return Err(ServeError::Usage(
            "--database is empty; give sqlite://PATH".into(),
        ));
    }
    Ok(PathBuf::from(path))
}

/// Writes a token to a new file with mode 0600, never over an existing one.
fn write_token_file(path: &Path, token: &str) -> Result<(), ServeError> {
    let what = || format!("cannot create admin token file {}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .doing(what)?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .doing(what)
}

/// Serves until SIGTERM or SIGINT. `on_ready` runs once the socket listens.
pub async fn serve(
    opts: ServeOptions,
    on_ready: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    crate::client::install_crypto_provider();
    // Values pass through this process on every workload read, and it holds the master key.
    crate::harden::harden_process();
    raise_fd_limit();
    let options = crate::service::Options {
        admin_impersonation: opts.admin_impersonation,
        jwks_refetch: opts.jwks_refetch,
        failure_burst: opts.failure_burst,
        audit_coalesce: opts.audit_coalesce,
        audit_retention: opts.audit_retention,
    };
    let (service, default_token_path) = if is_postgres(&opts.database) {
        let key = opts.key_file.clone().ok_or_else(|| {
            ServeError::Usage(
                "a PostgreSQL store needs --key-file PATH (or SECRETFS_KEY_FILE): every replica \
                 must use the same key file"
                    .into(),
            )
        })?;
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
                    .ok_or_else(|| {
                        ServeError::Usage(
                            "with a PostgreSQL store, --init needs --admin-token-file PATH".into(),
                        )
                    })?;
                // The file first: a token that cannot be handed over must not exist.
                write_token_file(&token_path, admin.token.expose_token())?;
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
    let pruner = service.prune_periodically(opts.audit_prune_every);
    let state = AppState::new(service.clone());
    watch_other_processes(service.clone());
    let app = api::router(state.clone());

    let listener = crate::connections::listen(opts.listen)
        .doing(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener
        .local_addr()
        .doing(|| format!("cannot listen on {}", opts.listen))?;
    let metrics = match opts.metrics_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .doing(|| format!("cannot listen on {at} for metrics"))?;
            let bound = listener
                .local_addr()
                .doing(|| format!("cannot listen on {at}"))?;
            let registry = Arc::new(service.metrics().registry());
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(listener, registry).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let notifier = crate::notify::Notifier::from_env().map(Arc::new);
    let tls = match &opts.tls {
        Some((cert, key)) => {
            let what = || {
                format!(
                    "cannot load the TLS certificate {} and key {}",
                    cert.display(),
                    key.display()
                )
            };
            let cert_pem = std::fs::read(cert).doing(what)?;
            let key_pem = zeroize::Zeroizing::new(std::fs::read(key).doing(what)?);
            let config = crate::connections::tls_config(&cert_pem, &key_pem)
                .map_err(|e| ServeError::Usage(format!("{}: {e}", what())))?;
            Some(Arc::new(config))
        }
        None => None,
    };
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let ready = Listening {
        addr,
        url: format!("{scheme}://{addr}"),
        store: store_desc,
        metrics,
    };
    on_ready(&ready);
    if let Some(n) = notifier.clone() {
        let status = format!(
            "serving the workspace API on {} ({})",
            ready.url, ready.store
        );
        n.ready(&status);
        tell_the_service_manager(n, service.clone(), status);
    }
    let stopping = notifier.clone();
    let waits = service.clone();
    let stop = async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        if let Some(n) = &stopping {
            n.stopping();
        }
        waits.stop_waiting();
    };
    crate::connections::serve(listener, app, tls, HEADER_READ_TIMEOUT, stop).await;
    // Every request is done: flush the audit records still queued, then close the store.
    drop(state);
    pruner.abort();
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

/// While the server runs: `WATCHDOG=1` at half the interval systemd asks for (sent from the
/// runtime, so a wedged runtime stops them), and, apart from it so a slow store never delays a
/// ping, a status line that says when the store stops answering and when it answers again
/// (checked every 5 s: one cheap query).
fn tell_the_service_manager(
    n: Arc<crate::notify::Notifier>,
    service: Arc<Service>,
    serving: String,
) {
    const CHECK: Duration = Duration::from_secs(5);
    if let Some(every) = crate::notify::watchdog_interval() {
        let n = n.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                n.watchdog();
            }
        });
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK);
        let mut outage: Option<String> = None;
        loop {
            tick.tick().await;
            let problem = match tokio::time::timeout(CHECK, service.ready()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("the store does not answer: {e}")),
                Err(_) => Some(format!("the store does not answer within {CHECK:?}")),
            };
            match problem {
                None => {
                    if outage.take().is_some() {
                        n.status(&format!("{serving}; the store answers again"));
                    }
                }
                Some(p) if outage.as_deref() != Some(p.as_str()) => {
                    n.status(&format!(
                        "{serving}; since {}: {p}",
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    ));
                    outage = Some(p);
                }
                Some(_) => {}
            }
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

/// How long a client has to send a request's headers: from the connection's start, and again
/// from the end of each answer on a kept-alive connection, so an idle connection closes then too.
/// A request being answered (a long-poll held for minutes) is not reading headers: its own
/// limits apply. HTTP/1.1 only (every client of this API speaks it): one protocol, one set of
/// limits to hold.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
