//! The API client (reqwest over rustls): what the CLI, the mount and the launcher use to talk to
//! a server. Errors carry the server's JSON message; the token is sent as a sensitive header
//! and never appears in an error or a log line.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::auth::Token;
use crate::protocol::{
    AuditLine, BindingInfo, CreateSecret, ErrorBody, Exchanged, GRANT_TOKEN_EXCHANGE,
    ImportSecrets, Imported, MintUser, MintWorkload, Minted, NewBinding, NewMember, NewUser,
    NewWorkspace, NoArguments, Removed, Renewed, Resealed, TOKEN_TYPE_JWT, TokenInfo, UpdateSecret,
    UserInfo, WhoAmI, WorkloadRead, WorkloadReadRequest, Written,
};
use crate::secret::{SecretMeta, SecretName};

/// Why a request failed: the server's refusals by kind (the CLI maps them to hints), or no
/// usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message} (HTTP 401)")]
    Unauthorized { message: String },
    #[error("{message} (HTTP 403)")]
    Forbidden { message: String },
    #[error("{message} (HTTP 404)")]
    NotFound { message: String },
    #[error("{message} (HTTP 409)")]
    Conflict { message: String },
    #[error("{message} (HTTP 422)")]
    Invalid {
        message: String,
        field: Option<String>,
    },
    /// Any other error answer (a malformed request, a full disk, a server failure).
    #[error("{message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No server answered.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Unauthorized { .. } => Some(401),
            ClientError::Forbidden { .. } => Some(403),
            ClientError::NotFound { .. } => Some(404),
            ClientError::Conflict { .. } => Some(409),
            ClientError::Invalid { .. } => Some(422),
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth retrying on another replica or later: unreachable, or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    fn from_answer(status: u16, body: Option<ErrorBody>) -> Self {
        let Some(b) = body else {
            return ClientError::Api {
                status,
                code: "unknown".into(),
                message: format!("the server answered HTTP {status}"),
            };
        };
        let message = b.message;
        match status {
            401 => ClientError::Unauthorized { message },
            403 => ClientError::Forbidden { message },
            404 => ClientError::NotFound { message },
            409 => ClientError::Conflict { message },
            422 => ClientError::Invalid {
                message,
                field: b.field,
            },
            _ => ClientError::Api {
                status,
                code: b.code,
                message,
            },
        }
    }
}

