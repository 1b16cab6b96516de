//! Request bodies: JSON only, size-capped, and parsed without ever echoing the input in an error
//! (a body may hold a secret value, and serde's messages quote what they could not parse).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::error::ApiError;
use crate::secret::VALUE_MAX_LEN;

/// The largest body accepted: a 1 MiB value in base64 with room for the rest of the JSON.
pub const BODY_LIMIT: usize = VALUE_MAX_LEN / 3 * 4 + 64 * 1024;

/// A JSON body of type `T`.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with \"Content-Type: application/json\"",
            ));
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is larger than the limit of {BODY_LIMIT} bytes"),
            )
        };
        let body = req.into_body();
        let bytes: Bytes = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| too_large())?;
        let _ = state;
        // The buffer may hold a value: parse from a copy that is wiped afterwards.
        let buf = Zeroizing::new(Vec::from(bytes));
        parse(&buf).map(Json)
    }
}

/// Parses JSON, reporting where it went wrong but never what was there.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let place = format!("line {}, column {}", e.line(), e.column());
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request(format!("malformed JSON at {place}"))
            }
            Category::Data => {
                // Field names are safe to repeat; values (serde quotes them in type errors) not.
                let text = e.to_string();
                let field = ["unknown field `", "missing field `", "duplicate field `"]
                    .iter()
                    .find_map(|p| {
                        text.strip_prefix(p)
                            .and_then(|rest| rest.split('`').next())
                            .map(|f| (p.trim_end_matches(" `").to_owned(), f.to_owned()))
                    });
                match field {
                    Some((what, name)) if name.len() <= 64 => ApiError::bad_request(format!(
                        "{what} \"{name}\" in the JSON body at {place}; see /openapi.json"
                    )),
                    _ => ApiError::bad_request(format!(
                        "the JSON at {place} does not have the expected fields or types; see \
                         /openapi.json"
                    )),
                }
            }
        }
    })
}
