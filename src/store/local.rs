//! The local store: an SQLite file plus its key file, found from flags, the environment or the
//! XDG data directory. Used by the CLI, the daemon and the launcher when no server is involved.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keyfile::{self, KeyFileError};
use crate::secret::ValueLimit;

use super::sqlite::SqliteStore;
use super::{AuditRecord, Store, StoreError, Vault};
use crate::crypto::{MasterKey, Sealer};

/// Where a local store and its key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPaths {
    pub store: PathBuf,
    pub key: PathBuf,
}

impl LocalPaths {
    /// `store` (from `--store`/`SECRETFS_STORE`) or `$XDG_DATA_HOME/secretfs/store.db`; `key`
    /// (from `--key-file`/`SECRETFS_KEY_FILE`) or the store path with `.key` appended.
    pub fn resolve(store: Option<PathBuf>, key: Option<PathBuf>) -> Result<Self, LocalError> {
        let store = match store {
            Some(p) => p,
            None => default_data_dir()?.join("secretfs").join("store.db"),
        };
        let key = key.unwrap_or_else(|| {
            let mut s = store.clone().into_os_string();
            s.push(".key");
            PathBuf::from(s)
        });
        Ok(LocalPaths { store, key })
    }
}

fn default_data_dir() -> Result<PathBuf, LocalError> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(Path::new(&home).join(".local").join("share")),
        None => Err(LocalError::NoDefault),
    }
}

/// Whether opening may create a new store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store (and its key) if it does not exist: `secret create`.
    CreateIfMissing,
    /// The store must exist: everything that reads or changes existing secrets.
    Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "no store path given and neither XDG_DATA_HOME nor HOME is set; pass --store PATH or set \
         SECRETFS_STORE"
    )]
    NoDefault,
    #[error(
        "store \"{}\" does not exist; create a secret first (secretfs secret create NAME) or pass \
         --store PATH",
        .0.display()
    )]
    Missing(PathBuf),
    #[error(
        "store \"{store}\" is sealed with a key, but its key file \"{key}\" does not exist; \
         restore the key file or pass --key-file PATH",
        store = .store.display(), key = .key.display()
    )]
    KeyMissing { store: PathBuf, key: PathBuf },
    #[error("cannot create directory \"{}\": {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the local store at `paths`, creating store and key when `mode` allows, and checks the key
/// against the store before returning.
pub async fn open(paths: &LocalPaths, mode: OpenMode) -> Result<Vault, LocalError> {
    open_with(paths, mode, 4).await
}

/// Like [`open`], with at most `connections` database connections.
pub async fn open_with(
    paths: &LocalPaths,
    mode: OpenMode,
    connections: u32,
) -> Result<Vault, LocalError> {
    let exists = paths.store.exists();
    if !exists {
        if mode == OpenMode::Existing {
            return Err(LocalError::Missing(paths.store.clone()));
        }
        if let Some(dir) = paths.store.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| LocalError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
    }
    let store =
        SqliteStore::open_with(&paths.store, mode == OpenMode::CreateIfMissing, connections)
            .await?;
    bind_key(
        Arc::new(store),
        &paths.key,
        &paths.store.display().to_string(),
        true,
    )
    .await
}

/// Binds the key at `key` to `store`: a store that already holds sealed values needs its key
/// file; a new store gets a new key file when `create` allows. Verifies the key against the
/// store's key check before returning the vault.
pub async fn bind_key(
    store: Arc<dyn Store>,
    key: &Path,
    store_shown: &str,
    create: bool,
) -> Result<Vault, LocalError> {
    let sealed = store.key_check().await?.is_some();
    let ring = match keyfile::load_ring(key) {
        Ok(k) => k,
        Err(KeyFileError::NotFound(_)) if sealed || !create => {
            return Err(LocalError::KeyMissing {
                store: PathBuf::from(store_shown),
                key: key.to_owned(),
            });
        }
        Err(KeyFileError::NotFound(_)) => keyfile::KeyRing {
            current: keyfile::create(key)?,
            previous: Vec::new(),
        },
        Err(e) => return Err(e.into()),
    };
    let vault = Vault::open_with(store, ring.sealer(), ValueLimit::default())
        .await
        .map_err(|e| match e {
            StoreError::KeyMismatch(_) => StoreError::KeyMismatch(format!(
                "key file \"{}\" does not open store \"{store_shown}\" (it is another store's key); \
                 use the key file created with this store",
                key.display()
            )),
            other => other,
        })?;
    vault.follow_key_file(key);
    if !ring.previous.is_empty() {
        finish_rotation(&vault, key, &ring.current).await;
    }
    Ok(vault)
}

/// A key file that still holds previous keys belongs to a rotation that did not finish (its
/// process was killed between writing the new key and dropping the old ones; nothing was lost:
/// the ring opens every value). Finishes it: every value still sealed under an old key is
/// re-sealed under the current one, then the old keys leave the file, so an old key file opens
/// nothing current again. A failure leaves things as they were (and says so): the next start,
/// or the next `key rotate`, tries again.
async fn finish_rotation(vault: &Vault, key: &Path, current: &MasterKey) {
    let audit = AuditRecord {
        id: 0,
        at: crate::secret::Timestamp::now(),
        first_at: None,
        count: 1,
        workspace: String::new(),
        actor: "secretfs".into(),
        actor_id: String::new(),
        action: super::AuditAction::Rekey,
        target_kind: super::TargetKind::Key,
        target: "master key".into(),
        target_id: String::new(),
        version: 0,
        detail: format!(
            "an unfinished key rotation completed at start: values re-sealed under the current              key, the old keys removed from key file {}",
            key.display()
        ),
        address: String::new(),
    };
    let finished = match vault.reseal_all(audit).await {
        Ok(moved) => keyfile::replace(key, &[current])
            .map(|()| moved)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match finished {
        Ok(moved) => tracing::warn!(
            key_file = %key.display(),
            resealed = moved,
            "finished a key rotation that had not completed; the old keys left the key file"
        ),
        Err(e) => tracing::warn!(
            key_file = %key.display(),
            error = %e,
            "the key file holds old keys of an unfinished rotation, and finishing it failed;              every value still opens (run \"secretfs key rotate\" to finish)"
        ),
    }
}

/// Rotates the master key of `vault`, whose key file is `key`: a new key becomes current (the
/// file first holds it and the old ones, so a crash at any point leaves a store that opens),
/// every value is re-sealed under it while the store keeps serving, then the old keys are
/// dropped from the file (this process keeps them in memory until it exits). Returns how many
/// values were re-sealed; `audit` is written in the transaction that replaces the key check.
pub async fn rotate_key(
    vault: &Vault,
    key: &Path,
    audit: AuditRecord,
) -> Result<usize, LocalError> {
    let ring = keyfile::load_ring(key)?;
    let new = MasterKey::generate();
    let mut old: Vec<MasterKey> = vec![ring.current.duplicate()];
    old.extend(ring.previous.iter().map(MasterKey::duplicate));
    let mut all: Vec<&MasterKey> = vec![&new];
    all.extend(old.iter());
    keyfile::replace(key, &all)?;
    vault.set_sealer(Sealer::with_previous(&new, &old));
    let moved = vault.reseal_all(audit).await?;
    keyfile::replace(key, &[&new])?;
    // The old keys stay in this process's memory (it held them already): rows read before the
    // re-sealing reached them, and still cached, keep opening. A restart drops them.
    Ok(moved)
}

/// The name of the user running this process, the owner of what it creates in a local store.
pub fn local_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid:{uid}"),
    }
}
