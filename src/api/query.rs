//! Query strings: axum's parser, with its refusals answered in the API's JSON error format
//! (axum's own answer is text/plain), naming the parameter rule that was broken.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A deserialized query string; a malformed one is a 400 with a JSON body.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            // serde's words say which parameter and what it expected ("invalid digit found in
            // string", "expected a boolean"); query strings carry names and flags, never values.
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid query string: {}; see /openapi.json for the parameters",
                e.body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}

/// A query parameter of the form digits-then-unit ("30s", "15m"): the digits as written, their
/// value and the unit, for the callers' own rules (`wait`, a duration ago). By hand: the forms
/// are a number and one or two letters, which `humantime` reads more loosely than the document
/// states them.
pub fn number_and_unit(s: &str) -> Option<(&str, u64, &str)> {
    let unit = s.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits = &s[..s.len() - unit.len()];
    let n = digits.parse().ok()?;
    Some((digits, n, unit))
}
