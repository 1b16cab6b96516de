//! The workspace API: routes, authentication, and the state every handler shares.
//!
//! Handlers translate HTTP to calls on the [`Service`] (the one door to the store, which owns
//! every rule, audit record and change event) and its answers and errors back to HTTP. The
//! native routes (`secrets`, `tokens`, `admin`, `workload`) and the Lepton-compatible ones
//! (`lepton`) call the same operations.

mod admin;
mod body;
pub mod error;
mod health;
mod lepton;
mod openapi;
mod query;
mod secrets;
mod tokens;
mod web;
mod workload;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{delete, get, post};

use crate::service::{Caller, Service, ServiceError, Who};
pub use error::ApiError;

/// Slows down failed authentication per client address, so tokens cannot be guessed at
/// loopback speed: each consecutive failure doubles the delay of the next answer, up to 2 s.
#[derive(Default)]
pub struct FailureGuard {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureGuard {
    const BASE: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const FORGET: Duration = Duration::from_secs(600);

    /// Records a failure and returns how long to wait before answering it.
    fn failed(&self, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (_, at)| now.duration_since(*at) < Self::FORGET);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > Self::FORGET {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let exp = entry.0.saturating_sub(1).min(16);
        Self::BASE.saturating_mul(1 << exp).min(Self::MAX)
    }

    fn succeeded(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&ip);
        }
    }
}

/// Everything handlers share: the service (the one door to the store) and the HTTP-only
/// concern of slowing down token guessing.
pub struct AppState {
    pub service: Arc<Service>,
    guard: FailureGuard,
}

impl AppState {
    pub fn new(service: Arc<Service>) -> Arc<Self> {
        Arc::new(AppState {
            service,
            guard: FailureGuard::default(),
        })
    }
}

/// The caller, authenticated; extracting it answers 401 (after the failure delay) otherwise.
pub struct Auth(pub Caller);

fn client_ip(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let addr = client_ip(parts);
        let ip = addr.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let address = addr.map(|a| a.ip().to_string()).unwrap_or_default();
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let result = match bearer {
            Some(token) => state.service.authenticate(token, &address).await,
            None => Err(ServiceError::Unauthorized),
        };
        match result {
            Ok(caller) => {
                state.guard.succeeded(ip);
                Ok(Auth(caller))
            }
            Err(ServiceError::Unauthorized) => {
                let delay = state.guard.failed(ip);
                tracing::info!(client = %ip, delay_ms = delay.as_millis() as u64, "authentication failed");
                tokio::time::sleep(delay).await;
                Err(ServiceError::Unauthorized.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A caller with a user token; a workload token is answered 403 before the body is read.
pub struct UserAuth(pub Caller);

impl FromRequestParts<Arc<AppState>> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Auth(caller) = Auth::from_request_parts(parts, state).await?;
        if matches!(caller.who, Who::Workload { .. }) {
            return Err(ApiError::forbidden(
                "a workload token can only read its secrets (POST /api/v1/workload/read, GET /api/v1/workload/secrets)",
            ));
        }
        Ok(UserAuth(caller))
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
        .with_state(state)
}
