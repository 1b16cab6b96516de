//! The workspace API: the routes and the state every handler shares (`auth` authenticates).
//!
//! Handlers translate HTTP to calls on the [`Service`] (the one door to the store, which owns
//! every rule, audit record and change event) and its answers and errors back to HTTP. The
//! native routes (`secrets`, `tokens`, `admin`, `workload`) and the Lepton-compatible ones
//! (`lepton`) call the same operations.

mod admin;
mod auth;
mod body;
pub mod error;
mod health;
mod identity;
mod lepton;
mod metrics;
mod openapi;
mod query;
mod secrets;
mod tokens;
mod web;
mod workload;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};

use crate::service::Service;
pub use auth::{Auth, FailureGuard, UserAuth};
pub use error::ApiError;

/// Everything handlers share: the service (the one door to the store) and the HTTP-only
/// concern of slowing down token guessing.
pub struct AppState {
    pub service: Arc<Service>,
    /// Failed authentication, slowed down per source.
    guard: FailureGuard,
    /// Refused identity exchanges, slowed down per source (apart from failed authentication: a
    /// node agent exchanging for every pod of its node must not be slowed by an unrelated 401).
    exchange_guard: FailureGuard,
}

impl AppState {
    pub fn new(service: Arc<Service>) -> Arc<Self> {
        let burst = service.options().failure_burst;
        Arc::new(AppState {
            service,
            guard: FailureGuard::with_burst(burst),
            exchange_guard: FailureGuard::with_burst(burst),
        })
    }
}

/// Every kind of request body through the parser and checks the handlers use (no store): the
/// `api_bodies` fuzz target.
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    use crate::secret::ValueLimit;
    if let Ok(b) = body::parse::<crate::protocol::CreateSecret>(data) {
        let _ = secrets::new_secret(b, ValueLimit::default());
    }
    if let Ok(b) = body::parse::<crate::protocol::UpdateSecret>(data) {
        let _ = secrets::body_value(b.value, b.value_base64, ValueLimit::default());
    }
    let _ = body::parse::<crate::protocol::MintWorkload>(data);
    if let Ok(items) = body::parse::<Vec<lepton::LeptonItem>>(data) {
        let _ = lepton::prepare(items, ValueLimit::default());
    }
}

/// The router of the whole API.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/api/v1/templates", get(web::templates))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/api/v1/whoami", get(admin::whoami))
        .route(
            "/api/v1/workspaces",
            get(admin::list_workspaces).post(admin::create_workspace),
        )
        .route("/api/v1/workspaces/{ws}/members", post(admin::add_member))
        .route(
            "/api/v1/workspaces/{ws}/members/{user}",
            delete(admin::remove_member),
        )
        .route(
            "/api/v1/workspaces/{ws}/secrets",
            get(secrets::list).post(secrets::create),
        )
        .route(
            "/api/v1/workspaces/{ws}/secrets:import",
            post(secrets::import),
        )
        .route(
            "/api/v1/workspaces/{ws}/secrets/{name}",
            get(secrets::get_one)
                .patch(secrets::update)
                .delete(secrets::remove),
        )
        .route(
            "/api/v1/workspaces/{ws}/tokens",
            post(tokens::mint_workload),
        )
        .route("/api/v1/tokens", get(tokens::list))
        .route("/api/v1/tokens/renew", post(tokens::renew))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/api/v1/users",
            get(admin::list_users).post(admin::create_user),
        )
        .route("/api/v1/users/{name}", delete(admin::delete_user))
        .route("/api/v1/users/{name}/tokens", post(tokens::mint_user))
        .route("/api/v1/workload/secrets", get(workload::read))
        .route("/api/v1/workload/read", post(workload::read_per_name))
        .route("/api/v1/audit", get(admin::audit))
        .route(
            "/api/v1/identity/bindings",
            get(identity::list).post(identity::add),
        )
        .route("/api/v1/identity/bindings/{name}", delete(identity::remove))
        .route("/api/v1/identity/exchange", post(identity::exchange))
        .route("/api/v1/admin/rotate-key", post(admin::rotate_key))
        .route("/api/v1/admin/backup", get(admin::backup))
        // The Lepton-compatible route set over the same operations.
        .route("/api/v2/workspaces/{ws}", get(lepton::base))
        .route("/api/v2/workspaces/{ws}/workspace", get(lepton::workspace))
        .route("/api/v2/workspaces/{ws}/tokens", get(lepton::tokens))
        .route(
            "/api/v2/workspaces/{ws}/usersecrets",
            get(lepton::list).post(lepton::create),
        )
        .route(
            "/api/v2/workspaces/{ws}/usersecrets/{name}",
            delete(lepton::remove),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn(web::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_request,
        ))
        .with_state(state)
}
