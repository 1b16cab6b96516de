//! Where the daemon and the launcher get secrets from: a trait with one implementation per
//! origin. The local store is here; the server plugs in beside it.
//!
//! The trait is blocking on purpose: the daemon's refresh thread and the launcher are plain
//! threads, and an implementation that needs async IO keeps its own small runtime.

pub mod choose;
pub mod dir;
pub mod follow;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Token;
use crate::client::{Client, ClientError};
use crate::protocol::{Held, WorkloadRead, WorkloadReadRequest};
use crate::secret::{SecretKind, SecretMeta, SecretName, SecretValue, Timestamp, ValueStamp};
use crate::service::StoreError;
use crate::service::{
    Caller, DEFAULT_WORKSPACE, LocalError, LocalPaths, OpenMode, Service, ServiceError,
};

/// Why a source could not answer. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("secret \"{0}\" not found")]
    NotFound(SecretName),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    /// The server refused the credential (HTTP 401: unknown, expired or revoked).
    #[error("{0}")]
    Refused(String),
}

impl From<ServiceError> for SourceError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(StoreError::Unavailable(_) | StoreError::OutOfSpace) => {
                SourceError::Unavailable(e.to_string())
            }
            other => SourceError::Failed(other.to_string()),
        }
    }
}

/// One answer per requested name, in order.
pub type Values = Vec<Result<SecretValue, SourceError>>;

/// What one round of [`Feed::fetch`] brought.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The source's revision after the round, if it has one (a server's).
    pub revision: Option<String>,
    /// Every secret the caller may use now, sorted by name, as the value it has now; the value
    /// itself only of those not held.
    pub secrets: Vec<(ValueStamp, Option<SecretValue>)>,
    /// Why some values could not be fetched (those secrets come without a value).
    pub errors: Vec<SourceError>,
    /// The kind of every secret listed (what the built-in rendered files are made from).
    pub kinds: std::collections::BTreeMap<SecretName, SecretKind>,
}

/// A place secrets come from, seen by one workload identity. A workload learns of a secret
/// only its name, its version and when it was written (a [`ValueStamp`]) besides the value.
pub trait Source: Send + Sync {
    /// For logs and the ready line, e.g. `local store /path/store.db`.
    fn describe(&self) -> String;
    /// The values of `names`, each with its own result so every missing name can be reported.
    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError>;

    /// Whether the source can be waited on for a change (a server's long-poll) rather than
    /// looked at again and again.
    fn watches(&self) -> bool {
        false
    }

    /// The source's revision (a server's; `None` for the others) and the stamps of `only` (a
    /// name without one is not there), no value read: what a follower compares to see whether
    /// a secret it uses changed. With `watch` (a revision and a timeout, for a source that
    /// [`watches`](Source::watches)), first waits for a change since it. With `kinds`, every
    /// secret of those kinds counts too, found or gone (what a built-in rendered file holds).
    fn stamps(
        &self,
        only: &[SecretName],
        kinds: &[SecretKind],
        watch: Option<(&str, Duration)>,
    ) -> Result<(Option<String>, Vec<ValueStamp>), SourceError>;

    /// The name and kind of every secret the source lets this identity use (no value read):
    /// what built-in rendered files are made from. `None`: the source has files, not kinds (a
    /// directory).
    fn kinds(&self) -> Result<Option<Vec<(SecretName, SecretKind)>>, SourceError>;

    /// Files whose change, as `stat` sees it, may mean that `only` changed: the cheap look a
    /// follower of a source that does not watch takes between asking it. Empty: ask each time.
    fn marks(&self, _only: &[SecretName]) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Records calls a broker made with this identity's secrets in the source's audit log
    /// (a server's, through its token; the local store's). A directory keeps no audit.
    fn record_brokered(&self, _calls: &[crate::protocol::BrokeredCall]) -> Result<(), SourceError> {
        Err(SourceError::Failed(format!(
            "{} keeps no audit log",
            self.describe()
        )))
    }
}

