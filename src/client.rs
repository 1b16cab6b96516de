//! The API client (reqwest over rustls): what the CLI, the mount and the launcher use to talk to
//! a server. Errors carry the server's JSON message; the token is sent as a sensitive header
//! and never appears in an error or a log line.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::auth::Token;
use crate::secret::{
    SecretKind, SecretMeta, SecretName, SecretValue, Timestamp, ValueLimit, Visibility,
};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
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
    pub fn status(&self) -> Option<u16> {
        match self {
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
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// Installs rustls's ring provider once per process (reqwest and the server need one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One secret as a workload reads it.
#[derive(Debug)]
pub struct WorkloadSecret {
    pub meta: SecretMeta,
    pub value: Option<SecretValue>,
}

#[derive(Deserialize)]
struct RawWorkloadSecret {
    name: SecretName,
    version: u64,
    kind: SecretKind,
    visibility: Visibility,
    owner: String,
    updated_at: String,
    value: Option<String>,
    value_base64: Option<String>,
}

/// A workload read: the revision of the set and its secrets.
#[derive(Debug)]
pub struct WorkloadRead {
    pub revision: String,
    pub workspace: String,
    pub secrets: Vec<WorkloadSecret>,
}

#[derive(Deserialize)]
struct RawWorkloadRead {
    revision: String,
    workspace: String,
    secrets: Vec<RawWorkloadSecret>,
}

/// A client of one server (or of several replicas, tried in order).
pub struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    auth: HeaderValue,
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

pub fn parse_timestamp(s: &str) -> Result<Timestamp, ClientError> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .map(Timestamp::from_system_time)
        .map_err(|e| ClientError::Decode(format!("bad time {s:?}: {e}")))
}

impl Client {
    /// A client of `urls` (comma-separated replicas) with `token`; `ca_file` adds a private CA to
    /// the system roots.
    pub fn new(urls: &str, token: &Token, ca_file: Option<&Path>) -> Result<Client, ClientError> {
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
            .timeout(Duration::from_secs(90))
            .user_agent(concat!("secretfs/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                ClientError::Setup(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ClientError::Setup(format!(
                    "CA file {} holds no PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot set up HTTP: {e}")))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                ClientError::Setup("the token contains characters a header cannot hold".into())
            })?;
        auth.set_sensitive(true);
        Ok(Client {
            http,
            bases,
            auth,
            preferred: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Sends a request to the first replica that answers (a 5xx or a connection failure moves
    /// on to the next).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let mut last = None;
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        for i in 0..self.bases.len() {
            let index = (first + i) % self.bases.len();
            let base = &self.bases[index];
            let url = format!("{base}{path}");
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(AUTHORIZATION, self.auth.clone())
                .query(query);
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_vec());
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

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| Zeroizing::new(serde_json::to_vec(&b).expect("JSON serializes")));
        let resp = self.send(method, path, query, body).await?;
        if !resp.status().is_success() {
            return Err(error_from(resp).await);
        }
        if resp.status() == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| ClientError::Decode(e.to_string()));
        }
        resp.json::<T>()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ClientError> {
        self.call(Method::PATCH, path, &[], Some(body)).await
    }

    /// A GET whose answer is a file (a backup), returned as bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(Method::GET, path, &[], None).await?;
        if !resp.status().is_success() {
            return Err(error_from(resp).await);
        }
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A DELETE whose answer says what was deleted.
    pub async fn delete_with<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, query, None).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, path, &[], None)
            .await
            .map(|_| ())
    }

    /// `value_base64` for a request body: a value never travels as anything but base64 text
    /// inside the TLS stream.
    pub fn encode_value(value: &SecretValue) -> String {
        base64::engine::general_purpose::STANDARD.encode(value.expose_secret())
    }

    /// The workload read (`GET /api/v1/workload/secrets`).
    pub async fn workload_read(
        &self,
        names: Option<&[SecretName]>,
        values: bool,
        wait: Option<(Duration, &str)>,
    ) -> Result<WorkloadRead, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(names) = names {
            let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            query.push(("names", list.join(",")));
        }
        if !values {
            query.push(("values", "false".into()));
        }
        if let Some((d, since)) = wait {
            query.push(("wait", format!("{}s", d.as_secs().max(1))));
            query.push(("since", since.to_owned()));
        }
        let resp = self
            .send(Method::GET, "/api/v1/workload/secrets", &query, None)
            .await?;
        if !resp.status().is_success() {
            return Err(error_from(resp).await);
        }
        let body = bounded_body(resp).await?;
        let raw: RawWorkloadRead = serde_json::from_slice(&body).map_err(|e| {
            ClientError::Decode(format!(
                "workload read: line {}, column {}",
                e.line(),
                e.column()
            ))
        })?;
        let mut secrets = Vec::with_capacity(raw.secrets.len());
        for s in raw.secrets {
            let bytes = match (s.value, s.value_base64) {
                (Some(t), _) => Some(Zeroizing::new(t.into_bytes())),
                (None, Some(b)) => Some(Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.as_bytes())
                        .map_err(|_| ClientError::Decode("a value is not base64".into()))?,
                )),
                (None, None) => None,
            };
            let value = match bytes {
                Some(b) => Some(
                    SecretValue::new(b, ValueLimit::default())
                        .map_err(|e| ClientError::Decode(e.to_string()))?,
                ),
                None => None,
            };
            let updated_at = parse_timestamp(&s.updated_at)?;
            secrets.push(WorkloadSecret {
                meta: SecretMeta {
                    name: s.name,
                    kind: s.kind,
                    visibility: s.visibility,
                    owner: s.owner,
                    tags: Vec::new(),
                    version: s.version,
                    created_at: updated_at,
                    updated_at,
                },
                value,
            });
        }
        Ok(WorkloadRead {
            revision: raw.revision,
            workspace: raw.workspace,
            secrets,
        })
    }
}

/// The most a workload read may weigh: far above any real set (values are at most 1 MiB each),
/// far below what would hurt the daemon reading it.
const MAX_ANSWER: usize = 64 << 20;

/// Reads a body of at most [`MAX_ANSWER`] bytes, refusing a larger one without reading it all.
async fn bounded_body(mut resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let too_large = |n: u64| {
        ClientError::Decode(format!(
            "the answer ({n} bytes or more) is larger than the {} MiB limit",
            MAX_ANSWER >> 20
        ))
    };
    if let Some(len) = resp.content_length().filter(|l| *l > MAX_ANSWER as u64) {
        return Err(too_large(len));
    }
    // Sized up front when the length is known, so growing never leaves copies of values behind.
    let mut body = Zeroizing::new(Vec::with_capacity(
        resp.content_length().unwrap_or(0) as usize
    ));
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::Decode(e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn reason(e: &reqwest::Error) -> String {
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
    match resp.json::<ErrorBody>().await {
        Ok(b) => ClientError::Api {
            status,
            code: b.code,
            message: b.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: format!("the server answered HTTP {status}"),
        },
    }
}
