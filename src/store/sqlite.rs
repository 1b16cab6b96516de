//! The embedded store: one SQLite file (WAL, `synchronous=FULL`, `secure_delete`), through sqlx
//! with SQLite bundled.
//!
//! The file is marked with an `application_id`, so a foreign SQLite database is refused instead of
//! being written into, and schema changes are numbered migrations applied at open under
//! `BEGIN IMMEDIATE`, so two processes opening a new store at once cannot both initialise it.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::rows::{
    Columns, META_COLUMNS, TOKEN_COLUMNS, audit_from_row, is_unique_violation, meta_from_row,
    stored_from_row, tags_json, token_from_row, user_from_row, version_i64,
};
use super::{AuditRecord, Change, Store, StoreError, StoredSecret, TokenRecord, User, WriteFence};
use crate::secret::{SecretMeta, SecretName, Timestamp};

/// `PRAGMA application_id` of a secretfs store: "SFS1".
const APPLICATION_ID: i64 = 0x5346_5331;

/// Numbered schema migrations, applied in order, each once. Never edit a released one: add.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE workspaces (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE secrets (
        workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        visibility TEXT NOT NULL CHECK (visibility IN ('private', 'public')),
        owner TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        version INTEGER NOT NULL CHECK (version >= 1),
        sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (workspace, name)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        workspace TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        secret TEXT NOT NULL,
        version INTEGER NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_by_workspace ON audit (workspace, id);
    INSERT INTO workspaces (name, created_at) VALUES ('default', 0);",
    ),
    (
        2,
        "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
        PRIMARY KEY (user_name, workspace)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash BLOB NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'workload')),
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        workspace TEXT,
        secrets TEXT NOT NULL DEFAULT '[]',
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        max_expires_at INTEGER,
        ttl_secs INTEGER,
        revoked_at INTEGER,
        description TEXT NOT NULL DEFAULT ''
    );
    ALTER TABLE audit ADD COLUMN address TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_by_at ON audit (at);",
    ),
];

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    fence: WriteFence,
}

impl SqliteStore {
    /// Opens the store at `path`, creating and initialising it when `create` is set and the file
    /// does not exist. Refuses files that are not SQLite, or are another application's database.
    pub async fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        Self::open_with(path, create, 4).await
    }

    /// Like [`SqliteStore::open`] with at most `connections` connections (each is a thread
    /// and a page cache: a daemon that reads rarely needs one).
    pub async fn open_with(
        path: &Path,
        create: bool,
        connections: u32,
    ) -> Result<Self, StoreError> {
        let shown = path.display();
        if create {
            // Create the file ourselves so it starts life 0600; SQLite gives its -wal and -shm
            // files the same mode as the database.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot create store \"{shown}\": {e}"
                    )));
                }
            }
        } else if !path.exists() {
            return Err(StoreError::Unavailable(format!(
                "store \"{shown}\" does not exist"
            )));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("secure_delete", "ON");
        // Two processes opening a new store at once can find it locked while the other one
        // switches it to WAL (SQLite does not wait on that lock): retry for a few seconds.
        let mut attempt = 0;
        loop {
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(connections.max(1))
                    .min_connections(0)
                    .connect_with(options.clone())
                    .await
                    .map_err(|e| open_error(path, e))?;
                let store = SqliteStore {
                    pool,
                    path: path.to_owned(),
                    fence: WriteFence::default(),
                };
                store.migrate().await?;
                Ok::<_, StoreError>(store)
            }
            .await;
            match opened {
                Ok(store) => return Ok(store),
                Err(StoreError::Unavailable(msg)) if msg.contains("locked") && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(StoreError::Internal(msg)) => {
                    return Err(StoreError::NotAStore(format!(
                        "store \"{shown}\" cannot be opened: {msg}"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let shown = self.path.display();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| open_error(&self.path, e))?;
        let app_id: i64 = sqlx::query_scalar("PRAGMA application_id")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| open_error(&self.path, e))?;
        let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if app_id != APPLICATION_ID {
            if app_id != 0 || tables != 0 {
                return Err(StoreError::NotAStore(format!(
                    "\"{shown}\" is not a secretfs store: it is another application's SQLite \
                     database; point --store at a secretfs store or a new file"
                )));
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA application_id = {APPLICATION_ID};
                 CREATE TABLE schema_migrations (
                     version INTEGER PRIMARY KEY,
                     applied_at INTEGER NOT NULL
                 );"
            )))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        let current: i64 =
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > newest {
            return Err(StoreError::NotAStore(format!(
                "store \"{shown}\" has schema version {current}, newer than this secretfs \
                 understands ({newest}); upgrade secretfs"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(Timestamp::now().nanos())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }
}

/// Maps errors met while opening, where "not a database" means the file is not a store.
fn open_error(path: &Path, e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
        match code & 0xff {
            26 | 11 => {
                return StoreError::NotAStore(format!(
                    "\"{}\" is not a secretfs store (not an SQLite database, or corrupt); point \
                     --store at a secretfs store or a new file",
                    path.display()
                ));
            }
            _ => {}
        }
    }
    match map_err(e) {
        StoreError::Internal(msg) => {
            StoreError::Unavailable(format!("cannot open store \"{}\": {msg}", path.display()))
        }
        other => other,
    }
}

/// Maps a sqlx error to the store's vocabulary. SQLite error texts name tables and constraints,
/// never bound values, so they are safe to carry.
fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            match code & 0xff {
                13 => StoreError::OutOfSpace,                          // SQLITE_FULL
                5 | 6 => StoreError::Unavailable(db.message().into()), // BUSY, LOCKED
                8 | 10 | 14 => StoreError::Unavailable(db.message().into()), // READONLY, IOERR, CANTOPEN
                26 | 11 => {
                    StoreError::NotAStore(format!("the store file is damaged: {}", db.message()))
                }
                _ => StoreError::Internal(db.message().into()),
            }
        }
        sqlx::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => StoreError::OutOfSpace,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

async fn insert_token<'c, E>(exec: E, t: &TokenRecord) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let names: Vec<&str> = t.secrets.iter().map(|n| n.as_str()).collect();
    sqlx::query(
        "INSERT INTO tokens (id, hash, kind, user_name, workspace, secrets, created_at,
                             expires_at, max_expires_at, ttl_secs, revoked_at, description)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .execute(exec)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {
            StoreError::UserNotFound(t.user.clone())
        }
        _ => map_err(e),
    })?;
    Ok(())
}

