//! The one door to a store. Every operation of secretfs on stored data (the server's handlers,
//! the Lepton routes, the CLI on a local store, the daemon and the launcher reading a local
//! store) is a method here, taking the [`Caller`] it acts for. The service owns:
//!
//! - the rules: who may see, use, change and delete what (`may_use`, `owner_or_admin`, admin
//!   checks, membership), decided by ids, never by names;
//! - the audit record of every action, written in the same transaction as the change (one
//!   [`crate::store::Batch`]), naming actor and target by name and by id;
//! - the change events that wake long-polls and drop caches, sent after every commit but one
//!   that only adds tokens ([`crate::store::Op::quiet`]);
//! - the caches of principals (authenticated tokens), workspace snapshots and the directory of
//!   bindings and users, valid for one generation of the change counter.
//!
//! Callers map its [`ServiceError`]s to their own vocabulary (HTTP statuses, CLI hints) and
//! hold no rules of their own.

mod accounts;
mod audit;
mod coalesce;
mod identity;
mod jwks;
mod keys;
mod secrets;
mod tokens;
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::auth::{Presented, TokenKind};
use crate::secret::{SecretName, Timestamp, Visibility};
use crate::store::{Batch, BindingRecord, SecretFilter, Store, StoredSecret, TokenFilter};

pub use crate::store::local::{LocalError, LocalPaths, OpenMode, local_user};
pub use crate::store::{
    AuditAction, AuditQuery, AuditRecord, DEFAULT_WORKSPACE, Grant, StoreError, TargetKind,
    TokenRecord, User, valid_account_name,
};
pub use accounts::{FirstAdmin, UserRemoval};
pub use audit::{FailureSource, NewAuditSettings, coalesce_problem, retention_problem};
pub use identity::{Binding, Exchange, NewBinding};
pub use secrets::{NewSecret, SecretUpdate, Written};
pub use tokens::{MintUser, MintWorkload};
pub use workload::{WorkloadAnswer, WorkloadQuery, WorkloadSecret};

/// How long an authenticated token is trusted from memory when nothing has changed since it
/// was read. Changes through this process (and, over PostgreSQL, other replicas' changes
/// announced by NOTIFY) invalidate at once; the bound covers a lost notification.
const PRINCIPAL_TTL: Duration = Duration::from_secs(1);

/// Who a request acts for, and from where (the client's address, for the audit log).
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: Who,
    pub address: String,
}

#[derive(Debug, Clone)]
pub enum Who {
    /// A user token: manages secrets, never reads a value.
    User { token: TokenRecord, user: User },
    /// A workload token: reads the values of its grants, nothing else.
    Workload { token: TokenRecord, user: User },
    /// The CLI, daemon or launcher on a local store: it holds the key file and so the store, and
    /// may do anything there; it acts (and owns what it creates) as the local user.
    Local { user: User },
}

impl Caller {
    pub fn user(&self) -> &User {
        match &self.who {
            Who::User { user, .. } | Who::Workload { user, .. } | Who::Local { user } => user,
        }
    }

    pub fn token(&self) -> Option<&TokenRecord> {
        match &self.who {
            Who::User { token, .. } | Who::Workload { token, .. } => Some(token),
            Who::Local { .. } => None,
        }
    }

    /// The caller's user if it may manage secrets (a user token or the local CLI), else 403.
    fn manager(&self) -> Result<&User, ServiceError> {
        match &self.who {
            Who::User { user, .. } | Who::Local { user } => Ok(user),
            Who::Workload { .. } => Err(ServiceError::Forbidden(
                "a workload token can only read its secrets (GET /api/v1/workload/secrets)".into(),
            )),
        }
    }

    /// The caller's user if an admin (or the local CLI), else 403.
    fn admin(&self) -> Result<&User, ServiceError> {
        let user = self.manager()?;
        if user.admin || matches!(self.who, Who::Local { .. }) {
            Ok(user)
        } else {
            Err(ServiceError::Forbidden("this needs an admin token".into()))
        }
    }