/// A source a mount serves whole: it lists everything the identity may use and brings the
/// values in rounds.
pub trait Feed: Source {
    /// One round of a mount: with `watch` (a revision and a timeout, given only to a source that
    /// [`watches`](Source::watches)), first waits for a change since it; then everything the
    /// caller may use (of `only`, when it names any), with the values of those the caller does
    /// not already hold.
    fn fetch(
        &self,
        only: &[SecretName],
        held: &[ValueStamp],
        watch: Option<(&str, Duration)>,
    ) -> Result<Fetched, SourceError>;
}

/// How a server source proves itself.
pub enum Credential {
    /// A workload token.
    Token(Token),
    /// Workload identity: a platform's signed token in a file (a Kubernetes projected
    /// service-account token, a CI job's OIDC token), exchanged for a workload token, and
    /// exchanged again, the file read anew (kubelet rewrites it before it expires), before
    /// that token expires or when the server refuses it.
    Identity {
        file: PathBuf,
        /// The binding to ask for, when several might admit the token.
        binding: Option<String>,
    },
}

impl Credential {
    /// The credential `spec` gives: a token file is read now (its warning, when others may
    /// read it, printed); an identity token file is read at each exchange.
    pub fn open(spec: &choose::CredentialSpec) -> Result<Credential, String> {
        Ok(match spec {
            choose::CredentialSpec::Token(t) => Credential::Token(t.clone()),
            choose::CredentialSpec::TokenFile(path) => {
                let file = crate::token_file::read_token_file(path)?;
                if let Some(w) = file.warning {
                    eprintln!("warning: {w}");
                }
                Credential::Token(file.token)
            }
            choose::CredentialSpec::Identity { file, binding } => Credential::Identity {
                file: file.clone(),
                binding: binding.clone(),
            },
        })
    }
}

/// The first wait after a refused exchange, and the longest: a workload whose binding was
/// removed asks again at most this often (each refusal is an audit record), sooner when its
/// token file changes.
const REFUSED_FIRST: Duration = Duration::from_secs(5);
const REFUSED_MAX: Duration = Duration::from_secs(300);

/// A refused exchange: of which token (a digest of the file's text), and when to ask again.
struct Refused {
    digest: [u8; 32],
    until: std::time::Instant,
    wait: Duration,
}

struct Identity {
    file: PathBuf,
    binding: Option<String>,
    refused: Mutex<Option<Refused>>,
    /// A client without a token, for the exchange; the workload token's client shares its
    /// connections.
    exchanger: Arc<Client>,
}

/// A server, through a workload token: reads exactly the token's secrets, watches them with
/// long-polls, and renews the token (or, with workload identity, exchanges the platform's
/// token again) before it expires.
pub struct ServerSource {
    runtime: tokio::runtime::Runtime,
    client: Mutex<Arc<Client>>,
    urls: String,
    identity: Option<Identity>,
    /// When the token expires and how far a renewal extends it, if it expires.
    expiry: Mutex<Option<(Timestamp, Duration)>>,
    /// Whether long-polls end when the token is due for renewal. Cleared when a renewal left
    /// it still due (this host's clock ahead of the server's) or failed while the token still
    /// works: then rounds keep their usual length and each renews (or exchanges) at its end,
    /// instead of a round a second.
    wake_early: std::sync::atomic::AtomicBool,
    /// Set once a renewal no longer extends a workload token (its maximum life): no more
    /// renewals (each would be audited for nothing).
    exhausted: std::sync::atomic::AtomicBool,
}

impl From<ClientError> for SourceError {
    fn from(e: ClientError) -> Self {
        match &e {
            _ if e.is_transient() => SourceError::Unavailable(e.to_string()),
            ClientError::Unauthorized { .. } => SourceError::Refused(
                "the server refused the token: it is unknown, expired or revoked (HTTP 401); mint \
                 a new one with \"secretfs token create --workload\""
                    .into(),
            ),
            _ => SourceError::Failed(e.to_string()),
        }
    }
}