/// Inserts one secret and its audit record inside `tx`.
impl SqliteStore {
    /// A write transaction that holds SQLite's write lock from its first statement and has
    /// checked the write fence: no key rotation can commit between the check and the write.
    async fn begin_sealed_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'key_check'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        self.fence.admits(stored.as_deref())?;
        Ok(tx)
    }
}

async fn insert_secret(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    workspace: &str,
    secret: &StoredSecret,
    audit: &AuditRecord,
) -> Result<(), StoreError> {
    let m = &secret.meta;
    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM workspaces WHERE name = ?")
        .bind(workspace)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    if known.is_none() {
        return Err(StoreError::WorkspaceNotFound(workspace.to_owned()));
    }
    let inserted = sqlx::query(
        "INSERT INTO secrets (workspace, name, id, kind, visibility, owner, tags, version,
                              sealed, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::AlreadyExists(m.name.clone()));
        }
        Err(e) => return Err(map_err(e)),
    }
    insert_audit(&mut **tx, audit).await
}

async fn insert_member(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    user: &str,
    workspace: &str,
) -> Result<(), StoreError> {
    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM workspaces WHERE name = ?")
        .bind(workspace)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    if known.is_none() {
        return Err(StoreError::WorkspaceNotFound(workspace.to_owned()));
    }
    sqlx::query("INSERT OR IGNORE INTO members (user_name, workspace) VALUES (?, ?)")
        .bind(user)
        .bind(workspace)
        .execute(&mut **tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db)
                if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation =>
            {
                StoreError::UserNotFound(user.to_owned())
            }
            _ => map_err(e),
        })?;
    Ok(())
}

