//! The workspace API: routes, authentication, and the state every handler shares.
//!
//! One implementation of each operation (in `secrets`, `tokens`, `admin`, `workload`), reached
//! from the native routes here and, later, from the Lepton-compatible ones. Who may see what is
//! decided here, never in the store: a store holds rows, the API holds the rules.

mod admin;
mod body;
pub mod error;
mod health;
mod lepton;
mod openapi;
mod secrets;
mod tokens;
mod web;
mod workload;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{delete, get, post};
use tokio::sync::{mpsc, watch};

use crate::auth::{Presented, TokenKind};
use crate::secret::{SecretMeta, SecretName, Timestamp, Visibility};
use crate::store::{Actor, AuditRecord, Store, StoredSecret, TokenRecord, User, Vault};
pub use error::ApiError;
pub use tokens::first_user_token;

/// How long an authenticated token (with its user) is trusted from memory before it is read from
/// the store again. Changes made through this server clear the cache at once; the bound matters
/// only for changes made through another replica.
const PRINCIPAL_TTL: Duration = Duration::from_secs(1);

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    User { token: TokenRecord, user: User },
    Workload { token: TokenRecord, user: User },
}

impl Principal {
    pub fn user(&self) -> &User {
        match self {
            Principal::User { user, .. } | Principal::Workload { user, .. } => user,
        }
    }

    pub fn token(&self) -> &TokenRecord {
        match self {
            Principal::User { token, .. } | Principal::Workload { token, .. } => token,
        }
    }
}

/// Audit records of workload reads, written in batches by a background task so that a read
/// does not wait for an fsync. A crash can lose the records of the last batch interval.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditRecord>,
}

impl AuditSink {
    /// The sink and the task that drains it; the task ends once every sink clone is dropped,
    /// after writing what is left.
    pub fn spawn(
        store: Arc<dyn Store>,
        interval: Duration,
    ) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditRecord>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + interval;
                loop {
                    while let Ok(r) = rx.try_recv() {
                        batch.push(r);
                    }
                    if batch.len() >= 5000 {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) | Err(_) => break,
                    }
                }
                if let Err(e) = store.record(&batch).await {
                    tracing::error!(error = %e, records = batch.len(), "cannot write audit records");
                }
            }
        });
        (AuditSink { tx }, task)
    }

    pub fn send(&self, records: Vec<AuditRecord>) {
        for r in records {
            let _ = self.tx.send(r);
        }
    }
}

/// Slows down failed authentication per client address, so tokens cannot be guessed at
/// loopback speed: each consecutive failure doubles the delay of the next answer, up to 2 s.
#[derive(Default)]
pub struct FailureGuard {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureGuard {
    const BASE: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const FORGET: Duration = Duration::from_secs(600);

    /// Records a failure and returns how long to wait before answering it.
    fn failed(&self, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (_, at)| now.duration_since(*at) < Self::FORGET);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > Self::FORGET {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let exp = entry.0.saturating_sub(1).min(16);
        Self::BASE.saturating_mul(1 << exp).min(Self::MAX)
    }

    fn succeeded(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&ip);
        }
    }
}

/// An authenticated token as remembered: who it is, the hash to check, when it was read.
type CachedPrincipal = (Principal, Vec<u8>, Instant);

/// A workspace's rows as last read, valid while the change counter has not moved.
pub struct Snapshot {
    generation: u64,
    rows: HashMap<SecretName, StoredSecret>,
}

/// Everything handlers share.
pub struct AppState {
    pub vault: Arc<Vault>,
    /// The key file, for key rotation (none: rotation refused).
    pub key_path: Option<std::path::PathBuf>,
    pub audit: AuditSink,
    /// Bumped after every committed change; long-polls and caches watch it.
    pub changes: watch::Sender<u64>,
    guard: FailureGuard,
    principals: Mutex<HashMap<String, CachedPrincipal>>,
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
    /// One store read at a time per cache: a burst of requests that all miss waits for one
    /// load instead of sending the store a query each.
    principal_loads: tokio::sync::Mutex<()>,
    snapshot_loads: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(vault: Arc<Vault>, audit: AuditSink) -> Arc<Self> {
        Self::with_key(vault, audit, None)
    }