impl ServerSource {
    /// Connects to `urls`. With a workload token nothing is sent yet (the first read also
    /// tells when it expires); with workload identity the token is exchanged now, so that a
    /// refused identity fails here with the server's reason.
    pub fn connect(
        urls: &str,
        credential: Credential,
        ca_file: Option<&Path>,
    ) -> Result<Self, SourceError> {
        let setup = |e: ClientError| SourceError::Failed(e.to_string());
        let (client, identity) = match credential {
            Credential::Token(token) => (
                Arc::new(Client::new(urls, &token, ca_file).map_err(setup)?),
                None,
            ),
            Credential::Identity { file, binding } => {
                // The platform's token must not travel in the clear (HTTP to loopback only).
                for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    crate::identity::fetchable(url).map_err(|e| {
                        SourceError::Failed(format!(
                            "the identity token would travel in the clear: the server URL {e}"
                        ))
                    })?;
                }
                let exchanger = Arc::new(Client::anonymous(urls, ca_file).map_err(setup)?);
                // Until the first exchange below replaces it with a client holding the
                // workload token (over the same connections).
                (
                    exchanger.clone(),
                    Some(Identity {
                        file,
                        binding,
                        refused: Mutex::new(None),
                        exchanger,
                    }),
                )
            }
        };
        let source = Self::assemble(client, urls, identity, true)?;
        if source.identity.is_some() {
            source.exchange()?;
        }
        Ok(source)
    }

    /// A server, through a workload token exchanged elsewhere (the node agent exchanges a pod's
    /// token at each publish) and replaced through [`adopt`](Self::adopt). It is never renewed
    /// (an exchanged token's life ends with the platform token's): a long-poll ends when it
    /// expires, and the round after it is [`SourceError::Refused`] until a fresh one is adopted.
    ///
    /// It reads over `base`'s connections (a client of the same `urls`): an agent's identities
    /// share one connection pool and one trust store.
    pub fn exchanged(
        base: &Client,
        urls: &str,
        token: &Token,
        expires_in: Duration,
    ) -> Result<Self, SourceError> {
        let client = base
            .with_token(token)
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        let source = Self::assemble(Arc::new(client), urls, None, false)?;
        source.set_expiry(expires_in);
        Ok(source)
    }

    /// A source over `client`, with its own small runtime; `renews`: whether it renews its
    /// token itself (a renewal, or with `identity` an exchange) before the token expires.
    fn assemble(
        client: Arc<Client>,
        urls: &str,
        identity: Option<Identity>,
        renews: bool,
    ) -> Result<Self, SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        Ok(ServerSource {
            runtime,
            client: Mutex::new(client),
            urls: urls.to_owned(),
            identity,
            expiry: Mutex::new(None),
            wake_early: std::sync::atomic::AtomicBool::new(renews),
            exhausted: std::sync::atomic::AtomicBool::new(!renews),
        })
    }

    /// Uses `token` from now on (a later exchange's); its connections are the old client's.
    pub fn adopt(&self, token: &Token, expires_in: Duration) -> Result<(), SourceError> {
        let client = self
            .client()
            .with_token(token)
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(client);
        self.set_expiry(expires_in);
        Ok(())
    }

    /// How long the token in use has left (`None`: it does not expire).
    pub fn token_left(&self) -> Option<Duration> {
        self.time_left()
    }

    /// The token in use expires `life` from now; returns when.
    fn set_expiry(&self, life: Duration) -> Timestamp {
        let until = Timestamp::from_system_time(std::time::SystemTime::now() + life);
        *self.expiry.lock().unwrap_or_else(|e| e.into_inner()) = Some((until, life));
        until
    }

    fn client(&self) -> Arc<Client> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Workload identity: reads the token file, exchanges it, and uses the workload token it
    /// brings from now on.
    fn exchange(&self) -> Result<(), SourceError> {
        use sha2::Digest;
        let Some(id) = &self.identity else {
            return Ok(());
        };
        let shown = id.file.display();
        // Read anew each time (kubelet rewrites it). Its mode is not warned about: a projected
        // token is readable in the pod by design (SECURITY.md says what that means).
        let read = crate::token_file::read_token_file(&id.file).map_err(|e| {
            SourceError::Failed(format!(
                "{e} (for workload identity; kubelet projects the token at \
                 /var/run/secrets/kubernetes.io/serviceaccount/token, see the README)"
            ))
        })?;
        let text = read.token.expose_token();
        let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        let mut refused = id.refused.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = refused.as_ref().filter(|r| r.digest == digest) {
            let left = r.until.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                return Err(SourceError::Failed(format!(
                    "the server refused the identity token from {shown}; asking again in {} s, \
                     or when the file changes",
                    left.as_secs().max(1)
                )));
            }
        }
        let answer = match self
            .runtime
            .block_on(id.exchanger.exchange(text, id.binding.as_deref()))
        {
            Ok(a) => a,
            Err(e) => {
                let why = format!("the server refused the identity token from {shown}: {e}");
                if e.is_transient() {
                    return Err(SourceError::Unavailable(why));
                }
                let wait = match refused.as_ref() {
                    Some(r) if r.digest == digest => (r.wait * 2).min(REFUSED_MAX),
                    _ => REFUSED_FIRST,
                };
                *refused = Some(Refused {
                    digest,
                    until: std::time::Instant::now() + wait,
                    wait,
                });
                return Err(SourceError::Failed(why));
            }
        };
        *refused = None;
        drop(refused);
        let client = id
            .exchanger
            .with_token(&answer.access_token)
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(client);
        let until = self.set_expiry(Duration::from_secs(answer.expires_in));
        self.wake_early
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            binding = %answer.binding,
            expires_at = %until.rfc3339(),
            secrets = answer.secrets.len(),
            "identity token exchanged for a workload token"
        );
        Ok(())
    }

    /// One workload read; every answer says how long the token has left, which is kept. With
    /// workload identity a refused token is exchanged again once (the platform's token may have
    /// been rotated, or the binding removed: then the exchange says so).
    fn ask(&self, request: &WorkloadReadRequest) -> Result<WorkloadRead, SourceError> {
        self.renew_if_due()?;
        let read = match self.runtime.block_on(self.client().workload_read(request)) {
            Err(ClientError::Unauthorized { .. }) if self.identity.is_some() => {
                self.exchange()?;
                self.runtime
                    .block_on(self.client().workload_read(request))?
            }
            other => other?,
        };
        if let Some(life) = read.token {
            *self.expiry.lock().unwrap_or_else(|e| e.into_inner()) = life
                .expires_at
                .map(|e| (e, Duration::from_secs(life.ttl_secs.unwrap_or(3600))));
        }
        Ok(read)
    }

    /// How long a long-poll may be held, in whole seconds: never past the moment the token is
    /// due for renewal (a third of its ttl before expiry), so that the next round renews it (or,
    /// with workload identity, exchanges again) while it is still valid (unless waking early
    /// is off: see `wake_early`), and never past its expiry, so the round after it expires is
    /// refused (and said so) instead of hanging on to a request authorised before.
    fn poll_secs(&self, timeout: Duration) -> u64 {
        // The server holds a long-poll at most this long, and refuses to be asked for more.
        self.poll_secs_unbounded(timeout)
            .min(crate::protocol::WAIT_SECS_MAX)
    }

    fn poll_secs_unbounded(&self, timeout: Duration) -> u64 {
        let due = *self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        let due = due.filter(|_| {
            self.wake_early.load(std::sync::atomic::Ordering::Relaxed)
                && !self.exhausted.load(std::sync::atomic::Ordering::Relaxed)
        });
        match (self.time_left(), due) {
            // Whole seconds, rounded down: woken early, the round renews in time.
            (Some(left), Some((_, ttl))) if left.saturating_sub(ttl / 3) < timeout => {
                left.saturating_sub(ttl / 3).as_secs().max(1)
            }
            (Some(left), _) => timeout
                .min(left + Duration::from_millis(200))
                .max(Duration::from_secs(1))
                .as_secs_f64()
                .ceil() as u64,
            (None, _) => timeout.as_secs_f64().ceil() as u64,
        }
    }

    /// How long the token has left, if it expires.
    fn time_left(&self) -> Option<Duration> {
        let guard = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        guard.map(|(expires, _)| {
            expires
                .to_system_time()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        })
    }

    /// Renews the token once less than a third of its ttl is left (workload identity: exchanges
    /// the platform's token again, which a renewal could not extend).
    fn renew_if_due(&self) -> Result<(), SourceError> {
        use std::sync::atomic::Ordering;
        let due = |this: &Self| {
            let ttl = this
                .expiry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|(_, ttl)| ttl);
            ttl.is_some_and(|ttl| this.time_left().is_some_and(|left| left < ttl / 3))
        };
        if !due(self) || self.exhausted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let renewed = if self.identity.is_some() {
            self.exchange()
        } else {
            self.runtime
                .block_on(self.client().renew())
                .map_err(SourceError::from)
                .map(|renewed| {
                    tracing::info!(expires_at = %renewed.expires_at.rfc3339(), "workload token renewed");
                    let mut guard = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((e, _)) = guard.as_mut() {
                        if renewed.expires_at <= *e {
                            self.exhausted.store(true, Ordering::Relaxed);
                        }
                        *e = renewed.expires_at;
                    }
                })
        };
        match renewed {
            // Still due after renewing (this host's clock runs ahead of the server's): rounds
            // keep their length, each renewing at its end, rather than one a second.
            Ok(()) => self.wake_early.store(!due(self), Ordering::Relaxed),
            // The token still works: use it until it expires (the read that finds it expired
            // exchanges again or fails then).
            Err(e) if self.time_left().is_some_and(|left| !left.is_zero()) => {
                tracing::warn!(error = %e, "cannot renew the workload token; using it until it expires");
                self.wake_early.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

impl Source for ServerSource {
    fn describe(&self) -> String {
        format!("server {}", self.urls)
    }

    /// One request: the server answers each name, found or missing.
    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let read = self.ask(&WorkloadReadRequest {
            names: Some(names.iter().map(|n| n.as_str().to_owned()).collect()),
            ..Default::default()
        })?;
        let mut found = read.secrets;
        Ok(names
            .iter()
            .map(|n| match found.iter().position(|s| &s.name == n) {
                Some(i) => match found.swap_remove(i).value {
                    Some(v) => Ok(v),
                    None => Err(SourceError::Failed(format!(
                        "the server sent no value for \"{n}\""
                    ))),
                },
                None => Err(SourceError::NotFound(n.clone())),
            })
            .collect())
    }

    fn watches(&self) -> bool {
        true
    }

    /// Asks for stamps only: no value crosses the wire for the check. The revision covers the
    /// token's whole set, so an answer may bring nothing of `only`.
    fn stamps(
        &self,
        only: &[SecretName],
        kinds: &[SecretKind],
        watch: Option<(&str, Duration)>,
    ) -> Result<(Option<String>, Vec<ValueStamp>), SourceError> {
        let read = self.ask(&WorkloadReadRequest {
            // The whole set when kinds count: which names they cover is what may change.
            names: kinds
                .is_empty()
                .then(|| only.iter().map(|n| n.as_str().to_owned()).collect()),
            values: false,
            since: watch.map(|(since, _)| since.to_owned()),
            wait_secs: watch.map(|(_, timeout)| self.poll_secs(timeout)),
            ..Default::default()
        })?;
        let stamps = read
            .secrets
            .into_iter()
            .filter(|s| only.contains(&s.name) || kinds.contains(&s.kind))
            .map(|s| ValueStamp {
                name: s.name,
                version: s.version,
                updated_at: s.updated_at,
            })
            .collect();
        Ok((Some(read.revision), stamps))
    }

    /// The token's whole set as it may read it now.
    fn kinds(&self) -> Result<Option<Vec<(SecretName, SecretKind)>>, SourceError> {
        let read = self.ask(&WorkloadReadRequest {
            values: false,
            ..Default::default()
        })?;
        Ok(Some(
            read.secrets.into_iter().map(|s| (s.name, s.kind)).collect(),
        ))
    }

    fn record_brokered(&self, calls: &[crate::protocol::BrokeredCall]) -> Result<(), SourceError> {
        self.renew_if_due()?;
        let body = crate::protocol::BrokeredCalls {
            calls: calls.to_vec(),
        };
        match self.runtime.block_on(self.client().record_brokered(&body)) {
            Err(ClientError::Unauthorized { .. }) if self.identity.is_some() => {
                self.exchange()?;
                self.runtime
                    .block_on(self.client().record_brokered(&body))?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }
}

impl Feed for ServerSource {
    /// The whole round in one request: the long-poll answers with what changed, the values of
    /// what the caller holds left out.
    fn fetch(
        &self,
        only: &[SecretName],
        held: &[ValueStamp],
        watch: Option<(&str, Duration)>,
    ) -> Result<Fetched, SourceError> {
        let read = self.ask(&WorkloadReadRequest {
            names: (!only.is_empty()).then(|| only.iter().map(|n| n.as_str().to_owned()).collect()),
            held: held
                .iter()
                .map(|h| Held {
                    name: h.name.as_str().to_owned(),
                    version: h.version,
                    updated_at: h.updated_at,
                })
                .collect(),
            since: watch.map(|(since, _)| since.to_owned()),
            wait_secs: watch.map(|(_, timeout)| self.poll_secs(timeout)),
            ..Default::default()
        })?;
        let kinds = read
            .secrets
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect();
        let mut secrets: Vec<(ValueStamp, Option<SecretValue>)> = read
            .secrets
            .into_iter()
            .map(|s| {
                let stamp = ValueStamp {
                    name: s.name,
                    version: s.version,
                    updated_at: s.updated_at,
                };
                (stamp, s.value)
            })
            .collect();
        secrets.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(Fetched {
            revision: Some(read.revision),
            secrets,
            errors: Vec::new(),
            kinds,
        })
    }
}

/// The local store, opened directly (no server): everything in it is the local user's.
pub struct LocalSource {
    runtime: tokio::runtime::Runtime,
    service: Service,
    caller: Caller,
    paths: LocalPaths,
}

impl LocalSource {
    pub fn open(paths: LocalPaths) -> Result<Self, LocalError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LocalError::Store(StoreError::Internal(e.to_string())))?;
        // One connection: a mount or a launch reads in a few queries, one at a time.
        let service = runtime.block_on(Service::open_local(&paths, OpenMode::Existing, 1))?;
        let caller = runtime
            .block_on(service.local_caller(false))
            .map_err(|e| LocalError::Store(StoreError::Internal(e.to_string())))?;
        Ok(LocalSource {
            runtime,
            service,
            caller,
            paths,
        })
    }

    /// The store's database file: every commit changes it or its write-ahead log, which is how
    /// a supervised run notices that it should look again.
    pub fn store_path(&self) -> &Path {
        &self.paths.store
    }
}

impl Drop for LocalSource {
    /// Closes the store's connection while the runtime that drives it still runs (fields drop
    /// in order, the runtime first).
    fn drop(&mut self) {
        self.runtime.block_on(self.service.close());
    }
}

impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local store {}", self.paths.store.display())
    }

    fn record_brokered(&self, calls: &[crate::protocol::BrokeredCall]) -> Result<(), SourceError> {
        self.runtime
            .block_on(self.service.record_brokered(&self.caller, calls))
            .map(|_| ())
            .map_err(|e| match e {
                ServiceError::NotFound(why) => SourceError::Failed(why),
                other => SourceError::from(other),
            })
    }

    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError> {
        let results = self.runtime.block_on(self.service.local_read(
            &self.caller,
            DEFAULT_WORKSPACE,
            names,
        ))?;
        Ok(results
            .into_iter()
            .zip(names)
            .map(|(r, name)| {
                r.map(|(_, value)| value).map_err(|e| match e {
                    ServiceError::NotFound(_) => SourceError::NotFound(name.clone()),
                    other => SourceError::from(other),
                })
            })
            .collect())
    }

    /// A listing: no value is read, nothing is audited. No change feed to wait on, so no
    /// `watch`.
    fn stamps(
        &self,
        only: &[SecretName],
        kinds: &[SecretKind],
        _watch: Option<(&str, Duration)>,
    ) -> Result<(Option<String>, Vec<ValueStamp>), SourceError> {
        let listed = self
            .runtime
            .block_on(self.service.local_list(&self.caller, DEFAULT_WORKSPACE))?;
        let stamps = listed
            .iter()
            .filter(|m| only.contains(&m.name) || kinds.contains(&m.kind))
            .map(SecretMeta::stamp)
            .collect();
        Ok((None, stamps))
    }

    fn kinds(&self) -> Result<Option<Vec<(SecretName, SecretKind)>>, SourceError> {
        let listed = self
            .runtime
            .block_on(self.service.local_list(&self.caller, DEFAULT_WORKSPACE))?;
        Ok(Some(listed.into_iter().map(|m| (m.name, m.kind)).collect()))
    }

    /// One writer process at a time and no notification between processes: every commit
    /// changes the database file or its write-ahead log, which `stat` sees.
    fn marks(&self, _only: &[SecretName]) -> Vec<PathBuf> {
        let mut wal = self.paths.store.as_os_str().to_owned();
        wal.push("-wal");
        vec![PathBuf::from(wal), self.paths.store.clone()]
    }
}

