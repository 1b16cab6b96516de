//! Persistence: rows of ciphertext, accounts and the audit log, behind the narrow [`Store`]
//! trait; the [`Vault`] that seals and opens values for it.
//!
//! A store is a dumb, exact executor. It answers reads with rows and applies a [`Batch`] of
//! writes (its [`Op`]s and the audit records that describe them) in one transaction, or none of
//! it; it holds no rules about who may do what. The rules, the audit records and the change
//! events are the service layer's (`crate::service`), the one door to a store. A store only
//! ever sees ciphertext, so no backend can leak a value.
//!
//! The statements are written once (`sql`), for SQLite (`sqlite`, the default) and PostgreSQL
//! (`postgres`, for replicas); each engine adds only what it does differently (opening and
//! migrations, the write fence, change notification, bulk audit writes, backups).

pub mod local;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;
pub(crate) mod vault;

use async_trait::async_trait;
use serde::Serialize;

use crate::auth::TokenKind;
use crate::secret::{SecretKind, SecretMeta, SecretName, Timestamp, Visibility};

pub use vault::Vault;

/// The workspace the local store holds (a local store is one workspace).
pub const DEFAULT_WORKSPACE: &str = "default";

/// An id that is never reused (users and secrets); tokens have their own 64-bit ids, in their
/// text.
pub use crate::auth::new_id;

/// One secret as stored: where it lives, whose it is, its metadata and the sealed value.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    /// Random, fixed at creation, never reused; bound into every ciphertext of this secret, and
    /// what a workload token's grant names.
    pub id: String,
    pub workspace: String,
    /// The owner's user id (`meta.owner` is their name, for display).
    pub owner_id: String,
    pub meta: SecretMeta,
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

/// A change to an existing secret's row; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// A new sealed value; the version becomes `expected_version + 1`.
    pub sealed: Option<Vec<u8>>,
    pub visibility: Option<Visibility>,
    pub tags: Option<Vec<String>>,
    pub kind: Option<SecretKind>,
}

/// What happened. Recorded for every change (in its transaction) and every workload read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    /// A secret created.
    Create,
    /// A secret's value or tags replaced.
    Update,
    /// A secret's visibility changed (and nothing else).
    Visibility,
    Delete,
    /// A workload read a value.
    Read,
    /// A workload asked for secrets its token may not read (or that do not exist), and was
    /// refused the whole read. Each is a record of its own: never coalesced.
    ReadRefused,
    /// Values re-sealed under a new master key (not a change of any value).
    Rekey,
    WorkspaceCreate,
    /// A workspace's audit settings changed (coalescing interval, retention).
    WorkspaceAudit,
    UserAdd,
    UserDelete,
    MemberAdd,
    MemberRemove,
    TokenMint,
    TokenRenew,
    TokenRevoke,
    Backup,
    /// A workload-identity binding added or removed.
    IdentityAdd,
    IdentityRemove,
    /// A platform token exchanged for a workload token, and one refused.
    IdentityExchange,
    IdentityExchangeRefused,
    /// A workload's call through its launcher's broker, which added a secret's value.
    Brokered,
    /// A request whose credential was refused: unknown or malformed, expired, revoked, of a
    /// deleted user, or of the wrong kind (the detail says which).
    AuthFailed,
}

impl AuditAction {
    /// Every action, for parsing and for the test that each mutation has one.
    pub const ALL: [AuditAction; 23] = [
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Visibility,
        AuditAction::Delete,
        AuditAction::Read,
        AuditAction::ReadRefused,
        AuditAction::Rekey,
        AuditAction::WorkspaceCreate,
        AuditAction::WorkspaceAudit,
        AuditAction::UserAdd,
        AuditAction::UserDelete,
        AuditAction::MemberAdd,
        AuditAction::MemberRemove,
        AuditAction::TokenMint,
        AuditAction::TokenRenew,
        AuditAction::TokenRevoke,
        AuditAction::Backup,
        AuditAction::IdentityAdd,
        AuditAction::IdentityRemove,
        AuditAction::IdentityExchange,
        AuditAction::IdentityExchangeRefused,
        AuditAction::Brokered,
        AuditAction::AuthFailed,
    ];

