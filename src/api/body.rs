//! Request bodies: JSON only, size-capped, and parsed without ever echoing the input in an error
//! (a body may hold a secret value, and serde's messages quote what they could not parse).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use zeroize::Zeroizing;

use super::error::ApiError;
use crate::secret::VALUE_MAX_LEN;

/// The largest body accepted: a 1 MiB value in base64 with room for the rest of the JSON.
pub const BODY_LIMIT: usize = VALUE_MAX_LEN / 3 * 4 + 64 * 1024;

/// A JSON body of type `T`.
pub struct Json<T>(pub T);

/// Where a body must hold a JSON object and where an array. serde's derived structs also take
/// the positional form (`["NAME", "value"]` for `{"name": ..., "value": ...}`), which the
/// document does not describe and no client means: the shape is checked first, then parsed.
pub enum Shape {
    /// An object; the listed fields have shapes of their own (the rest may be anything).
    Object(&'static [(&'static str, Shape)]),
    /// An array of elements of the shape.
    ArrayOf(&'static Shape),
}

/// A request body: its type and its shape.
pub trait Body: DeserializeOwned {
    const SHAPE: Shape = Shape::Object(&[]);
}

/// An array of objects: a list of items, each a body of its own.
pub const ITEMS: Shape = Shape::ArrayOf(&Shape::Object(&[]));

impl Body for crate::protocol::CreateSecret {}
impl Body for crate::protocol::UpdateSecret {}
impl Body for crate::protocol::ImportSecrets {
    const SHAPE: Shape = Shape::Object(&[("secrets", ITEMS)]);
}
impl Body for crate::protocol::MintWorkload {}
impl Body for crate::protocol::MintUser {}
impl Body for crate::protocol::NewBinding {}
impl Body for crate::protocol::NewUser {}
impl Body for crate::protocol::NewWorkspace {}
impl Body for crate::protocol::NewMember {}
impl Body for crate::protocol::AuditSettingsBody {}
impl Body for crate::protocol::BrokeredCalls {
    const SHAPE: Shape = Shape::Object(&[("calls", ITEMS)]);
}
impl Body for crate::protocol::WorkloadReadRequest {
    const SHAPE: Shape = Shape::Object(&[("held", ITEMS)]);
}

impl<'de> DeserializeSeed<'de> for &Shape {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self {
            Shape::Object(_) => d.deserialize_map(self),
            Shape::ArrayOf(_) => d.deserialize_seq(self),
        }
    }
}

/// Walks the JSON, skipping everything the shape does not name (`IgnoredAny` keeps nothing).
impl<'de> Visitor<'de> for &Shape {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Shape::Object(_) => f.write_str("a JSON object"),
            Shape::ArrayOf(Shape::Object(_)) => f.write_str("a JSON array of objects"),
            Shape::ArrayOf(_) => f.write_str("a JSON array"),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Shape::Object(fields) = self else {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match fields.iter().find(|(name, _)| *name == key) {
                Some((_, shape)) => map.next_value_seed(shape)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Shape::ArrayOf(element) = self else {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        };
        while seq.next_element_seed(*element)?.is_some() {}
        Ok(())
    }
}

impl<T: Body, S: Send + Sync> FromRequest<S> for Json<T> {
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

/// Parses a body of its shape, reporting where it went wrong but never what was there. The
/// shape is a pass of its own over at most `BODY_LIMIT` bytes that keeps nothing: the bodies
/// are small next to the work of the request they carry.
pub fn parse<T: Body>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut d = serde_json::Deserializer::from_slice(bytes);
    if let Err(e) = (&T::SHAPE).deserialize(&mut d) {
        let place = format!("line {}, column {}", e.line(), e.column());
        return Err(match e.classify() {
            serde_json::error::Category::Data => ApiError::bad_request(format!(
                "the JSON at {place} is not {}; see /openapi.json",
                Expecting(&T::SHAPE)
            )),
            _ => ApiError::bad_request(format!("malformed JSON at {place}")),
        });
    }
    from_json(bytes)
}

/// What a shape expects, in words.
struct Expecting<'a>(&'a Shape);

impl std::fmt::Display for Expecting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        Visitor::expecting(&self.0, f)
    }
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
