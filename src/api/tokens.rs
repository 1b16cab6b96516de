//! Tokens: workload tokens minted by users for a set of secrets, user tokens minted by admins
//! (or their owners), listing without the token, renewal, revocation. A token in the clear
//! appears in exactly one response: the one that mints it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::body::Json;
use super::secrets::{parse_name, visible_one};
use super::{ApiError, AppState, Auth, Principal, UserAuth, member};
use crate::auth::{TokenKind, masked, mint};
use crate::secret::{SecretName, Timestamp};
use crate::store::TokenRecord;

/// Default and ceiling of a workload token's life.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const CEILING: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintWorkload {
    pub secrets: Vec<String>,
    /// How long it is valid, and how far each renewal extends it ("1h").
    pub ttl: Option<String>,
    /// The longest it may live, renewals included ("30d").
    pub max_ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MintUser {
    pub ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// A token as listed: everything but the token.
#[derive(Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub masked: String,
    pub kind: TokenKind,
    pub user: String,
    pub workspace: Option<String>,
    pub secrets: Vec<SecretName>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub max_expires_at: Option<Timestamp>,
    /// How far a renewal extends a workload token.
    pub ttl_secs: Option<u64>,
    pub revoked: bool,
    pub description: String,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(t: &TokenRecord) -> Self {
        TokenInfo {
            id: t.id.clone(),
            masked: masked(&t.id, t.kind),
            kind: t.kind,
            user: t.user.clone(),
            workspace: t.workspace.clone(),
            secrets: t.secrets.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            max_expires_at: t.max_expires_at,
            ttl_secs: t.ttl_secs,
            revoked: t.revoked_at.is_some(),
            description: t.description.clone(),
        }
    }
}

/// A minted token: shown once.
#[derive(Serialize)]
pub struct Minted {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

fn duration(what: &str, s: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    let d = match s {
        Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            ApiError::invalid(format!(
                "{what} {s:?} is not a duration ({e}); use e.g. 1h or 30d"
            ))
        })?,
        None => default,
    };
    if d.is_zero() || d > CEILING {
        return Err(ApiError::invalid(format!(
            "{what} must be between 1s and 366d"
        )));
    }
    Ok(d)
}

fn after(d: Duration) -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now() + d)
}

fn new_record(kind: TokenKind, user: &str) -> (crate::auth::Token, TokenRecord) {
    let (token, stored) = mint(kind);
    let record = TokenRecord {
        id: stored.id,
        hash: stored.hash,
        kind,
        user: user.to_owned(),
        workspace: None,
        secrets: Vec::new(),
        created_at: Timestamp::now(),
        expires_at: None,
        max_expires_at: None,
        ttl_secs: None,
        revoked_at: None,
        description: String::new(),
    };
    (token, record)
}

