//! The Secrets page: one HTML file, one script, one stylesheet, embedded in the binary and
//! served at `/`. The page is a client of the same JSON API as the CLI, with the user's token
//! as a bearer header (no cookies, so no cross-site request can act for a user). Also the
//! security headers every response carries, and the template list the page's picker shows.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::secret::SecretKind;

const INDEX: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/app.css");

/// The page's policy: its own script and stylesheet only (no inline script or style), requests
/// to this origin only, no framing, no forms posting anywhere.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; \
    frame-ancestors 'none'";
/// Everything else is data, never a document.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// A page asset, with the page's policy (every other response gets the deny-all one).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        body,
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/",
    summary = "The Secrets page (HTML; signs in with a user token)",
    responses((status = 200, description = "the page", content_type = "text/html", body = String))
)]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

#[utoipa::path(
    get,
    path = "/app.js",
    summary = "The Secrets page's script",
    responses((status = 200, description = "the script", content_type = "text/javascript", body = String))
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(
    get,
    path = "/app.css",
    summary = "The Secrets page's stylesheet",
    responses((status = 200, description = "the stylesheet", content_type = "text/css", body = String))
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Template {
    kind: &'static str,
    label: &'static str,
    name: Option<&'static str>,
    format: Option<&'static str>,
}

/// `GET /api/v1/templates`: the secret templates (no authentication: it is the same for all).
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    summary = "The secret templates: kind, label, suggested name, expected value format (no authentication)",
    responses((status = 200, body = Vec<Template>))
)]
pub async fn templates() -> Response {
    let list: Vec<Template> = SecretKind::ALL
        .iter()
        .map(|k| Template {
            kind: k.as_str(),
            label: k.label(),
            name: k.default_name(),
            format: k.expected_format(),
        })
        .collect();
    axum::Json(list).into_response()
}

/// Adds the security headers to every response. A response that set its own policy or cache
/// rule (the page's assets) keeps it; everything else is data: a deny-all CSP, and `no-store`
/// (API answers carry tokens, and one carries values).
pub fn security_headers(h: &mut HeaderMap) {
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}
