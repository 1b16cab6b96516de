//! The DGX Cloud Lepton workspace API for secrets, as the `lep` CLI and the `leptonai` SDK use it
//! (see LEPTON-API.md in the design notes): `/api/v2/workspaces/{ws}` with `/workspace`,
//! `/usersecrets`, and the optional base and `/tokens` answers.
//!
//! A second route set over the same service operations as the native API (`list_secrets`,
//! `new_secret`, `delete_one`, ...): same users, tokens, visibility rules, limits, audit log and
//! store.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::body::Json;
use super::secrets::{new_secret, parse_name};
use super::{ApiError, AppState, UserAuth};
use crate::auth::masked;
use crate::protocol::{Base64Value, CreateSecret, TextValue};
use crate::secret::Visibility;
use crate::service::Caller;

/// Names the Lepton platform sets itself in every workload; a secret may not take one.
pub const RESERVED: [&str; 5] = [
    "LEPTON_WORKSPACE_ID",
    "LEPTON_DEPLOYMENT_NAME",
    "LEPTON_JOB_NAME",
    "LEPTON_RESOURCE_ACCELERATOR_TYPE",
    "LEPTON_WORKSPACE_ORIGIN_URL",
];

/// A secret as `lep secret list` shows it: never a value.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LeptonSecret {
    name: String,
    owner: String,
    visibility: Visibility,
    tags: Vec<String>,
}

/// One item of a `POST /usersecrets` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LeptonItem {
    #[schema(value_type = crate::secret::SecretName)]
    name: String,
    #[serde(default, deserialize_with = "crate::protocol::no_null")]
    #[schema(value_type = String, min_length = 1, max_length = 1048576)]
    value: Option<TextValue>,
    /// Not sent by `lep`; accepted as the native API does, but never together with `value`.
    #[serde(default, deserialize_with = "crate::protocol::no_null")]
    #[schema(value_type = String, format = Byte, min_length = 4)]
    value_base64: Option<Base64Value>,
    #[serde(default, deserialize_with = "crate::protocol::no_null")]
    #[schema(value_type = Visibility)]
    visibility: Option<String>,
    #[serde(default, deserialize_with = "crate::protocol::no_null")]
    #[schema(value_type = Vec<crate::protocol::Tag>, max_items = 32)]
    tags: Option<Vec<String>>,
}

/// The create's body: a bare array of items, each an object.
impl super::body::Body for Vec<LeptonItem> {
    const SHAPE: super::body::Shape = super::body::ITEMS;
}

/// `GET /api/v2/workspaces/{ws}`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DisplayName {
    display_name: String,
}

/// One token of `GET /api/v2/workspaces/{ws}/tokens`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LeptonToken {
    masked_value: String,
    /// Epoch milliseconds.
    expires_at: Option<i64>,
}

/// `DELETE /api/v2/workspaces/{ws}/usersecrets/{name}`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    deleted: String,
}

/// Checks a create request's items and turns them into new secrets (no store access).
pub fn prepare(
    items: Vec<LeptonItem>,
    limit: crate::secret::ValueLimit,
) -> Result<Vec<crate::service::NewSecret>, ApiError> {
    let mut new: Vec<crate::service::NewSecret> = Vec::with_capacity(items.len());
    for item in items {
        if item.value.is_some() && item.value_base64.is_some() {
            return Err(ApiError::bad_request(format!(
                "secret \"{}\" has both value and value_base64; send one",
                item.name
            ))
            .on("value_base64"));
        }
        if RESERVED.contains(&item.name.as_str()) {
            return Err(ApiError::invalid(format!(
                "secret name \"{}\" is reserved: the platform sets {} itself; choose another name",
                item.name,
                RESERVED.join(", ")
            )));
        }
        let secret = new_secret(
            CreateSecret {
                name: item.name,
                value: item.value,
                value_base64: item.value_base64,
                kind: None,
                visibility: item.visibility,
                tags: item.tags.unwrap_or_default(),
            },
            limit,
        )?;
        if new.iter().any(|n| n.name == secret.name) {
            return Err(ApiError::invalid(format!(
                "secret \"{}\" appears twice in the request",
                secret.name
            )));
        }
        new.push(secret);
    }
    Ok(new)
}

/// 404 unless the caller belongs to `workspace`.
fn member(state: &AppState, caller: &Caller, workspace: &str) -> Result<(), ApiError> {
    if state
        .service
        .workspaces(caller)?
        .iter()
        .any(|w| w == workspace)
    {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "workspace \"{workspace}\" not found"
        )))
    }
}

/// `GET /api/v2/workspaces/{ws}/usersecrets`: a bare array of what the caller may see.
#[utoipa::path(
    get,
    path = "/api/v2/workspaces/{ws}/usersecrets",
    summary = "Lepton: the secrets the caller may see, as a bare array, never values",
    params(("ws" = String, Path, description = "the workspace")),
    responses((status = 200, body = Vec<LeptonSecret>))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    let metas = state.service.list_secrets(&caller, &ws).await?;
    let items: Vec<LeptonSecret> = metas
        .into_iter()
        .map(|m| LeptonSecret {
            name: m.name.to_string(),
            owner: m.owner,
            visibility: m.visibility,
            tags: m.tags,
        })
        .collect();
    Ok(axum::Json(items).into_response())
}

