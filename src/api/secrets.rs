//! Secrets as users manage them: list (metadata only), create, get metadata, replace the value,
//! change visibility or tags, delete. No handler here returns a value.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::body::Json;
use super::{ApiError, AppState, UserAuth, may_use, member};
use crate::secret::{
    SecretKind, SecretMeta, SecretName, SecretValue, ValueLimit, Visibility, validate_tags,
};
use crate::store::{Actor, NewSecret, SecretUpdate, StoreError, User};

/// A secret as created through the API.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    /// The value as text...
    pub value: Option<String>,
    /// ...or as base64, for bytes that are not UTF-8.
    pub value_base64: Option<String>,
    pub kind: Option<String>,
    pub visibility: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    pub value: Option<String>,
    pub value_base64: Option<String>,
    pub visibility: Option<String>,
    pub tags: Option<Vec<String>>,
}

pub fn parse_name(s: &str) -> Result<SecretName, ApiError> {
    SecretName::parse(s).map_err(|e| ApiError::invalid(e.to_string()).on("name"))
}

fn parse_visibility(s: &str) -> Result<Visibility, ApiError> {
    s.parse()
        .map_err(|e: String| ApiError::invalid(e).on("visibility"))
}

/// The value of a body: exactly one of `value` and `value_base64`, taken without copies left
/// behind.
pub fn body_value(
    value: Option<String>,
    value_base64: Option<String>,
    limit: ValueLimit,
) -> Result<Option<SecretValue>, ApiError> {
    let bytes = match (value, value_base64) {
        (Some(_), Some(_)) => {
            return Err(
                ApiError::invalid("give either value or value_base64, not both").on("value"),
            );
        }
        (Some(text), None) => Zeroizing::new(text.into_bytes()),
        (None, Some(b64)) => {
            let b64 = Zeroizing::new(b64);
            Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|_| {
                        ApiError::invalid("value_base64 is not valid base64").on("value")
                    })?,
            )
        }
        (None, None) => return Ok(None),
    };
    SecretValue::new(bytes, limit)
        .map(Some)
        .map_err(|e| ApiError::invalid(e.to_string()).on("value"))
}

/// The metadata of the secrets `user` may see in `workspace`.
pub async fn visible(
    state: &AppState,
    user: &User,
    workspace: &str,
) -> Result<Vec<SecretMeta>, ApiError> {
    member(user, workspace)?;
    let all = state.vault.list(workspace).await?;
    Ok(all.into_iter().filter(|m| may_use(user, m)).collect())
}

