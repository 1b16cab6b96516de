//! The vault: sealing, validation and audit on top of any [`Store`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::{Binding, MasterKey, Sealer};
use crate::secret::{
    SecretKind, SecretMeta, SecretName, SecretValue, Timestamp, ValueError, ValueLimit, Visibility,
    validate_tags,
};

use super::{AuditAction, AuditRecord, Change, Store, StoreError, StoredSecret};

/// How often an update is retried when another writer bumps the version in between.
const MAX_RETRIES: usize = 16;

/// The plaintext the key check seals: opening it proves a key is the store's key before any
/// secret is touched, so a wrong key file is reported as such, not as a damaged secret.
const KEY_CHECK: &[u8] = b"secretfs key check v1";
const KEY_CHECK_BINDING: Binding<'static> = Binding {
    workspace: "",
    name: "key-check",
    secret_id: "",
    version: 0,
};

/// Who does something, for the audit log: a user name or a token id, and the client's address
/// (empty for local commands).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actor {
    pub name: String,
    pub address: String,
}

impl Actor {
    /// A local actor (no network address).
    pub fn local(name: impl Into<String>) -> Self {
        Actor {
            name: name.into(),
            address: String::new(),
        }
    }
}

/// A secret to create.
#[derive(Debug)]
pub struct NewSecret {
    pub name: SecretName,
    pub kind: SecretKind,
    pub visibility: Visibility,
    pub tags: Vec<String>,
    pub value: SecretValue,
}

/// What to change in an existing secret; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct SecretUpdate {
    pub value: Option<SecretValue>,
    pub visibility: Option<Visibility>,
    pub tags: Option<Vec<String>>,
}

