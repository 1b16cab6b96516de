//! The API's errors: one JSON shape, `{"code": ..., "message": ...}`, and the one place store
//! errors become HTTP statuses. 5xx bodies say what kind of failure it was and nothing of
//! internals; the cause goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::protocol::ErrorBody;
use crate::service::{ServiceError, StoreError};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field the error is about (`name`, `value`, ...), so a form can show the
    /// message next to it.
    pub field: Option<&'static str>,
    /// Seconds a client should wait before asking again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// This error, with `Retry-After` (whole seconds, at least one).
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after.as_secs().max(1));
        self
    }

    /// This error, about the request field `field`.
    pub fn on(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "store unavailable; try again shortly",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            field: self.field.map(str::to_owned),
        })
        .expect("an error body serializes");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE
        ) {
            // Answered without reading the whole body: the connection is closed after this
            // answer, and saying so keeps a client from sending its next request on it (and
            // seeing that request fail as the connection goes).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"secretfs\""),
            );
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Unauthorized => {
                ApiError::unauthorized(ServiceError::Unauthorized.to_string())
            }
            ServiceError::Forbidden(m) => ApiError::forbidden(m),
            ServiceError::NotFound(m) => ApiError::not_found(m),
            ServiceError::Conflict(m) => ApiError::conflict(m),
            ServiceError::Invalid { message, field } => ApiError {
                field,
                ..ApiError::invalid(message)
            },
            ServiceError::Refused {
                message,
                unavailable: false,
            } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", message),
            ServiceError::Refused {
                message,
                unavailable: true,
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                message,
            ),
            ServiceError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(name) => {
                ApiError::not_found(format!("secret \"{name}\" not found"))
            }
            // The same answer whether or not the caller may see the secret: it reveals only
            // that the name is taken.
            StoreError::AlreadyExists(name) => {
                ApiError::conflict(format!("name \"{name}\" already in use in this workspace"))
                    .on("name")
            }
            StoreError::VersionConflict(name) => ApiError::conflict(format!(
                "secret \"{name}\" was changed concurrently; try again"
            )),
            StoreError::WorkspaceNotFound(ws) => {
                ApiError::not_found(format!("workspace \"{ws}\" not found"))
            }
            StoreError::WorkspaceExists(ws) => {
                ApiError::conflict(format!("workspace \"{ws}\" already exists"))
            }
            StoreError::UserNotFound(u) => ApiError::not_found(format!("user \"{u}\" not found")),
            StoreError::NotAMember { user, workspace } => ApiError::not_found(format!(
                "user \"{user}\" is not a member of workspace \"{workspace}\""
            )),
            StoreError::ActorGone => ApiError::unauthorized(ServiceError::Unauthorized.to_string()),
            StoreError::Conflict => {
                ApiError::conflict("the request met a concurrent change; try again")
            }
            StoreError::UserExists(u) => ApiError::conflict(format!("user \"{u}\" already exists")),
            StoreError::TokenNotFound(id) => {
                ApiError::not_found(format!("token \"{id}\" not found"))
            }
            StoreError::BindingExists(name) => {
                ApiError::conflict(format!("identity binding \"{name}\" already exists")).on("name")
            }
            StoreError::BindingNotFound(_) => ApiError::not_found("identity binding not found"),
            StoreError::Invalid(msg) => ApiError::invalid(msg),
            StoreError::Unsupported(msg) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", msg)
            }
            StoreError::OutOfSpace => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "out_of_space",
                "the store is out of disk space; nothing was written",
            ),
            StoreError::Unavailable(ref cause) => {
                tracing::warn!(cause = %cause, "store unavailable");
                ApiError::unavailable()
            }
            StoreError::KeyRotated => {
                tracing::error!(
                    "the master key was rotated elsewhere and this server's key file lacks the new key"
                );
                ApiError::unavailable()
            }
            StoreError::Undecryptable(ref name) => {
                tracing::error!(secret = %name, "a stored value cannot be decrypted");
                ApiError::internal()
            }
            StoreError::NotAStore(ref cause)
            | StoreError::KeyMismatch(ref cause)
            | StoreError::Internal(ref cause) => {
                tracing::error!(cause = %cause, "store failure");
                ApiError::internal()
            }
        }
    }
}
