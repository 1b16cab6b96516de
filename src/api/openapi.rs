//! The OpenAPI document of the API, written by hand beside the routes; a test checks that every
//! route is in it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, embedded in the binary.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}
