//! The vault: the master keys over a [`Store`]. It seals values before they reach a store and
//! opens what a store returns, checks that its keys are the store's, follows a key rotated by
//! another process, and re-seals every value when the key is rotated. It decides nothing about
//! who may do what (that is the service layer's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::{Binding, MasterKey, Sealer};
use crate::secret::{SecretValue, ValueLimit};

use super::{Batch, Op, Store, StoreError, StoredSecret};

/// How often a write is retried when another writer bumps a version in between.
pub const MAX_RETRIES: usize = 16;

/// The plaintext the key check seals: opening it proves a key is the store's key before any
/// secret is touched, so a wrong key file is reported as such, not as a damaged secret.
const KEY_CHECK: &[u8] = b"secretfs key check v1";
const KEY_CHECK_BINDING: Binding<'static> = Binding {
    workspace: "",
    name: "key-check",
    secret_id: "",
    version: 0,
};

/// The keys over a store.
pub struct Vault {
    store: Arc<dyn Store>,
    /// Swapped whole during a key rotation; readers take a clone of the `Arc`.
    sealer: std::sync::RwLock<Arc<Sealer>>,
    limit: ValueLimit,
    /// The key file the keys came from, re-read when another process rotates the key.
    key_file: std::sync::OnceLock<PathBuf>,
    /// When the key file was last re-read because a value would not open (at most once a
    /// second: a corrupted row must not turn every read into a file read).
    last_reload: std::sync::Mutex<Option<Instant>>,
}

impl Vault {
    /// Binds `key` to `store`: on a new store, records a key check; on an existing one, verifies
    /// that `key` is the key the store was sealed with.
    pub async fn open(
        store: Arc<dyn Store>,
        key: &MasterKey,
        limit: ValueLimit,
    ) -> Result<Vault, StoreError> {
        Self::open_with(store, Sealer::new(key), limit).await
    }

    /// Like [`Vault::open`] with a key ring (current key and previous ones).
    pub async fn open_with(
        store: Arc<dyn Store>,
        sealer: Sealer,
        limit: ValueLimit,
    ) -> Result<Vault, StoreError> {
        let check = match store.key_check().await? {
            Some(check) => check,
            None => {
                let sealed = sealer.seal(&KEY_CHECK_BINDING, KEY_CHECK);
                let init = Batch {
                    ops: vec![Op::InitKeyCheck(sealed.clone())],
                    audit: Vec::new(),
                };
                match store.apply(&init).await {
                    Ok(()) => sealed,
                    // Another process initialised the store at the same moment: check against
                    // the key it recorded.
                    Err(_) => store.key_check().await?.ok_or_else(|| {
                        StoreError::Internal("the key check could not be recorded".into())
                    })?,
                }
            }
        };
        if !opens_key_check(&sealer, &check) {
            return Err(StoreError::KeyMismatch(format!(
                "the key does not open store \"{}\"; use the key file created with this store",
                store.describe()
            )));
        }
        store.set_write_fence(check);
        Ok(Vault {
            store,
            sealer: std::sync::RwLock::new(Arc::new(sealer)),
            limit,
            key_file: std::sync::OnceLock::new(),
            last_reload: std::sync::Mutex::new(None),
        })
    }

    /// Remembers the key file the keys were loaded from, so that a key rotated by another
    /// process (a replica, the CLI) is picked up instead of failing until a restart.
    pub fn follow_key_file(&self, path: &Path) {
        let _ = self.key_file.set(path.to_owned());
    }

    /// Re-reads the key file; true when its current key opens the store's key check, so the
    /// vault now seals and opens with what the file holds.
    pub async fn reload_keys(&self) -> Result<bool, StoreError> {
        let Some(path) = self.key_file.get() else {
            return Ok(false);
        };
        let ring =
            crate::keyfile::load_ring(path).map_err(|e| StoreError::KeyMismatch(e.to_string()))?;
        let sealer = ring.sealer();
        let Some(check) = self.store.key_check().await? else {
            return Ok(false);
        };
        // The current key must open the check: a ring whose old key opens it would seal new
        // values under a key the rotation is about to drop.
        if !opens_key_check(&Sealer::new(&ring.current), &check) {
            return Ok(false);
        }
        // Keys this process knew stay usable for opening: rows it cached before the rotation
        // re-sealed them still open until the cache refreshes.
        let merged = sealer.keeping(&self.sealer());
        self.set_sealer(merged);
        self.store.set_write_fence(check);
        tracing::info!(key_file = %path.display(), "master key reloaded after a rotation");
        Ok(true)
    }

