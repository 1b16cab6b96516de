//! Rows and the model: the column lists, typed column access the same for both drivers' rows,
//! the readers from rows to the model, and the checks on driver errors.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{
    AuditAction, AuditRecord, BindingRecord, StoreError, StoredSecret, TargetKind, TokenRecord,
    User,
};
use crate::auth::TokenKind;
use crate::secret::{SecretMeta, SecretName, Timestamp};

pub(super) const SECRET_COLUMNS: &str = "workspace, name, id, kind, visibility, owner, owner_id, \
                                         tags, version, sealed, created_at, updated_at";
/// In the order `INSERT INTO tokens` binds them.
pub(super) const TOKEN_COLUMNS: &str = "id, hash, kind, user_id, workspace, created_at, \
                                        expires_at, max_expires_at, ttl_secs, revoked_at, \
                                        description, minted_by";
/// In the order `INSERT INTO identity_bindings` binds them.
pub(super) const BINDING_COLUMNS: &str =
    "id, name, workspace, user_id, issuer, rules, created_at, created_by";
/// In the order `sql::audit_fields` lists them.
pub(super) const AUDIT_COLUMNS: &str = "at, first_at, count, workspace, actor, actor_id, action, target_kind, \
                                        target, target_id, version, detail, address";

/// Typed column access, the same for both drivers' rows. A missing column or a type mismatch
/// is a store bug (the schema and these readers disagree), hence `Internal`.
pub trait Columns {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
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
            fn blob(&self, col: &str) -> Result<Vec<u8>, StoreError> {
                self.try_get(col).map_err(column_err)
            }
        }
    };
}

columns_for!(SqliteRow);
columns_for!(PgRow);

fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("stored row has an invalid {what}"))
}

pub(super) fn secret_from_row(row: &dyn Columns) -> Result<StoredSecret, StoreError> {
    Ok(StoredSecret {
        id: row.text("id")?,
        workspace: row.text("workspace")?,
        owner_id: row.text("owner_id")?,
        meta: SecretMeta {
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
        },
        sealed: row.blob("sealed")?,
    })
}

pub(super) fn audit_from_row(row: &dyn Columns) -> Result<AuditRecord, StoreError> {
    let action = row.text("action")?;
    let kind = row.text("target_kind")?;
    let at = Timestamp::from_nanos(row.int("at")?);
    let first_at = row.int("first_at")?;
    Ok(AuditRecord {
        id: u64::try_from(row.int("id")?).unwrap_or(0),
        at,
        first_at: (first_at != 0).then(|| Timestamp::from_nanos(first_at)),
        count: u64::try_from(row.int("count")?).unwrap_or(1).max(1),
        workspace: row.text("workspace")?,
        actor: row.text("actor")?,
        actor_id: row.text("actor_id")?,
        action: AuditAction::parse(&action)
            .ok_or_else(|| StoreError::Internal(format!("unknown audit action {action:?}")))?,
        target_kind: TargetKind::parse(&kind)
            .ok_or_else(|| StoreError::Internal(format!("unknown audit target {kind:?}")))?,
        target: row.text("target")?,
        target_id: row.text("target_id")?,
        version: u64::try_from(row.int("version")?).unwrap_or(0),
        detail: row.text("detail")?,
        address: row.text("address")?,
    })
}

/// A token from a `tokens` row joined with its user's name; grants are added by the caller.
pub(super) fn token_from_row(row: &dyn Columns) -> Result<TokenRecord, StoreError> {
    let ts = |col: &str| Ok::<_, StoreError>(row.opt_int(col)?.map(Timestamp::from_nanos));
    Ok(TokenRecord {
        id: row.text("id")?,
        hash: row.blob("hash")?,
        kind: TokenKind::parse(&row.text("kind")?).ok_or_else(|| bad("token kind"))?,
        user_id: row.text("user_id")?,
        user: row.text("user_name")?,
        workspace: row.opt_text("workspace")?,
        grants: Vec::new(),
        created_at: Timestamp::from_nanos(row.int("created_at")?),
        expires_at: ts("expires_at")?,
        max_expires_at: ts("max_expires_at")?,
        ttl_secs: row.opt_int("ttl_secs")?.and_then(|t| u64::try_from(t).ok()),
        revoked_at: ts("revoked_at")?,
        description: row.text("description")?,
        minted_by: row.opt_text("minted_by")?,
    })
}

/// A binding from an `identity_bindings` row joined with its user's name.
pub(super) fn binding_from_row(row: &dyn Columns) -> Result<BindingRecord, StoreError> {
    Ok(BindingRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        workspace: row.text("workspace")?,
        user_id: row.text("user_id")?,
        user: row.text("user_name")?,
        issuer: row.text("issuer")?,
        rules: row.text("rules")?,
        created_at: Timestamp::from_nanos(row.int("created_at")?),
        created_by: row.text("created_by")?,
    })
}

/// A user from a `users` row and the workspaces it is a member of.
pub(super) fn user_from_row(
    row: &dyn Columns,
    workspaces: Vec<String>,
) -> Result<User, StoreError> {
    Ok(User {
        id: row.text("id")?,
        name: row.text("name")?,
        admin: row.int("admin")? != 0,
        created_at: Timestamp::from_nanos(row.int("created_at")?),
        deleted_at: row.opt_int("deleted_at")?.map(Timestamp::from_nanos),
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
