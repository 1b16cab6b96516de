//! Persistence of sealed secrets: the [`Store`] trait, its SQLite implementation, and the
//! [`Vault`] that every caller uses on top of it.
//!
//! The split keeps cryptography out of SQL: a `Store` only ever receives and returns ciphertext
//! (so no backend can leak a value), and the `Vault` seals, opens, validates and audits, once, for
//! every backend.

pub mod local;
pub mod postgres;
mod rows;
pub mod sqlite;
mod vault;

use async_trait::async_trait;
use serde::Serialize;

use crate::auth::TokenKind;
use crate::secret::{SecretKind, SecretMeta, SecretName, Timestamp, Visibility};

pub use vault::{Actor, NewSecret, SecretUpdate, Vault};

/// The workspace the local store holds (a local store is one workspace).
pub const DEFAULT_WORKSPACE: &str = "default";

/// One secret as stored: metadata, its random id, and the sealed value.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub meta: SecretMeta,
    /// Random, fixed at creation; bound into every ciphertext of this secret.
    pub id: String,
    pub sealed: Vec<u8>,
}

/// The key check a store's sealed writes must still find (see [`Store::set_write_fence`]).
#[derive(Default)]
pub(crate) struct WriteFence(std::sync::RwLock<Option<Vec<u8>>>);

impl WriteFence {
    pub(crate) fn set(&self, key_check: Vec<u8>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key_check);
    }

    /// `KeyRotated` unless `stored` (read in the writing transaction) is the fence; a store
    /// with no fence set (a tool working below the vault) writes unchecked.
    pub(crate) fn admits(&self, stored: Option<&[u8]>) -> Result<(), StoreError> {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            Some(fence) if stored != Some(fence.as_slice()) => Err(StoreError::KeyRotated),
            _ => Ok(()),
        }
    }
}

/// A change to an existing secret, applied atomically with a version check.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// A new sealed value; the version becomes `expected_version + 1`.
    pub sealed: Option<Vec<u8>>,
    pub visibility: Option<Visibility>,
    pub tags: Option<Vec<String>>,
    pub kind: Option<SecretKind>,
}

/// What happened, recorded with every change and every workload read. Never holds a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    Create,
    Update,
    Delete,
    Read,
    /// Values re-sealed under a new master key (not a change of any value).
    Rekey,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
            AuditAction::Read => "read",
            AuditAction::Rekey => "rekey",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AuditAction::Create,
            AuditAction::Update,
            AuditAction::Delete,
            AuditAction::Read,
            AuditAction::Rekey,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub at: Timestamp,
    pub workspace: String,
    /// Who did it: a user name, or a workload token's id.
    pub actor: String,
    pub action: AuditAction,
    pub secret: String,
    /// The version after the action (the version read, for reads).
    pub version: u64,
    /// What changed, in words ("value", "visibility=public"); never a value.
    pub detail: String,
    /// Where the request came from (the client's address), empty for local commands.
    pub address: String,
}

/// A person (or service account) of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub admin: bool,
    pub created_at: Timestamp,
    /// The workspaces the user belongs to.
    pub workspaces: Vec<String>,
}

/// A token as stored: never the token itself, only the hash of its secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub hash: Vec<u8>,
    pub kind: TokenKind,
    pub user: String,
    /// Workload tokens: the workspace of their secrets.
    pub workspace: Option<String>,
    /// Workload tokens: the secrets they may read.
    pub secrets: Vec<SecretName>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// Workload tokens: renewals never push the expiry past this.
    pub max_expires_at: Option<Timestamp>,
    /// Workload tokens: how far a renewal moves the expiry.
    pub ttl_secs: Option<u64>,
    pub revoked_at: Option<Timestamp>,
    pub description: String,
}

/// A valid user or workspace name: 1 to 64 characters, letters, digits, '_', '.', '@', '-',
/// not starting with '.' or '-' (e-mail addresses work as user names).
pub fn valid_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
}

/// Why a store operation failed. Messages name the thing and never carry a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("secret \"{0}\" not found")]
    NotFound(SecretName),
    #[error("secret \"{0}\" already exists in this workspace")]
    AlreadyExists(SecretName),
    /// Another writer changed the secret between read and write; the vault retries.
    #[error("secret \"{0}\" was changed concurrently; try again")]
    VersionConflict(SecretName),
    #[error("workspace \"{0}\" not found")]
    WorkspaceNotFound(String),
    #[error("workspace \"{0}\" already exists")]
    WorkspaceExists(String),
    #[error("user \"{0}\" not found")]
    UserNotFound(String),
    #[error("user \"{0}\" already exists")]
    UserExists(String),
    #[error("token \"{0}\" not found")]
    TokenNotFound(String),
    #[error("secret \"{0}\" cannot be decrypted: the key does not match, or the row was altered")]
    Undecryptable(SecretName),
    #[error("{0}")]
    NotAStore(String),
    #[error("{0}")]
    KeyMismatch(String),
    /// The store's key check changed since this process loaded its keys: another process
    /// rotated the master key. Nothing was written.
    #[error(
        "the master key was rotated by another process and this process's key file does not \
         hold the new key; give it the current key file (nothing was written)"
    )]
    KeyRotated,
    #[error("the store is out of disk space; free space and retry (nothing was written)")]
    OutOfSpace,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    /// This kind of store cannot do that (the message says what to use instead).
    #[error("{0}")]
    Unsupported(String),
    #[error("store error: {0}")]
    Internal(String),
}