/// One secret's metadata, or 404 when it does not exist or `user` may not see it.
pub async fn visible_one(
    state: &AppState,
    user: &User,
    workspace: &str,
    name: &SecretName,
) -> Result<SecretMeta, ApiError> {
    member(user, workspace)?;
    match state.vault.meta(workspace, name).await {
        Ok(meta) if may_use(user, &meta) => Ok(meta),
        Ok(_) | Err(StoreError::NotFound(_)) => {
            Err(ApiError::not_found(format!("secret \"{name}\" not found")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks a value against its template: an error (on the `value` field) when it cannot be that
/// kind of secret, else what the template noticed about it (a token that does not look like the
/// provider's), which is stored anyway but worth showing.
fn check_value(kind: SecretKind, value: &SecretValue) -> Result<Vec<String>, ApiError> {
    kind.check(value)
        .map(|w| w.into_iter().map(|w| w.0).collect())
        .map_err(|e| ApiError::invalid(e.to_string()).on("value"))
}

/// Checks a create request and turns it into a new secret (no store access), with the
/// template's warnings about the value.
pub fn new_secret(
    body: CreateBody,
    limit: ValueLimit,
) -> Result<(NewSecret, Vec<String>), ApiError> {
    let name = parse_name(&body.name)?;
    let kind = match &body.kind {
        Some(k) => k
            .parse::<SecretKind>()
            .map_err(|e| ApiError::invalid(e).on("kind"))?,
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
    let warnings = check_value(kind, &value)?;
    Ok((
        NewSecret {
            name,
            kind,
            visibility,
            tags,
            value,
        },
        warnings,
    ))
}

/// Creates a secret owned by the caller.
pub async fn create_one(
    state: &AppState,
    user: &User,
    actor: &Actor,
    workspace: &str,
    new: NewSecret,
) -> Result<SecretMeta, ApiError> {
    member(user, workspace)?;
    let meta = state.vault.create(workspace, actor, new).await?;
    state.changed();
    Ok(meta)
}

/// Deletes a secret: 404 unless visible, 403 unless the caller owns it or is an admin.
pub async fn delete_one(
    state: &AppState,
    user: &User,
    actor: &Actor,
    workspace: &str,
    name: &SecretName,
) -> Result<(), ApiError> {
    let meta = visible_one(state, user, workspace, name).await?;
    owner_or_admin(user, &meta)?;
    state.vault.delete(workspace, actor, name).await?;
    state.changed();
    Ok(())
}

fn owner_or_admin(user: &User, meta: &SecretMeta) -> Result<(), ApiError> {
    if meta.owner == user.name || user.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "only the owner of \"{}\" ({}) or an admin may change or delete it",
            meta.name, meta.owner
        )))
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    let metas = visible(&state, auth.user()?, &ws).await?;
    Ok(axum::Json(metas).into_response())
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let meta = visible_one(&state, auth.user()?, &ws, &name).await?;
    Ok(axum::Json(meta).into_response())
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let user = auth.user()?;
    let (new, warnings) = new_secret(body, state.vault.value_limit())?;
    let meta = create_one(&state, user, &auth.actor(), &ws, new).await?;
    Ok((StatusCode::CREATED, axum::Json(Written { meta, warnings })).into_response())
}

/// A batch of secrets to create, all or none (what `secretfs secret import` sends).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    pub secrets: Vec<CreateBody>,
}

/// `POST /api/v1/workspaces/{ws}/secrets:import`: every secret is checked, then all are created
/// in one transaction, or none.
pub async fn import(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<ImportBody>,
) -> Result<Response, ApiError> {
    let user = auth.user()?;
    member(user, &ws)?;
    if body.secrets.is_empty() {
        return Err(
            ApiError::invalid("secrets is an empty list; send at least one secret").on("secrets"),
        );
    }
    let limit = state.vault.value_limit();
    let mut new = Vec::with_capacity(body.secrets.len());
    let mut warnings = Vec::new();
    for b in body.secrets {
        let (n, w) = new_secret(b, limit)?;
        warnings.push(w);
        new.push(n);
    }
    let created = state.vault.create_many(&ws, &auth.actor(), new).await?;
    state.changed();
    let secrets: Vec<Written> = created
        .into_iter()
        .zip(warnings)
        .map(|(meta, warnings)| Written { meta, warnings })
        .collect();
    Ok((StatusCode::CREATED, axum::Json(ImportAnswer { secrets })).into_response())
}

#[derive(Serialize)]
struct ImportAnswer {
    secrets: Vec<Written>,
}

/// A created or updated secret's metadata, with what the template noticed about the value
/// (a token that does not look like the provider's): stored anyway, but worth showing.
#[derive(Serialize)]
struct Written {
    #[serde(flatten)]
    meta: SecretMeta,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path((ws, name)): Path<(String, String)>,
    Json(body): Json<UpdateBody>,
) -> Result<Response, ApiError> {
    let user = auth.user()?;
    let name = parse_name(&name)?;
    let value = body_value(body.value, body.value_base64, state.vault.value_limit())?;
    let visibility = body
        .visibility
        .as_deref()
        .map(parse_visibility)
        .transpose()?;
    let tags = body
        .tags
        .map(|t| validate_tags(&t).map_err(|e| ApiError::invalid(e).on("tags")))
        .transpose()?;
    let meta = visible_one(&state, user, &ws, &name).await?;
    owner_or_admin(user, &meta)?;
    let warnings = match &value {
        Some(v) => check_value(meta.kind, v)?,
        None => Vec::new(),
    };
    let updated = state
        .vault
        .update(
            &ws,
            &auth.actor(),
            &name,
            SecretUpdate {
                value,
                visibility,
                tags,
            },
        )
        .await?;
    state.changed();
    Ok(axum::Json(Written {
        meta: updated,
        warnings,
    })
    .into_response())
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    delete_one(&state, auth.user()?, &auth.actor(), &ws, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
