//! Secrets as users manage them: list (metadata only), create, get metadata, replace the value,
//! change visibility or tags, delete. No handler here returns a value.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::body::Json;
use super::{ApiError, AppState, UserAuth};
use crate::protocol::{
    self, Base64Value, CreateSecret, ImportSecrets, Imported, TextValue, UpdateSecret, Written,
};
use crate::secret::{SecretKind, SecretName, SecretValue, ValueLimit, Visibility, validate_tags};
use crate::service::{NewSecret, SecretUpdate};

pub fn parse_name(s: &str) -> Result<SecretName, ApiError> {
    SecretName::parse(s).map_err(|e| ApiError::invalid(e.to_string()).on("name"))
}

/// The API takes the canonical spelling only (what the document's enum lists); the CLI's
/// aliases and case-insensitivity are the CLI's, which sends the canonical form.
fn parse_visibility(s: &str) -> Result<Visibility, ApiError> {
    match s.parse::<Visibility>() {
        Ok(v) if v.as_str() == s => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "unknown visibility {}; use \"private\" or \"public\"",
            crate::secret::quote_for_error(s)
        ))
        .on("visibility")),
    }
}

fn parse_kind(s: &str) -> Result<SecretKind, ApiError> {
    match SecretKind::ALL.into_iter().find(|k| k.as_str() == s) {
        Some(k) => Ok(k),
        None => {
            let names: Vec<&str> = SecretKind::ALL.iter().map(|k| k.as_str()).collect();
            Err(ApiError::invalid(format!(
                "unknown secret type {}; use one of {}",
                crate::secret::quote_for_error(s),
                names.join(", ")
            ))
            .on("kind"))
        }
    }
}

/// The value of a body: at most one of `value` and `value_base64`, checked against `limit`.
pub fn body_value(
    value: Option<TextValue>,
    value_base64: Option<Base64Value>,
    limit: ValueLimit,
) -> Result<Option<SecretValue>, ApiError> {
    protocol::value_of(value, value_base64, limit).map_err(|p| ApiError::invalid(p.0).on("value"))
}

/// Turns a create request into a new secret (no store access); the service checks it against
/// its template.
pub fn new_secret(body: CreateSecret, limit: ValueLimit) -> Result<NewSecret, ApiError> {
    let name = parse_name(&body.name)?;
    let kind = match &body.kind {
        Some(k) => parse_kind(k)?,
        None => SecretKind::Custom,
    };
    let visibility = match &body.visibility {
        Some(v) => parse_visibility(v)?,
        None => Visibility::Private,
    };
    let tags = validate_tags(&body.tags).map_err(|e| ApiError::invalid(e).on("tags"))?;
    let value = body_value(body.value, body.value_base64, limit)?.ok_or_else(|| {
        ApiError::invalid(format!(
            "secret \"{name}\" has no value; give value or value_base64"
        ))
        .on("value")
    })?;
    Ok(NewSecret {
        name,
        kind,
        visibility,
        tags,
        value,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{ws}/secrets",
    summary = "Secrets the caller may use: metadata only, never values",
    params(("ws" = String, Path, description = "the workspace")),
    responses((status = 200, body = Vec<crate::secret::SecretMeta>))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    let metas = state.service.list_secrets(&caller, &ws).await?;
    Ok(axum::Json(metas).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{ws}/secrets/{name}",
    summary = "One secret's metadata (404 if the caller may not see it)",
    params(("ws" = String, Path, description = "the workspace"), ("name" = crate::secret::SecretName, Path, description = "the secret")),
    responses((status = 200, body = crate::secret::SecretMeta))
)]
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let meta = state.service.secret(&caller, &ws, &name).await?;
    Ok(axum::Json(meta).into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{ws}/secrets",
    summary = "Create a secret owned by the caller",
    params(("ws" = String, Path, description = "the workspace")),
    request_body = crate::protocol::CreateSecret,
    responses((status = 201, body = crate::protocol::Written))
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<CreateSecret>,
) -> Result<Response, ApiError> {
    let new = new_secret(body, state.service.value_limit())?;
    let written = state
        .service
        .create_secrets(&caller, &ws, vec![new])
        .await?
        .pop()
        .expect("one created");
    Ok((StatusCode::CREATED, axum::Json(written_body(written))).into_response())
}

/// `POST /api/v1/workspaces/{ws}/secrets:import`: every secret is checked, then all are created
/// in one transaction, or none.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{ws}/secrets:import",
    summary = "Create several secrets owned by the caller, all or none (secretfs secret import)",
    params(("ws" = String, Path, description = "the workspace")),
    request_body = crate::protocol::ImportSecrets,
    responses((status = 201, body = crate::protocol::Imported))
)]
pub async fn import(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<ImportSecrets>,
) -> Result<Response, ApiError> {
    if body.secrets.is_empty() {
        return Err(
            ApiError::invalid("secrets is an empty list; send at least one secret").on("secrets"),
        );
    }
    let limit = state.service.value_limit();
    let new = body
        .secrets
        .into_iter()
        .map(|b| new_secret(b, limit))
        .collect::<Result<Vec<_>, _>>()?;
    let written = state.service.create_secrets(&caller, &ws, new).await?;
    let secrets = written.into_iter().map(written_body).collect();
    Ok((StatusCode::CREATED, axum::Json(Imported { secrets })).into_response())
}

fn written_body(w: crate::service::Written) -> Written {
    Written {
        meta: w.meta,
        warnings: w.warnings,
    }
}

#[utoipa::path(
    patch,
    path = "/api/v1/workspaces/{ws}/secrets/{name}",
    summary = "Replace the value (a new version) and/or change visibility or tags (owner or admin)",
    params(("ws" = String, Path, description = "the workspace"), ("name" = crate::secret::SecretName, Path, description = "the secret")),
    request_body = crate::protocol::UpdateSecret,
    responses((status = 200, body = crate::protocol::Written))
)]
pub async fn update(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
    Json(body): Json<UpdateSecret>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let value = body_value(body.value, body.value_base64, state.service.value_limit())?;
    let visibility = body
        .visibility
        .as_deref()
        .map(parse_visibility)
        .transpose()?;
    let written = state
        .service
        .update_secret(
            &caller,
            &ws,
            &name,
            SecretUpdate {
                value,
                visibility,
                tags: body.tags,
            },
        )
        .await?;
    Ok(axum::Json(written_body(written)).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{ws}/secrets/{name}",
    summary = "Delete a secret (owner or admin)",
    params(("ws" = String, Path, description = "the workspace"), ("name" = crate::secret::SecretName, Path, description = "the secret")),
    responses((status = 204, description = "deleted"))
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    state.service.delete_secret(&caller, &ws, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
