//! The scale-out store: PostgreSQL through sqlx (pure Rust, rustls), shared by any number of
//! stateless `secretfs serve` replicas.
//!
//! Migrations run at start under a transaction-scoped advisory lock, so replicas starting at
//! once apply each exactly once. Every committed change also sends `NOTIFY secretfs_changes`
//! (delivered at commit), which every replica listens to: that is how a long-poll held by one
//! replica learns of an update made through another.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Mutex;

use super::rows::{
    Columns, META_COLUMNS, TOKEN_COLUMNS, audit_from_row, is_unique_violation, meta_from_row,
    stored_from_row, tags_json, token_from_row, user_from_row, version_i64,
};
use super::{AuditRecord, Change, Store, StoreError, StoredSecret, TokenRecord, User, WriteFence};
use crate::secret::{SecretMeta, SecretName, Timestamp};

/// The key of the advisory lock migrations run under ("SFS" + 1).
const MIGRATION_LOCK: i64 = 0x5346_5301;
/// The channel replicas tell each other about changes on.
const CHANNEL: &str = "secretfs_changes";

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE workspaces (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE secrets (
        workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        visibility TEXT NOT NULL CHECK (visibility IN ('private', 'public')),
        owner TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        version BIGINT NOT NULL CHECK (version >= 1),
        sealed BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (workspace, name)
    );
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        workspace TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        secret TEXT NOT NULL,
        version BIGINT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_by_workspace ON audit (workspace, id);
    CREATE INDEX audit_by_at ON audit (at);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE members (
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
        PRIMARY KEY (user_name, workspace)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash BYTEA NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'workload')),
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        workspace TEXT,
        secrets TEXT NOT NULL DEFAULT '[]',
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        max_expires_at BIGINT,
        ttl_secs BIGINT,
        revoked_at BIGINT,
        description TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO workspaces (name, created_at) VALUES ('default', 0);",
)];

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: PgPool,
    /// Shown in logs with the password removed.
    shown: String,
    listener: Mutex<Option<PgListener>>,
    fence: WriteFence,
}

