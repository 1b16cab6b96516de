//! Workload identity over HTTP: bindings (admins) and the token exchange (RFC 8693), which
//! needs no secretfs token: the platform's signed token is the credential.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use zeroize::Zeroizing;

use super::auth::ClientAddr;
use super::body::Json;
use super::secrets::parse_name;
use super::{ApiError, AppState, UserAuth};
use crate::identity::KeySource;
use crate::protocol::{
    self, BindingInfo, Exchanged, GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT,
};
use crate::service::{Binding, NewBinding};

/// The largest exchange body: a subject token (Kubernetes' are about 1 KiB) and a few fields.
const EXCHANGE_LIMIT: usize = 64 * 1024;

pub fn binding_info(b: &Binding) -> BindingInfo {
    let keys = match &b.rules.keys {
        KeySource::Discovery => "discovery".to_owned(),
        KeySource::Url { url } => format!("url {url}"),
        KeySource::Inline { jwks } => {
            let n = crate::identity::KeySet::parse(jwks.as_bytes()).map_or(0, |(s, _)| s.len());
            format!("inline ({n} key{})", if n == 1 { "" } else { "s" })
        }
    };
    BindingInfo {
        id: b.record.id.clone(),
        name: b.record.name.clone(),
        workspace: b.record.workspace.clone(),
        issuer: b.record.issuer.clone(),
        audience: b.rules.audience.clone(),
        subject: b.rules.subject.as_str().to_owned(),
        claims: b
            .rules
            .claims
            .iter()
            .map(|c| format!("{}={}", c.path, c.pattern.as_str()))
            .collect(),
        user: b.record.user.clone(),
        user_id: b.record.user_id.clone(),
        secrets: b.rules.grants.iter().map(|g| g.name.clone()).collect(),
        secret_ids: b.rules.grants.iter().map(|g| g.secret_id.clone()).collect(),
        ttl_secs: b.rules.ttl_secs,
        max_token_lifetime_secs: b.rules.max_lifetime_secs,
        keys,
        created_at: b.record.created_at,
    }
}

/// `POST /api/v1/identity/bindings` (admins).
#[utoipa::path(
    post,
    path = "/api/v1/identity/bindings",
    summary = "Trust tokens of an issuer whose aud, sub and claims match: exchanges act as the user for exactly these secrets (admins)",
    request_body = crate::protocol::NewBinding,
    responses((status = 201, body = crate::protocol::BindingInfo))
)]
pub async fn add(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Json(body): Json<protocol::NewBinding>,
) -> Result<Response, ApiError> {
    let secrets = body
        .secrets
        .iter()
        .map(|s| parse_name(s).map_err(|e| e.on("secrets")))
        .collect::<Result<Vec<_>, _>>()?;
    let b = state
        .service
        .add_binding(
            &caller,
            NewBinding {
                name: body.name,
                workspace: body.workspace,
                issuer: body.issuer,
                audience: body.audience,
                subject: body.subject,
                claims: body.claims,
                user: body.user,
                secrets,
                ttl: body.ttl,
                max_token_lifetime: body.max_token_lifetime,
                jwks_url: body.jwks_url,
                jwks: body.jwks,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(binding_info(&b))).into_response())
}

/// `GET /api/v1/identity/bindings` (admins).
#[utoipa::path(
    get,
    path = "/api/v1/identity/bindings",
    summary = "Workload-identity bindings (admins)",
    responses((status = 200, body = Vec<crate::protocol::BindingInfo>))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
) -> Result<Response, ApiError> {
    let list: Vec<BindingInfo> = state
        .service
        .bindings(&caller)
        .await?
        .iter()
        .map(binding_info)
        .collect();
    Ok(axum::Json(list).into_response())
}

