//! Tokens: workload tokens minted by users for secrets they may use (granted by id), user tokens
//! (for yourself, or an admin for another user), listing, renewal, revocation. A token minted
//! with a token never outlives it. A token in the clear leaves the service once: in the answer
//! of the call that mints it.

use std::time::Duration;

use super::{Caller, Service, ServiceError, Who};
use crate::auth::{Token, TokenKind, mint};
use crate::secret::{SecretName, Timestamp};
use crate::store::{
    AuditAction, Batch, Grant, Op, StoreError, TargetKind, TokenFilter, TokenRecord, User,
};

/// Default and ceiling of a workload token's life.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const CEILING: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest life a token may be given.
const FLOOR: Duration = Duration::from_secs(1);
/// The longest description a token may carry.
pub const DESCRIPTION_MAX: usize = 256;

/// A workload token to mint.
#[derive(Debug, Clone, Default)]
pub struct MintWorkload {
    pub secrets: Vec<SecretName>,
    pub ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub description: String,
}

/// A user token to mint.
#[derive(Debug, Clone, Default)]
pub struct MintUser {
    pub ttl: Option<String>,
    pub description: String,
}

/// Parses a token life ("1h", "30d"), between 1 s and 366 days.
pub fn parse_ttl(
    field: &'static str,
    s: Option<&str>,
    default: Duration,
) -> Result<Duration, ServiceError> {
    let d = match s {
        Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            ServiceError::invalid_on(
                field,
                format!("{field} {s:?} is not a duration ({e}); use e.g. 1h or 30d"),
            )
        })?,
        None => default,
    };
    if d < FLOOR || d > CEILING {
        return Err(ServiceError::invalid_on(
            field,
            format!(
                "{field} must be between 1s and 366d (got {})",
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(d)
}

/// The moment `d` from now.
pub(super) fn after(d: Duration) -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now() + d)
}

fn check_description(d: &str) -> Result<(), ServiceError> {
    if d.chars().count() > DESCRIPTION_MAX {
        return Err(ServiceError::invalid_on(
            "description",
            format!("a token description has at most {DESCRIPTION_MAX} characters"),
        ));
    }
    Ok(())
}

/// A new token of `kind` for `user`, minted by `caller`'s token if it has one (then it expires
/// no later than that token).
fn new_record(kind: TokenKind, user: &User, caller: Option<&Caller>) -> (Token, TokenRecord) {
    let (token, stored) = mint(kind);
    let parent = caller.and_then(Caller::token);
    let record = TokenRecord {
        id: stored.id,
        hash: stored.hash,
        kind,
        user_id: user.id.clone(),
        user: user.name.clone(),
        workspace: None,
        grants: Vec::new(),
        created_at: Timestamp::now(),
        expires_at: parent.and_then(|p| p.expires_at),
        max_expires_at: None,
        ttl_secs: None,
        revoked_at: None,
        description: String::new(),
        minted_by: parent.map(|p| p.id.clone()),
    };
    (token, record)
}

/// The live (unrevoked) tokens minted by `minter`, and by those, to the last generation.
fn live_descendants<'a>(all: &'a [TokenRecord], minter: &str) -> Vec<&'a TokenRecord> {
    let mut found: Vec<&TokenRecord> = Vec::new();
    let mut frontier = vec![minter.to_owned()];
    while let Some(parent) = frontier.pop() {
        for t in all {
            if t.minted_by.as_deref() == Some(parent.as_str())
                && !found.iter().any(|f| f.id == t.id)
            {
                frontier.push(t.id.clone());
                if t.revoked_at.is_none() {
                    found.push(t);
                }
            }
        }
    }
    found
}