/// `postgres://user:password@host/db` without the password, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl PgStore {
    /// Connects to `url` with up to `connections` connections and applies the migrations.
    pub async fn open(url: &str, connections: u32) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
            StoreError::Invalid(format!("bad database URL {shown}: {e}"))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(2))
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Unavailable(msg) | StoreError::Internal(msg) => {
                    StoreError::Unavailable(format!("cannot connect to {shown}: {msg}"))
                }
                other => other,
            })?;
        let store = PgStore {
            pool,
            shown,
            listener: Mutex::new(None),
            fence: WriteFence::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let ours: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = current_schema() AND table_name = 'secretfs_migrations')",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if !ours {
            let foreign: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                                WHERE table_schema = current_schema() AND table_name = 'secrets')",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if foreign {
                return Err(StoreError::NotAStore(format!(
                    "{} already has a \"secrets\" table that secretfs did not create; use a \
                     database (or schema) of its own",
                    self.shown
                )));
            }
            sqlx::raw_sql(
                "CREATE TABLE secretfs_migrations (
                     version BIGINT PRIMARY KEY,
                     applied_at BIGINT NOT NULL
                 )",
            )
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        let current: i64 =
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM secretfs_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > newest {
            return Err(StoreError::NotAStore(format!(
                "{} has schema version {current}, newer than this secretfs understands \
                 ({newest}); upgrade secretfs",
                self.shown
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            sqlx::query("INSERT INTO secretfs_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(Timestamp::now().nanos())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

/// Maps a sqlx error to the store's vocabulary (SQLSTATE classes: 08 connection, 53 resources,
/// 57P admin shutdown).
fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                "53100" => StoreError::OutOfSpace,
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    StoreError::Unavailable(db.message().into())
                }
                _ => StoreError::Internal(db.message().into()),
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// Tells every replica, at commit, that `workspace` changed.
async fn notify(tx: &mut Tx<'_>, workspace: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(workspace)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn insert_audits(tx: &mut Tx<'_>, audits: &[AuditRecord]) -> Result<(), StoreError> {
    for chunk in audits.chunks(500) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO audit (at, workspace, actor, action, secret, version, detail, address) ",
        );
        let mut bad_version = None;
        q.push_values(chunk, |mut row, a| {
            let version = i64::try_from(a.version).unwrap_or_else(|_| {
                bad_version = Some(a.version);
                0
            });
            row.push_bind(a.at.nanos())
                .push_bind(&a.workspace)
                .push_bind(&a.actor)
                .push_bind(a.action.as_str())
                .push_bind(&a.secret)
                .push_bind(version)
                .push_bind(&a.detail)
                .push_bind(&a.address);
        });
        if let Some(v) = bad_version {
            return Err(StoreError::Invalid(format!("version {v} is out of range")));
        }
        // Not cached: each batch size is its own statement.
        q.build()
            .persistent(false)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// One row of COPY's text format: tab-separated, with `\\`, tab, newline and carriage return
/// escaped.
fn copy_row(out: &mut Vec<u8>, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        for b in field.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
    }
    out.push(b'\n');
}

impl PgStore {
    /// A transaction that has checked the write fence and holds a share lock on the key check
    /// until it commits: a rotation's key-check update waits for it, so its re-sealing scan,
    /// which starts after that update, sees what this transaction wrote.
    async fn begin_sealed_write(&self) -> Result<Tx<'static>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'key_check' FOR SHARE")
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        self.fence.admits(stored.as_deref())?;
        Ok(tx)
    }
}

async fn insert_secret(
    tx: &mut Tx<'_>,
    workspace: &str,
    secret: &StoredSecret,
    audit: &AuditRecord,
) -> Result<(), StoreError> {
    let m = &secret.meta;
    let inserted = sqlx::query(
        "INSERT INTO secrets (workspace, name, id, kind, visibility, owner, tags, version,
                              sealed, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(workspace)
    .bind(m.name.as_str())
    .bind(&secret.id)
    .bind(m.kind.as_str())
    .bind(m.visibility.as_str())
    .bind(&m.owner)
    .bind(tags_json(&m.tags))
    .bind(version_i64(m.version)?)
    .bind(&secret.sealed)
    .bind(m.created_at.nanos())
    .bind(m.updated_at.nanos())
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(StoreError::AlreadyExists(m.name.clone())),
        Err(e) if is_fk_violation(&e) => {
            return Err(StoreError::WorkspaceNotFound(workspace.to_owned()));
        }
        Err(e) => return Err(map_err(e)),
    }
    insert_audits(tx, std::slice::from_ref(audit)).await
}

async fn insert_member(tx: &mut Tx<'_>, user: &str, workspace: &str) -> Result<(), StoreError> {
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM workspaces WHERE name = $1")
        .bind(workspace)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    if known.is_none() {
        return Err(StoreError::WorkspaceNotFound(workspace.to_owned()));
    }
    sqlx::query(
        "INSERT INTO members (user_name, workspace) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(workspace)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_fk_violation(&e) {
            StoreError::UserNotFound(user.to_owned())
        } else {
            map_err(e)
        }
    })?;
    Ok(())
}