/// `POST /api/v2/workspaces/{ws}/usersecrets`: a JSON array, created all or none.
#[utoipa::path(
    post,
    path = "/api/v2/workspaces/{ws}/usersecrets",
    summary = "Lepton: create secrets from a JSON array, all or none; Lepton's reserved names are refused",
    params(("ws" = String, Path, description = "the workspace")),
    request_body = Vec<LeptonItem>,
    responses((status = 201, body = Vec<LeptonSecret>))
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(items): Json<Vec<LeptonItem>>,
) -> Result<Response, ApiError> {
    member(&state, &caller, &ws)?;
    if items.is_empty() {
        return Err(ApiError::invalid(
            "the body is an empty list; send at least one secret",
        ));
    }
    let new = prepare(items, state.service.value_limit())?;
    // Lepton's answer has no place for the template's warnings (these are all custom).
    let created = state.service.create_secrets(&caller, &ws, new).await?;
    let items: Vec<LeptonSecret> = created
        .into_iter()
        .map(|w| w.meta)
        .map(|m| LeptonSecret {
            name: m.name.to_string(),
            owner: m.owner,
            visibility: m.visibility,
            tags: m.tags,
        })
        .collect();
    Ok((StatusCode::CREATED, axum::Json(items)).into_response())
}

/// `DELETE /api/v2/workspaces/{ws}/usersecrets/{name}`.
#[utoipa::path(
    delete,
    path = "/api/v2/workspaces/{ws}/usersecrets/{name}",
    summary = "Lepton: delete a secret (owner or admin)",
    params(("ws" = String, Path, description = "the workspace"), ("name" = crate::secret::SecretName, Path, description = "the secret")),
    responses((status = 200, body = Deleted))
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    state.service.delete_secret(&caller, &ws, &name).await?;
    Ok(axum::Json(Deleted {
        deleted: name.as_str().to_owned(),
    })
    .into_response())
}

#[derive(Serialize)]
struct Usage {
    cpu: u32,
    memory: u32,
    accelerator_num: u32,
}

/// `GET /api/v2/workspaces/{ws}/workspace`: the `WorkspaceInfo` `lep login` requires.
#[utoipa::path(
    get,
    path = "/api/v2/workspaces/{ws}/workspace",
    summary = "Lepton: WorkspaceInfo (what lep login requires; num_secrets counts what the caller may see)",
    params(("ws" = String, Path, description = "the workspace")),
    responses((status = 200, body = serde_json::Value, description = "Lepton's WorkspaceInfo"))
)]
pub async fn workspace(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    let num_secrets = state.service.list_secrets(&caller, &ws).await?.len();
    let zero = || Usage {
        cpu: 0,
        memory: 0,
        accelerator_num: 0,
    };
    Ok(axum::Json(serde_json::json!({
        "build_time": "",
        "git_commit": env!("CARGO_PKG_VERSION"),
        "workspace_name": ws,
        "workspace_tier": "self-hosted",
        "workspace_state": "normal",
        "supported_shapes": {},
        "workspace_disk_usage_bytes": 0,
        "workloads": {
            "num_deployments": 0,
            "num_jobs": 0,
            "num_pods": 0,
            "num_secrets": num_secrets,
            "num_image_pull_secrets": 0
        },
        "resource_quota": { "limit": zero(), "used": zero() },
    }))
    .into_response())
}

/// `GET /api/v2/workspaces/{ws}`: the display name `lep login` shows.
#[utoipa::path(
    get,
    path = "/api/v2/workspaces/{ws}",
    summary = "Lepton: the workspace's display name",
    params(("ws" = String, Path, description = "the workspace")),
    responses((status = 200, body = DisplayName))
)]
pub async fn base(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    member(&state, &caller, &ws)?;
    Ok(axum::Json(DisplayName { display_name: ws }).into_response())
}

/// `GET /api/v2/workspaces/{ws}/tokens`: the caller's token, masked, with its expiry (epoch
/// milliseconds), which `lep` matches against its own token to warn before it expires.
#[utoipa::path(
    get,
    path = "/api/v2/workspaces/{ws}/tokens",
    summary = "Lepton: the caller's token, masked, with its expiry in epoch milliseconds",
    params(("ws" = String, Path, description = "the workspace")),
    responses((status = 200, body = Vec<LeptonToken>))
)]
pub async fn tokens(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    member(&state, &caller, &ws)?;
    let token = caller.token().ok_or_else(ApiError::internal)?;
    let expires_ms = token.expires_at.map(|t| t.nanos() / 1_000_000);
    Ok(axum::Json([LeptonToken {
        masked_value: masked(&token.id, token.kind),
        expires_at: expires_ms,
    }])
    .into_response())
}