    fn local(&self) -> bool {
        matches!(self.who, Who::Local { .. })
    }

    /// The precondition every batch of this caller carries: its user still live and its token
    /// still valid when the batch commits. The local CLI answers to no token.
    fn still_valid(&self) -> Option<crate::store::Op> {
        let token = self.token()?;
        Some(crate::store::Op::ExpectActor {
            user_id: self.user().id.clone(),
            token_id: Some(token.id.clone()),
            now: Timestamp::now(),
        })
    }

    /// The audit log's name for the actor.
    fn actor_name(&self) -> String {
        match &self.who {
            Who::Workload { token, .. } => format!("workload:{}", token.id),
            _ => self.user().name.clone(),
        }
    }

    /// An audit record of this caller's action on a target.
    fn audit(
        &self,
        workspace: &str,
        action: AuditAction,
        target: (TargetKind, &str, &str),
        version: u64,
        detail: String,
    ) -> AuditRecord {
        AuditRecord {
            id: 0,
            at: Timestamp::now(),
            first_at: None,
            count: 1,
            workspace: workspace.to_owned(),
            actor: self.actor_name(),
            actor_id: self.user().id.clone(),
            action,
            target_kind: target.0,
            target: target.1.to_owned(),
            target_id: target.2.to_owned(),
            version,
            detail,
            address: self.address.clone(),
        }
    }
}

/// Whether `user` may use (list, mint tokens for, have workloads read) a secret: their own, or
/// a public one, in a workspace they belong to.
pub fn may_use(user: &User, s: &StoredSecret) -> bool {
    user.live()
        && user.workspaces.contains(&s.workspace)
        && (s.owner_id == user.id || s.meta.visibility == Visibility::Public)
}

/// Why the service refused or failed. Messages name the thing and never carry a value.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No valid token: missing, malformed, unknown, expired, revoked, or its user is gone.
    #[error(
        "missing, malformed, unknown, expired or revoked token; send \"Authorization: Bearer TOKEN\""
    )]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// Absent, or present but not for this caller's eyes: the same answer.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid {
        message: String,
        field: Option<&'static str>,
    },
    /// A workload-identity exchange refused (the reason names the check, never the token);
    /// `unavailable`: the issuer's keys could not be had, so a retry may succeed.
    #[error("{message}")]
    Refused { message: String, unavailable: bool },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    fn invalid(message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            message: message.into(),
            field: None,
        }
    }

    fn invalid_on(field: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            message: message.into(),
            field: Some(field),
        }
    }

    fn secret_not_found(name: &SecretName) -> Self {
        ServiceError::NotFound(format!("secret \"{name}\" not found"))
    }
}

/// Settings of a service.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether an admin may mint tokens for another user (and so act as them, reading their
    /// private secrets through a workload token). `serve --no-admin-impersonation` turns it off.
    pub admin_impersonation: bool,
    /// The least time between two fetches of an issuer's keys prompted by an unknown key id
    /// (`serve --jwks-refetch-interval`).
    pub jwks_refetch: Duration,
    /// Failures (authentication, identity exchanges) a client address may have answered at
    /// once before they are slowed down (`serve --failure-burst`).
    pub failure_burst: u32,
    /// How long repeated events are coalesced into one audit record, unless a workspace says
    /// (`serve --audit-coalesce`, at least 10 s).
    pub audit_coalesce: Duration,
    /// How long records of repeated events are kept, unless a workspace says (`serve
    /// --audit-retention`); records of changes are kept.
    pub audit_retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admin_impersonation: true,
            jwks_refetch: Duration::from_secs(30),
            failure_burst: 10,
            audit_coalesce: audit::DEFAULT_COALESCE,
            audit_retention: audit::DEFAULT_RETENTION,
        }
    }
}