/// Persistence of sealed secrets and the audit log, one implementation per database.
///
/// Implementations hold ciphertext only and do not check permissions; the [`Vault`] and the
/// server above it do. Every mutating method writes its audit record in the same transaction,
/// so an acknowledged change always has its record.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A one-line description for logs, e.g. `sqlite:/var/lib/secretfs/store.db`.
    fn describe(&self) -> String;

    /// The key-check blob sealed at initialisation, if the store has one.
    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores the key-check blob; only called on a new store.
    async fn set_key_check(&self, sealed: &[u8]) -> Result<(), StoreError>;
    /// Replaces the key-check blob (the first step of a key rotation's re-sealing).
    async fn replace_key_check(&self, sealed: &[u8]) -> Result<(), StoreError>;
    /// The key check this process's seals belong to: a write carrying a sealed value is refused
    /// with `KeyRotated`, in the transaction that would write it, when the stored key check is
    /// no longer this one. That is what keeps a process with a stale key from writing a value
    /// a rotation has already passed over and whose key it is about to drop.
    fn set_write_fence(&self, key_check: Vec<u8>);
    /// Replaces a secret's sealed value without changing its version or times, if it is still at
    /// `version` (else `VersionConflict`): a key rotation re-sealing it.
    async fn reseal(
        &self,
        workspace: &str,
        name: &SecretName,
        version: u64,
        sealed: &[u8],
    ) -> Result<(), StoreError>;
    /// Writes a consistent copy of the store to `path` (ciphertext, as stored).
    async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        let _ = path;
        Err(StoreError::Unsupported(
            "this store has no built-in backup; for PostgreSQL use pg_dump (see the README)".into(),
        ))
    }

    /// Metadata of every secret in `workspace`, sorted by name.
    async fn list(&self, workspace: &str) -> Result<Vec<SecretMeta>, StoreError>;
    async fn get(&self, workspace: &str, name: &SecretName) -> Result<StoredSecret, StoreError>;
    /// The rows of those of `names` that exist, in one round trip (a mount loads hundreds).
    async fn get_many(
        &self,
        workspace: &str,
        names: &[SecretName],
    ) -> Result<Vec<StoredSecret>, StoreError>;
    /// Inserts a new secret; `AlreadyExists` if the name is taken in the workspace.
    async fn insert(
        &self,
        workspace: &str,
        secret: &StoredSecret,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;
    /// Inserts several new secrets in one transaction: all or none (`AlreadyExists` names the
    /// first taken name).
    async fn insert_many(
        &self,
        workspace: &str,
        secrets: &[(StoredSecret, AuditRecord)],
    ) -> Result<(), StoreError>;
    /// Applies `change` if the secret is still at `expected_version`, else `VersionConflict`.
    async fn update(
        &self,
        workspace: &str,
        name: &SecretName,
        expected_version: u64,
        change: &Change,
        at: Timestamp,
        audit: &AuditRecord,
    ) -> Result<SecretMeta, StoreError>;
    async fn delete(
        &self,
        workspace: &str,
        name: &SecretName,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;
    /// Appends audit records on their own, in one transaction (workload reads).
    async fn record(&self, audits: &[AuditRecord]) -> Result<(), StoreError>;
    /// Every row of a workspace (the server's read cache).
    async fn get_all(&self, workspace: &str) -> Result<Vec<StoredSecret>, StoreError>;

    async fn create_workspace(&self, name: &str, at: Timestamp) -> Result<(), StoreError>;
    async fn workspaces(&self) -> Result<Vec<String>, StoreError>;
    /// Creates a user, their memberships and (optionally) their first token, atomically.
    async fn create_user(&self, user: &User, token: Option<&TokenRecord>)
    -> Result<(), StoreError>;
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    async fn user(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// Deletes a user with their memberships and tokens (their secrets stay, owned by the name).
    async fn delete_user(&self, name: &str) -> Result<(), StoreError>;
    async fn add_member(&self, user: &str, workspace: &str) -> Result<(), StoreError>;
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Tokens of `user`, or of everyone.
    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError>;
    async fn set_token_expiry(&self, id: &str, expires_at: Timestamp) -> Result<(), StoreError>;
    /// Marks a token revoked; `TokenNotFound` if there is no such token.
    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Audit records at or after `since`, every workspace, oldest first, at most `limit`.
    async fn audit_since(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Flushes and closes connections (SQLite checkpoints its WAL), so the next open is quick.
    async fn close(&self);

    /// Whether other processes may change this store (replicas over one PostgreSQL): then the
    /// server listens with [`Store::next_change`] and re-checks periodically.
    fn shared(&self) -> bool {
        false
    }

    /// Waits for a change committed by another process. Stores with one writer never return.
    async fn next_change(&self) -> Result<(), StoreError> {
        std::future::pending().await
    }
    /// The newest `limit` audit records of a workspace, oldest first.
    async fn audit_log(&self, workspace: &str, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
}
