//! Every request counted and timed by its route's template, never by its path: a path holds
//! workspace and secret names, which a scrape must not learn.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// The one `Router::layer`, which axum applies to each route after routing (the template is in
/// the request's extensions; none for the fallback, which is `unmatched`): counts and times the
/// request and gives its response the security headers. One layer, not one per concern: each
/// `from_fn` layer is a boxed future per request, which a held long-poll keeps for its whole
/// wait (issue 32).
pub async fn every_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    // Methods outside the standard set would be labels an attacker chooses.
    let method = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let mut response = next.run(request).await;
    super::web::security_headers(response.headers_mut());
    state.service.metrics().request(
        route.as_ref().map_or("unmatched", |r| r.as_str()),
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
