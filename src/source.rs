//! Where the daemon and the launcher get secrets from: a trait with one implementation per
//! origin. The local store is here; the server plugs in beside it.
//!
//! The trait is blocking on purpose: the daemon's refresh thread and the launcher are plain
//! threads, and an implementation that needs async IO keeps its own small runtime.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::Token;
use crate::client::{Client, ClientError};
use crate::secret::{SecretMeta, SecretName, SecretValue, Timestamp};
use crate::service::{
    Caller, DEFAULT_WORKSPACE, LocalError, LocalPaths, OpenMode, Service, ServiceError,
};
use crate::store::StoreError;

/// Why a source could not answer. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("secret \"{0}\" not found")]
    NotFound(SecretName),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl From<ServiceError> for SourceError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(StoreError::Unavailable(_) | StoreError::OutOfSpace) => {
                SourceError::Unavailable(e.to_string())
            }
            other => SourceError::Failed(other.to_string()),
        }
    }
}

/// One answer per requested name, in order.
pub type Values = Vec<Result<(SecretMeta, SecretValue), SourceError>>;

/// A place secrets come from, seen by one workload identity.
pub trait Source: Send + Sync {
    /// For logs and the ready line, e.g. `local store /path/store.db`.
    fn describe(&self) -> String;
    /// Metadata of every secret this source lets the caller use, sorted by name.
    fn list(&self) -> Result<Vec<SecretMeta>, SourceError>;
    /// The values of `names`, each with its own result so every missing name can be reported.
    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError>;

    /// Whether [`Source::wait`] is told about changes (a server's long-poll) rather than
    /// guessing (the default sleeps).
    fn watches(&self) -> bool {
        false
    }

    /// Blocks until the source may have changed since the revision `since`, or `timeout`
    /// passes; returns the current revision if the source has one.
    fn wait(&self, since: Option<&str>, timeout: Duration) -> Result<Option<String>, SourceError> {
        let _ = since;
        std::thread::sleep(timeout);
        Ok(None)
    }
}

/// A server, through a workload token: reads exactly the token's secrets, watches them with
/// long-polls, and renews the token before it expires.
pub struct ServerSource {
    runtime: tokio::runtime::Runtime,
    client: Client,
    urls: String,
    /// When the token expires and how far a renewal extends it, if it expires.
    expiry: Mutex<Option<(Timestamp, Duration)>>,
}

#[derive(serde::Deserialize)]
struct TokenInfo {
    expires_at: Option<Timestamp>,
    ttl_secs: Option<u64>,
}

#[derive(serde::Deserialize)]
struct WhoAmI {
    token: TokenInfo,
}

impl From<ClientError> for SourceError {
    fn from(e: ClientError) -> Self {
        match &e {
            _ if e.is_transient() => SourceError::Unavailable(e.to_string()),
            ClientError::Api { status: 401, .. } => SourceError::Failed(format!(
                "the server refused the token ({e}); it may have expired or been revoked: mint a \
                 new one with \"secretfs token create --workload\""
            )),
            _ => SourceError::Failed(e.to_string()),
        }
    }
}

impl ServerSource {
    /// Connects to `urls` with a workload token and learns when the token expires.
    pub fn connect(urls: &str, token: &Token, ca_file: Option<&Path>) -> Result<Self, SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        let client =
            Client::new(urls, token, ca_file).map_err(|e| SourceError::Failed(e.to_string()))?;
        Ok(ServerSource {
            runtime,
            client,
            urls: urls.to_owned(),
            expiry: Mutex::new(None),
        })
    }

    /// Asks the server about the token (its expiry); the first call a mount makes.
    fn learn_expiry(&self) -> Result<(), SourceError> {
        let me: WhoAmI = self
            .runtime
            .block_on(self.client.get("/api/v1/whoami", &[]))?;
        *self.expiry.lock().unwrap_or_else(|e| e.into_inner()) = me
            .token
            .expires_at
            .map(|e| (e, Duration::from_secs(me.token.ttl_secs.unwrap_or(3600))));
        Ok(())
    }

    /// Renews the token once less than a third of its ttl is left.
    fn renew_if_due(&self) -> Result<(), SourceError> {
        let due = {
            let guard = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
            match *guard {
                None => return Ok(()),
                Some((expires, ttl)) => {
                    let left = expires
                        .to_system_time()
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    left < ttl / 3
                }
            }
        };
        if due {
            #[derive(serde::Deserialize)]
            struct Renewed {
                expires_at: Timestamp,
            }
            let renewed: Renewed = self.runtime.block_on(
                self.client
                    .post("/api/v1/tokens/renew", serde_json::json!({})),
            )?;
            tracing::info!(expires_at = %renewed.expires_at.rfc3339(), "workload token renewed");
            let mut guard = self.expiry.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((e, _)) = guard.as_mut() {
                *e = renewed.expires_at;
            }
        }
        Ok(())
    }
}