/// Installs rustls's ring provider once per process (reqwest and the server need one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `builder` trusting the certificates of `ca_file` (PEM) besides the system's roots.
pub fn trust_ca_file(
    mut builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, String> {
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA file {} holds no PEM certificate: {e}", ca.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// `Authorization: Bearer TOKEN`, marked sensitive (never logged by the HTTP stack).
fn bearer(token: &Token) -> Result<HeaderValue, ClientError> {
    let mut auth =
        HeaderValue::from_str(&format!("Bearer {}", token.expose_token())).map_err(|_| {
            ClientError::Setup("the token contains characters a header cannot hold".into())
        })?;
    auth.set_sensitive(true);
    Ok(auth)
}

/// A client of one server (or of several replicas, tried in order).
pub struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    /// None: a client for the identity exchange, whose credential is in its body.
    auth: Option<HeaderValue>,
    /// The replica that answered last: tried first next time, so a dead replica costs one
    /// failed connection, not one per request.
    preferred: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `urls` (comma-separated replicas) with `token`; `ca_file` adds a private CA to
    /// the system roots.
    pub fn new(urls: &str, token: &Token, ca_file: Option<&Path>) -> Result<Client, ClientError> {
        Client::with_auth(urls, Some(bearer(token)?), ca_file)
    }

    /// The same servers, over the same connections, with `token`: what an identity exchange's
    /// client reads with once it has a workload token (no second connection set up; measured in
    /// BENCHMARKS.md, "Workload identity").
    pub fn with_token(&self, token: &Token) -> Result<Client, ClientError> {
        use std::sync::atomic::Ordering;
        Ok(Client {
            http: self.http.clone(),
            bases: self.bases.clone(),
            auth: Some(bearer(token)?),
            preferred: std::sync::atomic::AtomicUsize::new(self.preferred.load(Ordering::Relaxed)),
        })
    }

    /// A client without a token: for `POST /api/v1/identity/exchange` only.
    pub fn anonymous(urls: &str, ca_file: Option<&Path>) -> Result<Client, ClientError> {
        Client::with_auth(urls, None, ca_file)
    }

    fn with_auth(
        urls: &str,
        auth: Option<HeaderValue>,
        ca_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        install_crypto_provider();
        let bases: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::Setup("no server URL given".into()));
        }
        for b in &bases {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return Err(ClientError::Setup(format!(
                    "server URL {b:?} must start with http:// or https://"
                )));
            }
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The exchange's body is the platform's token: a redirect (307/308 re-send bodies,
            // to any host) must not carry it elsewhere.
            .redirect(if auth.is_none() {
                reqwest::redirect::Policy::none()
            } else {
                reqwest::redirect::Policy::default()
            })
            .timeout(Duration::from_secs(90))
            // Below the server's 10 s for an idle connection (server::HEADER_READ_TIMEOUT): a
            // connection is not reused just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .user_agent(concat!("secretfs/", env!("CARGO_PKG_VERSION")));
        if ca_file.is_none() && bases.iter().all(|b| b.starts_with("http://")) {
            // Plain HTTP only: no trust store to load. Reading the system's (about 150 files
            // under /etc/ssl/certs) was most of a launch's system time: 7.2 ms of 11.7 ms for a
            // ten-secret launch against a loopback server (`scripts/bench-launch-server`).
            builder = builder.tls_certs_only(Vec::new());
        }
        builder = trust_ca_file(builder, ca_file).map_err(ClientError::Setup)?;
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot set up HTTP: {e}")))?;
        Ok(Client {
            http,
            bases,
            auth,
            preferred: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Sends a request to the first replica that answers (a 5xx or a connection failure moves
    /// on to the next). The body is built once and shared by every attempt; it is wiped when
    /// the last attempt lets go of it.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<(&'static str, Bytes)>,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let mut last = None;
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        for i in 0..self.bases.len() {
            let index = (first + i) % self.bases.len();
            let base = &self.bases[index];
            let url = format!("{base}{path}");
            let mut req = self.http.request(method.clone(), &url).query(query);
            if let Some(auth) = &self.auth {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            if let Some((kind, b)) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, *kind)
                    .body(b.clone());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_server_error() => {
                    tracing::debug!(replica = %base, status = resp.status().as_u16(), "trying the next replica");
                    last = Some(error_from(resp).await);
                }
                Ok(resp) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::debug!(replica = %base, "unreachable; trying the next replica");
                    last = Some(ClientError::Unreachable {
                        url: base.clone(),
                        reason: reason(&e),
                    });
                }
            }
        }
        Err(last.expect("at least one base URL"))
    }

    /// A request whose answer is `T` (or nothing, for 204).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<Answer<T>, ClientError> {
        let body = body.map(|b| ("application/json", json_body(b)));
        self.answer(path, self.send(method, path, query, body).await?)
            .await
    }

    /// An answer read as `T` (or nothing, for 204), an error answer as its kind.
    async fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<Answer<T>, ClientError> {
        if !resp.status().is_success() {
            return Err(error_from(resp).await);
        }
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Answer::Empty);
        }
        let body = bounded_body(resp).await?;
        // Line and column only: serde's messages may quote what they could not parse, and an
        // answer may hold a value (the workload read) or a token (a mint).
        serde_json::from_slice(&body)
            .map(Answer::Body)
            .map_err(|e| {
                ClientError::Decode(format!("{path}: line {}, column {}", e.line(), e.column()))
            })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.call::<T>(Method::GET, path, query, None::<&()>)
            .await?
            .body()
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.call::<T>(Method::POST, path, &[], Some(body))
            .await?
            .body()
    }

    /// A request answered with 204 (or a body this client does not need).
    async fn act(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(), ClientError> {
        self.call::<serde::de::IgnoredAny>(method, path, &[], body)
            .await
            .map(|_| ())
    }

    /// `GET /api/v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/api/v1/whoami", &[]).await
    }

    /// The metadata of every secret of `ws` the caller may see.
    pub async fn list_secrets(&self, ws: &str) -> Result<Vec<SecretMeta>, ClientError> {
        self.get(&secrets_path(ws), &[]).await
    }

    pub async fn secret(&self, ws: &str, name: &SecretName) -> Result<SecretMeta, ClientError> {
        self.get(&format!("{}/{name}", secrets_path(ws)), &[]).await
    }

    pub async fn create_secret(
        &self,
        ws: &str,
        secret: &CreateSecret,
    ) -> Result<Written, ClientError> {
        self.post(&secrets_path(ws), secret).await
    }

    /// Creates every secret or none.
    pub async fn import_secrets(
        &self,
        ws: &str,
        secrets: &ImportSecrets,
    ) -> Result<Imported, ClientError> {
        self.post(&format!("{}:import", secrets_path(ws)), secrets)
            .await
    }

    pub async fn update_secret(
        &self,
        ws: &str,
        name: &SecretName,
        update: &UpdateSecret,
    ) -> Result<Written, ClientError> {
        self.call::<Written>(
            Method::PATCH,
            &format!("{}/{name}", secrets_path(ws)),
            &[],
            Some(update),
        )
        .await?
        .body()
    }

    pub async fn delete_secret(&self, ws: &str, name: &SecretName) -> Result<(), ClientError> {
        self.act(
            Method::DELETE,
            &format!("{}/{name}", secrets_path(ws)),
            None::<&()>,
        )
        .await
    }

    /// The workspaces the caller belongs to.
    pub async fn workspaces(&self) -> Result<Vec<String>, ClientError> {
        self.get("/api/v1/workspaces", &[]).await
    }

    pub async fn create_workspace(&self, name: &str) -> Result<(), ClientError> {
        let body = NewWorkspace {
            name: name.to_owned(),
        };
        self.act(Method::POST, "/api/v1/workspaces", Some(&body))
            .await
    }

    pub async fn add_member(&self, ws: &str, user: &str) -> Result<(), ClientError> {
        let body = NewMember {
            user: user.to_owned(),
        };
        self.act(
            Method::POST,
            &format!("/api/v1/workspaces/{ws}/members"),
            Some(&body),
        )
        .await
    }

    pub async fn remove_member(&self, ws: &str, user: &str) -> Result<(), ClientError> {
        self.act(
            Method::DELETE,
            &format!("/api/v1/workspaces/{ws}/members/{user}"),
            None::<&()>,
        )
        .await
    }

    pub async fn users(&self) -> Result<Vec<UserInfo>, ClientError> {
        self.get("/api/v1/users", &[]).await
    }

    /// Creates a user; the answer holds their first token.
    pub async fn add_user(&self, user: &NewUser) -> Result<Minted, ClientError> {
        self.post("/api/v1/users", user).await
    }

    /// Removes a user, handing their secrets to `transfer_to` if given.
    pub async fn delete_user(
        &self,
        name: &str,
        transfer_to: Option<&str>,
    ) -> Result<Removed, ClientError> {
        let query: Vec<(&str, String)> = transfer_to
            .map(|t| ("transfer_to", t.to_owned()))
            .into_iter()
            .collect();
        self.call::<Removed>(
            Method::DELETE,
            &format!("/api/v1/users/{name}"),
            &query,
            None::<&()>,
        )
        .await?
        .body()
    }

    pub async fn mint_workload(
        &self,
        ws: &str,
        mint: &MintWorkload,
    ) -> Result<Minted, ClientError> {
        self.post(&format!("/api/v1/workspaces/{ws}/tokens"), mint)
            .await
    }

    pub async fn mint_user(&self, user: &str, mint: &MintUser) -> Result<Minted, ClientError> {
        self.post(&format!("/api/v1/users/{user}/tokens"), mint)
            .await
    }

    /// The caller's tokens; `all`: everyone's (admins).
    pub async fn tokens(&self, all: bool) -> Result<Vec<TokenInfo>, ClientError> {
        let query = if all {
            vec![("all", "true".to_owned())]
        } else {
            Vec::new()
        };
        self.get("/api/v1/tokens", &query).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.act(Method::DELETE, &format!("/api/v1/tokens/{id}"), None::<&()>)
            .await
    }

    /// Workload identity: a platform's signed token exchanged (RFC 8693) for a workload token.
    /// The form body holds the token; it is wiped when the last attempt lets go of it.
    pub async fn exchange(
        &self,
        identity_token: &str,
        scope: Option<&str>,
    ) -> Result<Exchanged, ClientError> {
        // Room for the token percent-encoded at its longest, so the buffer never moves (and
        // leaves no copy of the token behind in freed memory).
        let room = identity_token.len() * 3 + scope.map_or(0, |s| s.len() * 3) + 256;
        // Built in a block: the serializer is not `Send`, and must not live across an await.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::with_capacity(room));
            form.append_pair("grant_type", GRANT_TOKEN_EXCHANGE)
                .append_pair("subject_token_type", TOKEN_TYPE_JWT)
                .append_pair("subject_token", identity_token);
            if let Some(s) = scope {
                form.append_pair("scope", s);
            }
            Bytes::from_owner(Zeroizing::new(form.finish().into_bytes()))
        };
        let path = "/api/v1/identity/exchange";
        let resp = self
            .send(
                Method::POST,
                path,
                &[],
                Some(("application/x-www-form-urlencoded", body)),
            )
            .await?;
        self.answer::<Exchanged>(path, resp).await?.body()
    }

    /// Workload-identity bindings (admins).
    pub async fn bindings(&self) -> Result<Vec<BindingInfo>, ClientError> {
        self.get("/api/v1/identity/bindings", &[]).await
    }

    pub async fn add_binding(&self, b: &NewBinding) -> Result<BindingInfo, ClientError> {
        self.post("/api/v1/identity/bindings", b).await
    }

    pub async fn remove_binding(&self, name: &str) -> Result<(), ClientError> {
        self.act(
            Method::DELETE,
            &format!("/api/v1/identity/bindings/{name}"),
            None::<&()>,
        )
        .await
    }

    /// A workload token extends its own life.
    pub async fn renew(&self) -> Result<Renewed, ClientError> {
        self.post("/api/v1/tokens/renew", &NoArguments {}).await
    }

    /// At most `limit` audit records: since `since` (an RFC 3339 time or a duration ago) in
    /// time order, or, with `after`, those committed after the record numbered `after`, in
    /// commit order (what an export resumes from).
    pub async fn audit(
        &self,
        after: Option<u64>,
        since: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditLine>, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        if let Some(s) = since {
            query.push(("since", s.to_owned()));
        }
        self.get("/api/v1/audit", &query).await
    }

    pub async fn audit_settings(
        &self,
        ws: &str,
    ) -> Result<crate::protocol::AuditSettingsBody, ClientError> {
        self.get(&format!("/api/v1/workspaces/{ws}/audit"), &[])
            .await
    }

    pub async fn set_audit_settings(
        &self,
        ws: &str,
        body: &crate::protocol::AuditSettingsBody,
    ) -> Result<(), ClientError> {
        self.act(
            Method::PUT,
            &format!("/api/v1/workspaces/{ws}/audit"),
            Some(body),
        )
        .await
    }

    pub async fn rotate_key(&self) -> Result<Resealed, ClientError> {
        self.post("/api/v1/admin/rotate-key", &NoArguments {}).await
    }

    /// A consistent copy of the store (ciphertext only), as bytes.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .send(Method::GET, "/api/v1/admin/backup", &[], None)
            .await?;
        if !resp.status().is_success() {
            return Err(error_from(resp).await);
        }
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The workload read (`POST /api/v1/workload/read`): one request answers every name, found
    /// or missing, and long-polls when `since` and `wait_secs` are set.
    pub async fn workload_read(
        &self,
        request: &WorkloadReadRequest,
    ) -> Result<WorkloadRead, ClientError> {
        self.post("/api/v1/workload/read", request).await
    }

    /// Records a broker's calls for the audit log (`POST /api/v1/workload/brokered`).
    pub async fn record_brokered(
        &self,
        calls: &crate::protocol::BrokeredCalls,
    ) -> Result<crate::protocol::BrokeredRecorded, ClientError> {
        self.post("/api/v1/workload/brokered", calls).await
    }
}