    /// The actions that repeat without changing anything (reads, refused reads, brokered
    /// calls, refused credentials and exchanges): pruned after the retention. Every other
    /// action records a change and is kept.
    pub const REPEATED: [AuditAction; 5] = [
        AuditAction::Read,
        AuditAction::ReadRefused,
        AuditAction::Brokered,
        AuditAction::AuthFailed,
        AuditAction::IdentityExchangeRefused,
    ];

    pub fn repeated(self) -> bool {
        Self::REPEATED.contains(&self)
    }

    /// Repeated actions whose alike events are coalesced into one record per interval: all but
    /// a refused read, which is always a record of its own.
    pub fn coalesced(self) -> bool {
        self.repeated() && self != AuditAction::ReadRefused
    }

    /// A refused credential or exchange.
    pub fn refusal(self) -> bool {
        matches!(
            self,
            AuditAction::AuthFailed | AuditAction::IdentityExchangeRefused
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Visibility => "visibility",
            AuditAction::Delete => "delete",
            AuditAction::Read => "read",
            AuditAction::ReadRefused => "read-refused",
            AuditAction::Rekey => "rekey",
            AuditAction::WorkspaceCreate => "workspace-create",
            AuditAction::WorkspaceAudit => "workspace-audit",
            AuditAction::UserAdd => "user-add",
            AuditAction::UserDelete => "user-delete",
            AuditAction::MemberAdd => "member-add",
            AuditAction::MemberRemove => "member-remove",
            AuditAction::TokenMint => "token-mint",
            AuditAction::TokenRenew => "token-renew",
            AuditAction::TokenRevoke => "token-revoke",
            AuditAction::Backup => "backup",
            AuditAction::IdentityAdd => "identity-add",
            AuditAction::IdentityRemove => "identity-remove",
            AuditAction::IdentityExchange => "identity-exchange",
            AuditAction::IdentityExchangeRefused => "identity-exchange-refused",
            AuditAction::Brokered => "brokered",
            AuditAction::AuthFailed => "auth-failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Secret,
    User,
    Workspace,
    /// A membership: the target is the user, the record's workspace the workspace.
    Member,
    Token,
    /// The master key.
    Key,
    /// The whole store (a backup).
    Store,
    /// A workload-identity binding.
    Binding,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Secret => "secret",
            TargetKind::User => "user",
            TargetKind::Workspace => "workspace",
            TargetKind::Member => "member",
            TargetKind::Token => "token",
            TargetKind::Key => "key",
            TargetKind::Store => "store",
            TargetKind::Binding => "binding",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            TargetKind::Secret,
            TargetKind::User,
            TargetKind::Workspace,
            TargetKind::Member,
            TargetKind::Token,
            TargetKind::Key,
            TargetKind::Store,
            TargetKind::Binding,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One audit log entry: who did what to what, by name and by id. Never holds a value or a token.
/// A coalesced entry stands for `count` alike events from `first_at` to `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// The store's sequence number, in commit order (0 until stored).
    pub id: u64,
    /// When it happened; for a coalesced record, the last of its events.
    pub at: Timestamp,
    /// The first of its events, for a coalesced record (`None` for a record of one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_at: Option<Timestamp>,
    /// How many alike events it stands for (1 for every change).
    pub count: u64,
    /// The workspace concerned, empty for actions on the whole server (users, keys).
    pub workspace: String,
    /// Who did it: a user name, `workload:ID` for a workload token, or the local user.
    pub actor: String,
    /// The acting user's id (for workload reads, the token's user).
    pub actor_id: String,
    pub action: AuditAction,
    pub target_kind: TargetKind,
    /// The target's name (a secret, a user, a workspace) or a token's id.
    pub target: String,
    pub target_id: String,
    /// A secret's version after the action (the version read, for reads); 0 otherwise.
    pub version: u64,
    /// What changed, in words ("value", "visibility=public", "for bob"); never a value.
    pub detail: String,
    /// Where the request came from (the client's address), empty for local commands.
    pub address: String,
}

/// A person (or service account) of the server. Deleted users stay as tombstones (their id and
/// name, for the audit log and for the public secrets they owned); the name is free again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// The workspaces the user belongs to.
    pub workspaces: Vec<String>,
}

impl User {
    pub fn live(&self) -> bool {
        self.deleted_at.is_none()
    }
}

/// A workload token's permission for one secret: by id, with the name it had (for display and
/// for the workload's file and variable names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub secret_id: String,
    pub name: SecretName,
}

