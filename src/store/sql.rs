//! The one SQL implementation of [`Store`], for both engines: every statement is written here,
//! once, with `$n` placeholders (which sqlx's SQLite driver reads as numbered parameters too),
//! and runs on either engine through [`Exec`]. What the engines really do differently is a
//! [`Dialect`]: opening and migrations, how a write transaction starts (SQLite takes its write
//! lock up front with `BEGIN IMMEDIATE`; PostgreSQL locks rows with `FOR SHARE`), telling other
//! replicas (`NOTIFY`), bulk audit writes (`COPY`), backups and the change feed.

use async_trait::async_trait;

use super::rows::{
    AUDIT_COLUMNS, BINDING_COLUMNS, Columns, SECRET_COLUMNS, TOKEN_COLUMNS, audit_from_row,
    binding_from_row, is_unique_violation, secret_from_row, tags_json, token_from_row,
    user_from_row, version_i64,
};
use super::{
    AuditAction, AuditQuery, AuditRecord, AuditSettings, Batch, BindingRecord, Change, Expected,
    Op, SecretFilter, Store, StoreError, StoredSecret, TokenFilter, TokenRecord, User, WriteFence,
};
use crate::secret::{SecretName, Timestamp, Visibility};

/// A bound parameter, the same for both engines.
#[derive(Debug, Clone)]
pub enum Param<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Blob(&'a [u8]),
    OptBlob(Option<&'a [u8]>),
}

/// A row as both engines' rows are read (see `rows`).
pub type Row = Box<dyn Columns + Send>;

/// Runs a statement on a connection or transaction of either engine.
#[async_trait]
pub trait Exec: Send {
    /// Rows changed.
    async fn run(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error>;
    async fn rows(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, sqlx::Error>;
    /// Like `run`, for a statement whose text changes with its input (a list of a thousand
    /// values): not kept in the connection's statement cache, which would grow by one
    /// prepared statement per distinct length.
    async fn run_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error>;
    async fn rows_once(&mut self, sql: &str, params: &[Param<'_>])
    -> Result<Vec<Row>, sqlx::Error>;
}

macro_rules! exec_for {
    ($db:ty, $($conn:ty),+) => {
        fn bind_all<'q>(
            mut q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            params: &[Param<'_>],
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            for p in params {
                q = match *p {
                    Param::Int(v) => q.bind(v),
                    Param::OptInt(v) => q.bind(v),
                    // Encoded (copied) into the arguments as they are bound.
                    Param::Text(v) => q.bind(v),
                    Param::OptText(v) => q.bind(v),
                    Param::Blob(v) => q.bind(v),
                    Param::OptBlob(v) => q.bind(v),
                };
            }
            q
        }
        $(
        #[async_trait]
        impl Exec for $conn {
            async fn run(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
                let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), params);
                Ok(q.execute(&mut **self).await?.rows_affected())
            }
            async fn rows(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, sqlx::Error> {
                let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), params);
                let rows = q.fetch_all(&mut **self).await?;
                Ok(rows.into_iter().map(|r| Box::new(r) as Row).collect())
            }
            async fn run_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
                let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), params).persistent(false);
                Ok(q.execute(&mut **self).await?.rows_affected())
            }
            async fn rows_once(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, sqlx::Error> {
                let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), params).persistent(false);
                let rows = q.fetch_all(&mut **self).await?;
                Ok(rows.into_iter().map(|r| Box::new(r) as Row).collect())
            }
        }
        )+
    };
}

pub(super) mod sqlite_exec {
    use super::*;
    exec_for!(
        sqlx::Sqlite,
        sqlx::pool::PoolConnection<sqlx::Sqlite>,
        sqlx::Transaction<'static, sqlx::Sqlite>
    );
}

pub(super) mod postgres_exec {
    use super::*;
    exec_for!(
        sqlx::Postgres,
        sqlx::pool::PoolConnection<sqlx::Postgres>,
        sqlx::Transaction<'static, sqlx::Postgres>
    );
}

/// What an engine does its own way.
#[async_trait]
pub trait Dialect: Send + Sync + 'static {
    type Conn: Exec + 'static;
    type Tx: Exec + 'static;
    /// Appended to a `SELECT` that must keep the rows it read from changing until commit: the
    /// owner a new secret or token is given, the key check a sealed write depends on.
    /// PostgreSQL's `FOR SHARE`; nothing in SQLite, whose write transactions hold the whole
    /// database's write lock from their first statement.
    const LOCK_ROWS: &'static str;
    /// Run first in a transaction that appends audit records, so that records are numbered in
    /// the order their transactions commit (what lets an export resume after the last id it
    /// wrote and miss nothing). PostgreSQL draws ids from a sequence when a row is inserted,
    /// not when it commits: a transaction-scoped advisory lock makes the next appender wait
    /// for this one's commit. Taken before any row lock, so no appender holding it waits for
    /// one held by an appender waiting for it. Nothing in SQLite, whose writers take turns.
    const AUDIT_ORDER: &'static str;

    fn describe(&self) -> String;
    async fn conn(&self) -> Result<Self::Conn, StoreError>;
    async fn begin(&self) -> Result<Self::Tx, StoreError>;
    async fn commit(tx: Self::Tx) -> Result<(), StoreError>;
    /// Inside the transaction: makes its commit known to other processes sharing the store.
    async fn notify(tx: &mut Self::Tx) -> Result<(), StoreError>;
    async fn record_reads(&self, audits: &[AuditRecord]) -> Result<(), StoreError>;
    fn shared(&self) -> bool;
    async fn next_change(&self) -> Result<Option<crate::secret::Timestamp>, StoreError>;
    async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError>;
    async fn close(&self);
}

