//! What the SQLite and PostgreSQL stores share: the column lists, the conversions between rows
//! and the model, and the checks on driver errors. The two stores differ in SQL dialect,
//! transactions and change notification, not in what a row means, so a row is read once, here.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{AuditAction, AuditRecord, StoreError, StoredSecret, TokenRecord, User};
use crate::auth::TokenKind;
use crate::secret::{SecretMeta, SecretName, Timestamp};

pub(super) const META_COLUMNS: &str =
    "name, kind, visibility, owner, tags, version, created_at, updated_at";
pub(super) const TOKEN_COLUMNS: &str = "id, hash, kind, user_name, workspace, secrets, \
                                        created_at, expires_at, max_expires_at, ttl_secs, \
                                        revoked_at, description";

/// Typed column access, the same for both drivers' rows. A missing column or a type mismatch
/// is a store bug (the schema and these readers disagree), hence `Internal`.
pub(super) trait Columns {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
    fn blob(&self, col: &str) -> Result<Vec<u8>, StoreError>;
}

fn column_err(e: sqlx::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> Result<String, StoreError> {
                self.try_get(col).map_err(column_err)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                self.try_get(col).map_err(column_err)
            }
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                self.try_get(col).map_err(column_err)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                self.try_get(col).map_err(column_err)
            }
            fn flag(&self, col: &str) -> Result<bool, StoreError> {
                self.try_get(col).map_err(column_err)
            }
            fn blob(&self, col: &str) -> Result<Vec<u8>, StoreError> {
                self.try_get(col).map_err(column_err)
            }
        }
    };
}

columns_for!(SqliteRow);
columns_for!(PgRow);

pub(super) fn meta_from_row(row: &impl Columns) -> Result<SecretMeta, StoreError> {
    let bad = |what: &str| StoreError::Internal(format!("stored row has an invalid {what}"));
    Ok(SecretMeta {
        name: SecretName::parse(&row.text("name")?).map_err(|_| bad("name"))?,
        kind: row.text("kind")?.parse().map_err(|_| bad("kind"))?,
        visibility: row
            .text("visibility")?
            .parse()
            .map_err(|_| bad("visibility"))?,
        owner: row.text("owner")?,
        tags: serde_json::from_str(&row.text("tags")?).map_err(|_| bad("tag list"))?,
        version: u64::try_from(row.int("version")?).map_err(|_| bad("version"))?,
        created_at: Timestamp::from_nanos(row.int("created_at")?),
        updated_at: Timestamp::from_nanos(row.int("updated_at")?),
    })
}

pub(super) fn stored_from_row(row: &impl Columns) -> Result<StoredSecret, StoreError> {
    Ok(StoredSecret {
        meta: meta_from_row(row)?,
        id: row.text("id")?,
        sealed: row.blob("sealed")?,
    })
}

pub(super) fn audit_from_row(row: &impl Columns) -> Result<AuditRecord, StoreError> {
    let action = row.text("action")?;
    Ok(AuditRecord {
        at: Timestamp::from_nanos(row.int("at")?),
        workspace: row.text("workspace")?,
        actor: row.text("actor")?,
        action: AuditAction::parse(&action)
            .ok_or_else(|| StoreError::Internal(format!("unknown audit action {action:?}")))?,
        secret: row.text("secret")?,
        version: u64::try_from(row.int("version")?).unwrap_or(0),
        detail: row.text("detail")?,
        address: row.text("address")?,
    })
}

pub(super) fn token_from_row(row: &impl Columns) -> Result<TokenRecord, StoreError> {
    let bad = |what: &str| StoreError::Internal(format!("stored token has an invalid {what}"));
    let ts = |col: &str| Ok::<_, StoreError>(row.opt_int(col)?.map(Timestamp::from_nanos));
    Ok(TokenRecord {
        id: row.text("id")?,
        hash: row.blob("hash")?,
        kind: TokenKind::parse(&row.text("kind")?).ok_or_else(|| bad("kind"))?,
        user: row.text("user_name")?,
        workspace: row.opt_text("workspace")?,
        secrets: serde_json::from_str(&row.text("secrets")?).map_err(|_| bad("secret list"))?,
        created_at: Timestamp::from_nanos(row.int("created_at")?),
        expires_at: ts("expires_at")?,
        max_expires_at: ts("max_expires_at")?,
        ttl_secs: row.opt_int("ttl_secs")?.and_then(|t| u64::try_from(t).ok()),
        revoked_at: ts("revoked_at")?,
        description: row.text("description")?,
    })
}

/// A user from a `users` row and the workspaces it is a member of.
pub(super) fn user_from_row(
    row: &impl Columns,
    workspaces: Vec<String>,
) -> Result<User, StoreError> {
    Ok(User {
        name: row.text("name")?,
        admin: row.flag("admin")?,
        created_at: Timestamp::from_nanos(row.int("created_at")?),
        workspaces,
    })
}

pub(super) fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("a list of strings always serializes")
}

pub(super) fn version_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("version {v} is out of range")))
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}
