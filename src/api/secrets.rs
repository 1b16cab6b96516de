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
use super::{ApiError, AppState, UserAuth};
use crate::secret::{
    SecretKind, SecretMeta, SecretName, SecretValue, ValueLimit, Visibility, validate_tags,
};
use crate::service::{NewSecret, SecretUpdate, Written};

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

/// Turns a create request into a new secret (no store access); the service checks it against
/// its template.
pub fn new_secret(body: CreateBody, limit: ValueLimit) -> Result<NewSecret, ApiError> {
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
    Ok(NewSecret {
        name,
        kind,
        visibility,
        tags,
        value,
    })
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    let metas = state.service.list_secrets(&caller, &ws).await?;
    Ok(axum::Json(metas).into_response())
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let meta = state.service.secret(&caller, &ws, &name).await?;
    Ok(axum::Json(meta).into_response())
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let new = new_secret(body, state.service.value_limit())?;
    let written = state
        .service
        .create_secrets(&caller, &ws, vec![new])
        .await?
        .pop()
        .expect("one created");
    Ok((StatusCode::CREATED, axum::Json(WrittenBody::from(written))).into_response())
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
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<ImportBody>,
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
    let secrets: Vec<WrittenBody> = written.into_iter().map(WrittenBody::from).collect();
    Ok((StatusCode::CREATED, axum::Json(ImportAnswer { secrets })).into_response())
}

#[derive(Serialize)]
struct ImportAnswer {
    secrets: Vec<WrittenBody>,
}

/// A created or updated secret's metadata, with what the template noticed about the value
/// (a token that does not look like the provider's): stored anyway, but worth showing.
#[derive(Serialize)]
struct WrittenBody {
    #[serde(flatten)]
    meta: SecretMeta,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

impl From<Written> for WrittenBody {
    fn from(w: Written) -> Self {
        WrittenBody {
            meta: w.meta,
            warnings: w.warnings,
        }
    }
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
    Json(body): Json<UpdateBody>,
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
    Ok(axum::Json(WrittenBody::from(written)).into_response())
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    state.service.delete_secret(&caller, &ws, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