    /// [`Vault::reload_keys`], at most once a second (the read path's retry).
    async fn reload_keys_throttled(&self) -> bool {
        {
            let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.reload_keys().await.unwrap_or(false)
    }

    /// Opens a stored row's value. A row that does not open makes the vault re-read its key
    /// file once (another process may have rotated the key and re-sealed it).
    pub async fn open_row(&self, row: &StoredSecret) -> Result<SecretValue, StoreError> {
        match self.open_value(row) {
            Err(StoreError::Undecryptable(_)) if self.reload_keys_throttled().await => {
                self.open_value(row)
            }
            other => other,
        }
    }

    /// Seals `value` for the row `(workspace, name, id, version)`.
    pub fn seal(&self, row: &StoredSecret, version: u64, value: &SecretValue) -> Vec<u8> {
        self.sealer().seal(
            &Binding {
                workspace: &row.workspace,
                name: row.meta.name.as_str(),
                secret_id: &row.id,
                version,
            },
            value.expose_secret(),
        )
    }

    /// Applies a batch; when the store says the key was rotated since this vault's keys were
    /// loaded, re-reads the key file and asks `rebuild` for the batch again (its values sealed
    /// under the new key), once.
    pub async fn apply_sealed(
        &self,
        mut rebuild: impl FnMut() -> Result<Batch, StoreError>,
    ) -> Result<(), StoreError> {
        match self.store.apply(&rebuild()?).await {
            Err(StoreError::KeyRotated) => {
                if self.reload_keys().await? {
                    self.store.apply(&rebuild()?).await
                } else {
                    Err(StoreError::KeyRotated)
                }
            }
            other => other,
        }
    }

    fn sealer(&self) -> Arc<Sealer> {
        self.sealer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the keys values are sealed and opened with (a key rotation's steps).
    pub fn set_sealer(&self, sealer: Sealer) {
        *self.sealer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sealer);
    }

    /// Re-seals, under the current key, every value that an older key sealed, and the key check;
    /// returns how many values moved. The version of a secret does not change (its value did
    /// not); a concurrent update is met by re-reading (it already seals with the current key).
    /// `audit` is written with the key check's replacement.
    pub async fn reseal_all(&self, audit: super::AuditRecord) -> Result<usize, StoreError> {
        // The key check moves first: from then on, a process still sealing with an old key
        // has its writes refused by the store (its fence no longer matches) and re-reads the key
        // file, so nothing sealed under an old key lands after the scan below has passed it.
        let check = self.sealer().seal(&KEY_CHECK_BINDING, KEY_CHECK);
        self.store
            .apply(&Batch {
                ops: vec![Op::ReplaceKeyCheck(check.clone())],
                audit: vec![audit],
            })
            .await?;
        self.store.set_write_fence(check);
        let mut moved = 0;
        for row in self.store.secrets(super::SecretFilter::All).await? {
            moved += usize::from(self.reseal_one(row).await?);
        }
        Ok(moved)
    }

    /// Re-seals one row under the current key if an older key sealed it; true when it moved. A
    /// concurrent update is met by re-reading the row; a deleted row needs nothing.
    async fn reseal_one(&self, mut row: StoredSecret) -> Result<bool, StoreError> {
        for _ in 0..MAX_RETRIES {
            let binding = Binding {
                workspace: &row.workspace,
                name: row.meta.name.as_str(),
                secret_id: &row.id,
                version: row.meta.version,
            };
            let sealer = self.sealer();
            let (plain, key) = sealer
                .open_with_key(&binding, &row.sealed)
                .map_err(|_| StoreError::Undecryptable(row.meta.name.clone()))?;
            if key == 0 {
                return Ok(false);
            }
            let sealed = sealer.seal(&binding, &plain);
            let batch = Batch {
                ops: vec![Op::Reseal {
                    id: row.id.clone(),
                    name: row.meta.name.clone(),
                    version: row.meta.version,
                    sealed,
                }],
                audit: Vec::new(),
            };
            match self.store.apply(&batch).await {
                Ok(()) => return Ok(true),
                Err(StoreError::VersionConflict(_)) => {
                    match self
                        .store
                        .secrets(super::SecretFilter::Ids(std::slice::from_ref(&row.id)))
                        .await?
                        .pop()
                    {
                        Some(r) => row = r,
                        None => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // A value left under an old key must stop the rotation: the caller would otherwise
        // drop that key from the key file and lose the value.
        Err(StoreError::VersionConflict(row.meta.name.clone()))
    }

    /// Closes the store's connections (a checkpoint, for SQLite).
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// The store, shared (for tasks that outlive a borrow, like the audit writer).
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn value_limit(&self) -> ValueLimit {
        self.limit
    }

    fn open_value(&self, row: &StoredSecret) -> Result<SecretValue, StoreError> {
        let binding = Binding {
            workspace: &row.workspace,
            name: row.meta.name.as_str(),
            secret_id: &row.id,
            version: row.meta.version,
        };
        let plain = self
            .sealer()
            .open(&binding, &row.sealed)
            .map_err(|_| StoreError::Undecryptable(row.meta.name.clone()))?;
        // Values were checked on the way in; an empty or oversized plaintext means the row is
        // not what was written.
        SecretValue::new(plain, ValueLimit::default())
            .map_err(|_| StoreError::Undecryptable(row.meta.name.clone()))
    }
}

/// Whether `sealer` opens the store's key check (its keys are the store's).
fn opens_key_check(sealer: &Sealer, check: &[u8]) -> bool {
    sealer
        .open(&KEY_CHECK_BINDING, check)
        .is_ok_and(|plain| plain.as_slice() == KEY_CHECK)
}
