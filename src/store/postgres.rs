//! The scale-out store: PostgreSQL through sqlx (pure Rust, rustls), shared by any number of
//! stateless `secretfs serve` replicas. The statements are `sql`'s; this file holds what is
//! PostgreSQL's own.
//!
//! Migrations (`migrations/postgres`) run at start under a transaction-scoped advisory lock, so
//! replicas starting at once apply each exactly once. Every committed batch also sends
//! `NOTIFY secretfs_changes` (delivered at commit), which every replica listens to: that is how
//! a long-poll held by one replica learns of an update, a revocation or a removed user made
//! through another. Rows a write depends on (the key check, a secret's owner) are read
//! `FOR SHARE`, so a concurrent writer that would change them waits for the commit.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Mutex;

use super::sql::{Dialect, SqlStore, audit_fields, begin_on};
use super::{AuditRecord, StoreError};
use crate::secret::Timestamp;

/// The key of the advisory lock migrations run under ("SFS" + 1).
const MIGRATION_LOCK: i64 = 0x5346_5301;
/// The channel replicas tell each other about changes on.
const CHANNEL: &str = "secretfs_changes";

/// Numbered schema migrations (PostgreSQL 13 or newer: `gen_random_uuid`). Never edit one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001.sql")),
    (2, include_str!("migrations/postgres/0002.sql")),
    (3, include_str!("migrations/postgres/0003.sql")),
    (4, include_str!("migrations/postgres/0004.sql")),
];

/// The PostgreSQL store.
pub type PgStore = SqlStore<Postgres>;

/// PostgreSQL's ways.
pub struct Postgres {
    pool: PgPool,
    /// Shown in logs with the password removed.
    shown: String,
    listener: Mutex<Option<PgListener>>,
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
            .map_err(|e| match StoreError::from(e) {
                StoreError::Unavailable(msg) | StoreError::Internal(msg) => {
                    StoreError::Unavailable(format!("cannot connect to {shown}: {msg}"))
                }
                other => other,
            })?;
        migrate(&pool, &shown).await?;
        Ok(SqlStore::new(Postgres {
            pool,
            shown,
            listener: Mutex::new(None),
        }))
    }
}

async fn migrate(pool: &PgPool, shown: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    let ours: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                        WHERE table_schema = current_schema() AND table_name = 'secretfs_migrations')",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !ours {
        let foreign: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = current_schema() AND table_name = 'secrets')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if foreign {
            return Err(StoreError::NotAStore(format!(
                "{shown} already has a \"secrets\" table that secretfs did not create; use a \
                 database (or schema) of its own"
            )));
        }
        sqlx::raw_sql(
            "CREATE TABLE secretfs_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await?;
    }
    let current: i64 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM secretfs_migrations")
            .fetch_one(&mut *tx)
            .await?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::NotAStore(format!(
            "{shown} has schema version {current}, newer than this secretfs understands \
             ({newest}); upgrade secretfs"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO secretfs_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(Timestamp::now().nanos())
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx.commit().await?)
}

/// One row of COPY's text format: tab-separated, with `\\`, tab, newline and carriage return
/// escaped.
fn copy_row(out: &mut Vec<u8>, fields: &[String]) {
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

#[async_trait]
impl Dialect for Postgres {
    type Conn = sqlx::pool::PoolConnection<sqlx::Postgres>;
    type Tx = sqlx::Transaction<'static, sqlx::Postgres>;
    const LOCK_ROWS: &'static str = "FOR SHARE";
    // The key is "SFS" + 2 (0x5346_5302), beside the migrations' "SFS" + 1.
    const AUDIT_ORDER: &'static str = "SELECT pg_advisory_xact_lock(1397117698)";

    fn describe(&self) -> String {
        format!("postgres:{}", self.shown)
    }

    async fn conn(&self) -> Result<Self::Conn, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    async fn begin(&self) -> Result<Self::Tx, StoreError> {
        begin_on(&self.pool, "BEGIN").await
    }

    async fn commit(tx: Self::Tx) -> Result<(), StoreError> {
        Ok(tx.commit().await?)
    }

    async fn notify(tx: &mut Self::Tx) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind((Timestamp::now().nanos() / 1000).to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn record_reads(&self, audits: &[AuditRecord]) -> Result<(), StoreError> {
        // Workload reads arrive by the ten thousand a second: COPY costs PostgreSQL a fraction
        // of the CPU of INSERTs, which matters when replicas share its cores.
        let mut data = Vec::with_capacity(audits.len() * 128);
        for a in audits {
            copy_row(&mut data, &audit_fields(a)?);
        }
        let statement = format!("COPY audit ({}) FROM STDIN", super::rows::AUDIT_COLUMNS);
        // In a transaction that waits its turn (`AUDIT_ORDER`), like every other appender.
        let mut tx = begin_on(&self.pool, "BEGIN").await?;
        sqlx::query(Self::AUDIT_ORDER).execute(&mut *tx).await?;
        let mut copy = tx.copy_in_raw(&statement).await?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("send failed").await;
            return Err(e.into());
        }
        copy.finish().await?;
        Ok(tx.commit().await?)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn next_change(&self) -> Result<Option<Timestamp>, StoreError> {
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANNEL).await?;
            *guard = Some(listener);
        }
        let listener = guard.as_mut().expect("set above");
        match listener.recv().await {
            // The payload is the sender's clock at commit, in microseconds (an older replica
            // sends none).
            Ok(n) => Ok(n
                .payload()
                .parse::<i64>()
                .ok()
                .map(|micros| Timestamp::from_nanos(micros.saturating_mul(1000)))),
            Err(e) => {
                // Listen again from a new connection next time.
                *guard = None;
                Err(e.into())
            }
        }
    }

    async fn backup_to(&self, _path: &std::path::Path) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "this store has no built-in backup; for PostgreSQL use pg_dump (see the README)".into(),
        ))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn copy_rows_escape_separators() {
        let mut out = Vec::new();
        let fields: Vec<String> = ["a\tb", "c\\d", "e\nf", "plain"].map(String::from).to_vec();
        super::copy_row(&mut out, &fields);
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