/// `DELETE /api/v1/identity/bindings/{name}` (admins): its tokens are revoked with it.
#[utoipa::path(
    delete,
    path = "/api/v1/identity/bindings/{name}",
    summary = "Remove a binding; the tokens its exchanges minted are revoked with it (admins)",
    params(("name" = crate::protocol::AccountName, Path, description = "the binding")),
    responses((status = 204, description = "removed, and its tokens revoked"))
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    UserAuth(caller): UserAuth,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.service.remove_binding(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An error of the token endpoint: RFC 6749's `error`/`error_description` beside this API's
/// `code`/`message`, so OAuth clients and secretfs's own read it alike.
fn oauth_error(e: ApiError) -> Response {
    let body = serde_json::to_vec(&OAuthError {
        error: e.code.to_string(),
        error_description: e.message.clone(),
        code: e.code.to_string(),
        message: e.message.clone(),
    })
    .expect("an error body serializes");
    let mut r = (e.status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /api/v1/identity/exchange`: RFC 8693 token exchange, form-encoded. Refusals are 400 `invalid_grant` (503 `temporarily_unavailable` when the
/// issuer's keys cannot be had).
#[utoipa::path(
    post,
    path = "/api/v1/identity/exchange",
    summary = "OAuth 2.0 Token Exchange (RFC 8693): a platform's signed JWT for a workload token of the one binding that admits it; no bearer token",
    request_body(content = ExchangeForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = crate::protocol::Exchanged), (status = 400, description = "RFC 8693 error: invalid_request, invalid_grant, unsupported_grant_type", body = OAuthError), (status = 413, description = "the body is too large", body = OAuthError), (status = 415, description = "not a form", body = OAuthError), (status = 429, description = "too many refused exchanges from this address", body = OAuthError), (status = 503, description = "the issuer's keys or the store cannot be had now", body = OAuthError))
)]
pub async fn exchange(
    State(state): State<Arc<AppState>>,
    ClientAddr(connect): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = std::time::Instant::now();
    let address = connect.map(|c| c.ip().to_string()).unwrap_or_default();
    // The buffer holds the subject token: parse from a copy wiped afterwards.
    let buf = Zeroizing::new(Vec::from(body));
    let form = match read_form(&headers, &buf) {
        Ok(f) => f,
        Err(e) => return oauth_error(e),
    };
    // On a task of its own: a client that hangs up does not cancel it, so an exchange that is
    // committing the exchanges grouped with its own (`Service::commit_grouped`) finishes that
    // commit for them.
    let service = state.service.clone();
    let result = match tokio::spawn(async move {
        service
            .exchange(&address, &form.subject_token, form.scope.as_deref())
            .await
    })
    .await
    {
        Ok(r) => r,
        // Never cancelled: only a panic ends it early, and it goes on here as it would have.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    match result {
        Ok(x) => {
            let now = crate::secret::Timestamp::now().nanos();
            let expires_in = x.record.expires_at.map_or(0, |t| {
                u64::try_from(t.nanos() - now).unwrap_or(0) / 1_000_000_000
            });
            let answer = Exchanged {
                access_token: x.token,
                issued_token_type: TOKEN_TYPE_ACCESS.into(),
                token_type: "Bearer".into(),
                expires_in,
                binding: x.binding,
                workspace: x.record.workspace.clone().unwrap_or_default(),
                secrets: x.record.grants.iter().map(|g| g.name.clone()).collect(),
            };
            let mut r = axum::Json(answer).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        // A refusal is slowed down per source (an admitted exchange never is: a node agent
        // exchanges for every pod of its node from one address), so bindings cannot be probed
        // at loopback speed; the answer is the same, only later.
        Err(e) => {
            let ip = connect.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.ip());
            match state.exchange_guard.hold(ip, arrived).await {
                Ok(()) => oauth_error(e.into()),
                Err(after) => oauth_error(super::auth::too_many_failures(after)),
            }
        }
    }
}

/// The token endpoint's error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OAuthError {
    /// RFC 6749's error code: `invalid_request`, `invalid_grant`, `temporarily_unavailable`...
    error: String,
    error_description: String,
    /// The same, in this API's words.
    code: String,
    message: String,
}

/// The exchange's form fields (RFC 8693, 2.1), as the document states them; `read_form` reads
/// them by hand so that the subject token lands only in zeroized memory.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ExchangeForm {
    #[schema(pattern = "^urn:ietf:params:oauth:grant-type:token-exchange$")]
    grant_type: String,
    /// The platform's signed JWT.
    #[schema(min_length = 1)]
    subject_token: String,
    #[schema(pattern = "^urn:ietf:params:oauth:token-type:jwt$")]
    subject_token_type: String,
    #[schema(pattern = "^urn:ietf:params:oauth:token-type:access_token$")]
    requested_token_type: Option<String>,
    /// The binding's name, when several might admit the token.
    scope: Option<String>,
}

struct Form {
    subject_token: Zeroizing<String>,
    scope: Option<String>,
}

/// The exchange's fields, checked; no error repeats what was sent.
fn read_form(headers: &HeaderMap, body: &[u8]) -> Result<Form, ApiError> {
    if body.len() > EXCHANGE_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("the request body is larger than {EXCHANGE_LIMIT} bytes"),
        ));
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let mut fields: Vec<(String, Zeroizing<String>)> = Vec::new();
    match ctype.as_str() {
        "application/x-www-form-urlencoded" => {
            for (k, v) in form_urlencoded::parse(body) {
                fields.push((k.into_owned(), Zeroizing::new(v.into_owned())));
            }
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "send the exchange as application/x-www-form-urlencoded (RFC 8693)",
            ));
        }
    }
    let one = |name: &str| -> Result<Option<Zeroizing<String>>, ApiError> {
        let mut found = fields.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.clone());
        if found.next().is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{name} is given more than once"),
            ));
        }
        Ok(first)
    };
    let mut problems = Vec::new();
    match one("grant_type")?.as_deref().map(String::as_str) {
        Some(GRANT_TOKEN_EXCHANGE) => {}
        Some(_) => problems.push(format!("grant_type must be {GRANT_TOKEN_EXCHANGE}")),
        None => problems.push(format!(
            "grant_type is missing (use {GRANT_TOKEN_EXCHANGE})"
        )),
    }
    match one("subject_token_type")?.as_deref().map(String::as_str) {
        Some(TOKEN_TYPE_JWT) => {}
        _ => problems.push(format!("subject_token_type must be {TOKEN_TYPE_JWT}")),
    }
    if one("requested_token_type")?.is_some_and(|t| t.as_str() != TOKEN_TYPE_ACCESS) {
        problems.push(format!(
            "requested_token_type can only be {TOKEN_TYPE_ACCESS}"
        ));
    }
    let subject_token = one("subject_token")?.filter(|t| !t.is_empty());
    if subject_token.is_none() {
        problems.push("subject_token is missing (the platform's signed token)".into());
    }
    if one("actor_token")?.is_some() {
        problems.push("actor_token is not supported (delegation is not offered)".into());
    }
    let scope = one("scope")?
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if !problems.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            problems.join("; "),
        ));
    }
    Ok(Form {
        subject_token: subject_token.expect("checked above"),
        scope,
    })
}