/// A transaction on a connection of its own. A connection whose last transaction could not be
/// ended (its commit failed: a full disk) comes back from the pool still inside it; sqlx then
/// refuses to begin there, and dropping that attempt rolls the old transaction back, so the
/// next try finds the connection clean. Every connection of the pool may be in that state
/// after a full disk, so there is a try for each of them and one more (four tries were not
/// always enough: `faults::a_full_disk_refuses_writes_and_keeps_the_data` saw a 500).
pub(super) async fn begin_on<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: &'static str,
) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
    let mut last = None;
    let tries = pool.options().get_max_connections() as usize + 1;
    for _ in 0..tries {
        match pool.begin_with(statement).await {
            Err(sqlx::Error::InvalidSavePointStatement) => {
                last = Some(sqlx::Error::InvalidSavePointStatement);
                tokio::task::yield_now().await;
            }
            other => return Ok(other?),
        }
    }
    Err(last.expect("set in the loop").into())
}

/// A store over an SQL engine.
pub struct SqlStore<D> {
    pub(super) dialect: D,
    fence: WriteFence,
}

impl<D: Dialect> SqlStore<D> {
    pub(super) fn new(dialect: D) -> Self {
        SqlStore {
            dialect,
            fence: WriteFence::default(),
        }
    }
}

