//! Users, workspaces, memberships and the audit log.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::body::Json;
use super::tokens::{Minted, TokenInfo, first_user_token};
use super::{ApiError, AppState, Auth, Principal, UserAuth};
use crate::secret::Timestamp;
use crate::store::{DEFAULT_WORKSPACE, User, valid_account_name};

const NAME_RULE: &str =
    "1 to 64 characters: letters, digits, '_', '.', '@' or '-', not starting with '.' or '-'";

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_account_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid {what} name {name:?}: {NAME_RULE}"
        )))
    }
}

#[derive(Serialize)]
struct WhoAmI<'a> {
    user: &'a str,
    admin: bool,
    workspaces: &'a [String],
    token: TokenInfo,
}

pub async fn whoami(auth: Auth) -> Result<Response, ApiError> {
    let user = auth.principal.user();
    Ok(axum::Json(WhoAmI {
        user: &user.name,
        admin: user.admin && matches!(auth.principal, Principal::User { .. }),
        workspaces: &user.workspaces,
        token: TokenInfo::from(auth.principal.token()),
    })
    .into_response())
}

pub async fn list_workspaces(UserAuth(auth): UserAuth) -> Result<Response, ApiError> {
    Ok(axum::Json(auth.user()?.workspaces.clone()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    name: String,
}

/// An admin creates a workspace and becomes its first member.
pub async fn create_workspace(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Json(body): Json<NewWorkspace>,
) -> Result<Response, ApiError> {
    let admin = auth.admin()?;
    check_name("workspace", &body.name)?;
    state
        .store()
        .create_workspace(&body.name, Timestamp::now())
        .await?;
    state.store().add_member(&admin.name, &body.name).await?;
    state.changed();
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "name": body.name })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    user: String,
}

pub async fn add_member(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<NewMember>,
) -> Result<Response, ApiError> {
    auth.admin()?;
    state.store().add_member(&body.user, &ws).await?;
    state.changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_users(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
) -> Result<Response, ApiError> {
    auth.admin()?;
    Ok(axum::Json(state.store().users().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    #[serde(default)]
    admin: bool,
    /// Workspaces to join (default: `default`).
    workspaces: Option<Vec<String>>,
}

/// An admin creates a user with a first user token, shown once.
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Json(body): Json<NewUser>,
) -> Result<Response, ApiError> {
    auth.admin()?;
    check_name("user", &body.name)?;
    let user = User {
        name: body.name.clone(),
        admin: body.admin,
        created_at: Timestamp::now(),
        workspaces: body
            .workspaces
            .unwrap_or_else(|| vec![DEFAULT_WORKSPACE.to_owned()]),
    };
    let (token, record) = first_user_token(&user.name);
    state.store().create_user(&user, Some(&record)).await?;
    state.changed();
    tracing::info!(user = %user.name, admin = user.admin, "user created");
    let minted = Minted {
        token: token.expose_secret().to_owned(),
        info: TokenInfo::from(&record),
    };
    Ok((StatusCode::CREATED, axum::Json(minted)).into_response())
}

pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let admin = auth.admin()?;
    if admin.name == name {
        return Err(ApiError::conflict("an admin cannot remove themselves"));
    }
    state.store().delete_user(&name).await?;
    state.changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct AuditQuery {
    /// RFC 3339 time or a duration ago ("1h").
    since: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/audit`: admins read the log of every workspace.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    auth.admin()?;
    let since = match q.since.as_deref() {
        None => Timestamp::from_nanos(0),
        Some(s) => parse_since(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "since {s:?} is neither an RFC 3339 time nor a duration like 1h"
            ))
        })?,
    };
    let records = state
        .store()
        .audit_since(since, q.limit.unwrap_or(1000).min(100_000))
        .await?;
    Ok(axum::Json(records).into_response())
}

/// An RFC 3339 time, or a duration meaning that long ago.
pub fn parse_since(s: &str) -> Option<Timestamp> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(Timestamp::from_system_time(t));
    }
    let d = humantime::parse_duration(s).ok()?;
    Some(Timestamp::from_system_time(
        std::time::SystemTime::now().checked_sub(d)?,
    ))
}

/// `POST /api/v1/admin/rotate-key`: a new master key; every value re-sealed while serving.
pub async fn rotate_key(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
) -> Result<Response, ApiError> {
    auth.admin()?;
    let Some(key) = state.key_path.clone() else {
        return Err(ApiError::conflict(
            "this server was started without a key file it may rotate",
        ));
    };
    let moved = crate::store::local::rotate_key(&state.vault, &key, &auth.actor())
        .await
        .map_err(|e| match e {
            crate::store::local::LocalError::Store(e) => ApiError::from(e),
            other => {
                tracing::error!(error = %other, "key rotation failed");
                ApiError::internal()
            }
        })?;
    state.changed();
    tracing::info!(resealed = moved, by = %auth.principal.user().name, "master key rotated");
    Ok(axum::Json(serde_json::json!({ "resealed": moved })).into_response())
}

/// `GET /api/v1/admin/backup`: a consistent copy of the store (ciphertext only), streamed.
pub async fn backup(
    State(state): State<Arc<AppState>>,
    UserAuth(auth): UserAuth,
) -> Result<Response, ApiError> {
    auth.admin()?;
    let dir = tempfile::tempdir().map_err(|e| {
        tracing::error!(error = %e, "cannot make a backup directory");
        ApiError::internal()
    })?;
    let path = dir.path().join("backup.db");
    state.store().backup_to(&path).await?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read the backup");
        ApiError::internal()
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/vnd.sqlite3")],
        bytes,
    )
        .into_response())
}
