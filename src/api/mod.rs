//! The workspace API: the routes and the state every handler shares (`auth` authenticates).
//!
//! Handlers translate HTTP to calls on the [`Service`] (the one door to the store, which owns
//! every rule, audit record and change event) and its answers and errors back to HTTP. The
//! native routes (`secrets`, `tokens`, `admin`, `workload`) and the Lepton-compatible ones
//! (`lepton`) call the same operations.

mod admin;
mod auth;
mod body;
pub use admin::parse_since;
pub use body::BODY_LIMIT;
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
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The routes and the document, from the same annotated handlers: a route cannot be served
/// without being documented (axum's own `route` is never called here; a test holds it).
pub(crate) fn parts() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(openapi::Fixed::openapi())
        .routes(routes!(web::index))
        .routes(routes!(web::script))
        .routes(routes!(web::style))
        .routes(routes!(web::templates))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::document))
        .routes(routes!(admin::whoami))
        .routes(routes!(admin::list_workspaces, admin::create_workspace))
        .routes(routes!(admin::add_member))
        .routes(routes!(admin::remove_member))
        .routes(routes!(secrets::list, secrets::create))
        .routes(routes!(secrets::import))
        .routes(routes!(secrets::get_one, secrets::update, secrets::remove))
        .routes(routes!(tokens::mint_workload))
        .routes(routes!(tokens::list))
        .routes(routes!(tokens::renew))
        .routes(routes!(tokens::revoke))
        .routes(routes!(admin::list_users, admin::create_user))
        .routes(routes!(admin::delete_user))
        .routes(routes!(tokens::mint_user))
        .routes(routes!(workload::read))
        .routes(routes!(workload::read_per_name))
        .routes(routes!(workload::brokered))
        .routes(routes!(admin::audit))
        .routes(routes!(admin::audit_settings, admin::set_audit_settings))
        .routes(routes!(identity::list, identity::add))
        .routes(routes!(identity::remove))
        .routes(routes!(identity::exchange))
        .routes(routes!(admin::rotate_key))
        .routes(routes!(admin::backup))
        // The Lepton-compatible route set over the same operations.
        .routes(routes!(lepton::base))
        .routes(routes!(lepton::workspace))
        .routes(routes!(lepton::tokens))
        .routes(routes!(lepton::list, lepton::create))
        .routes(routes!(lepton::remove))
        .split_for_parts();
    openapi::add_shared_answers(&mut api);
    (router, api)
}

/// The router of the whole API.
pub fn router(state: Arc<AppState>) -> Router {
    let (routes, api) = parts();
    openapi::keep(api);
    routes
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::every_request,
        ))
        .with_state(state)
}