/// An authenticated token as remembered: the caller, the hash to check, when and at which
/// generation it was read.
struct CachedPrincipal {
    who: Who,
    hash: Vec<u8>,
    at: Instant,
    generation: u64,
}

/// A workspace's rows as last read, valid while the change counter has not moved.
pub(crate) struct Snapshot {
    generation: u64,
    by_name: HashMap<SecretName, StoredSecret>,
    by_id: HashMap<String, SecretName>,
}

impl Snapshot {
    fn by_id(&self, id: &str) -> Option<&StoredSecret> {
        self.by_id.get(id).and_then(|n| self.by_name.get(n))
    }
}

/// Every binding and user, and every workspace's audit settings, as one change generation of
/// the store had them.
pub(crate) struct Directory {
    generation: u64,
    pub bindings: Vec<BindingRecord>,
    pub users: Vec<User>,
    pub audit: audit::SettingsByWorkspace,
}

/// Where workload reads' audit records go: straight into the store (one-shot commands), or to a
/// task that writes them in batches (the server).
enum ReadAudit {
    Direct,
    Batched(mpsc::Sender<AuditRecord>),
}

/// How many read records may wait for the batch writer. Past it, reads wait for the writer
/// (their records are never dropped) instead of the queue growing without bound when the store
/// writes slower than workloads read.
const READ_QUEUE: usize = 10_000;

/// The service over one store.
pub struct Service {
    vault: Arc<crate::store::Vault>,
    options: Options,
    /// The key file, for key rotation (none: rotation refused).
    key_path: Option<PathBuf>,
    /// Bumped after every committed change; long-polls and caches watch it.
    changes: watch::Sender<u64>,
    /// Set when the server begins to shut down: held long-polls answer at once (their reader
    /// polls again, elsewhere or after the restart) instead of holding the shutdown up.
    stopping: std::sync::atomic::AtomicBool,
    principals: Mutex<HashMap<String, CachedPrincipal>>,
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
    /// The bindings and users, valid for one change generation: an identity exchange reads
    /// both, and a node's mass start sends a thousand at once.
    directory: Mutex<Option<Arc<Directory>>>,
    /// One store read at a time per cache: a burst of requests that all miss waits for one
    /// load instead of sending the store a query each.
    principal_loads: tokio::sync::Mutex<()>,
    snapshot_loads: tokio::sync::Mutex<()>,
    reads: Mutex<ReadAudit>,
    /// Repeated events (reads, refusals) waiting to be written as one record.
    coalescer: Arc<Mutex<coalesce::Coalescer>>,
    metrics: Arc<crate::metrics::ServerMetrics>,
    /// Issuers' keys for workload identity.
    jwks: Box<jwks::Jwks>,
    /// Batches waiting to be committed together (`commit_grouped`).
    grouped: Box<GroupCommit>,
}

/// The batches waiting for a grouped commit, and whether one is being committed.
#[derive(Default)]
struct GroupCommit {
    queue: Mutex<Queue>,
    /// Wakes a waiter to commit what is queued once a commit ends.
    next: tokio::sync::Notify,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Grouped>,
    committing: bool,
}

impl GroupCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes one waiter if batches wait and no one commits them.
    fn wake_if_waiting(&self) {
        let queue = self.lock();
        if !queue.committing && !queue.waiting.is_empty() {
            self.next.notify_one();
        }
    }
}

/// The committer's part: given up when it is dropped.
struct Leading<'a>(&'a GroupCommit);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.lock().committing = false;
        self.0.wake_if_waiting();
    }
}

