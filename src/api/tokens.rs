//! Tokens over HTTP: mint (workload tokens for a set of secrets, user tokens), list without the
//! token, renew, revoke. A token in the clear appears in exactly one response: the one that
//! mints it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::body::Json;
use super::query::Query;
use super::secrets::parse_name;
use super::{ApiError, AppState, Auth, UserAuth};
use crate::auth::{TokenKind, masked};
use crate::secret::{SecretName, Timestamp};
use crate::service::{MintUser, MintWorkload, TokenRecord};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintWorkloadBody {
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
pub struct MintUserBody {
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
    pub user_id: String,
    pub workspace: Option<String>,
    /// The names of the secrets a workload token was minted for.
    pub secrets: Vec<SecretName>,
    /// Their ids: what the token may read (a later secret of the same name is not one of them).
    pub secret_ids: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub max_expires_at: Option<Timestamp>,
    /// How far a renewal extends a workload token.
    pub ttl_secs: Option<u64>,
    pub revoked: bool,
    pub description: String,
    /// The token that minted this one, if a token did.
    pub minted_by: Option<String>,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(t: &TokenRecord) -> Self {
        TokenInfo {
            id: t.id.clone(),
            masked: masked(&t.id, t.kind),
            kind: t.kind,
            user: t.user.clone(),
            user_id: t.user_id.clone(),
            workspace: t.workspace.clone(),
            secrets: t.grants.iter().map(|g| g.name.clone()).collect(),
            secret_ids: t.grants.iter().map(|g| g.secret_id.clone()).collect(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            max_expires_at: t.max_expires_at,
            ttl_secs: t.ttl_secs,
            revoked: t.revoked_at.is_some(),
            description: t.description.clone(),
            minted_by: t.minted_by.clone(),
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

impl Minted {
    pub fn new(token: &crate::auth::Token, record: &TokenRecord) -> Self {
        Minted {
            token: token.expose_secret().to_owned(),
            info: TokenInfo::from(record),
        }
    }
}

/// `POST /api/v1/workspaces/{ws}/tokens`: a workload token for secrets the caller may use.
pub async fn mint_workload(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<MintWorkloadBody>,
) -> Result<Response, ApiError> {
    let secrets = body
        .secrets
        .iter()
        .map(|s| parse_name(s).map_err(|e| e.on("secrets")))
        .collect::<Result<Vec<_>, _>>()?;
    let (token, record) = state
        .service
        .mint_workload(
            &caller,
            &ws,
            MintWorkload {
                secrets,
                ttl: body.ttl,
                max_ttl: body.max_ttl,
                description: body.description,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Minted::new(&token, &record)),
    )
        .into_response())
}

/// `POST /api/v1/users/{name}/tokens`: another user token (an admin for anyone, a user for
/// themselves).
pub async fn mint_user(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(name): Path<String>,
    Json(body): Json<MintUserBody>,
) -> Result<Response, ApiError> {
    let (token, record) = state
        .service
        .mint_user(
            &caller,
            &name,
            MintUser {
                ttl: body.ttl,
                description: body.description,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Minted::new(&token, &record)),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/tokens`: the caller's tokens (`?all=true`: everyone's, for admins).
pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let tokens = state.service.tokens(&caller, q.all).await?;
    let infos: Vec<TokenInfo> = tokens.iter().map(TokenInfo::from).collect();
    Ok(axum::Json(infos).into_response())
}

/// `DELETE /api/v1/tokens/{id}`: revokes one of the caller's tokens (an admin: anyone's).
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.service.revoke_token(&caller, &id).await?;
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
    let renewed = state.service.renew(&auth.0).await?;
    Ok(axum::Json(Renewed {
        id: renewed.id.clone(),
        expires_at: renewed.expires_at.expect("a renewed token expires"),
        max_expires_at: renewed.max_expires_at,
    })
    .into_response())
}