/// The earlier of two optional deadlines (`None`: never).
fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Service {
    /// A workload token for secrets the caller may use, granted by id.
    pub async fn mint_workload(
        &self,
        caller: &Caller,
        workspace: &str,
        req: MintWorkload,
    ) -> Result<(Token, TokenRecord), ServiceError> {
        let user = caller.manager()?.clone();
        self.member(caller, workspace)?;
        check_description(&req.description)?;
        let ttl = parse_ttl("ttl", req.ttl.as_deref(), DEFAULT_TTL)?;
        let max_ttl = parse_ttl("max_ttl", req.max_ttl.as_deref(), DEFAULT_MAX_TTL.max(ttl))?;
        if max_ttl < ttl {
            return Err(ServiceError::invalid_on(
                "max_ttl",
                "max_ttl must not be shorter than ttl",
            ));
        }
        if req.secrets.is_empty() {
            return Err(ServiceError::invalid_on(
                "secrets",
                "name at least one secret the token may read",
            ));
        }
        let rows = self.visible_rows(caller, workspace).await?;
        let mut grants = Vec::new();
        let mut missing = Vec::new();
        for name in &req.secrets {
            match rows.iter().find(|r| &r.meta.name == name) {
                Some(r) if !grants.iter().any(|g: &Grant| g.secret_id == r.id) => {
                    grants.push(Grant {
                        secret_id: r.id.clone(),
                        name: name.clone(),
                    })
                }
                Some(_) => {}
                None => missing.push(format!("\"{name}\"")),
            }
        }
        if !missing.is_empty() {
            return Err(ServiceError::NotFound(format!(
                "secret{} not found: {}",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            )));
        }
        grants.sort_by(|a, b| a.name.cmp(&b.name));
        let (token, mut record) = new_record(TokenKind::Workload, &user, Some(caller));
        // Never later than the token that mints it: neither its expiry nor its last renewal.
        let parent_expiry = record.expires_at;
        record.workspace = Some(workspace.to_owned());
        record.expires_at = earliest(Some(after(ttl)), parent_expiry);
        record.max_expires_at = earliest(Some(after(max_ttl)), parent_expiry);
        record.ttl_secs = Some(ttl.as_secs());
        record.description = req.description;
        record.grants = grants;
        let names: Vec<&str> = record.grants.iter().map(|g| g.name.as_str()).collect();
        let audit = caller.audit(
            workspace,
            AuditAction::TokenMint,
            (TargetKind::Token, &record.id, &record.id),
            0,
            format!("workload token for {} ({})", user.name, names.join(",")),
        );
        self.commit(
            caller,
            Batch {
                ops: vec![Op::InsertToken(record.clone())],
                audit: vec![audit],
            },
        )
        .await?;
        tracing::info!(token = %record.id, user = %user.name, secrets = record.grants.len(), "workload token minted");
        Ok((token, record))
    }

    /// Another user token: for the caller themselves, or (an admin, unless impersonation is
    /// turned off) for another user. Audited with both names.
    pub async fn mint_user(
        &self,
        caller: &Caller,
        user_name: &str,
        req: MintUser,
    ) -> Result<(Token, TokenRecord), ServiceError> {
        let me = caller.manager()?.clone();
        check_description(&req.description)?;
        let for_other = me.name != user_name;
        if for_other {
            if !me.admin {
                return Err(ServiceError::Forbidden(
                    "only an admin may mint tokens for another user".into(),
                ));
            }
            if !self.options.admin_impersonation {
                return Err(ServiceError::Forbidden(
                    "this server does not let admins mint tokens for other users \
                     (--no-admin-impersonation)"
                        .into(),
                ));
            }
        }
        let target = self.live_user(user_name).await?;
        let (token, mut record) = new_record(TokenKind::User, &target, Some(caller));
        if let Some(ttl) = req.ttl.as_deref() {
            let ttl = parse_ttl("ttl", Some(ttl), DEFAULT_TTL)?;
            record.expires_at = earliest(Some(after(ttl)), record.expires_at);
        }
        record.description = req.description;
        let detail = if for_other {
            format!("user token for {} minted by admin {}", target.name, me.name)
        } else {
            format!("user token for {}", target.name)
        };
        let audit = caller.audit(
            "",
            AuditAction::TokenMint,
            (TargetKind::Token, &record.id, &record.id),
            0,
            detail,
        );
        self.commit(
            caller,
            Batch {
                ops: vec![Op::InsertToken(record.clone())],
                audit: vec![audit],
            },
        )
        .await?;
        Ok((token, record))
    }

    /// The caller's tokens; `all` (admins): everyone's.
    pub async fn tokens(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<Vec<TokenRecord>, ServiceError> {
        let user = caller.manager()?;
        if all {
            caller.admin()?;
            Ok(self.store().tokens(TokenFilter::All).await?)
        } else {
            Ok(self.store().tokens(TokenFilter::User(&user.id)).await?)
        }
    }

    /// Revokes one of the caller's tokens (an admin: anyone's).
    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let user = caller.manager()?;
        let not_found = || ServiceError::NotFound(format!("token \"{id}\" not found"));
        let token = self
            .store()
            .tokens(TokenFilter::Id(id))
            .await?
            .pop()
            .ok_or_else(not_found)?;
        if token.user_id != user.id && !user.admin {
            return Err(not_found());
        }
        // Revoking is idempotent, and so is its record: what it minted went with it the first
        // time (a revoked token mints nothing), so a repeat changes nothing and writes nothing.
        if token.revoked_at.is_some() {
            return Ok(());
        }
        let detail = if token.user_id == user.id {
            String::new()
        } else {
            format!("token of {} revoked by admin {}", token.user, user.name)
        };
        let mut audit = vec![caller.audit(
            token.workspace.as_deref().unwrap_or(""),
            AuditAction::TokenRevoke,
            (TargetKind::Token, id, id),
            0,
            detail,
        )];
        // The tokens it minted, and theirs, are revoked with it in the same transaction (the
        // store follows `minted_by`); each is audited, as the audit sees them now.
        for child in live_descendants(&self.store().tokens(TokenFilter::All).await?, id) {
            audit.push(caller.audit(
                child.workspace.as_deref().unwrap_or(""),
                AuditAction::TokenRevoke,
                (TargetKind::Token, &child.id, &child.id),
                0,
                format!("revoked with token {id}, which minted it or its minter"),
            ));
        }
        match self
            .commit(
                caller,
                Batch {
                    ops: vec![Op::RevokeToken {
                        id: id.to_owned(),
                        at: Timestamp::now(),
                    }],
                    audit,
                },
            )
            .await
        {
            Err(ServiceError::Store(StoreError::TokenNotFound(_))) => Err(not_found()),
            other => other,
        }?;
        tracing::info!(token = %id, by = %user.name, "token revoked");
        Ok(())
    }

    /// A workload token extends its own life by its ttl, never past the maximum fixed when it
    /// was minted (itself no later than the token that minted it).
    pub async fn renew(&self, caller: &Caller) -> Result<TokenRecord, ServiceError> {
        let Who::Workload { token, .. } = &caller.who else {
            return Err(ServiceError::Forbidden(
                "only a workload token renews itself".into(),
            ));
        };
        let ttl = Duration::from_secs(token.ttl_secs.unwrap_or(DEFAULT_TTL.as_secs()));
        let expires = earliest(Some(after(ttl)), token.max_expires_at).expect("some");
        let audit = caller.audit(
            token.workspace.as_deref().unwrap_or(""),
            AuditAction::TokenRenew,
            (TargetKind::Token, &token.id, &token.id),
            0,
            format!("until {}", expires.rfc3339()),
        );
        self.commit(
            caller,
            Batch {
                ops: vec![Op::SetTokenExpiry {
                    id: token.id.clone(),
                    expires_at: expires,
                }],
                audit: vec![audit],
            },
        )
        .await
        .map_err(|e| match e {
            // Revoked since the request was authenticated.
            ServiceError::Store(StoreError::TokenNotFound(_)) => ServiceError::Unauthorized,
            other => other,
        })?;
        let mut renewed = token.clone();
        renewed.expires_at = Some(expires);
        Ok(renewed)
    }

    /// The first user token of a new user, minted by `caller` (bounded by its token) or by the
    /// server's own `--init` (`None`).
    pub(super) fn first_token(user: &User, caller: Option<&Caller>) -> (Token, TokenRecord) {
        let (token, mut record) = new_record(TokenKind::User, user, caller);
        record.description = "first token".into();
        (token, record)
    }
}