/// `POST /api/v1/workspaces/{ws}/tokens`: a workload token for secrets the caller may use.
pub async fn mint_workload(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<MintWorkload>,
) -> Result<Response, ApiError> {
    let user = auth.user()?;
    member(user, &ws)?;
    let ttl = duration("ttl", body.ttl.as_deref(), DEFAULT_TTL)?;
    let max_ttl = duration("max_ttl", body.max_ttl.as_deref(), DEFAULT_MAX_TTL.max(ttl))?;
    if max_ttl < ttl {
        return Err(ApiError::invalid("max_ttl must not be shorter than ttl"));
    }
    if body.secrets.is_empty() {
        return Err(ApiError::invalid(
            "name at least one secret the token may read",
        ));
    }
    let mut names = Vec::new();
    let mut missing = Vec::new();
    for s in &body.secrets {
        let name = parse_name(s)?;
        match visible_one(&state, user, &ws, &name).await {
            Ok(_) => names.push(name),
            Err(e) if e.status == StatusCode::NOT_FOUND => missing.push(format!("\"{name}\"")),
            Err(e) => return Err(e),
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::not_found(format!(
            "secret{} not found: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        )));
    }
    names.sort();
    names.dedup();
    let (token, mut record) = new_record(TokenKind::Workload, &user.name);
    record.workspace = Some(ws);
    record.secrets = names;
    record.expires_at = Some(after(ttl));
    record.max_expires_at = Some(after(max_ttl));
    record.ttl_secs = Some(ttl.as_secs());
    record.description = body.description;
    state.store().insert_token(&record).await?;
    state.changed();
    tracing::info!(token = %record.id, user = %user.name, secrets = record.secrets.len(), "workload token minted");
    let minted = Minted {
        token: token.expose_secret().to_owned(),
        info: TokenInfo::from(&record),
    };
    Ok((StatusCode::CREATED, axum::Json(minted)).into_response())
}

/// `POST /api/v1/users/{name}/tokens`: another user token (an admin for anyone, a user for
/// themselves).
pub async fn mint_user(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(name): Path<String>,
    Json(body): Json<MintUser>,
) -> Result<Response, ApiError> {
    let caller = auth.user()?;
    if caller.name != name && !caller.admin {
        return Err(ApiError::forbidden(
            "only an admin may mint tokens for another user",
        ));
    }
    if state.store().user(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("user \"{name}\" not found")));
    }
    let (token, mut record) = new_record(TokenKind::User, &name);
    if let Some(ttl) = body.ttl.as_deref() {
        record.expires_at = Some(after(duration("ttl", Some(ttl), DEFAULT_TTL)?));
    }
    record.description = body.description;
    state.store().insert_token(&record).await?;
    state.changed();
    let minted = Minted {
        token: token.expose_secret().to_owned(),
        info: TokenInfo::from(&record),
    };
    Ok((StatusCode::CREATED, axum::Json(minted)).into_response())
}

/// Mints the first user token of a new user (used by user creation and `serve --init`).
pub fn first_user_token(user: &str) -> (crate::auth::Token, TokenRecord) {
    let (token, mut record) = new_record(TokenKind::User, user);
    record.description = "first token".into();
    (token, record)
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/tokens`: the caller's tokens (`?all=true`: everyone's, for admins).
pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let user = auth.user()?;
    let tokens = if q.all {
        auth.admin()?;
        state.store().tokens(None).await?
    } else {
        state.store().tokens(Some(&user.name)).await?
    };
    let infos: Vec<TokenInfo> = tokens.iter().map(TokenInfo::from).collect();
    Ok(axum::Json(infos).into_response())
}

/// `DELETE /api/v1/tokens/{id}`: revokes one of the caller's tokens (an admin: anyone's).
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = auth.user()?;
    let not_found = || ApiError::not_found(format!("token \"{id}\" not found"));
    let token = state.store().token(&id).await?.ok_or_else(not_found)?;
    if token.user != user.name && !user.admin {
        return Err(not_found());
    }
    state.store().revoke_token(&id, Timestamp::now()).await?;
    state.changed();
    tracing::info!(token = %id, by = %user.name, "token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct Renewed {
    id: String,
    expires_at: Timestamp,
    max_expires_at: Option<Timestamp>,
}

/// `POST /api/v1/tokens/renew`: a workload token extends its own life by its ttl, never past
/// the maximum fixed when it was minted.
pub async fn renew(State(state): State<Arc<AppState>>, auth: Auth) -> Result<Response, ApiError> {
    let Principal::Workload { token, .. } = &auth.principal else {
        return Err(ApiError::forbidden("only a workload token renews itself"));
    };
    let ttl = Duration::from_secs(token.ttl_secs.unwrap_or(DEFAULT_TTL.as_secs()));
    let mut expires = after(ttl);
    if let Some(max) = token.max_expires_at {
        expires = expires.min(max);
    }
    state.store().set_token_expiry(&token.id, expires).await?;
    state.changed();
    Ok(axum::Json(Renewed {
        id: token.id.clone(),
        expires_at: expires,
        max_expires_at: token.max_expires_at,
    })
    .into_response())
}