/// A token as stored: never the token itself, only the hash of its secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub hash: Vec<u8>,
    pub kind: TokenKind,
    pub user_id: String,
    /// The user's name, read with the token.
    pub user: String,
    /// Workload tokens: the workspace of their secrets.
    pub workspace: Option<String>,
    /// Workload tokens: the secrets they may read, by id.
    pub grants: Vec<Grant>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// Workload tokens: renewals never push the expiry past this.
    pub max_expires_at: Option<Timestamp>,
    /// Workload tokens: how far a renewal moves the expiry.
    pub ttl_secs: Option<u64>,
    pub revoked_at: Option<Timestamp>,
    pub description: String,
    /// What minted this one: a token's id, `binding:ID` for a workload-identity exchange, or
    /// nothing (`user add`, `serve --init`).
    pub minted_by: Option<String>,
}

/// A workload-identity binding as stored: the columns the store keys and joins on, and its
/// rules as one JSON document only the service reads (`identity::Rules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    pub id: String,
    pub name: String,
    pub workspace: String,
    pub user_id: String,
    /// The user's name, read with the binding.
    pub user: String,
    pub issuer: String,
    pub rules: String,
    pub created_at: Timestamp,
    /// The admin who added it (a user id).
    pub created_by: String,
}

/// `minted_by` of the workload tokens a binding's exchanges mint.
pub fn minted_by_binding(binding_id: &str) -> String {
    format!("binding:{binding_id}")
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

/// Which secrets to read.
#[derive(Debug, Clone, Copy)]
pub enum SecretFilter<'a> {
    /// Every secret of a workspace (the server's snapshot of it).
    Workspace(&'a str),
    /// Those of a workspace with these names, in one round trip (a mount loads hundreds).
    Named(&'a str, &'a [SecretName]),
    Ids(&'a [String]),
    /// Every secret a user owns, in every workspace.
    Owner(&'a str),
    /// Every secret of the store (a key rotation's scan).
    All,
}

/// Which tokens to read.
#[derive(Debug, Clone, Copy)]
pub enum TokenFilter<'a> {
    Id(&'a str),
    User(&'a str),
    All,
}

/// A workspace's audit settings; `None` is the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditSettings {
    pub workspace: String,
    /// How long repeated events are coalesced into one record, in seconds.
    pub coalesce_secs: Option<u64>,
    /// How long repeated-event records are kept, in seconds.
    pub retention_secs: Option<u64>,
}

/// Which audit records to read: at or after `since`, of `workspace` if given, at most `limit`;
/// the oldest first, or the newest `limit` (still oldest first) when `newest` is set. With
/// `after`, only records committed after the one with that id, in id order (the order they
/// were committed in: an export's resumable position is the last id it wrote); else in time
/// order.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    pub after: Option<u64>,
    pub since: Timestamp,
    pub workspace: Option<String>,
    pub limit: u32,
    pub newest: bool,
}

/// One write of a [`Batch`]. Each is one statement (or a check and one statement), applied in
/// order inside the batch's transaction; the preconditions make concurrent writers meet as
/// errors, never as lost changes.
#[derive(Debug, Clone)]
pub enum Op {
    /// Records the key check of a new store (`Conflict` if it has one).
    InitKeyCheck(Vec<u8>),
    /// Replaces the key check: a key rotation's first step.
    ReplaceKeyCheck(Vec<u8>),
    /// A new secret. `AlreadyExists` if the name is taken in its workspace, `WorkspaceNotFound`,
    /// `UserNotFound` unless the owner is a live user.
    InsertSecret(StoredSecret),
    /// Changes a secret if it is still what the caller decided on: at `expected_version`, with
    /// `expected.owner_id` and `expected.visibility` (a visibility change does not move the
    /// version, and a rule decided on a public secret must not land on one made private
    /// meanwhile). Else `VersionConflict`; `NotFound` if the id is gone. A new value moves the
    /// version and `updated_at`.
    UpdateSecret {
        id: String,
        name: SecretName,
        expected_version: u64,
        expected: Expected,
        change: Change,
        at: Timestamp,
    },
    /// Replaces the sealed bytes of a secret still at `version` without changing it otherwise
    /// (a key rotation); `VersionConflict` otherwise.
    Reseal {
        id: String,
        name: SecretName,
        version: u64,
        sealed: Vec<u8>,
    },
    /// Deletes a secret still as `expected` (`VersionConflict` otherwise, `NotFound` if gone).
    DeleteSecret {
        id: String,
        name: SecretName,
        expected: Expected,
    },
    /// A precondition: the secrets `owner` owns are exactly `expected` (id and visibility, in
    /// any order), else `Conflict`. What a batch that acts on "all of a user's secrets"
    /// checks so that a secret created or changed meanwhile is never missed.
    ExpectOwned {
        owner_id: String,
        expected: Vec<(String, Visibility)>,
    },
    /// A precondition: `user`'s tokens are exactly `expected` (ids, any order), else `Conflict`.
    ExpectTokens {
        user_id: String,
        expected: Vec<String>,
    },
    /// A precondition: `user`'s workspaces are exactly `expected` (any order), else `Conflict`.
    ExpectMemberships {
        user_id: String,
        expected: Vec<String>,
    },
    /// A precondition: the acting user is live and, if the batch acts for a token, the token is
    /// neither revoked nor expired at `now`; else `ActorGone`. Read so that neither can change
    /// before the batch commits (a user being deleted meanwhile makes this wait, then fail).
    ExpectActor {
        user_id: String,
        token_id: Option<String>,
        now: Timestamp,
    },
    /// Hands every secret of `from` to `to` (a live user).
    TransferSecrets {
        from: String,
        to: String,
        to_name: String,
    },
    CreateWorkspace {
        name: String,
        at: Timestamp,
    },
    /// Sets a workspace's audit settings (`None` returns one to the server's default).
    /// `WorkspaceNotFound` if it does not exist.
    SetAuditSettings(AuditSettings),
    /// A new user (its `workspaces` are added with `AddMember`). `UserExists` if a live user has
    /// the name.
    InsertUser(User),
    /// Marks a live user deleted; the name is free from then on (`UserNotFound` if not live).
    TombstoneUser {
        id: String,
        at: Timestamp,
    },
    /// `WorkspaceNotFound`, `UserNotFound` unless live; adding an existing member is no change.
    AddMember {
        user_id: String,
        workspace: String,
    },
    /// `NotAMember` if the user is not a member.
    RemoveMember {
        user_id: String,
        workspace: String,
    },
    RemoveMemberships {
        user_id: String,
    },
    /// A new token with its grants; `UserNotFound` unless its user is live.
    InsertToken(TokenRecord),
    /// `TokenNotFound` if there is no such unrevoked token.
    SetTokenExpiry {
        id: String,
        expires_at: Timestamp,
    },
    /// `TokenNotFound` if there is no such token.
    RevokeToken {
        id: String,
        at: Timestamp,
    },
    DeleteTokensOf {
        user_id: String,
    },
    /// A new binding; `BindingExists` if the name is taken, `UserNotFound` unless its user is
    /// live, `WorkspaceNotFound`.
    InsertBinding(BindingRecord),
    /// A precondition: the binding still exists (locked until commit), else `BindingNotFound`.
    ExpectBinding {
        id: String,
    },
    /// Deletes a binding and revokes, at `at`, every token its exchanges minted;
    /// `BindingNotFound` if there is no such binding.
    DeleteBinding {
        id: String,
        at: Timestamp,
    },
}

impl Op {
    /// Whether the op writes sealed bytes, and so must pass the write fence.
    pub fn seals(&self) -> bool {
        matches!(
            self,
            Op::InsertSecret(_)
                | Op::Reseal { .. }
                | Op::UpdateSecret {
                    change: Change {
                        sealed: Some(_),
                        ..
                    },
                    ..
                }
        )
    }

    /// Whether the op only adds a token or checks a row: nothing a reader holds (a cached
    /// principal is a token that exists, a snapshot holds secrets, a long-poll answers secrets)
    /// can be out of date after it, so it needs no announcement to long-polls, caches or
    /// replicas. An identity exchange is such a batch: at a node's mass start a thousand of
    /// them would otherwise wake every held long-poll a thousand times (BENCHMARKS.md, "The
    /// node agent").
    pub fn quiet(&self) -> bool {
        matches!(self, Op::InsertToken(_) | Op::ExpectBinding { .. })
    }
}

impl Batch {
    /// Whether every op is [`Op::quiet`].
    pub fn quiet(&self) -> bool {
        self.ops.iter().all(Op::quiet)
    }
}

/// What a secret must still be when a write that was decided on it lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub owner_id: String,
    pub visibility: Visibility,
}

/// Writes applied together: every op and every audit record, in one transaction, or nothing.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub audit: Vec<AuditRecord>,
}

