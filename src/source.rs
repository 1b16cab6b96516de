//! Where the daemon and the launcher get secrets from: a trait with one implementation per
//! origin. The local store is here; the server plugs in beside it.
//!
//! The trait is blocking on purpose: the daemon's refresh thread and the launcher are plain
//! threads, and an implementation that needs async IO keeps its own small runtime.

use crate::secret::{SecretMeta, SecretName, SecretValue};
use crate::store::local::{self, LocalError, LocalPaths, OpenMode};
use crate::store::{DEFAULT_WORKSPACE, StoreError, Vault};

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

impl From<StoreError> for SourceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(name) => SourceError::NotFound(name),
            StoreError::Unavailable(_) | StoreError::OutOfSpace => {
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
}

/// The local store, opened directly (no server): everything in it is the local user's.
pub struct LocalSource {
    runtime: tokio::runtime::Runtime,
    vault: Vault,
    paths: LocalPaths,
    actor: String,
}

impl LocalSource {
    pub fn open(paths: LocalPaths) -> Result<Self, LocalError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LocalError::Store(StoreError::Internal(e.to_string())))?;
        // One connection: a mount or a launch reads in a few queries, one at a time.
        let vault = runtime.block_on(local::open_with(&paths, OpenMode::Existing, 1))?;
        Ok(LocalSource {
            runtime,
            vault,
            paths,
            actor: format!("local:{}", local::local_user()),
        })
    }
}

impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local store {}", self.paths.store.display())
    }

    fn list(&self) -> Result<Vec<SecretMeta>, SourceError> {
        Ok(self.runtime.block_on(self.vault.list(DEFAULT_WORKSPACE))?)
    }

    fn read(&self, names: &[SecretName]) -> Result<Values, SourceError> {
        let results =
            self.runtime
                .block_on(self.vault.read_many(DEFAULT_WORKSPACE, &self.actor, names))?;
        Ok(results
            .into_iter()
            .map(|r| r.map_err(SourceError::from))
            .collect())
    }
}