impl Source for ServerSource {
    fn describe(&self) -> String {
        format!("server {}", self.urls)
    }

    fn list(&self) -> Result<Vec<SecretMeta>, SourceError> {
        if self
            .expiry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            self.learn_expiry()?;
        }
        self.renew_if_due()?;
        let read = self
            .runtime
            .block_on(self.client.workload_read(None, false, None))?;
        Ok(read.secrets.into_iter().map(|s| s.meta).collect())
    }

    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError> {
        self.renew_if_due()?;
        // Which of the names this token can read now, so each missing one is reported alone.
        let present: Vec<SecretName> = self
            .list()?
            .into_iter()
            .map(|m| m.name)
            .filter(|n| names.contains(n))
            .collect();
        let mut values = if present.is_empty() {
            Vec::new()
        } else {
            self.runtime
                .block_on(self.client.workload_read(Some(&present), true, None))?
                .secrets
        };
        Ok(names
            .iter()
            .map(|n| match values.iter().position(|s| &s.meta.name == n) {
                Some(i) => {
                    let s = values.swap_remove(i);
                    match s.value {
                        Some(v) => Ok((s.meta, v)),
                        None => Err(SourceError::Failed(format!(
                            "the server sent no value for \"{n}\""
                        ))),
                    }
                }
                None => Err(SourceError::NotFound(n.clone())),
            })
            .collect())
    }

    fn watches(&self) -> bool {
        true
    }

    fn wait(&self, since: Option<&str>, timeout: Duration) -> Result<Option<String>, SourceError> {
        self.renew_if_due()?;
        // A poll never outlives the token: the round after it expires is refused (and said so)
        // instead of hanging on to a request authorised before.
        let timeout = match *self.expiry.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((expires, _)) => {
                let left = expires
                    .to_system_time()
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                timeout
                    .min(left + Duration::from_millis(200))
                    .max(Duration::from_secs(1))
            }
            None => timeout,
        };
        let read = self.runtime.block_on(self.client.workload_read(
            None,
            false,
            since.map(|s| (timeout, s)),
        ))?;
        Ok(Some(read.revision))
    }
}

/// The local store, opened directly (no server): everything in it is the local user's.
pub struct LocalSource {
    runtime: tokio::runtime::Runtime,
    service: Service,
    caller: Caller,
    paths: LocalPaths,
}

impl LocalSource {
    pub fn open(paths: LocalPaths) -> Result<Self, LocalError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LocalError::Store(StoreError::Internal(e.to_string())))?;
        // One connection: a mount or a launch reads in a few queries, one at a time.
        let service = runtime.block_on(Service::open_local(&paths, OpenMode::Existing, 1))?;
        let caller = runtime
            .block_on(service.local_caller(false))
            .map_err(|e| LocalError::Store(StoreError::Internal(e.to_string())))?;
        Ok(LocalSource {
            runtime,
            service,
            caller,
            paths,
        })
    }
}

impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local store {}", self.paths.store.display())
    }

    fn list(&self) -> Result<Vec<SecretMeta>, SourceError> {
        Ok(self
            .runtime
            .block_on(self.service.local_list(&self.caller, DEFAULT_WORKSPACE))?)
    }

    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError> {
        let results = self.runtime.block_on(self.service.local_read(
            &self.caller,
            DEFAULT_WORKSPACE,
            names,
        ))?;
        Ok(results
            .into_iter()
            .zip(names)
            .map(|(r, name)| {
                r.map_err(|e| match e {
                    ServiceError::NotFound(_) => SourceError::NotFound(name.clone()),
                    other => SourceError::from(other),
                })
            })
            .collect())
    }
}