/// Why a store operation failed. Messages name the thing and never carry a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("secret \"{0}\" not found")]
    NotFound(SecretName),
    #[error("secret \"{0}\" already exists in this workspace")]
    AlreadyExists(SecretName),
    /// Another writer changed the secret between read and write; the service retries.
    #[error("secret \"{0}\" was changed concurrently; try again")]
    VersionConflict(SecretName),
    /// A precondition of a batch no longer held (another writer got there first); the service
    /// retries from a fresh read.
    #[error("the store changed while the request was being prepared; try again")]
    Conflict,
    #[error("workspace \"{0}\" not found")]
    WorkspaceNotFound(String),
    #[error("workspace \"{0}\" already exists")]
    WorkspaceExists(String),
    #[error("user \"{0}\" not found")]
    UserNotFound(String),
    #[error("user \"{0}\" already exists")]
    UserExists(String),
    #[error("user \"{user}\" is not a member of workspace \"{workspace}\"")]
    NotAMember { user: String, workspace: String },
    #[error("token \"{0}\" not found")]
    TokenNotFound(String),
    #[error("identity binding \"{0}\" already exists")]
    BindingExists(String),
    #[error("identity binding \"{0}\" not found")]
    BindingNotFound(String),
    /// The user or token a batch acts for was deleted, revoked or expired before it committed.
    #[error("the caller's token or user is no longer valid")]
    ActorGone,
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