/// `$first, $first+1, ...`: a list of `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Conflict` unless the values `sql` selects (as `v`) for `user_id` are exactly `expected`,
/// compared sorted here rather than by the engine's collation.
async fn expect_set(
    tx: &mut dyn Exec,
    sql: &str,
    user_id: &str,
    expected: &[String],
) -> Result<(), StoreError> {
    let rows = tx.rows(sql, &[Param::Text(user_id)]).await?;
    let mut found = rows
        .iter()
        .map(|r| r.text("v"))
        .collect::<Result<Vec<_>, _>>()?;
    found.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    if found != expected {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// Why a conditional write of secret `id` matched nothing: it is gone, or it changed.
async fn conflict_or_gone(
    tx: &mut dyn Exec,
    id: &str,
    name: &SecretName,
) -> Result<StoreError, StoreError> {
    let exists = tx
        .rows("SELECT id FROM secrets WHERE id = $1", &[Param::Text(id)])
        .await?;
    Ok(if exists.is_empty() {
        StoreError::NotFound(name.clone())
    } else {
        StoreError::VersionConflict(name.clone())
    })
}

/// Revokes every live token minted by `minter` (a token id, or `binding:ID`) and, through
/// `minted_by`, every token minted by those, in this transaction: a revoked token leaves no
/// descendant alive.
async fn revoke_minted_by(
    tx: &mut dyn Exec,
    minter: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    tx.run(
        "WITH RECURSIVE minted(id) AS ( \
             SELECT id FROM tokens WHERE minted_by = $2 \
             UNION SELECT t.id FROM tokens t JOIN minted m ON t.minted_by = m.id) \
         UPDATE tokens SET revoked_at = $1 WHERE id IN (SELECT id FROM minted) AND revoked_at IS NULL",
        &[Param::Int(at.nanos()), Param::Text(minter)],
    )
    .await?;
    Ok(())
}

/// Runs a statement that must change a row; `missing` is the error when it changed none.
async fn change_one(
    tx: &mut dyn Exec,
    sql: &str,
    params: &[Param<'_>],
    missing: impl FnOnce() -> StoreError,
) -> Result<(), StoreError> {
    if tx.run(sql, params).await? == 0 {
        return Err(missing());
    }
    Ok(())
}

/// The name of a live user, read so that it cannot be deleted before the transaction commits.
async fn live_user(tx: &mut dyn Exec, id: &str, lock: &str) -> Result<String, StoreError> {
    let rows = tx
        .rows(
            &format!("SELECT name FROM users WHERE id = $1 AND deleted_at IS NULL {lock}"),
            &[Param::Text(id)],
        )
        .await?;
    match rows.first() {
        Some(r) => r.text("name"),
        None => Err(StoreError::UserNotFound(id.to_owned())),
    }
}

async fn workspace_exists(tx: &mut dyn Exec, name: &str) -> Result<(), StoreError> {
    let rows = tx
        .rows(
            "SELECT name FROM workspaces WHERE name = $1",
            &[Param::Text(name)],
        )
        .await?;
    if rows.is_empty() {
        return Err(StoreError::WorkspaceNotFound(name.to_owned()));
    }
    Ok(())
}

/// One op, inside the batch's transaction: each op is one job, done by the function it names
/// (what a row must be before it changes, then the change), so this is only the table of them.
async fn apply_op(tx: &mut dyn Exec, op: &Op, lock: &str) -> Result<(), StoreError> {
    match op {
        Op::InitKeyCheck(sealed) => {
            insert_unique(
                tx,
                "INSERT INTO settings (key, value) VALUES ('key_check', $1)",
                &[Param::Blob(sealed)],
                || StoreError::Conflict,
            )
            .await
        }
        Op::ReplaceKeyCheck(sealed) => {
            tx.run(
                "INSERT INTO settings (key, value) VALUES ('key_check', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[Param::Blob(sealed)],
            )
            .await?;
            Ok(())
        }
        Op::InsertSecret(s) => insert_secret(tx, s, lock).await,
        Op::UpdateSecret {
            id,
            name,
            expected_version,
            expected,
            change,
            at,
        } => update_secret(tx, (id, name), *expected_version, expected, change, *at).await,
        Op::Reseal {
            id,
            name,
            version,
            sealed,
        } => {
            change_one(
                tx,
                "UPDATE secrets SET sealed = $1 WHERE id = $2 AND version = $3",
                &[
                    Param::Blob(sealed),
                    Param::Text(id),
                    Param::Int(version_i64(*version)?),
                ],
                || StoreError::VersionConflict(name.clone()),
            )
            .await
        }
        Op::DeleteSecret { id, name, expected } => delete_secret(tx, id, name, expected).await,
        Op::ExpectOwned { owner_id, expected } => expect_owned(tx, owner_id, expected, lock).await,
        Op::ExpectTokens { user_id, expected } => {
            expect_set(
                tx,
                "SELECT id AS v FROM tokens WHERE user_id = $1",
                user_id,
                expected,
            )
            .await
        }
        Op::ExpectMemberships { user_id, expected } => {
            expect_set(
                tx,
                "SELECT workspace AS v FROM members WHERE user_id = $1",
                user_id,
                expected,
            )
            .await
        }
        Op::ExpectActor {
            user_id,
            token_id,
            now,
        } => expect_actor(tx, user_id, token_id.as_deref(), *now, lock).await,
        Op::TransferSecrets { from, to, to_name } => {
            live_user(tx, to, lock).await?;
            tx.run(
                "UPDATE secrets SET owner_id = $1, owner = $2 WHERE owner_id = $3",
                &[Param::Text(to), Param::Text(to_name), Param::Text(from)],
            )
            .await?;
            Ok(())
        }
        Op::CreateWorkspace { name, at } => {
            insert_unique(
                tx,
                "INSERT INTO workspaces (name, created_at) VALUES ($1, $2)",
                &[Param::Text(name), Param::Int(at.nanos())],
                || StoreError::WorkspaceExists(name.clone()),
            )
            .await
        }
        Op::SetAuditSettings(set) => {
            let secs = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let changed = tx
                .run(
                    "UPDATE workspaces SET audit_coalesce_secs = $1, audit_retention_secs = $2
                     WHERE name = $3",
                    &[
                        Param::OptInt(secs(set.coalesce_secs)),
                        Param::OptInt(secs(set.retention_secs)),
                        Param::Text(&set.workspace),
                    ],
                )
                .await?;
            if changed == 0 {
                return Err(StoreError::WorkspaceNotFound(set.workspace.clone()));
            }
            Ok(())
        }
        Op::InsertUser(u) => {
            insert_unique(
                tx,
                "INSERT INTO users (id, name, admin, created_at) VALUES ($1, $2, $3, $4)",
                &[
                    Param::Text(&u.id),
                    Param::Text(&u.name),
                    Param::Int(i64::from(u.admin)),
                    Param::Int(u.created_at.nanos()),
                ],
                || StoreError::UserExists(u.name.clone()),
            )
            .await
        }
        Op::TombstoneUser { id, at } => {
            change_one(
                tx,
                "UPDATE users SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL",
                &[Param::Int(at.nanos()), Param::Text(id)],
                || StoreError::UserNotFound(id.clone()),
            )
            .await
        }
        Op::AddMember { user_id, workspace } => {
            workspace_exists(tx, workspace).await?;
            live_user(tx, user_id, lock).await?;
            tx.run(
                "INSERT INTO members (user_id, workspace) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[Param::Text(user_id), Param::Text(workspace)],
            )
            .await?;
            Ok(())
        }
        Op::RemoveMember { user_id, workspace } => {
            change_one(
                tx,
                "DELETE FROM members WHERE user_id = $1 AND workspace = $2",
                &[Param::Text(user_id), Param::Text(workspace)],
                || StoreError::NotAMember {
                    user: user_id.clone(),
                    workspace: workspace.clone(),
                },
            )
            .await
        }
        Op::RemoveMemberships { user_id } => {
            tx.run(
                "DELETE FROM members WHERE user_id = $1",
                &[Param::Text(user_id)],
            )
            .await?;
            Ok(())
        }
        Op::InsertToken(t) => insert_token(tx, t, lock).await,
        Op::SetTokenExpiry { id, expires_at } => {
            change_one(
                tx,
                "UPDATE tokens SET expires_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &[Param::Int(expires_at.nanos()), Param::Text(id)],
                || StoreError::TokenNotFound(id.clone()),
            )
            .await
        }
        Op::RevokeToken { id, at } => {
            change_one(
                tx,
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2",
                &[Param::Int(at.nanos()), Param::Text(id)],
                || StoreError::TokenNotFound(id.clone()),
            )
            .await?;
            // What it minted goes with it, and what those minted, to the last generation.
            revoke_minted_by(tx, id, *at).await
        }
        Op::DeleteTokensOf { user_id } => {
            tx.run(
                "DELETE FROM grants WHERE token_id IN (SELECT id FROM tokens WHERE user_id = $1)",
                &[Param::Text(user_id)],
            )
            .await?;
            tx.run(
                "DELETE FROM tokens WHERE user_id = $1",
                &[Param::Text(user_id)],
            )
            .await?;
            Ok(())
        }
        Op::InsertBinding(b) => insert_binding(tx, b, lock).await,
        Op::ExpectBinding { id } => {
            let rows = tx
                .rows(
                    &format!("SELECT id FROM identity_bindings WHERE id = $1 {lock}"),
                    &[Param::Text(id)],
                )
                .await?;
            if rows.is_empty() {
                return Err(StoreError::BindingNotFound(id.clone()));
            }
            Ok(())
        }
        Op::DeleteBinding { id, at } => {
            change_one(
                tx,
                "DELETE FROM identity_bindings WHERE id = $1",
                &[Param::Text(id)],
                || StoreError::BindingNotFound(id.clone()),
            )
            .await?;
            // Its exchanges' tokens go with it (what they grant was the binding's to give), and
            // every token minted with one of them.
            revoke_minted_by(tx, &super::minted_by_binding(id), *at).await
        }
    }
}

/// Runs an INSERT; `taken` is the error when a unique key already holds the row's.
async fn insert_unique(
    tx: &mut dyn Exec,
    sql: &str,
    params: &[Param<'_>],
    taken: impl FnOnce() -> StoreError,
) -> Result<(), StoreError> {
    match tx.run(sql, params).await {
        Err(e) if is_unique_violation(&e) => Err(taken()),
        other => {
            other?;
            Ok(())
        }
    }
}

async fn insert_secret(tx: &mut dyn Exec, s: &StoredSecret, lock: &str) -> Result<(), StoreError> {
    workspace_exists(tx, &s.workspace).await?;
    live_user(tx, &s.owner_id, lock).await?;
    let m = &s.meta;
    insert_unique(
        tx,
        "INSERT INTO secrets (workspace, name, id, kind, visibility, owner, owner_id,
                              tags, version, sealed, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            Param::Text(&s.workspace),
            Param::Text(m.name.as_str()),
            Param::Text(&s.id),
            Param::Text(m.kind.as_str()),
            Param::Text(m.visibility.as_str()),
            Param::Text(&m.owner),
            Param::Text(&s.owner_id),
            Param::Text(&tags_json(&m.tags)),
            Param::Int(version_i64(m.version)?),
            Param::Blob(&s.sealed),
            Param::Int(m.created_at.nanos()),
            Param::Int(m.updated_at.nanos()),
        ],
        || StoreError::AlreadyExists(m.name.clone()),
    )
    .await
}

/// `UpdateSecret`: one statement with what was checked in its WHERE clause, so a concurrent
/// writer makes it match no row and the service retries from a fresh read.
async fn update_secret(
    tx: &mut dyn Exec,
    (id, name): (&str, &SecretName),
    expected_version: u64,
    expected: &Expected,
    change: &Change,
    at: Timestamp,
) -> Result<(), StoreError> {
    let new_version = expected_version + u64::from(change.sealed.is_some());
    change_secret(
        tx,
        (id, name),
        "UPDATE secrets SET
                sealed = coalesce($1, sealed),
                version = $2,
                updated_at = CASE WHEN $1 IS NULL THEN updated_at ELSE $3 END,
                visibility = coalesce($4, visibility),
                tags = coalesce($5, tags),
                kind = coalesce($6, kind)
             WHERE id = $7 AND version = $8 AND owner_id = $9 AND visibility = $10",
        &[
            Param::OptBlob(change.sealed.as_deref()),
            Param::Int(version_i64(new_version)?),
            Param::Int(at.nanos()),
            Param::OptText(change.visibility.map(|v| v.as_str())),
            Param::OptText(change.tags.as_deref().map(tags_json).as_deref()),
            Param::OptText(change.kind.map(|k| k.as_str())),
            Param::Text(id),
            Param::Int(version_i64(expected_version)?),
            Param::Text(&expected.owner_id),
            Param::Text(expected.visibility.as_str()),
        ],
    )
    .await
}

async fn delete_secret(
    tx: &mut dyn Exec,
    id: &str,
    name: &SecretName,
    expected: &Expected,
) -> Result<(), StoreError> {
    change_secret(
        tx,
        (id, name),
        "DELETE FROM secrets WHERE id = $1 AND owner_id = $2 AND visibility = $3",
        &[
            Param::Text(id),
            Param::Text(&expected.owner_id),
            Param::Text(expected.visibility.as_str()),
        ],
    )
    .await
}

/// Runs a statement whose WHERE clause holds what the caller decided on about secret `id`: no
/// row changed means it moved on meanwhile (`VersionConflict`, the service retries from a fresh
/// read) or is gone (`NotFound`).
async fn change_secret(
    tx: &mut dyn Exec,
    (id, name): (&str, &SecretName),
    sql: &str,
    params: &[Param<'_>],
) -> Result<(), StoreError> {
    if tx.run(sql, params).await? == 0 {
        return Err(conflict_or_gone(tx, id, name).await?);
    }
    Ok(())
}

/// `ExpectOwned`: the owner's secrets, locked, are exactly `expected` (compared sorted here,
/// not by the engine's collation).
async fn expect_owned(
    tx: &mut dyn Exec,
    owner_id: &str,
    expected: &[(String, Visibility)],
    lock: &str,
) -> Result<(), StoreError> {
    let rows = tx
        .rows(
            &format!("SELECT id, visibility FROM secrets WHERE owner_id = $1 ORDER BY id {lock}"),
            &[Param::Text(owner_id)],
        )
        .await?;
    let mut found =
        rows.iter()
            .map(|r| {
                let v: Visibility = r.text("visibility")?.parse().map_err(|_| {
                    StoreError::Internal("stored row has an invalid visibility".into())
                })?;
                Ok((r.text("id")?, v))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = expected.to_vec();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    if found != expected {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// `ExpectActor`: the user is live and the token, if any, neither revoked nor expired at `now`;
/// both rows locked until commit.
async fn expect_actor(
    tx: &mut dyn Exec,
    user_id: &str,
    token_id: Option<&str>,
    now: Timestamp,
    lock: &str,
) -> Result<(), StoreError> {
    let user = tx
        .rows(
            &format!("SELECT id FROM users WHERE id = $1 AND deleted_at IS NULL {lock}"),
            &[Param::Text(user_id)],
        )
        .await?;
    if user.is_empty() {
        return Err(StoreError::ActorGone);
    }
    if let Some(token) = token_id {
        let valid = tx
            .rows(
                &format!(
                    "SELECT id FROM tokens WHERE id = $1 AND revoked_at IS NULL
                     AND (expires_at IS NULL OR expires_at > $2) {lock}"
                ),
                &[Param::Text(token), Param::Int(now.nanos())],
            )
            .await?;
        if valid.is_empty() {
            return Err(StoreError::ActorGone);
        }
    }
    Ok(())
}

async fn insert_token(tx: &mut dyn Exec, t: &TokenRecord, lock: &str) -> Result<(), StoreError> {
    live_user(tx, &t.user_id, lock).await?;
    tx.run(
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ),
        &token_params(t),
    )
    .await?;
    for g in &t.grants {
        tx.run(
            "INSERT INTO grants (token_id, secret_id, name) VALUES ($1, $2, $3)",
            &[
                Param::Text(&t.id),
                Param::Text(&g.secret_id),
                Param::Text(g.name.as_str()),
            ],
        )
        .await?;
    }
    Ok(())
}

/// A token's columns, in [`TOKEN_COLUMNS`] order.
fn token_params(t: &TokenRecord) -> [Param<'_>; 12] {
    [
        Param::Text(&t.id),
        Param::Blob(&t.hash),
        Param::Text(t.kind.as_str()),
        Param::Text(&t.user_id),
        Param::OptText(t.workspace.as_deref()),
        Param::Int(t.created_at.nanos()),
        Param::OptInt(t.expires_at.map(Timestamp::nanos)),
        Param::OptInt(t.max_expires_at.map(Timestamp::nanos)),
        Param::OptInt(t.ttl_secs.map(|v| i64::try_from(v).unwrap_or(i64::MAX))),
        Param::OptInt(t.revoked_at.map(Timestamp::nanos)),
        Param::Text(&t.description),
        Param::OptText(t.minted_by.as_deref()),
    ]
}

async fn insert_binding(
    tx: &mut dyn Exec,
    b: &BindingRecord,
    lock: &str,
) -> Result<(), StoreError> {
    live_user(tx, &b.user_id, lock).await?;
    workspace_exists(tx, &b.workspace).await?;
    insert_unique(
        tx,
        &format!(
            "INSERT INTO identity_bindings ({BINDING_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            Param::Text(&b.id),
            Param::Text(&b.name),
            Param::Text(&b.workspace),
            Param::Text(&b.user_id),
            Param::Text(&b.issuer),
            Param::Text(&b.rules),
            Param::Int(b.created_at.nanos()),
            Param::Text(&b.created_by),
        ],
        || StoreError::BindingExists(b.name.clone()),
    )
    .await
}

fn rows_to<T>(
    rows: Vec<Row>,
    read: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|r| read(r.as_ref())).collect()
}

/// Tokens with their grants: one query for the tokens, one for all their grants.
async fn tokens_with_grants(
    c: &mut dyn Exec,
    filter: TokenFilter<'_>,
) -> Result<Vec<TokenRecord>, StoreError> {
    let (cond, param) = match filter {
        TokenFilter::Id(id) => ("t.id = $1", Some(id)),
        TokenFilter::User(user) => ("t.user_id = $1", Some(user)),
        TokenFilter::All => ("$1 IS NULL", None),
    };
    let params = [Param::OptText(param)];
    let columns = TOKEN_COLUMNS
        .split(", ")
        .map(|c| format!("t.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = c
        .rows(
            &format!(
                "SELECT {columns}, u.name AS user_name FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE {cond} ORDER BY t.created_at, t.id"
            ),
            &params,
        )
        .await?;
    let mut tokens = rows_to(rows, token_from_row)?;
    let grants = c
        .rows(
            &format!(
                "SELECT g.token_id, g.secret_id, g.name FROM grants g JOIN tokens t ON t.id = g.token_id
                 WHERE {cond} ORDER BY g.name"
            ),
            &params,
        )
        .await?;
    for g in &grants {
        let token = g.text("token_id")?;
        let name = SecretName::parse(&g.text("name")?)
            .map_err(|_| StoreError::Internal("stored grant has an invalid name".into()))?;
        if let Some(t) = tokens.iter_mut().find(|t| t.id == token) {
            t.grants.push(super::Grant {
                secret_id: g.text("secret_id")?,
                name,
            });
        }
    }
    Ok(tokens)
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
    fn describe(&self) -> String {
        self.dialect.describe()
    }

    async fn secrets(&self, filter: SecretFilter<'_>) -> Result<Vec<StoredSecret>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let select = |cond: &str| {
            format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE {cond} ORDER BY workspace, name")
        };
        let (workspace, list): (Option<&str>, Vec<&str>) = match filter {
            SecretFilter::Workspace(ws) => {
                let rows = c
                    .rows(&select("workspace = $1"), &[Param::Text(ws)])
                    .await?;
                return rows_to(rows, secret_from_row);
            }
            SecretFilter::Owner(id) => {
                let rows = c.rows(&select("owner_id = $1"), &[Param::Text(id)]).await?;
                return rows_to(rows, secret_from_row);
            }
            SecretFilter::All => {
                let rows = c.rows(&select("1 = 1"), &[]).await?;
                return rows_to(rows, secret_from_row);
            }
            SecretFilter::Named(ws, names) => {
                (Some(ws), names.iter().map(|n| n.as_str()).collect())
            }
            SecretFilter::Ids(ids) => (None, ids.iter().map(String::as_str).collect()),
        };
        let mut out = Vec::with_capacity(list.len());
        // Bound parameters per statement stay far below either engine's limit.
        for chunk in list.chunks(500) {
            let (cond, mut params) = match workspace {
                Some(ws) => (
                    format!(
                        "workspace = $1 AND name IN ({})",
                        placeholders(2, chunk.len())
                    ),
                    vec![Param::Text(ws)],
                ),
                None => (
                    format!("id IN ({})", placeholders(1, chunk.len())),
                    Vec::new(),
                ),
            };
            params.extend(chunk.iter().map(|v| Param::Text(v)));
            let rows = c.rows_once(&select(&cond), &params).await?;
            out.extend(rows_to(rows, secret_from_row)?);
        }
        Ok(out)
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let rows = c
            .rows(
                "SELECT id, name, admin, created_at, deleted_at FROM users ORDER BY name, created_at",
                &[],
            )
            .await?;
        let members = c
            .rows(
                "SELECT user_id, workspace FROM members ORDER BY workspace",
                &[],
            )
            .await?;
        let members: Vec<(String, String)> = members
            .iter()
            .map(|r| Ok((r.text("user_id")?, r.text("workspace")?)))
            .collect::<Result<_, StoreError>>()?;
        rows.iter()
            .map(|row| {
                let id = row.text("id")?;
                let ws = members
                    .iter()
                    .filter(|(u, _)| *u == id)
                    .map(|(_, w)| w.clone())
                    .collect();
                user_from_row(row.as_ref(), ws)
            })
            .collect()
    }

    async fn workspaces(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let rows = c
            .rows("SELECT name FROM workspaces ORDER BY name", &[])
            .await?;
        rows_to(rows, |r| r.text("name"))
    }

    async fn tokens(&self, filter: TokenFilter<'_>) -> Result<Vec<TokenRecord>, StoreError> {
        let mut c = self.dialect.conn().await?;
        tokens_with_grants(&mut c, filter).await
    }

    async fn bindings(&self) -> Result<Vec<BindingRecord>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let columns = BINDING_COLUMNS
            .split(", ")
            .map(|c| format!("b.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = c
            .rows(
                &format!(
                    "SELECT {columns}, u.name AS user_name FROM identity_bindings b
                     JOIN users u ON u.id = b.user_id ORDER BY b.name"
                ),
                &[],
            )
            .await?;
        rows_to(rows, binding_from_row)
    }

    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let desc = if q.newest { "DESC" } else { "" };
        let order = match q.after {
            Some(_) => format!("id {desc}"),
            None => format!("at {desc}, id {desc}"),
        };
        let rows = c
            .rows(
                &format!(
                    "SELECT id, {AUDIT_COLUMNS} FROM audit
                     WHERE id > $1 AND at >= $2 AND ($3 IS NULL OR workspace = $3)
                     ORDER BY {order} LIMIT $4"
                ),
                &[
                    Param::Int(q.after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX))),
                    Param::Int(q.since.nanos()),
                    Param::OptText(q.workspace.as_deref()),
                    Param::Int(i64::from(q.limit)),
                ],
            )
            .await?;
        let mut out = rows_to(rows, audit_from_row)?;
        if q.newest {
            out.reverse();
        }
        Ok(out)
    }

    async fn prune_audit(
        &self,
        workspace: &str,
        before: Timestamp,
        actions: &[AuditAction],
        limit: u32,
    ) -> Result<u64, StoreError> {
        if actions.is_empty() {
            return Ok(0);
        }
        // One short write transaction per call: the caller deletes in small batches with
        // pauses between them, so a writer never waits behind a long delete. In no particular
        // order: every one of them is past its time, and sorting would read them all each time.
        let list = placeholders(4, actions.len());
        let sql = format!(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit
             WHERE workspace = $1 AND at < $2 AND action IN ({list}) LIMIT $3)"
        );
        let mut params = vec![
            Param::Text(workspace),
            Param::Int(before.nanos()),
            Param::Int(i64::from(limit)),
        ];
        params.extend(actions.iter().map(|a| Param::Text(a.as_str())));
        let mut tx = self.dialect.begin().await?;
        let deleted = tx.run(&sql, &params).await?;
        D::commit(tx).await?;
        Ok(deleted)
    }

    async fn audit_settings(&self) -> Result<Vec<AuditSettings>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let rows = c
            .rows(
                "SELECT name, audit_coalesce_secs, audit_retention_secs FROM workspaces ORDER BY name",
                &[],
            )
            .await?;
        rows_to(rows, |r| {
            let secs =
                |col| Ok::<_, StoreError>(r.opt_int(col)?.map(|v| u64::try_from(v).unwrap_or(0)));
            Ok(AuditSettings {
                workspace: r.text("name")?,
                coalesce_secs: secs("audit_coalesce_secs")?,
                retention_secs: secs("audit_retention_secs")?,
            })
        })
    }

    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.dialect.conn().await?;
        let rows = c
            .rows("SELECT value FROM settings WHERE key = 'key_check'", &[])
            .await?;
        rows.first().map(|r| r.blob("value")).transpose()
    }

    async fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut tx = self.dialect.begin().await?;
        if !batch.audit.is_empty() {
            take_audit_turn::<D>(&mut tx).await?;
        }
        if batch.ops.iter().any(Op::seals) {
            let rows = tx
                .rows(
                    &format!(
                        "SELECT value FROM settings WHERE key = 'key_check' {}",
                        D::LOCK_ROWS
                    ),
                    &[],
                )
                .await?;
            let stored = rows.first().map(|r| r.blob("value")).transpose()?;
            self.fence.admits(stored.as_deref())?;
        }
        for op in &batch.ops {
            apply_op(&mut tx, op, D::LOCK_ROWS).await?;
        }
        insert_audits(&mut tx, &batch.audit, false).await?;
        if !batch.quiet() {
            D::notify(&mut tx).await?;
        }
        D::commit(tx).await
    }

    /// One transaction for all, a savepoint around each batch (rolled back alone when one of
    /// its ops fails), one commit. Batches with sealed writes, which check the write fence, go
    /// one by one.
    async fn apply_each(&self, batches: &[Batch]) -> Vec<Result<(), StoreError>> {
        if batches.len() < 2 || batches.iter().any(|b| b.ops.iter().any(Op::seals)) {
            let mut results = Vec::with_capacity(batches.len());
            for b in batches {
                results.push(self.apply(b).await);
            }
            return results;
        }
        let all = |e: StoreError| batches.iter().map(|_| Err(e.for_another())).collect();
        let mut tx = match self.dialect.begin().await {
            Ok(tx) => tx,
            Err(e) => return all(e),
        };
        if batches.iter().any(|b| !b.audit.is_empty())
            && let Err(e) = take_audit_turn::<D>(&mut tx).await
        {
            return all(e);
        }
        let quiet = batches.iter().all(Batch::quiet);
        if quiet {
            // Tokens only (a node's mass start of identity exchanges): a few statements for
            // all of them instead of sixteen each. Should one fail (an id taken), it is undone
            // and the batches go one by one below, where the failure is the one batch's.
            if let Err(e) = tx.run("SAVEPOINT quiet_batches", &[]).await {
                return all(e.into());
            }
            let fast = apply_quiet(&mut tx, batches, D::LOCK_ROWS).await;
            if let Err(e) = end_savepoint(&mut tx, "quiet_batches", fast.is_ok()).await {
                return all(e.into());
            }
            if let Ok(results) = fast {
                return match D::commit(tx).await {
                    Ok(()) => results,
                    Err(e) => all(e),
                };
            }
        }
        let mut results = Vec::with_capacity(batches.len());
        for b in batches {
            if let Err(e) = tx.run("SAVEPOINT one_batch", &[]).await {
                return all(e.into());
            }
            let applied = apply_batch::<D>(&mut tx, b).await;
            if let Err(e) = end_savepoint(&mut tx, "one_batch", applied.is_ok()).await {
                return all(e.into());
            }
            results.push(applied);
        }
        let committed = async {
            if !quiet {
                D::notify(&mut tx).await?;
            }
            D::commit(tx).await
        }
        .await;
        match committed {
            Ok(()) => results,
            Err(e) => all(e),
        }
    }

    async fn record_reads(&self, audits: &[AuditRecord]) -> Result<(), StoreError> {
        if audits.is_empty() {
            return Ok(());
        }
        self.dialect.record_reads(audits).await
    }

    fn set_write_fence(&self, key_check: Vec<u8>) {
        self.fence.set(key_check);
    }

    fn shared(&self) -> bool {
        self.dialect.shared()
    }

    async fn next_change(&self) -> Result<Option<crate::secret::Timestamp>, StoreError> {
        self.dialect.next_change().await
    }

    async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        self.dialect.backup_to(path).await
    }

    async fn close(&self) {
        self.dialect.close().await;
    }
}