async fn insert_token(tx: &mut Tx<'_>, t: &TokenRecord) -> Result<(), StoreError> {
    let names: Vec<&str> = t.secrets.iter().map(|n| n.as_str()).collect();
    sqlx::query(
        "INSERT INTO tokens (id, hash, kind, user_name, workspace, secrets, created_at,
                             expires_at, max_expires_at, ttl_secs, revoked_at, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&t.id)
    .bind(&t.hash)
    .bind(t.kind.as_str())
    .bind(&t.user)
    .bind(&t.workspace)
    .bind(serde_json::to_string(&names).expect("names serialize"))
    .bind(t.created_at.nanos())
    .bind(t.expires_at.map(Timestamp::nanos))
    .bind(t.max_expires_at.map(Timestamp::nanos))
    .bind(t.ttl_secs.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    .bind(t.revoked_at.map(Timestamp::nanos))
    .bind(&t.description)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_fk_violation(&e) {
            StoreError::UserNotFound(t.user.clone())
        } else {
            map_err(e)
        }
    })?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn describe(&self) -> String {
        format!("postgres:{}", self.shown)
    }

    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'key_check'")
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn set_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ('key_check', $1)")
            .bind(sealed)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn replace_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ('key_check', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(sealed)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    fn set_write_fence(&self, key_check: Vec<u8>) {
        self.fence.set(key_check);
    }

    async fn reseal(
        &self,
        workspace: &str,
        name: &SecretName,
        version: u64,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE secrets SET sealed = $1 WHERE workspace = $2 AND name = $3 AND version = $4",
        )
        .bind(sealed)
        .bind(workspace)
        .bind(name.as_str())
        .bind(version_i64(version)?)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::VersionConflict(name.clone()));
        }
        notify(&mut tx, workspace).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn list(&self, workspace: &str) -> Result<Vec<SecretMeta>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS} FROM secrets WHERE workspace = $1 ORDER BY name"
        )))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(meta_from_row).collect()
    }

    async fn get(&self, workspace: &str, name: &SecretName) -> Result<StoredSecret, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS}, id, sealed FROM secrets WHERE workspace = $1 AND name = $2"
        )))
        .bind(workspace)
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(name.clone()))?;
        stored_from_row(&row)
    }

    async fn get_many(
        &self,
        workspace: &str,
        names: &[SecretName],
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS}, id, sealed FROM secrets WHERE workspace = $1 AND name = ANY($2)"
        )))
        .bind(workspace)
        .bind(&list)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn get_all(&self, workspace: &str) -> Result<Vec<StoredSecret>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS}, id, sealed FROM secrets WHERE workspace = $1 ORDER BY name"
        )))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn insert(
        &self,
        workspace: &str,
        secret: &StoredSecret,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_sealed_write().await?;
        insert_secret(&mut tx, workspace, secret, audit).await?;
        notify(&mut tx, workspace).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_many(
        &self,
        workspace: &str,
        secrets: &[(StoredSecret, AuditRecord)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_sealed_write().await?;
        for (secret, audit) in secrets {
            insert_secret(&mut tx, workspace, secret, audit).await?;
        }
        notify(&mut tx, workspace).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn update(
        &self,
        workspace: &str,
        name: &SecretName,
        expected_version: u64,
        change: &Change,
        at: Timestamp,
        audit: &AuditRecord,
    ) -> Result<SecretMeta, StoreError> {
        let new_version = expected_version + u64::from(change.sealed.is_some());
        let mut tx = if change.sealed.is_some() {
            self.begin_sealed_write().await?
        } else {
            self.pool.begin().await.map_err(map_err)?
        };
        // Compare-and-swap on the version, as in SQLite: a concurrent writer makes it match no
        // row, and the vault retries from a fresh read.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE secrets SET
                sealed = coalesce($1, sealed),
                version = $2,
                updated_at = CASE WHEN $1 IS NULL THEN updated_at ELSE $3 END,
                visibility = coalesce($4, visibility),
                tags = coalesce($5, tags),
                kind = coalesce($6, kind)
             WHERE workspace = $7 AND name = $8 AND version = $9
             RETURNING {META_COLUMNS}"
        )))
        .bind(change.sealed.as_deref())
        .bind(version_i64(new_version)?)
        .bind(at.nanos())
        .bind(change.visibility.map(|v| v.as_str()))
        .bind(change.tags.as_deref().map(tags_json))
        .bind(change.kind.map(|k| k.as_str()))
        .bind(workspace)
        .bind(name.as_str())
        .bind(version_i64(expected_version)?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM secrets WHERE workspace = $1 AND name = $2")
                    .bind(workspace)
                    .bind(name.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
            return Err(match exists {
                Some(_) => StoreError::VersionConflict(name.clone()),
                None => StoreError::NotFound(name.clone()),
            });
        };
        let meta = meta_from_row(&row)?;
        insert_audits(&mut tx, std::slice::from_ref(audit)).await?;
        notify(&mut tx, workspace).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(meta)
    }

    async fn delete(
        &self,
        workspace: &str,
        name: &SecretName,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let deleted = sqlx::query("DELETE FROM secrets WHERE workspace = $1 AND name = $2")
            .bind(workspace)
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.clone()));
        }
        insert_audits(&mut tx, std::slice::from_ref(audit)).await?;
        notify(&mut tx, workspace).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn record(&self, audits: &[AuditRecord]) -> Result<(), StoreError> {
        // Workload reads arrive by the ten thousand a second: COPY costs PostgreSQL a fraction
        // of the CPU of INSERTs, which matters when replicas share its cores.
        use sqlx::postgres::PgPoolCopyExt;
        if audits.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(audits.len() * 96);
        for a in audits {
            let version = version_i64(a.version)?;
            copy_row(
                &mut data,
                &[
                    &a.at.nanos().to_string(),
                    &a.workspace,
                    &a.actor,
                    a.action.as_str(),
                    &a.secret,
                    &version.to_string(),
                    &a.detail,
                    &a.address,
                ],
            );
        }
        let mut copy = self
            .pool
            .copy_in_raw(
                "COPY audit (at, workspace, actor, action, secret, version, detail, address) \
                 FROM STDIN",
            )
            .await
            .map_err(map_err)?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("send failed").await;
            return Err(map_err(e));
        }
        copy.finish().await.map_err(map_err)?;
        Ok(())
    }

    async fn create_workspace(&self, name: &str, at: Timestamp) -> Result<(), StoreError> {
        match sqlx::query("INSERT INTO workspaces (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(at.nanos())
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::WorkspaceExists(name.to_owned())),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn workspaces(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT name FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn create_user(
        &self,
        user: &User,
        token: Option<&TokenRecord>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        match sqlx::query("INSERT INTO users (name, admin, created_at) VALUES ($1, $2, $3)")
            .bind(&user.name)
            .bind(user.admin)
            .bind(user.created_at.nanos())
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::UserExists(user.name.clone()));
            }
            Err(e) => return Err(map_err(e)),
        }
        for ws in &user.workspaces {
            insert_member(&mut tx, &user.name, ws).await?;
        }
        if let Some(t) = token {
            insert_token(&mut tx, t).await?;
        }
        notify(&mut tx, "").await?;
        tx.commit().await.map_err(map_err)
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT name, admin, created_at FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let members: Vec<(String, String)> =
            sqlx::query_as("SELECT user_name, workspace FROM members ORDER BY workspace")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let name = row.text("name")?;
                let ws = members
                    .iter()
                    .filter(|(u, _)| *u == name)
                    .map(|(_, w)| w.clone())
                    .collect();
                user_from_row(row, ws)
            })
            .collect()
    }

    async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let Some(row) = sqlx::query("SELECT name, admin, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let workspaces: Vec<String> = sqlx::query_scalar(
            "SELECT workspace FROM members WHERE user_name = $1 ORDER BY workspace",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        user_from_row(&row, workspaces).map(Some)
    }

    async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UserNotFound(name.to_owned()));
        }
        notify(&mut tx, "").await?;
        tx.commit().await.map_err(map_err)
    }

    async fn add_member(&self, user: &str, workspace: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        insert_member(&mut tx, user, workspace).await?;
        notify(&mut tx, workspace).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        insert_token(&mut tx, token).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE $1::TEXT IS NULL OR user_name = $1
             ORDER BY created_at"
        )))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn set_token_expiry(&self, id: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query("UPDATE tokens SET expires_at = $1 WHERE id = $2")
            .bind(expires_at.nanos())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(id.to_owned()));
        }
        notify(&mut tx, "").await?;
        tx.commit().await.map_err(map_err)
    }

    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2")
                .bind(at.nanos())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(id.to_owned()));
        }
        notify(&mut tx, "").await?;
        tx.commit().await.map_err(map_err)
    }

    async fn audit_log(&self, workspace: &str, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, workspace, actor, action, secret, version, detail, address FROM audit
             WHERE workspace = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(workspace)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut out = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    async fn audit_since(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, workspace, actor, action, secret, version, detail, address FROM audit
             WHERE at >= $1 ORDER BY id LIMIT $2",
        )
        .bind(since.nanos())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn shared(&self) -> bool {
        true
    }

    async fn next_change(&self) -> Result<(), StoreError> {
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            let mut listener = PgListener::connect_with(&self.pool)
                .await
                .map_err(map_err)?;
            listener.listen(CHANNEL).await.map_err(map_err)?;
            *guard = Some(listener);
        }
        let listener = guard.as_mut().expect("set above");
        match listener.recv().await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Listen again from a new connection next time.
                *guard = None;
                Err(map_err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn copy_rows_escape_separators() {
        let mut out = Vec::new();
        super::copy_row(&mut out, &["a\tb", "c\\d", "e\nf", "plain"]);
        assert_eq!(out, b"a\\tb\tc\\\\d\te\\nf\tplain\n");
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