impl StoreError {
    /// The same error for another caller of a shared transaction (its commit failed for all).
    pub fn for_another(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::OutOfSpace => StoreError::OutOfSpace,
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// Every driver error becomes a store error here, once: callers that expect a constraint
/// violation (a taken name) look at the sqlx error before converting it; everything else is
/// read from the engine's codes: SQLite's result codes (5 busy, 6 locked, 8 read-only, 10 I/O,
/// 11 corrupt, 13 full, 14 cannot open, 26 not a database, and their extended forms),
/// PostgreSQL's SQLSTATE classes (08 connection, 53 resources, 53100 disk full, 57P shutdown).
/// Both engines' messages name tables and constraints, never bound values, so they may be kept.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let sqlite = code.parse::<u32>().ok().map(|c| c & 0xff);
                match (sqlite, code.as_str()) {
                    (Some(13), _) | (None, "53100") => StoreError::OutOfSpace,
                    (Some(5 | 6 | 8 | 10 | 14), _) => StoreError::Unavailable(db.message().into()),
                    (Some(11 | 26), _) => StoreError::NotAStore(format!(
                        "the store file is damaged: {}",
                        db.message()
                    )),
                    (None, c)
                        if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") =>
                    {
                        StoreError::Unavailable(db.message().into())
                    }
                    _ => StoreError::Internal(db.message().into()),
                }
            }
            sqlx::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => {
                StoreError::OutOfSpace
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// SQLite's "busy" or "locked": another connection holds the lock this one needs.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)))
}

/// Persistence of sealed secrets, accounts and the audit log, one implementation per database.
///
/// Reads return rows; [`Store::apply`] writes a [`Batch`] in one transaction. Implementations
/// hold ciphertext only and check no permissions: the service layer does.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A one-line description for logs, e.g. `sqlite:/var/lib/secretfs/store.db`.
    fn describe(&self) -> String;