    pub fn with_key(
        vault: Arc<Vault>,
        audit: AuditSink,
        key_path: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            vault,
            key_path,
            audit,
            changes: watch::channel(0).0,
            guard: FailureGuard::default(),
            principals: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            principal_loads: tokio::sync::Mutex::new(()),
            snapshot_loads: tokio::sync::Mutex::new(()),
        })
    }

    pub fn store(&self) -> &dyn Store {
        self.vault.store()
    }

    /// Called after every committed change: wakes long-polls, drops cached principals and
    /// snapshots.
    pub fn changed(&self) {
        self.principals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wakes long-polls to look again, without dropping cached principals: the periodic
    /// re-check of replicas, which has no change to report.
    pub fn recheck(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// The rows of `workspace`, from memory while nothing has changed.
    pub async fn snapshot(&self, workspace: &str) -> Result<Arc<Snapshot>, ApiError> {
        let cached = |generation: u64| {
            self.snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(workspace)
                .filter(|s| s.generation == generation)
                .cloned()
        };
        if let Some(s) = cached(self.generation()) {
            return Ok(s);
        }
        let _load = self.snapshot_loads.lock().await;
        let generation = self.generation();
        if let Some(s) = cached(generation) {
            return Ok(s);
        }
        let rows = self.store().get_all(workspace).await?;
        let snap = Arc::new(Snapshot {
            generation,
            rows: rows.into_iter().map(|r| (r.meta.name.clone(), r)).collect(),
        });
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workspace.to_owned(), snap.clone());
        Ok(snap)
    }

    /// Reads a token and its user from the store and caches them.
    async fn load_principal(&self, id: &str) -> Result<Option<(Principal, Vec<u8>)>, ApiError> {
        let Some(record) = self.store().token(id).await? else {
            self.principals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            return Ok(None);
        };
        let Some(user) = self.store().user(&record.user).await? else {
            self.principals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            return Ok(None);
        };
        let hash = record.hash.clone();
        let p = match record.kind {
            TokenKind::User => Principal::User {
                token: record,
                user,
            },
            TokenKind::Workload => Principal::Workload {
                token: record,
                user,
            },
        };
        self.principals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), (p.clone(), hash.clone(), Instant::now()));
        Ok(Some((p, hash)))
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let bad = || {
            ApiError::unauthorized(
                "missing, malformed, unknown, expired or revoked token; send \"Authorization: Bearer TOKEN\"",
            )
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(bad)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(bad)?;
        let presented = Presented::parse(token.trim()).ok_or_else(bad)?;
        let now = Timestamp::now();
        let lookup = || {
            self.principals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&presented.id)
                .cloned()
        };
        let (principal, hash) = match lookup() {
            Some((p, hash, at)) if at.elapsed() < PRINCIPAL_TTL => (p, hash),
            // Past its time but not invalidated (a change would have removed it): one request
            // reloads it while the others go on with it, so an expiry never stalls a burst.
            Some((p, hash, at)) if at.elapsed() < PRINCIPAL_TTL * 5 => {
                match self.principal_loads.try_lock() {
                    Ok(_load) => self.load_principal(&presented.id).await?.ok_or_else(bad)?,
                    Err(_) => (p, hash),
                }
            }
            _ => {
                let _load = self.principal_loads.lock().await;
                match lookup().filter(|(_, _, at)| at.elapsed() < PRINCIPAL_TTL) {
                    Some((p, hash, _)) => (p, hash),
                    None => self.load_principal(&presented.id).await?.ok_or_else(bad)?,
                }
            }
        };
        if !presented.matches(&hash) {
            return Err(bad());
        }
        let kind_ok = matches!(
            (&principal, presented.kind),
            (Principal::User { .. }, TokenKind::User)
                | (Principal::Workload { .. }, TokenKind::Workload)
        );
        if !kind_ok {
            return Err(bad());
        }
        let token = principal.token();
        if token.revoked_at.is_some() || token.expires_at.is_some_and(|e| e <= now) {
            return Err(bad());
        }
        Ok(principal)
    }
}

/// The caller, authenticated; extracting it answers 401 (after the failure delay) otherwise.
pub struct Auth {
    pub principal: Principal,
    /// The client's address, for the audit log.
    pub address: String,
}

