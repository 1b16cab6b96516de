//! Users, workspaces, memberships, the audit log and the store's maintenance, over HTTP.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::Json;
use super::query::Query;
use super::tokens::{minted, token_info};
use super::{ApiError, AppState, Auth, UserAuth};
use crate::protocol::{
    AuditLine, NewMember, NewUser, NewWorkspace, Removed, Resealed, UserInfo, WhoAmI,
};
use crate::secret::Timestamp;
use crate::service::{AuditRecord, DEFAULT_WORKSPACE, Service, User};

#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    summary = "The caller: user, admin flag, workspaces, token",
    responses((status = 200, body = crate::protocol::WhoAmI))
)]
pub async fn whoami(Auth(caller): Auth) -> Result<Response, ApiError> {
    let user = caller.user();
    let token = caller.token().ok_or_else(ApiError::internal)?;
    Ok(axum::Json(WhoAmI {
        user: user.name.clone(),
        user_id: user.id.clone(),
        admin: Service::is_admin(&caller),
        workspaces: user.workspaces.clone(),
        token: token_info(token),
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces",
    summary = "The caller's workspaces",
    responses((status = 200, body = Vec<String>))
)]
pub async fn list_workspaces(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
) -> Result<Response, ApiError> {
    Ok(axum::Json(state.service.workspaces(&caller)?).into_response())
}

/// An admin creates a workspace and becomes its first member.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces",
    summary = "Create a workspace (admin)",
    request_body = crate::protocol::NewWorkspace,
    responses((status = 201, body = crate::protocol::NewWorkspace))
)]
pub async fn create_workspace(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Json(body): Json<NewWorkspace>,
) -> Result<Response, ApiError> {
    state.service.create_workspace(&caller, &body.name).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(NewWorkspace { name: body.name }),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{ws}/members",
    summary = "Add a user to a workspace (admin)",
    params(("ws" = String, Path, description = "the workspace")),
    request_body = crate::protocol::NewMember,
    responses((status = 204, description = "the user is a member"))
)]
pub async fn add_member(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<NewMember>,
) -> Result<Response, ApiError> {
    state.service.add_member(&caller, &ws, &body.user).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{ws}/members/{user}",
    summary = "Remove a user from a workspace (admin): they see nothing of it from then on, and their workload tokens for its secrets read nothing",
    params(("ws" = String, Path, description = "the workspace"), ("user" = crate::protocol::AccountName, Path, description = "the user")),
    responses((status = 204, description = "the user is no longer a member"))
)]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path((ws, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.service.remove_member(&caller, &ws, &user).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    summary = "Users and their workspaces (admin)",
    responses((status = 200, body = Vec<crate::protocol::UserInfo>))
)]
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
) -> Result<Response, ApiError> {
    let users: Vec<UserInfo> = state
        .service
        .users(&caller)
        .await?
        .into_iter()
        .map(|u: User| UserInfo {
            id: u.id,
            name: u.name,
            admin: u.admin,
            created_at: u.created_at,
            workspaces: u.workspaces,
        })
        .collect();
    Ok(axum::Json(users).into_response())
}

/// An admin creates a user with a first user token, shown once.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    summary = "Create a user with a first user token, shown once (admin)",
    request_body = crate::protocol::NewUser,
    responses((status = 201, body = crate::protocol::Minted))
)]
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Json(body): Json<NewUser>,
) -> Result<Response, ApiError> {
    let workspaces = body
        .workspaces
        .unwrap_or_else(|| vec![DEFAULT_WORKSPACE.to_owned()]);
    let (token, record) = state
        .service
        .add_user(&caller, &body.name, body.admin, workspaces)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(minted(token, &record))).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteUserQuery {
    /// Hand the user's secrets to this user instead of deleting the private ones.
    transfer_to: Option<String>,
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}",
    summary = "Remove a user (admin): their tokens and memberships go, their private secrets are deleted (or, with transfer_to, every secret of theirs is handed to that user), their public secrets stay, owned by the deleted user",
    params(("name" = crate::protocol::AccountName, Path, description = "the user"), DeleteUserQuery),
    responses((status = 200, body = crate::protocol::Removed))
)]
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(name): Path<String>,
    Query(q): Query<DeleteUserQuery>,
) -> Result<Response, ApiError> {
    let r = state
        .service
        .delete_user(&caller, &name, q.transfer_to.as_deref())
        .await?;
    Ok(axum::Json(Removed {
        user: name,
        tokens: r.tokens,
        deleted: r.deleted,
        kept: r.kept,
        transferred: r.transferred,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339 time or a duration ago ("1h").
    #[param(value_type = Option<crate::protocol::Since>)]
    since: Option<String>,
    /// At most this many records (the server reads at most 100,000).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// The records committed after the one with this id, in commit order (an export's
    /// resumable position), instead of in time order.
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    after: Option<u64>,
    /// Only this workspace's records.
    #[param(value_type = Option<crate::protocol::AccountName>)]
    workspace: Option<String>,
    /// The newest `limit` records (still oldest first) instead of the oldest.
    newest: Option<bool>,
}

/// `GET /api/v1/audit`: admins read the log of every workspace.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    summary = "The audit log (admin)",
    params(AuditQuery),
    responses((status = 200, body = Vec<crate::protocol::AuditLine>))
)]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let since = match q.since.as_deref() {
        None => Timestamp::from_nanos(0),
        Some(s) => parse_since(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "since {s:?} is neither an RFC 3339 time nor a duration like 1h"
            ))
            .on("since")
        })?,
    };
    if let Some(w) = q.workspace.as_deref()
        && !crate::service::valid_account_name(w)
    {
        return Err(ApiError::invalid(format!(
            "workspace {w:?} is not a workspace's name (1 to 64 letters, digits, '_', '.', '@', '-')"
        ))
        .on("workspace"));
    }
    if q.after.is_some_and(|a| a > i64::MAX as u64) {
        return Err(
            ApiError::invalid(format!("after is a record's id, at most {}", i64::MAX)).on("after"),
        );
    }
    let query = crate::service::AuditQuery {
        after: q.after,
        since,
        workspace: q.workspace,
        limit,
        newest: q.newest.unwrap_or(false),
    };
    let records = state.service.audit_query(&caller, &query).await?;
    let lines: Vec<AuditLine> = records.into_iter().map(AuditLine::from).collect();
    Ok(axum::Json(lines).into_response())
}