/// Seals, opens, validates and audits; the only way the rest of secretfs reaches a [`Store`].
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
                match store.set_key_check(&sealed).await {
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

    /// Opens a stored row: its metadata and value. A row that does not open makes the vault
    /// re-read its key file once (another process may have rotated the key and re-sealed it).
    pub async fn open_row(
        &self,
        workspace: &str,
        row: StoredSecret,
    ) -> Result<(SecretMeta, SecretValue), StoreError> {
        let value = match self.open_value(workspace, &row) {
            Err(StoreError::Undecryptable(_)) if self.reload_keys_throttled().await => {
                self.open_value(workspace, &row)?
            }
            other => other?,
        };
        Ok((row.meta, value))
    }

    /// Runs a write; when the store says the key was rotated since this vault's keys were
    /// loaded, re-reads the key file and runs it once more (re-sealed under the new key).
    async fn fenced<T, F, Fut>(&self, mut write: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        match write().await {
            Err(StoreError::KeyRotated) => {
                if self.reload_keys().await? {
                    write().await
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
    pub async fn reseal_all(&self, actor: &Actor) -> Result<usize, StoreError> {
        // The key check moves first: from then on, a process still sealing with an old key
        // has its writes refused by the store (its fence no longer matches) and re-reads the key
        // file, so nothing sealed under an old key lands after the scan below has passed it.
        let check = self.sealer().seal(&KEY_CHECK_BINDING, KEY_CHECK);
        self.store.replace_key_check(&check).await?;
        self.store.set_write_fence(check);
        let mut moved = 0;
        for workspace in self.store.workspaces().await? {
            for row in self.store.get_all(&workspace).await? {
                moved += usize::from(self.reseal_one(&workspace, row).await?);
            }
        }
        let audit = AuditRecord {
            at: Timestamp::now(),
            workspace: String::new(),
            actor: actor.name.clone(),
            action: AuditAction::Rekey,
            secret: "*".into(),
            version: 0,
            detail: format!("master key rotated; {moved} values re-sealed"),
            address: actor.address.clone(),
        };
        self.store.record(std::slice::from_ref(&audit)).await?;
        Ok(moved)
    }

    /// Re-seals one row under the current key if an older key sealed it; true when it moved. A
    /// concurrent update is met by re-reading the row; a deleted row needs nothing.
    async fn reseal_one(&self, workspace: &str, mut row: StoredSecret) -> Result<bool, StoreError> {
        for _ in 0..MAX_RETRIES {
            let binding = Binding {
                workspace,
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
            match self
                .store
                .reseal(workspace, &row.meta.name, row.meta.version, &sealed)
                .await
            {
                Ok(()) => return Ok(true),
                Err(StoreError::VersionConflict(_)) => {
                    row = match self.store.get(workspace, &row.meta.name).await {
                        Ok(r) => r,
                        Err(StoreError::NotFound(_)) => return Ok(false),
                        Err(e) => return Err(e),
                    };
                }
                Err(StoreError::NotFound(_)) => return Ok(false),
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

    fn check_limit(&self, value: &SecretValue) -> Result<(), StoreError> {
        if value.len() > self.limit.bytes() {
            return Err(StoreError::Invalid(
                ValueError::TooLarge {
                    len: value.len(),
                    limit: self.limit.bytes(),
                }
                .to_string(),
            ));
        }
        Ok(())
    }

    /// An audit record of `action` by `actor`.
    pub fn audit(
        workspace: &str,
        actor: &Actor,
        action: AuditAction,
        name: &SecretName,
        version: u64,
        detail: String,
    ) -> AuditRecord {
        AuditRecord {
            at: Timestamp::now(),
            workspace: workspace.to_owned(),
            actor: actor.name.clone(),
            action,
            secret: name.to_string(),
            version,
            detail,
            address: actor.address.clone(),
        }
    }

    /// Seals a new secret and its audit record, ready to insert.
    fn prepare(
        &self,
        workspace: &str,
        owner: &Actor,
        new: &NewSecret,
    ) -> Result<(StoredSecret, AuditRecord), StoreError> {
        self.check_limit(&new.value)?;
        let tags = validate_tags(&new.tags).map_err(StoreError::Invalid)?;
        let now = Timestamp::now();
        let id = random_id();
        let meta = SecretMeta {
            name: new.name.clone(),
            kind: new.kind,
            visibility: new.visibility,
            owner: owner.name.clone(),
            tags,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let sealed = self.sealer().seal(
            &Binding {
                workspace,
                name: meta.name.as_str(),
                secret_id: &id,
                version: 1,
            },
            new.value.expose_secret(),
        );
        let audit = Self::audit(
            workspace,
            owner,
            AuditAction::Create,
            &meta.name,
            1,
            format!("kind={} visibility={}", meta.kind, meta.visibility),
        );
        Ok((StoredSecret { meta, id, sealed }, audit))
    }

    /// Creates a secret at version 1, owned by `owner`.
    pub async fn create(
        &self,
        workspace: &str,
        owner: &Actor,
        new: NewSecret,
    ) -> Result<SecretMeta, StoreError> {
        self.fenced(|| async {
            let (row, audit) = self.prepare(workspace, owner, &new)?;
            self.store.insert(workspace, &row, &audit).await?;
            Ok(row.meta)
        })
        .await
    }

    /// Creates several secrets, all or none.
    pub async fn create_many(
        &self,
        workspace: &str,
        owner: &Actor,
        new: Vec<NewSecret>,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        self.fenced(|| async {
            let rows = new
                .iter()
                .map(|n| self.prepare(workspace, owner, n))
                .collect::<Result<Vec<_>, _>>()?;
            self.store.insert_many(workspace, &rows).await?;
            Ok(rows.into_iter().map(|(r, _)| r.meta).collect())
        })
        .await
    }

    pub async fn list(&self, workspace: &str) -> Result<Vec<SecretMeta>, StoreError> {
        self.store.list(workspace).await
    }

    pub async fn meta(&self, workspace: &str, name: &SecretName) -> Result<SecretMeta, StoreError> {
        Ok(self.store.get(workspace, name).await?.meta)
    }

    /// Replaces the value (a new version) and/or changes visibility or tags, atomically.
    pub async fn update(
        &self,
        workspace: &str,
        actor: &Actor,
        name: &SecretName,
        update: SecretUpdate,
    ) -> Result<SecretMeta, StoreError> {
        if let Some(value) = &update.value {
            self.check_limit(value)?;
        }
        let tags = match &update.tags {
            Some(tags) => Some(validate_tags(tags).map_err(StoreError::Invalid)?),
            None => None,
        };
        let mut detail = Vec::new();
        if update.value.is_some() {
            detail.push("value".to_owned());
        }
        if let Some(v) = update.visibility {
            detail.push(format!("visibility={v}"));
        }
        if let Some(t) = &tags {
            detail.push(format!("tags={}", t.join(",")));
        }
        for _ in 0..MAX_RETRIES {
            let current = self.store.get(workspace, name).await?;
            let version = current.meta.version;
            let sealed = update.value.as_ref().map(|value| {
                self.sealer().seal(
                    &Binding {
                        workspace,
                        name: name.as_str(),
                        secret_id: &current.id,
                        version: version + 1,
                    },
                    value.expose_secret(),
                )
            });
            let new_version = version + u64::from(sealed.is_some());
            let change = Change {
                sealed,
                visibility: update.visibility,
                tags: tags.clone(),
                kind: None,
            };
            let audit = Self::audit(
                workspace,
                actor,
                AuditAction::Update,
                name,
                new_version,
                detail.join(" "),
            );
            match self
                .store
                .update(workspace, name, version, &change, Timestamp::now(), &audit)
                .await
            {
                Err(StoreError::VersionConflict(_)) => continue,
                // Sealed under a key another process has rotated away: reload and re-seal.
                Err(StoreError::KeyRotated) if self.reload_keys().await? => continue,
                other => return other,
            }
        }
        Err(StoreError::VersionConflict(name.clone()))
    }

    pub async fn delete(
        &self,
        workspace: &str,
        actor: &Actor,
        name: &SecretName,
    ) -> Result<(), StoreError> {
        let version = self.store.get(workspace, name).await?.meta.version;
        let audit = Self::audit(
            workspace,
            actor,
            AuditAction::Delete,
            name,
            version,
            String::new(),
        );
        self.store.delete(workspace, name, &audit).await
    }

    /// Reads and opens the values of `names` for a workload, recording one audit entry per value
    /// read, in one transaction. Each name gets its own result, so a caller can report every
    /// missing secret at once.
    pub async fn read_many(
        &self,
        workspace: &str,
        actor: &Actor,
        names: &[SecretName],
    ) -> Result<Vec<Result<(SecretMeta, SecretValue), StoreError>>, StoreError> {
        let mut rows: std::collections::HashMap<SecretName, StoredSecret> = self
            .store
            .get_many(workspace, names)
            .await?
            .into_iter()
            .map(|r| (r.meta.name.clone(), r))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        let mut audits = Vec::new();
        for name in names {
            let result = match rows.remove(name) {
                Some(row) => self.open_row(workspace, row).await,
                None => Err(StoreError::NotFound(name.clone())),
            };
            if let Ok((meta, _)) = &result {
                audits.push(Self::audit(
                    workspace,
                    actor,
                    AuditAction::Read,
                    name,
                    meta.version,
                    String::new(),
                ));
            }
            out.push(result);
        }
        if !audits.is_empty() {
            self.store.record(&audits).await?;
        }
        Ok(out)
    }

    /// Reads one value for a workload (audited).
    pub async fn read(
        &self,
        workspace: &str,
        actor: &Actor,
        name: &SecretName,
    ) -> Result<(SecretMeta, SecretValue), StoreError> {
        self.read_many(workspace, actor, std::slice::from_ref(name))
            .await?
            .pop()
            .expect("one result per name")
    }

    fn open_value(&self, workspace: &str, row: &StoredSecret) -> Result<SecretValue, StoreError> {
        let binding = Binding {
            workspace,
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

/// A random 128-bit id in hex.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