impl Auth {
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.principal.user().name.clone(),
            address: self.address.clone(),
        }
    }

    /// The calling user, or 403 for a workload token (which may only read its secrets).
    pub fn user(&self) -> Result<&User, ApiError> {
        match &self.principal {
            Principal::User { user, .. } => Ok(user),
            Principal::Workload { .. } => Err(ApiError::forbidden(
                "a workload token can only read its secrets (GET /api/v1/workload/secrets)",
            )),
        }
    }

    /// The calling user if an admin, else 403.
    pub fn admin(&self) -> Result<&User, ApiError> {
        let user = self.user()?;
        if user.admin {
            Ok(user)
        } else {
            Err(ApiError::forbidden("this needs an admin token"))
        }
    }
}

fn client_ip(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let addr = client_ip(parts);
        let ip = addr.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        match state.authenticate(&parts.headers).await {
            Ok(principal) => {
                state.guard.succeeded(ip);
                Ok(Auth {
                    principal,
                    address: addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                })
            }
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                let delay = state.guard.failed(ip);
                tracing::info!(client = %ip, delay_ms = delay.as_millis() as u64, "authentication failed");
                tokio::time::sleep(delay).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// A caller with a user token; a workload token is answered 403 before the body is read.
pub struct UserAuth(pub Auth);

impl FromRequestParts<Arc<AppState>> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let auth = Auth::from_request_parts(parts, state).await?;
        auth.user()?;
        Ok(UserAuth(auth))
    }
}

/// Every kind of request body through the parser and checks the handlers use (no store): the
/// `api_bodies` fuzz target.
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    use crate::secret::ValueLimit;
    if let Ok(b) = body::parse::<secrets::CreateBody>(data) {
        let _ = secrets::new_secret(b, ValueLimit::default());
    }
    if let Ok(b) = body::parse::<secrets::UpdateBody>(data) {
        let _ = secrets::body_value(b.value, b.value_base64, ValueLimit::default());
    }
    let _ = body::parse::<tokens::MintWorkload>(data);
    if let Ok(items) = body::parse::<Vec<lepton::LeptonItem>>(data) {
        let _ = lepton::prepare(items, ValueLimit::default());
    }
}

/// Whether `user` may use (list, mint tokens for, have workloads read) a secret.
pub fn may_use(user: &User, meta: &SecretMeta) -> bool {
    meta.owner == user.name || meta.visibility == Visibility::Public
}

/// 404 unless `user` belongs to `workspace`: a user sees only their workspaces.
pub fn member(user: &User, workspace: &str) -> Result<(), ApiError> {
    if user.workspaces.iter().any(|w| w == workspace) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "workspace \"{workspace}\" not found"
        )))
    }
}

/// The router of the whole API.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/api/v1/templates", get(web::templates))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/api/v1/whoami", get(admin::whoami))
        .route(
            "/api/v1/workspaces",
            get(admin::list_workspaces).post(admin::create_workspace),
        )
        .route("/api/v1/workspaces/{ws}/members", post(admin::add_member))
        .route(
            "/api/v1/workspaces/{ws}/secrets",
            get(secrets::list).post(secrets::create),
        )
        .route(
            "/api/v1/workspaces/{ws}/secrets:import",
            post(secrets::import),
        )
        .route(
            "/api/v1/workspaces/{ws}/secrets/{name}",
            get(secrets::get_one)
                .patch(secrets::update)
                .delete(secrets::remove),
        )
        .route(
            "/api/v1/workspaces/{ws}/tokens",
            post(tokens::mint_workload),
        )
        .route("/api/v1/tokens", get(tokens::list))
        .route("/api/v1/tokens/renew", post(tokens::renew))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/api/v1/users",
            get(admin::list_users).post(admin::create_user),
        )
        .route("/api/v1/users/{name}", delete(admin::delete_user))
        .route("/api/v1/users/{name}/tokens", post(tokens::mint_user))
        .route("/api/v1/workload/secrets", get(workload::read))
        .route("/api/v1/audit", get(admin::audit))
        .route("/api/v1/admin/rotate-key", post(admin::rotate_key))
        .route("/api/v1/admin/backup", get(admin::backup))
        // The Lepton-compatible route set over the same operations.
        .route("/api/v2/workspaces/{ws}", get(lepton::base))
        .route("/api/v2/workspaces/{ws}/workspace", get(lepton::workspace))
        .route("/api/v2/workspaces/{ws}/tokens", get(lepton::tokens))
        .route(
            "/api/v2/workspaces/{ws}/usersecrets",
            get(lepton::list).post(lepton::create),
        )
        .route(
            "/api/v2/workspaces/{ws}/usersecrets/{name}",
            delete(lepton::remove),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn(web::security_headers))
        .with_state(state)
}
