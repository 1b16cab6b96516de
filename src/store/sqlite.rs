//! The embedded store: one SQLite file (WAL, `synchronous=FULL`, `secure_delete`), through sqlx
//! with SQLite bundled. The statements are `sql`'s; this file holds what is SQLite's own.
//!
//! The file is marked with an `application_id`, so a foreign SQLite database is refused instead
//! of being written into, and schema changes are the numbered files of `migrations/sqlite`,
//! applied at open under `BEGIN IMMEDIATE`, so two processes opening a new store at once cannot
//! both initialise it. Every write transaction begins `IMMEDIATE`: it holds the database's write
//! lock from its first statement, so what it checks (a version, the key check, an owner) cannot
//! change before it commits.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::{Dialect, Exec, Param, Row, SqlStore, begin_on, insert_audits};
use super::{AuditRecord, StoreError, is_busy};
use crate::secret::Timestamp;

/// `PRAGMA application_id` of a secretfs store: "SFS1".
const APPLICATION_ID: i64 = 0x5346_5331;

/// Numbered schema migrations, applied in order, each once. Never edit a released one: add.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001.sql")),
    (2, include_str!("migrations/sqlite/0002.sql")),
    (3, include_str!("migrations/sqlite/0003.sql")),
    (4, include_str!("migrations/sqlite/0004.sql")),
    (5, include_str!("migrations/sqlite/0005.sql")),
];

/// The SQLite store.
pub type SqliteStore = SqlStore<Sqlite>;

/// SQLite's ways.
pub struct Sqlite {
    pool: SqlitePool,
    path: PathBuf,
    /// One write transaction at a time in this process, queued in order. SQLite allows one
    /// writer anyway; without this, this process's writers would wait in SQLite's busy handler,
    /// which polls and is not fair: under load one of them could wait past `busy_timeout`.
    /// Other processes (the CLI beside a server) still meet the busy timeout.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction and this process's writer turn.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl Exec for WriteTx {
    async fn run(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        self.tx.run(sql, params).await
    }
    async fn rows(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, sqlx::Error> {
        self.tx.rows(sql, params).await
    }
    async fn run_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        self.tx.run_once(sql, params).await
    }
    async fn rows_once(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, sqlx::Error> {
        self.tx.rows_once(sql, params).await
    }
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
            match open_once(path, &options, connections).await {
                Ok(pool) => {
                    return Ok(SqlStore::new(Sqlite {
                        pool,
                        path: path.to_owned(),
                        writer: Default::default(),
                    }));
                }
                Err(Opening::Busy) if attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Opening::Busy) => {
                    return Err(StoreError::Unavailable(format!(
                        "store \"{shown}\" stayed locked by another process"
                    )));
                }
                Err(Opening::Failed(e)) => return Err(e),
            }
        }
    }
}

enum Opening {
    Busy,
    Failed(StoreError),
}

impl From<sqlx::Error> for Opening {
    fn from(e: sqlx::Error) -> Self {
        if is_busy(&e) {
            return Opening::Busy;
        }
        Opening::Failed(StoreError::from(e))
    }
}

impl From<StoreError> for Opening {
    fn from(e: StoreError) -> Self {
        Opening::Failed(e)
    }
}

/// Connects and migrates; errors met here that mean "not a store" say so with the file's name.
async fn open_once(
    path: &Path,
    options: &SqliteConnectOptions,
    connections: u32,
) -> Result<SqlitePool, Opening> {
    let named = |e: Opening| match e {
        Opening::Failed(StoreError::NotAStore(m)) if m.starts_with("the store file is damaged") => {
            Opening::Failed(StoreError::NotAStore(format!(
                "\"{}\" is not a secretfs store (not an SQLite database, or corrupt); point --store \
             at a secretfs store or a new file",
                path.display()
            )))
        }
        Opening::Failed(StoreError::Internal(msg)) => Opening::Failed(StoreError::NotAStore(
            format!("store \"{}\" cannot be opened: {msg}", path.display()),
        )),
        other => other,
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(connections.max(1))
        .min_connections(0)
        .connect_with(options.clone())
        .await
        .map_err(|e| named(e.into()))?;
    migrate(&pool, path).await.map_err(named)?;
    Ok(pool)
}

async fn migrate(pool: &SqlitePool, path: &Path) -> Result<(), Opening> {
    let shown = path.display();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let app_id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut *tx)
        .await?;
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
        .fetch_one(&mut *tx)
        .await?;
    if app_id != APPLICATION_ID {
        if app_id != 0 || tables != 0 {
            return Err(Opening::Failed(StoreError::NotAStore(format!(
                "\"{shown}\" is not a secretfs store: it is another application's SQLite \
                 database; point --store at a secretfs store or a new file"
            ))));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA application_id = {APPLICATION_ID};
             CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY,
                 applied_at INTEGER NOT NULL
             );"
        )))
        .execute(&mut *tx)
        .await?;
    }
    let current: i64 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(Opening::Failed(StoreError::NotAStore(format!(
            "store \"{shown}\" has schema version {current}, newer than this secretfs \
             understands ({newest}); upgrade secretfs"
        ))));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(Timestamp::now().nanos())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Dialect for Sqlite {
    type Conn = sqlx::pool::PoolConnection<sqlx::Sqlite>;
    type Tx = WriteTx;
    const LOCK_ROWS: &'static str = "";
    const AUDIT_ORDER: &'static str = "";

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    async fn conn(&self) -> Result<Self::Conn, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    async fn begin(&self) -> Result<Self::Tx, StoreError> {
        let turn = self.writer.clone().lock_owned().await;
        Ok(WriteTx {
            tx: begin_on(&self.pool, "BEGIN IMMEDIATE").await?,
            _turn: turn,
        })
    }

    async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
        Ok(tx.tx.commit().await?)
    }

    async fn notify(_tx: &mut Self::Tx) -> Result<(), StoreError> {
        // One process serves an SQLite store; its own change events are the service's.
        Ok(())
    }

    async fn record_reads(&self, audits: &[AuditRecord]) -> Result<(), StoreError> {
        // A few thousand records per transaction (one fsync each): a writer waiting for its
        // turn waits for one of them, not for a whole batch of reads.
        for chunk in audits.chunks(2000) {
            let mut tx = self.begin().await?;
            insert_audits(&mut tx, chunk, true).await?;
            Self::commit(tx).await?;
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        false
    }

    async fn next_change(&self) -> Result<Option<crate::secret::Timestamp>, StoreError> {
        std::future::pending().await
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
        sqlx::query("VACUUM INTO $1")
            .bind(path.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
