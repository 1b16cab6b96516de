//! Liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    summary = "The process answers",
    responses((status = 200, description = "the process answers"))
)]
pub async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// The process answers and its store does.
#[utoipa::path(
    get,
    path = "/readyz",
    summary = "The process and its store answer",
    responses((status = 200, description = "the process and its store answer"), (status = 503, description = "the store does not answer", body = crate::protocol::ErrorBody))
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    match state.service.ready().await {
        Ok(_) => Ok(axum::Json(serde_json::json!({ "status": "ready" })).into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            Err(ApiError::unavailable())
        }
    }
}