/// A batch waiting for a grouped commit, and where its result goes.
struct Grouped {
    batch: Batch,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl Service {
    pub fn new(vault: crate::store::Vault, options: Options, key_path: Option<PathBuf>) -> Self {
        let jwks = Box::new(jwks::Jwks::new(options.jwks_refetch));
        Service {
            vault: Arc::new(vault),
            options,
            key_path,
            changes: watch::channel(0).0,
            stopping: std::sync::atomic::AtomicBool::new(false),
            principals: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            directory: Mutex::new(None),
            principal_loads: tokio::sync::Mutex::new(()),
            snapshot_loads: tokio::sync::Mutex::new(()),
            reads: Mutex::new(ReadAudit::Direct),
            coalescer: Arc::new(Mutex::new(coalesce::Coalescer::new(
                audit::COALESCER_BUDGET,
            ))),
            metrics: Arc::default(),
            jwks,
            grouped: Box::default(),
        }
    }

    /// The figures `/metrics` shows.
    pub fn metrics(&self) -> &Arc<crate::metrics::ServerMetrics> {
        &self.metrics
    }

    /// Opens the local store at `paths` (the CLI, the daemon, the launcher, a server on SQLite).
    pub async fn open_local(
        paths: &LocalPaths,
        mode: OpenMode,
        connections: u32,
    ) -> Result<Service, LocalError> {
        let vault = crate::store::local::open_with(paths, mode, connections).await?;
        Ok(Service::new(
            vault,
            Options::default(),
            Some(paths.key.clone()),
        ))
    }

    /// Opens a PostgreSQL store shared by replicas, with the key file every replica shares.
    pub async fn open_postgres(
        url: &str,
        key: &Path,
        connections: u32,
    ) -> Result<Service, LocalError> {
        let store = crate::store::postgres::PgStore::open(url, connections).await?;
        let shown = store.describe();
        let vault = crate::store::local::bind_key(Arc::new(store), key, &shown, true).await?;
        Ok(Service::new(
            vault,
            Options::default(),
            Some(key.to_owned()),
        ))
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn with_options(mut self, options: Options) -> Self {
        self.jwks = Box::new(jwks::Jwks::new(options.jwks_refetch));
        self.options = options;
        self
    }

    pub fn describe(&self) -> String {
        self.store().describe()
    }

    pub fn value_limit(&self) -> crate::secret::ValueLimit {
        self.vault.value_limit()
    }

    fn store(&self) -> &dyn Store {
        self.vault.store()
    }

    /// Whether other processes change the store too (replicas): then [`Service::next_change`]
    /// wakes for their changes, and a periodic [`Service::recheck`] covers a lost notification.
    pub fn shared(&self) -> bool {
        self.store().shared()
    }

    /// Waits for a change committed by another process.
    pub async fn next_change(&self) -> Result<(), ServiceError> {
        if let Some(sent) = self.store().next_change().await? {
            let lag = Timestamp::now().nanos().saturating_sub(sent.nanos()).max(0);
            self.metrics
                .replica_lag(Duration::from_nanos(u64::try_from(lag).unwrap_or(0)));
        }
        Ok(())
    }

    /// Whether the store answers (readiness).
    pub async fn ready(&self) -> Result<(), ServiceError> {
        self.metrics
            .store("ready", self.store().key_check())
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.vault.close().await;
    }

    // --- change events ---

    /// Sent after every committed change: wakes long-polls, drops cached principals and
    /// snapshots.
    fn changed(&self) {
        // Under the cache's lock: a load that began before this change cannot insert what it
        // read after the cache was cleared (it checks the generation under the same lock).
        let mut principals = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        principals.clear();
        *self.directory.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.changed();
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Another process changed the store (a replica's NOTIFY).
    pub fn changed_elsewhere(&self) {
        self.changed();
    }

    /// Wakes long-polls to look again, without dropping cached principals: the periodic
    /// re-check of replicas, which has no change to report.
    pub fn recheck(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The server is shutting down: every held long-poll answers now with what it has, and none
    /// is held from here on.
    pub fn stop_waiting(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.recheck();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Applies a batch for `caller` (who must still be valid when it commits) and announces it.
    async fn commit(&self, caller: &Caller, mut batch: Batch) -> Result<(), ServiceError> {
        if let Some(op) = caller.still_valid() {
            batch.ops.insert(0, op);
        }
        self.commit_unchecked(batch).await
    }

    /// Applies a batch no caller stands behind (`serve --init`, the local user's creation).
    async fn commit_unchecked(&self, batch: Batch) -> Result<(), ServiceError> {
        self.metrics
            .store("commit", self.store().apply(&batch))
            .await
            .map_err(gone)?;
        self.changed();
        Ok(())
    }

    /// Like `commit_unchecked`, for batches that come many at once (identity exchanges at a
    /// node's mass start): a batch that arrives while a commit runs waits for it, and then one
    /// of the waiters commits every waiting batch in one transaction, each on its own
    /// savepoint (a batch that fails alone fails alone).
    ///
    /// Only a waiter whose batch is still queued needs to act, and one does per commit: an
    /// earlier version made every caller take a turn in order, which at 1,000 exchanges cost
    /// a thousand task hand-offs between two worker threads, and a batch waited up to 660 ms
    /// for the turn (15 ms for the commit itself; BENCHMARKS.md, "The node agent").
    async fn commit_grouped(&self, batch: Batch) -> Result<(), ServiceError> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        let grouped = &self.grouped;
        grouped.lock().waiting.push(Grouped { batch, done });
        loop {
            let lead = {
                let mut queue = grouped.lock();
                if queue.committing || queue.waiting.is_empty() {
                    None
                } else {
                    queue.committing = true;
                    Some(std::mem::take(&mut queue.waiting))
                }
            };
            if let Some(waiting) = lead {
                // Released however this ends (a cancelled request included): the next commit
                // is then a waiter's.
                let _leading = Leading(grouped);
                self.commit_waiting(waiting).await;
            }
            tokio::select! {
                biased;
                r = &mut result => {
                    // A hand-off this task took while its own answer came: passed on.
                    grouped.wake_if_waiting();
                    return match r {
                        Ok(r) => r.map_err(gone),
                        // Dropped unanswered: the committer's task was cancelled mid-commit.
                        Err(_) => Err(ServiceError::Store(StoreError::Unavailable(
                            "the commit was interrupted; try again".into(),
                        ))),
                    };
                }
                _ = grouped.next.notified() => {}
            }
        }
    }

    /// Commits `waiting` in one transaction and answers each.
    async fn commit_waiting(&self, waiting: Vec<Grouped>) {
        let batches: Vec<Batch> = waiting.iter().map(|g| g.batch.clone()).collect();
        let store = self.store();
        let results = self
            .metrics
            .store("commit", async {
                Ok::<_, StoreError>(store.apply_each(&batches).await)
            })
            .await
            .unwrap_or_default();
        let announce = waiting
            .iter()
            .zip(&results)
            .any(|(g, r)| r.is_ok() && !g.batch.quiet());
        if announce {
            self.changed();
        }
        for (g, r) in waiting.into_iter().zip(results) {
            let _ = g.done.send(r);
        }
    }

    /// Applies a batch of sealed writes for `caller` (rebuilt once if the key was rotated
    /// meanwhile) and announces it.
    async fn commit_sealed(
        &self,
        caller: &Caller,
        mut rebuild: impl FnMut() -> Result<Batch, StoreError>,
    ) -> Result<(), ServiceError> {
        let check = caller.still_valid();
        let apply = self.vault.apply_sealed(|| {
            let mut batch = rebuild()?;
            if let Some(op) = &check {
                batch.ops.insert(0, op.clone());
            }
            Ok(batch)
        });
        self.metrics.store("commit", apply).await.map_err(gone)?;
        self.changed();
        Ok(())
    }

    // --- caches ---

    /// The rows of `workspace`, from memory while nothing has changed.
    async fn snapshot(&self, workspace: &str) -> Result<Arc<Snapshot>, ServiceError> {
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
        let rows = self
            .metrics
            .store(
                "load_secrets",
                self.store().secrets(SecretFilter::Workspace(workspace)),
            )
            .await?;
        let snap = Arc::new(Snapshot {
            generation,
            by_id: rows
                .iter()
                .map(|r| (r.id.clone(), r.meta.name.clone()))
                .collect(),
            by_name: rows.into_iter().map(|r| (r.meta.name.clone(), r)).collect(),
        });
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workspace.to_owned(), snap.clone());
        Ok(snap)
    }

    /// The bindings and users, from memory while nothing has changed. Read without a load
    /// lock: both are small, and a burst that misses together reads them a few times at most.
    async fn directory(&self) -> Result<Arc<Directory>, ServiceError> {
        let generation = self.generation();
        if let Some(d) = self
            .directory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|d| d.generation == generation)
        {
            return Ok(d.clone());
        }
        let bindings = self.store().bindings().await?;
        let users = self
            .metrics
            .store("load_users", self.store().users())
            .await?;
        let audit = self
            .store()
            .audit_settings()
            .await?
            .into_iter()
            .map(|s| (s.workspace.clone(), s))
            .collect();
        let d = Arc::new(Directory {
            generation,
            bindings,
            users,
            audit,
        });
        // Under the cache's lock, as for principals: what was read across a change is used
        // for this request only.
        let mut cache = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation() == generation {
            *cache = Some(d.clone());
        }
        Ok(d)
    }

    /// Reads a token and its user from the store, checks they are still valid, and caches them.
    async fn load_principal(&self, id: &str) -> Result<Option<(Who, Vec<u8>)>, ServiceError> {
        let generation = self.generation();
        let forget = || {
            self.principals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        };
        let tokens = self.store().tokens(TokenFilter::Id(id));
        let Some(token) = self.metrics.store("load_token", tokens).await?.pop() else {
            forget();
            return Ok(None);
        };
        let Some(user) = self
            .directory()
            .await?
            .users
            .iter()
            .find(|u| u.id == token.user_id && u.live())
            .cloned()
        else {
            forget();
            return Ok(None);
        };
        let hash = token.hash.clone();
        let who = match token.kind {
            TokenKind::User => Who::User { token, user },
            TokenKind::Workload => Who::Workload { token, user },
        };
        let mut principals = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            // Something changed while this was read (a revocation, a removed user): it may be
            // stale. Answer this request with it, but do not remember it.
            return Ok(Some((who, hash)));
        }
        principals.insert(
            id.to_owned(),
            CachedPrincipal {
                who: who.clone(),
                hash: hash.clone(),
                at: Instant::now(),
                generation,
            },
        );
        Ok(Some((who, hash)))
    }

    /// The caller a bearer token stands for, or `Unauthorized` (recorded in the audit,
    /// coalesced per address and reason).
    pub async fn authenticate(&self, bearer: &str, address: &str) -> Result<Caller, ServiceError> {
        match self.check_credential(bearer, address).await? {
            Ok(caller) => Ok(caller),
            Err((why, token)) => {
                self.record_auth_failure(address, why, token.as_ref()).await;
                Err(ServiceError::Unauthorized)
            }
        }
    }

    /// The caller a bearer token stands for, or why it was refused (and the token it named,
    /// when it names a real one).
    async fn check_credential(
        &self,
        bearer: &str,
        address: &str,
    ) -> Result<Result<Caller, (audit::AuthFailure, Option<TokenRecord>)>, ServiceError> {
        use audit::AuthFailure;
        let Some(presented) = Presented::parse(bearer.trim()) else {
            return Ok(Err((AuthFailure::Malformed, None)));
        };
        let lookup = || {
            self.principals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&presented.id)
                .map(|c| (c.who.clone(), c.hash.clone(), c.at))
        };
        let found = match lookup() {
            Some((who, hash, at)) if at.elapsed() < PRINCIPAL_TTL => Some((who, hash)),
            // Past its time but not invalidated (a change would have removed it): one request
            // reloads it while the others go on with it, so an expiry never stalls a burst.
            Some((who, hash, at)) if at.elapsed() < PRINCIPAL_TTL * 5 => {
                match self.principal_loads.try_lock() {
                    Ok(_load) => self.load_principal(&presented.id).await?,
                    Err(_) => Some((who, hash)),
                }
            }
            _ => {
                let _load = self.principal_loads.lock().await;
                match lookup().filter(|(_, _, at)| at.elapsed() < PRINCIPAL_TTL) {
                    Some((who, hash, _)) => Some((who, hash)),
                    None => self.load_principal(&presented.id).await?,
                }
            }
        };
        let Some((who, hash)) = found else {
            return Ok(Err((AuthFailure::Unknown, None)));
        };
        let caller = Caller {
            who,
            address: address.to_owned(),
        };
        let token = caller.token().expect("a token caller");
        let why = if !presented.matches(&hash) {
            AuthFailure::WrongSecret
        } else if token.kind != presented.kind {
            AuthFailure::WrongKind
        } else if token.revoked_at.is_some() {
            AuthFailure::Revoked
        } else if !token_valid(token, Timestamp::now()) {
            AuthFailure::Expired
        } else {
            return Ok(Ok(caller));
        };
        Ok(Err((why, Some(token.clone()))))
    }

    /// The caller again, as the store has it now: what a held long-poll checks before it
    /// answers. `Unauthorized` once the token is revoked, expired or its user deleted. Read at
    /// most once per change generation per token (a thousand polls on one token wake on one
    /// store read).
    async fn revalidate(&self, caller: &Caller) -> Result<Caller, ServiceError> {
        let Some(token) = caller.token() else {
            return Ok(caller.clone());
        };
        let generation = self.generation();
        let cached = || {
            self.principals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&token.id)
                .filter(|c| c.generation == generation)
                .map(|c| c.who.clone())
        };
        let who = match cached() {
            Some(who) => who,
            None => {
                let _load = self.principal_loads.lock().await;
                match cached() {
                    Some(who) => who,
                    None => {
                        self.load_principal(&token.id)
                            .await?
                            .ok_or(ServiceError::Unauthorized)?
                            .0
                    }
                }
            }
        };
        let fresh = Caller {
            who,
            address: caller.address.clone(),
        };
        let t = fresh.token().expect("a token caller");
        if t.kind != token.kind || !token_valid(t, Timestamp::now()) {
            return Err(ServiceError::Unauthorized);
        }
        Ok(fresh)
    }

    /// The local CLI's caller on a local store: the local user, created (a member of the
    /// default workspace) the first time it changes something when `create` is set.
    pub async fn local_caller(&self, create: bool) -> Result<Caller, ServiceError> {
        let name = local_user();
        let users = self.store().users().await?;
        let user = match users.into_iter().find(|u| u.live() && u.name == name) {
            Some(u) => u,
            None if create => self.add_local_user(&name).await?,
            // Reading needs no account: an id no row has owns nothing.
            None => User {
                id: String::new(),
                name,
                admin: false,
                created_at: Timestamp::now(),
                deleted_at: None,
                workspaces: vec![DEFAULT_WORKSPACE.to_owned()],
            },
        };
        Ok(Caller {
            who: Who::Local { user },
            address: String::new(),
        })
    }
}

/// A caller whose token or user went away before its batch committed is a caller without a
/// valid token.
fn gone(e: StoreError) -> ServiceError {
    match e {
        StoreError::ActorGone => ServiceError::Unauthorized,
        other => ServiceError::Store(other),
    }
}

/// Whether a token may act now: not revoked, not expired.
fn token_valid(token: &TokenRecord, now: Timestamp) -> bool {
    token.revoked_at.is_none() && token.expires_at.is_none_or(|e| e > now)
}