/// An answer: a body, or 204.
enum Answer<T> {
    Body(T),
    Empty,
}

impl<T> Answer<T> {
    fn body(self) -> Result<T, ClientError> {
        match self {
            Answer::Body(t) => Ok(t),
            Answer::Empty => Err(ClientError::Decode(
                "the server answered with no body".into(),
            )),
        }
    }
}

fn secrets_path(ws: &str) -> String {
    format!("/api/v1/workspaces/{ws}/secrets")
}

/// A request body, serialised once into memory that is wiped when the last request using it
/// is done.
fn json_body(body: &impl Serialize) -> Bytes {
    let mut buf = Zeroizing::new(Vec::with_capacity(256));
    serde_json::to_writer(&mut *buf, body).expect("a request body serializes");
    Bytes::from_owner(buf)
}

/// The most a workload read may weigh: far above any real set (values are at most 1 MiB each),
/// far below what would hurt the daemon reading it.
const MAX_ANSWER: usize = 64 << 20;

/// Reads a body of at most [`MAX_ANSWER`] bytes, refusing a larger one without reading it all.
/// How much of an error answer is read (its JSON body is a code, a message and a field).
const MAX_ERROR_ANSWER: usize = 64 << 10;

async fn bounded_body(resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    bounded_body_of(resp, MAX_ANSWER).await
}

async fn bounded_body_of(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let too_large = |n: u64| {
        ClientError::Decode(format!(
            "the answer ({n} bytes or more) is larger than the {} KiB limit",
            limit >> 10
        ))
    };
    if let Some(len) = resp.content_length().filter(|l| *l > limit as u64) {
        return Err(too_large(len));
    }
    // Sized up front when the length is known; a chunked answer grows without leaving copies
    // of values behind.
    let mut body = Zeroizing::new(Vec::with_capacity(
        resp.content_length().unwrap_or(0) as usize
    ));
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::Decode(e.to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        crate::secret::reserve_zeroized(&mut body, chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn reason(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL; the source chain says what actually failed.
    let mut out = String::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = cur {
        out = err.to_string();
        cur = err.source();
    }
    if out.is_empty() { e.to_string() } else { out }
}

async fn error_from(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    // Bounded like every answer: a proxy's error page can be any size.
    let body = bounded_body_of(resp, MAX_ERROR_ANSWER).await.ok();
    let parsed = body.and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok());
    ClientError::from_answer(status, parsed)
}