    /// The secrets `filter` selects, sorted by workspace and name.
    async fn secrets(&self, filter: SecretFilter<'_>) -> Result<Vec<StoredSecret>, StoreError>;
    /// Every user, tombstones included, with their memberships.
    async fn users(&self) -> Result<Vec<User>, StoreError>;
    async fn workspaces(&self) -> Result<Vec<String>, StoreError>;
    async fn tokens(&self, filter: TokenFilter<'_>) -> Result<Vec<TokenRecord>, StoreError>;
    /// Every workload-identity binding, by name.
    async fn bindings(&self) -> Result<Vec<BindingRecord>, StoreError>;
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Deletes at most `limit` records of `workspace` older than `before` whose action is one
    /// of `actions`, in one short transaction; how many it deleted.
    async fn prune_audit(
        &self,
        workspace: &str,
        before: Timestamp,
        actions: &[AuditAction],
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Every workspace's audit settings (those with none set included).
    async fn audit_settings(&self) -> Result<Vec<AuditSettings>, StoreError>;
    /// The key-check blob sealed at initialisation, if the store has one.
    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies every op of `batch` and writes its audit records, in one transaction, and tells
    /// other processes sharing the store that something changed. A batch with sealed writes
    /// first checks the write fence in the same transaction.
    async fn apply(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Applies several batches, each on its own as [`apply`](Store::apply) would (one whose
    /// precondition fails changes nothing and writes no audit record; the others land), in as
    /// few transactions as the store can: what many identity exchanges at once cost one commit
    /// for all. One result per batch, in order.
    async fn apply_each(&self, batches: &[Batch]) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(batches.len());
        for b in batches {
            results.push(self.apply(b).await);
        }
        results
    }
    /// Appends audit records that go with no change, in one transaction, announcing nothing:
    /// workload reads in bulk, and refused identity exchanges (which must not empty caches).
    async fn record_reads(&self, audits: &[AuditRecord]) -> Result<(), StoreError>;
    /// The key check this process's seals belong to: a batch carrying a sealed value is refused
    /// with `KeyRotated`, in its own transaction, when the stored key check is no longer this
    /// one. That is what keeps a process with a stale key from writing a value a rotation has
    /// already passed over and whose key it is about to drop.
    fn set_write_fence(&self, key_check: Vec<u8>);

    /// Whether other processes may change this store (replicas over one PostgreSQL): then the
    /// server listens with [`Store::next_change`] and re-checks periodically.
    fn shared(&self) -> bool {
        false
    }
    /// Waits for a change committed by another process; answers when that process says it
    /// committed it, if it says. Stores with one writer never return.
    async fn next_change(&self) -> Result<Option<crate::secret::Timestamp>, StoreError> {
        std::future::pending().await
    }

    /// Writes a consistent copy of the store to `path` (ciphertext, as stored).
    async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        let _ = path;
        Err(StoreError::Unsupported(
            "this store has no built-in backup; for PostgreSQL use pg_dump (see the README)".into(),
        ))
    }
    /// Flushes and closes connections (SQLite checkpoints its WAL), so the next open is quick.
    async fn close(&self);
}