/// One batch's ops and audit records, inside a transaction of several (`apply_each`).
/// Ends savepoint `name`: kept, or (`keep` false) what was done since it undone.
async fn end_savepoint(tx: &mut dyn Exec, name: &str, keep: bool) -> Result<(), sqlx::Error> {
    if !keep {
        tx.run(&format!("ROLLBACK TO SAVEPOINT {name}"), &[])
            .await?;
    }
    tx.run(&format!("RELEASE SAVEPOINT {name}"), &[]).await?;
    Ok(())
}

/// Rows per multi-row token insert, and grant insert: both about 400 parameters (SQLite looks
/// each numbered parameter up by walking a list, see [`insert_audits`]).
const TOKEN_CHUNK: usize = 32;
const GRANT_CHUNK: usize = 128;

/// [`Op::quiet`] batches, all at once: each distinct binding and user checked once, then the
/// tokens, their grants and the audit records in multi-row inserts. The result of each batch is
/// what [`apply_batch`] would have said (the first of its checks to fail); an `Err` of the
/// whole (a statement failed) leaves the caller to undo it and apply them one by one.
async fn apply_quiet(
    tx: &mut dyn Exec,
    batches: &[Batch],
    lock: &str,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    use std::collections::HashMap;
    // Each distinct precondition once, by the statements a batch alone would run.
    let mut bindings: HashMap<&str, bool> = HashMap::new();
    let mut users: HashMap<&str, bool> = HashMap::new();
    for op in batches.iter().flat_map(|b| &b.ops) {
        match op {
            Op::ExpectBinding { id } if !bindings.contains_key(id.as_str()) => {
                let found = match apply_op(tx, op, lock).await {
                    Ok(()) => true,
                    Err(StoreError::BindingNotFound(_)) => false,
                    Err(e) => return Err(e),
                };
                bindings.insert(id, found);
            }
            Op::InsertToken(t) if !users.contains_key(t.user_id.as_str()) => {
                let live = match live_user(tx, &t.user_id, lock).await {
                    Ok(_) => true,
                    Err(StoreError::UserNotFound(_)) => false,
                    Err(e) => return Err(e),
                };
                users.insert(&t.user_id, live);
            }
            Op::ExpectBinding { .. } | Op::InsertToken(_) => {}
            _ => return Err(StoreError::Unavailable("not a quiet batch".into())),
        }
    }
    let verdict = |b: &Batch| {
        for op in &b.ops {
            match op {
                Op::ExpectBinding { id } if !bindings[id.as_str()] => {
                    return Err(StoreError::BindingNotFound(id.clone()));
                }
                Op::InsertToken(t) if !users[t.user_id.as_str()] => {
                    return Err(StoreError::UserNotFound(t.user_id.clone()));
                }
                _ => {}
            }
        }
        Ok(())
    };
    let results: Vec<Result<(), StoreError>> = batches.iter().map(verdict).collect();
    let admitted = || batches.iter().zip(&results).filter(|(_, r)| r.is_ok());
    let tokens: Vec<&TokenRecord> = admitted()
        .flat_map(|(b, _)| &b.ops)
        .filter_map(|op| match op {
            Op::InsertToken(t) => Some(t),
            _ => None,
        })
        .collect();
    for chunk in tokens.chunks(TOKEN_CHUNK) {
        let mut params = Vec::with_capacity(chunk.len() * 12);
        for t in chunk {
            params.extend(token_params(t));
        }
        let sql = format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES {}",
            rows_of(chunk.len(), 12)
        );
        run_chunk(tx, &sql, &params, chunk.len() == TOKEN_CHUNK).await?;
    }
    let grants: Vec<(&str, &super::Grant)> = tokens
        .iter()
        .flat_map(|t| t.grants.iter().map(|g| (t.id.as_str(), g)))
        .collect();
    for chunk in grants.chunks(GRANT_CHUNK) {
        let mut params = Vec::with_capacity(chunk.len() * 3);
        for (id, g) in chunk {
            params.extend([
                Param::Text(id),
                Param::Text(&g.secret_id),
                Param::Text(g.name.as_str()),
            ]);
        }
        let sql = format!(
            "INSERT INTO grants (token_id, secret_id, name) VALUES {}",
            rows_of(chunk.len(), 3)
        );
        run_chunk(tx, &sql, &params, chunk.len() == GRANT_CHUNK).await?;
    }
    let audits: Vec<AuditRecord> = admitted().flat_map(|(b, _)| b.audit.clone()).collect();
    insert_audits(tx, &audits, false).await?;
    Ok(results)
}

