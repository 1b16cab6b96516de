//! Tokens over HTTP: mint (workload tokens for a set of secrets, user tokens), list without the
//! token, renew, revoke. A token in the clear appears in exactly one response: the one that
//! mints it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::Json;
use super::query::Query;
use super::secrets::parse_name;
use super::{ApiError, AppState, Auth, UserAuth};
use crate::auth::{Token, masked};
use crate::protocol::{self, Minted, Renewed, TokenInfo};
use crate::service::{MintUser, MintWorkload, TokenRecord};

/// A token as listed: everything but the token.
pub fn token_info(t: &TokenRecord) -> TokenInfo {
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

/// A minted token: shown once.
pub fn minted(token: Token, record: &TokenRecord) -> Minted {
    Minted {
        token,
        info: token_info(record),
    }
}

/// `POST /api/v1/workspaces/{ws}/tokens`: a workload token for secrets the caller may use.
pub async fn mint_workload(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<protocol::MintWorkload>,
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
    Ok((StatusCode::CREATED, axum::Json(minted(token, &record))).into_response())
}

/// `POST /api/v1/users/{name}/tokens`: another user token (an admin for anyone, a user for
/// themselves).
pub async fn mint_user(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(name): Path<String>,
    Json(body): Json<protocol::MintUser>,
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
    Ok((StatusCode::CREATED, axum::Json(minted(token, &record))).into_response())
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
    let infos: Vec<TokenInfo> = tokens.iter().map(token_info).collect();
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
