//! Who is asking: the bearer token checked by the service, and failed attempts slowed down per
//! client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::service::{Caller, ServiceError, Who};

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
    pub(super) fn failed(&self, ip: IpAddr) -> Duration {
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

    pub(super) fn succeeded(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&ip);
        }
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

/// The client's address, where the listener recorded it (not in in-process tests).
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_ip(parts)))
    }
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
        if matches!(result, Err(ServiceError::Unauthorized)) {
            let reason = if bearer.is_some() {
                "refused"
            } else {
                "no_token"
            };
            state.service.metrics().auth_failure(reason);
        }
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