/// `($1, ..., $w), ($w+1, ...), ...`: `n` rows of `width` numbered parameters.
fn rows_of(n: usize, width: usize) -> String {
    (0..n)
        .map(|i| format!("({})", placeholders(i * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A multi-row statement: a full chunk is always the same text, kept prepared; a remainder's
/// is not kept (see [`insert_audits`]).
async fn run_chunk(
    tx: &mut dyn Exec,
    sql: &str,
    params: &[Param<'_>],
    full: bool,
) -> Result<(), StoreError> {
    if full {
        tx.run(sql, params).await?;
    } else {
        tx.run_once(sql, params).await?;
    }
    Ok(())
}

async fn apply_batch<D: Dialect>(tx: &mut D::Tx, batch: &Batch) -> Result<(), StoreError> {
    for op in &batch.ops {
        apply_op(tx, op, D::LOCK_ROWS).await?;
    }
    insert_audits(tx, &batch.audit, false).await
}

/// Waits for this transaction's turn to append audit records (`Dialect::AUDIT_ORDER`), first
/// thing in it: a transaction holding the turn then never waits for a row lock another holds
/// while waiting for the turn.
async fn take_audit_turn<D: Dialect>(tx: &mut D::Tx) -> Result<(), StoreError> {
    if !D::AUDIT_ORDER.is_empty() {
        tx.run(D::AUDIT_ORDER, &[]).await?;
    }
    Ok(())
}

/// The audit columns' values of `a`, in [`AUDIT_COLUMNS`] order, as text (bulk writers).
pub(super) fn audit_fields(a: &AuditRecord) -> Result<[String; 13], StoreError> {
    Ok([
        a.at.nanos().to_string(),
        first_at(a).to_string(),
        count_i64(a.count)?.to_string(),
        a.workspace.clone(),
        a.actor.clone(),
        a.actor_id.clone(),
        a.action.as_str().to_owned(),
        a.target_kind.as_str().to_owned(),
        a.target.clone(),
        a.target_id.clone(),
        version_i64(a.version)?.to_string(),
        a.detail.clone(),
        a.address.clone(),
    ])
}

/// The stored `first_at`: 0 for a record of one event.
fn first_at(a: &AuditRecord) -> i64 {
    a.first_at.map_or(0, |t| t.nanos())
}

fn count_i64(count: u64) -> Result<i64, StoreError> {
    i64::try_from(count.max(1))
        .map_err(|_| StoreError::Invalid(format!("audit count {count} is out of range")))
}

/// Rows per multi-row audit insert.
const AUDIT_CHUNK: usize = 200;

/// Multi-row audit inserts: a batch's records (`$n` placeholders, both engines), and SQLite's
/// bulk path for reads (PostgreSQL's is COPY), with `?` placeholders (`anonymous`): sqlx's
/// SQLite driver looks every numbered parameter's name up when it binds, and SQLite finds a
/// name by walking a list, so a 2,200-parameter statement spent 35 % of a loaded server's CPU
/// in `sqlite3_bind_parameter_name` (perf, during `scripts/bench-server`); positional
/// parameters have no name to look up.
pub(super) async fn insert_audits(
    tx: &mut dyn Exec,
    audits: &[AuditRecord],
    anonymous: bool,
) -> Result<(), StoreError> {
    for chunk in audits.chunks(AUDIT_CHUNK) {
        let mut sql = format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ");
        let mut params = Vec::with_capacity(chunk.len() * 13);
        for (i, a) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            if anonymous {
                sql.push_str("?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?");
            } else {
                sql.push_str(&placeholders(i * 13 + 1, 13));
            }
            sql.push(')');
            // In AUDIT_COLUMNS order, as audit_fields lists them for COPY.
            params.extend([
                Param::Int(a.at.nanos()),
                Param::Int(first_at(a)),
                Param::Int(count_i64(a.count)?),
                Param::Text(&a.workspace),
                Param::Text(&a.actor),
                Param::Text(&a.actor_id),
                Param::Text(a.action.as_str()),
                Param::Text(a.target_kind.as_str()),
                Param::Text(&a.target),
                Param::Text(&a.target_id),
                Param::Int(version_i64(a.version)?),
                Param::Text(&a.detail),
                Param::Text(&a.address),
            ]);
        }
        // A full chunk is always the same statement: prepared once per connection and kept.
        // The remainder's length varies and is not kept, so the cache holds one statement,
        // not one per batch size (which once grew a server by 20 MB a minute).
        if chunk.len() == AUDIT_CHUNK {
            tx.run(&sql, &params).await?;
        } else {
            tx.run_once(&sql, &params).await?;
        }
    }
    Ok(())
}