impl Feed for LocalSource {
    /// Lists, then reads what is not held, in two queries of the one connection.
    fn fetch(
        &self,
        only: &[SecretName],
        held: &[ValueStamp],
        _watch: Option<(&str, Duration)>,
    ) -> Result<Fetched, SourceError> {
        let mut metas = self
            .runtime
            .block_on(self.service.local_list(&self.caller, DEFAULT_WORKSPACE))?;
        if !only.is_empty() {
            metas.retain(|m| only.contains(&m.name));
        }
        let listed: Vec<ValueStamp> = metas.iter().map(SecretMeta::stamp).collect();
        let stale: Vec<SecretName> = listed
            .iter()
            .filter(|m| !held.contains(m))
            .map(|m| m.name.clone())
            .collect();
        let mut read = if stale.is_empty() {
            Vec::new()
        } else {
            self.runtime.block_on(self.service.local_read(
                &self.caller,
                DEFAULT_WORKSPACE,
                &stale,
            ))?
        };
        let mut fetched = Fetched {
            kinds: metas.iter().map(|m| (m.name.clone(), m.kind)).collect(),
            ..Fetched::default()
        };
        for stamp in listed {
            match stale.iter().position(|n| n == &stamp.name) {
                None => fetched.secrets.push((stamp, None)),
                Some(i) => match std::mem::replace(
                    &mut read[i],
                    Err(ServiceError::NotFound(stamp.name.to_string())),
                ) {
                    // The store may have moved on between list and read: what was read wins.
                    Ok((meta, value)) => fetched.secrets.push((meta.stamp(), Some(value))),
                    // Deleted in between: gone from this round.
                    Err(ServiceError::NotFound(_)) => {}
                    Err(e) => {
                        fetched.errors.push(SourceError::from(e));
                        fetched.secrets.push((stamp, None));
                    }
                },
            }
        }
        Ok(fetched)
    }
}
