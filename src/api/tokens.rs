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
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{ws}/tokens",
    summary = "Mint a workload token for secrets the caller may use; the token is shown once",
    params(("ws" = String, Path, description = "the workspace")),
    request_body = crate::protocol::MintWorkload,
    responses((status = 201, body = crate::protocol::Minted))
)]
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
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/tokens",
    summary = "Mint another user token (admin, or the user)",
    params(("name" = crate::protocol::AccountName, Path, description = "the user")),
    request_body = crate::protocol::MintUser,
    responses((status = 201, body = crate::protocol::Minted))
)]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/tokens`: the caller's tokens (`?all=true`: everyone's, for admins).
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    summary = "The caller's tokens (?all=true: everyone's, admin); never the token",
    params(ListQuery),
    responses((status = 200, body = Vec<crate::protocol::TokenInfo>))
)]
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
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    summary = "Revoke a token (its user, or an admin)",
    params(("id" = String, Path, description = "the token's id")),
    responses((status = 204, description = "revoked"))
)]
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
#[utoipa::path(
    post,
    path = "/api/v1/tokens/renew",
    summary = "A workload token extends its own life, up to its maximum",
    responses((status = 200, body = crate::protocol::Renewed))
)]
pub async fn renew(State(state): State<Arc<AppState>>, auth: Auth) -> Result<Response, ApiError> {
    let renewed = state.service.renew(&auth.0).await?;
    Ok(axum::Json(Renewed {
        id: renewed.id.clone(),
        expires_at: renewed.expires_at.expect("a renewed token expires"),
        max_expires_at: renewed.max_expires_at,
    })
    .into_response())
}