/// A record as the API (and the export) shows it.
impl From<AuditRecord> for AuditLine {
    fn from(r: AuditRecord) -> AuditLine {
        AuditLine {
            secret: (r.target_kind == crate::service::TargetKind::Secret).then(|| r.target.clone()),
            id: r.id,
            at: r.at,
            first_at: r.first_at,
            count: r.count,
            workspace: r.workspace,
            actor: r.actor,
            actor_id: r.actor_id,
            action: r.action.as_str().to_owned(),
            target_kind: r.target_kind.as_str().to_owned(),
            target: r.target,
            target_id: r.target_id,
            version: r.version,
            detail: r.detail,
            address: r.address,
        }
    }
}

/// A workspace's audit settings as they apply (admin).
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{ws}/audit",
    summary = "A workspace's audit coalescing interval and retention (admin)",
    params(("ws" = String, Path, description = "the workspace")),
    responses((status = 200, body = crate::protocol::AuditSettingsBody))
)]
pub async fn audit_settings(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
) -> Result<Response, ApiError> {
    let all = state.service.audit_settings(&caller).await?;
    let Some(found) = all.into_iter().find(|s| s.workspace == ws) else {
        return Err(crate::service::ServiceError::from(
            crate::service::StoreError::WorkspaceNotFound(ws),
        )
        .into());
    };
    Ok(axum::Json(crate::protocol::AuditSettingsBody {
        coalesce_secs: found.coalesce_secs,
        retention_secs: found.retention_secs,
    })
    .into_response())
}

/// Sets a workspace's audit coalescing interval (at least 10 s) and retention (at least an
/// hour); an absent field returns to the server's default (admin).
#[utoipa::path(
    put,
    path = "/api/v1/workspaces/{ws}/audit",
    summary = "Set a workspace's audit coalescing interval and retention (admin)",
    params(("ws" = String, Path, description = "the workspace")),
    request_body = crate::protocol::AuditSettingsBody,
    responses((status = 204, description = "set"))
)]
pub async fn set_audit_settings(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(ws): Path<String>,
    Json(body): Json<crate::protocol::AuditSettingsBody>,
) -> Result<Response, ApiError> {
    state
        .service
        .set_audit_settings(
            &caller,
            crate::service::NewAuditSettings {
                workspace: ws,
                coalesce: body.coalesce_secs.map(std::time::Duration::from_secs),
                retention: body.retention_secs.map(std::time::Duration::from_secs),
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An RFC 3339 time, or a duration meaning that long ago.
pub fn parse_since(s: &str) -> Option<Timestamp> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(Timestamp::from_system_time(t));
    }
    let d = canonical_duration(s)?;
    Some(Timestamp::from_system_time(
        std::time::SystemTime::now().checked_sub(d)?,
    ))
}

/// A duration in `protocol::DURATION_PATTERN`'s form, exactly: a number without a leading zero
/// and one unit (up to 9999 seconds or minutes, 999 hours, 366 days). Checked by hand: the rule
/// is one number and one letter.
fn canonical_duration(s: &str) -> Option<std::time::Duration> {
    let (digits, n, unit) = super::query::number_and_unit(s)?;
    if digits.starts_with('0') {
        return None;
    }
    let secs = match unit {
        "s" if digits.len() <= 4 => n,
        "m" if digits.len() <= 4 => n * 60,
        "h" if digits.len() <= 3 => n * 3600,
        "d" if n <= 366 => n * 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

/// `POST /api/v1/admin/rotate-key`: a new master key; every value re-sealed while serving.
#[utoipa::path(
    post,
    path = "/api/v1/admin/rotate-key",
    summary = "Rotate the master key (admin): a new key is written to the server's key file and every value is re-sealed under it while the server keeps serving",
    responses((status = 200, body = crate::protocol::Resealed), (status = 409, description = "a rotation is already running, or the key file cannot be replaced", body = crate::protocol::ErrorBody))
)]
pub async fn rotate_key(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
) -> Result<Response, ApiError> {
    let moved = state.service.rotate_key(&caller).await?;
    Ok(axum::Json(Resealed { resealed: moved }).into_response())
}

/// `GET /api/v1/admin/backup`: a consistent copy of the store (ciphertext only), streamed.
#[utoipa::path(
    get,
    path = "/api/v1/admin/backup",
    summary = "A consistent snapshot of the store (admin). Values stay sealed: restoring needs the key file, which is backed up separately",
    responses((status = 200, description = "a SQLite file of the store, values sealed", content_type = "application/vnd.sqlite3", body = Vec<u8>), (status = 501, description = "the store is not SQLite", body = crate::protocol::ErrorBody))
)]
pub async fn backup(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
) -> Result<Response, ApiError> {
    let dir = tempfile::tempdir().map_err(|e| {
        tracing::error!(error = %e, "cannot make a backup directory");
        ApiError::internal()
    })?;
    let path = dir.path().join("backup.db");
    state.service.backup(&caller, &path).await?;
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