async fn insert_audit<'c, E>(exec: E, a: &AuditRecord) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO audit (at, workspace, actor, action, secret, version, detail, address)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.at.nanos())
    .bind(&a.workspace)
    .bind(&a.actor)
    .bind(a.action.as_str())
    .bind(&a.secret)
    .bind(version_i64(a.version)?)
    .bind(&a.detail)
    .bind(&a.address)
    .execute(exec)
    .await
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'key_check'")
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn set_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ('key_check', ?)")
            .bind(sealed)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn replace_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO settings (key, value) VALUES ('key_check', ?)")
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
        let done = sqlx::query(
            "UPDATE secrets SET sealed = ? WHERE workspace = ? AND name = ? AND version = ?",
        )
        .bind(sealed)
        .bind(workspace)
        .bind(name.as_str())
        .bind(version_i64(version)?)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::VersionConflict(name.clone()));
        }
        Ok(())
    }

    async fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        // Created empty, 0600 and exclusively before SQLite writes into it: the copy is never
        // readable by others, not even for a moment, and an existing file is never replaced.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => StoreError::Invalid(format!(
                    "backup target \"{}\" already exists; choose a new file",
                    path.display()
                )),
                _ => StoreError::Unavailable(format!(
                    "cannot create the backup \"{}\": {e}",
                    path.display()
                )),
            })?;
        // VACUUM INTO (which accepts an empty file) writes a consistent, compact copy while
        // readers and writers go on.
        sqlx::query("VACUUM INTO ?")
            .bind(path.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn list(&self, workspace: &str) -> Result<Vec<SecretMeta>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS} FROM secrets WHERE workspace = ? ORDER BY name"
        )))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(meta_from_row).collect()
    }

    async fn get(&self, workspace: &str, name: &SecretName) -> Result<StoredSecret, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS}, id, sealed FROM secrets WHERE workspace = ? AND name = ?"
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
        let mut out = Vec::with_capacity(names.len());
        // Bound parameters per statement stay far below SQLite's limit.
        for chunk in names.chunks(500) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "SELECT {META_COLUMNS}, id, sealed FROM secrets WHERE workspace = "
            ));
            q.push_bind(workspace).push(" AND name IN (");
            let mut list = q.separated(", ");
            for n in chunk {
                list.push_bind(n.as_str());
            }
            q.push(")");
            // Not cached: each list length is its own statement (see `record`).
            let rows = q
                .build()
                .persistent(false)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
            for row in &rows {
                out.push(stored_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert(
        &self,
        workspace: &str,
        secret: &StoredSecret,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_sealed_write().await?;
        insert_secret(&mut tx, workspace, secret, audit).await?;
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
        let new_version = if change.sealed.is_some() {
            expected_version + 1
        } else {
            expected_version
        };
        let mut tx = if change.sealed.is_some() {
            self.begin_sealed_write().await?
        } else {
            self.pool.begin().await.map_err(map_err)?
        };
        // One statement with the version in its WHERE clause: a concurrent writer makes it match
        // no row, and the vault retries from a fresh read.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE secrets SET
                sealed = coalesce(?, sealed),
                version = ?,
                updated_at = CASE WHEN ? IS NULL THEN updated_at ELSE ? END,
                visibility = coalesce(?, visibility),
                tags = coalesce(?, tags),
                kind = coalesce(?, kind)
             WHERE workspace = ? AND name = ? AND version = ?
             RETURNING {META_COLUMNS}"
        )))
        .bind(change.sealed.as_deref())
        .bind(version_i64(new_version)?)
        .bind(change.sealed.as_ref().map(|_| 1))
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
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM secrets WHERE workspace = ? AND name = ?")
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
        insert_audit(&mut *tx, audit).await?;
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
        let deleted = sqlx::query("DELETE FROM secrets WHERE workspace = ? AND name = ?")
            .bind(workspace)
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.clone()));
        }
        insert_audit(&mut *tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn record(&self, audits: &[AuditRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Multi-row inserts: a mount that reads a thousand secrets records them in a few
        // statements, not a thousand.
        for chunk in audits.chunks(200) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
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
            // Not a prepared statement kept in the connection's cache: every batch size is a
            // different statement, and a cache of hundred-row inserts on each connection grew
            // the server by tens of megabytes under a steady read load.
            q.build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn audit_log(&self, workspace: &str, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, workspace, actor, action, secret, version, detail, address FROM audit
             WHERE workspace = ? ORDER BY id DESC LIMIT ?",
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
             WHERE at >= ? ORDER BY id LIMIT ?",
        )
        .bind(since.nanos())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn get_all(&self, workspace: &str) -> Result<Vec<StoredSecret>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {META_COLUMNS}, id, sealed FROM secrets WHERE workspace = ? ORDER BY name"
        )))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn create_workspace(&self, name: &str, at: Timestamp) -> Result<(), StoreError> {
        match sqlx::query("INSERT INTO workspaces (name, created_at) VALUES (?, ?)")
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
        match sqlx::query("INSERT INTO users (name, admin, created_at) VALUES (?, ?, ?)")
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
            insert_token(&mut *tx, t).await?;
        }
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
        let Some(row) = sqlx::query("SELECT name, admin, created_at FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let workspaces: Vec<String> = sqlx::query_scalar(
            "SELECT workspace FROM members WHERE user_name = ? ORDER BY workspace",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        user_from_row(&row, workspaces).map(Some)
    }

    async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UserNotFound(name.to_owned()));
        }
        Ok(())
    }

    async fn add_member(&self, user: &str, workspace: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        insert_member(&mut tx, user, workspace).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        insert_token(&self.pool, token).await
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE ? IS NULL OR user_name = ?
             ORDER BY created_at"
        )))
        .bind(user)
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn set_token_expiry(&self, id: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE tokens SET expires_at = ? WHERE id = ?")
            .bind(expires_at.nanos())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(id.to_owned()));
        }
        Ok(())
    }

    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?")
                .bind(at.nanos())
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(id.to_owned()));
        }
        Ok(())
    }
}
