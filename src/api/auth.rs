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
use crate::service::{Caller, FailureSource as Source, ServiceError, Who};

/// Slows down failures per client source (an IPv4 address, or an IPv6 /64: one host's share of
/// a network), so tokens cannot be guessed at loopback speed, nor identity bindings probed. A
/// source has a burst of failures answered at once (10 unless `serve --failure-burst` says
/// otherwise: a misconfigured client's first few are not held up), refilled at one per
/// [`FailureGuard::REFILL`]; past it,
/// failures are answered one after another, each later than the last: the n-th waits
/// `50 ms × 2^(n-1)` (at most 2 s) after the previous answer, so parallel attempts queue instead
/// of sharing one delay. A success (with any token) neither waits nor resets the source: its
/// count falls back only after 10 minutes without a failure. Past 30 s of queue, a failure is
/// answered at once with 429 and `Retry-After` instead of being held (a flood must not hold
/// connections without end).
pub struct FailureGuard {
    sources: Mutex<HashMap<Source, Failures>>,
    burst: f64,
}

impl Default for FailureGuard {
    fn default() -> Self {
        Self::with_burst(10)
    }
}

struct Failures {
    /// Failures answered at once still allowed (refilled over time).
    credit: f64,
    refilled: Instant,
    /// Failures held since the burst ran out.
    held: u32,
    /// When the latest held failure is (or was) answered: the next one waits from there.
    answered_at: Instant,
    last: Instant,
}

/// When to answer a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Hold the answer until then.
    At(Instant),
    /// The source's queue is full: answer now, telling it to come back after this long.
    Refuse(Duration),
}

impl FailureGuard {
    const BASE: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const FORGET: Duration = Duration::from_secs(600);
    const QUEUE: Duration = Duration::from_secs(30);
    /// One more failure answered at once per this long.
    pub const REFILL: Duration = Duration::from_secs(6);

    /// A guard that answers a burst of `burst` failures per source at once.
    pub fn with_burst(burst: u32) -> FailureGuard {
        FailureGuard {
            sources: Mutex::default(),
            burst: f64::from(burst),
        }
    }

    /// Records a failure of `ip` that arrived at `arrived` and says when to answer it.
    pub fn failed(&self, ip: IpAddr, arrived: Instant) -> Answer {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, f| now.saturating_duration_since(f.last) < Self::FORGET);
        }
        let burst = self.burst;
        let fresh = || Failures {
            credit: burst,
            refilled: now,
            held: 0,
            answered_at: now,
            last: now,
        };
        let f = map.entry(Source::of(ip)).or_insert_with(fresh);
        if now.saturating_duration_since(f.last) > Self::FORGET {
            *f = fresh();
        }
        f.last = now;
        let refill =
            now.saturating_duration_since(f.refilled).as_secs_f64() / Self::REFILL.as_secs_f64();
        f.credit = (f.credit + refill).min(self.burst);
        f.refilled = now;
        if f.credit >= 1.0 {
            f.credit -= 1.0;
            return Answer::At(arrived);
        }
        let exp = f.held.min(16);
        let delay = Self::BASE.saturating_mul(1 << exp).min(Self::MAX);
        let at = f.answered_at.max(arrived) + delay;
        if at.saturating_duration_since(now) > Self::QUEUE {
            return Answer::Refuse(at.saturating_duration_since(now) - Self::QUEUE + Self::MAX);
        }
        f.held = f.held.saturating_add(1);
        f.answered_at = at;
        Answer::At(at)
    }

    /// Waits as [`FailureGuard::failed`] says; `Err` with the time to come back when the
    /// source's queue is full.
    pub async fn hold(&self, ip: IpAddr, arrived: Instant) -> Result<(), Duration> {
        match self.failed(ip, arrived) {
            Answer::At(at) => {
                tokio::time::sleep_until(at.into()).await;
                Ok(())
            }
            Answer::Refuse(after) => Err(after),
        }
    }
}

/// The answer to a source whose failures are queued past the limit.
pub fn too_many_failures(retry_after: Duration) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        format!(
            "too many failed attempts from this address; try again in {} s",
            retry_after.as_secs().max(1)
        ),
    )
    .retry_after(retry_after)
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
        let arrived = Instant::now();
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
            // Boxed: the extractor's future is part of every handler's, held for a long-poll's
            // whole wait, and the principal's load (a store query) is its largest state.
            Some(token) => Box::pin(state.service.authenticate(token, &address)).await,
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
            Ok(caller) => Ok(Auth(caller)),
            Err(ServiceError::Unauthorized) => {
                tracing::info!(client = %ip, "authentication failed");
                match state.guard.hold(ip, arrived).await {
                    Ok(()) => Err(ServiceError::Unauthorized.into()),
                    Err(after) => Err(too_many_failures(after)),
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the burst, failures queue; past 30 s of queue, each is refused at once (429) and
    /// told when to come back; an IPv6 source is its /64, and another source has its own queue.
    #[test]
    fn failures_queue_per_source_and_a_full_queue_is_refused() {
        let guard = FailureGuard::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        let now = Instant::now();
        let answers: Vec<Answer> = (0..40).map(|_| guard.failed(ip, now)).collect();
        let at_once = answers.iter().filter(|a| **a == Answer::At(now)).count();
        assert_eq!(at_once, 10, "{answers:?}");
        let queued: Vec<Instant> = answers
            .iter()
            .filter_map(|a| match a {
                Answer::At(t) if *t > now => Some(*t),
                _ => None,
            })
            .collect();
        assert!(
            queued.windows(2).all(|w| w[0] < w[1]),
            "each later than the last"
        );
        assert!(*queued.last().unwrap() <= now + FailureGuard::QUEUE + FailureGuard::MAX);
        let refused = answers
            .iter()
            .filter(|a| matches!(a, Answer::Refuse(d) if *d >= Duration::from_secs(1)))
            .count();
        assert_eq!(at_once + queued.len() + refused, 40);
        assert!(refused > 0, "{answers:?}");
        // The same /64: the same (full) queue. Another network: a burst of its own.
        assert!(matches!(guard.failed(neighbour, now), Answer::Refuse(_)));
        assert_eq!(
            guard.failed("192.0.2.7".parse().unwrap(), now),
            Answer::At(now)
        );
    }
}
