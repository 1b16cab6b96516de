//! Secrets as people manage them: list (metadata only), create, replace a value, change
//! visibility or tags, delete; and the local store's reads for the daemon and the launcher.

use std::collections::BTreeSet;

use super::{Caller, Service, ServiceError, Who, may_use};
use crate::secret::{
    SecretKind, SecretMeta, SecretName, SecretValue, Timestamp, ValueError, Visibility,
    validate_tags,
};
use crate::store::{
    AuditAction, Batch, Change, Expected, Op, SecretFilter, StoreError, StoredSecret, TargetKind,
    new_id, vault::MAX_RETRIES,
};

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

/// A created or updated secret's metadata, with what its template noticed about the value (a
/// token that does not look like its provider's): stored anyway, but worth showing.
#[derive(Debug, Clone)]
pub struct Written {
    pub meta: SecretMeta,
    pub warnings: Vec<String>,
}

impl Service {
    /// 404 unless the caller belongs to `workspace` (the local CLI belongs to its store's).
    pub(super) fn member(&self, caller: &Caller, workspace: &str) -> Result<(), ServiceError> {
        if caller.user().workspaces.iter().any(|w| w == workspace) || caller.local() {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!(
                "workspace \"{workspace}\" not found"
            )))
        }
    }

    /// Whether `caller` may see and use a secret (the local CLI sees its whole store).
    fn visible_to(caller: &Caller, s: &StoredSecret) -> bool {
        caller.local() || may_use(caller.user(), s)
    }

    /// The rows of `workspace` the caller may see.
    pub(super) async fn visible_rows(
        &self,
        caller: &Caller,
        workspace: &str,
    ) -> Result<Vec<StoredSecret>, ServiceError> {
        caller.manager()?;
        self.member(caller, workspace)?;
        let snap = self.snapshot(workspace).await?;
        let mut rows: Vec<StoredSecret> = snap
            .by_name
            .values()
            .filter(|s| Self::visible_to(caller, s))
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(rows)
    }

    /// One row the caller may see, or 404 (absent and invisible look the same).
    async fn visible_row(
        &self,
        caller: &Caller,
        workspace: &str,
        name: &SecretName,
    ) -> Result<StoredSecret, ServiceError> {
        caller.manager()?;
        self.member(caller, workspace)?;
        let snap = self.snapshot(workspace).await?;
        match snap
            .by_name
            .get(name)
            .filter(|s| Self::visible_to(caller, s))
        {
            Some(row) => Ok(row.clone()),
            None => Err(Self::not_found_among(&snap, caller, name)),
        }
    }

    /// A name the caller cannot see: not found, with the closest name it may see (a "did you
    /// mean" that names only what the caller could list anyway).
    fn not_found_among(snap: &super::Snapshot, caller: &Caller, name: &SecretName) -> ServiceError {
        let visible = snap
            .by_name
            .values()
            .filter(|s| Self::visible_to(caller, s))
            .map(|s| s.meta.name.as_str());
        let suggestion = crate::secret::did_you_mean(name.as_str(), visible);
        ServiceError::NotFound(format!("secret \"{name}\" not found{suggestion}"))
    }

    /// Like [`Service::visible_row`], read from the store itself (not the snapshot, which may
    /// lag a change made by another replica): what a write starts from.
    async fn fresh_row(
        &self,
        caller: &Caller,
        workspace: &str,
        name: &SecretName,
    ) -> Result<StoredSecret, ServiceError> {
        caller.manager()?;
        self.member(caller, workspace)?;
        let row = self
            .store()
            .secrets(SecretFilter::Named(workspace, std::slice::from_ref(name)))
            .await?
            .pop()
            .filter(|s| Self::visible_to(caller, s));
        match row {
            Some(row) => Ok(row),
            None => Err(Self::not_found_among(
                &*self.snapshot(workspace).await?,
                caller,
                name,
            )),
        }
    }

    /// The metadata of the secrets the caller may see in `workspace`.
    pub async fn list_secrets(
        &self,
        caller: &Caller,
        workspace: &str,
    ) -> Result<Vec<SecretMeta>, ServiceError> {
        Ok(self
            .visible_rows(caller, workspace)
            .await?
            .into_iter()
            .map(|r| r.meta)
            .collect())
    }

    /// One secret's metadata, or 404 when it does not exist or the caller may not see it.
    pub async fn secret(
        &self,
        caller: &Caller,
        workspace: &str,
        name: &SecretName,
    ) -> Result<SecretMeta, ServiceError> {
        Ok(self.visible_row(caller, workspace, name).await?.meta)
    }

    fn check_value(
        &self,
        kind: SecretKind,
        value: &SecretValue,
    ) -> Result<Vec<String>, ServiceError> {
        let limit = self.value_limit();
        if value.len() > limit.bytes() {
            return Err(ServiceError::invalid_on(
                "value",
                ValueError::TooLarge {
                    len: value.len(),
                    limit: limit.bytes(),
                }
                .to_string(),
            ));
        }
        kind.check(value)
            .map(|w| w.into_iter().map(|w| w.0).collect())
            .map_err(|e| ServiceError::invalid_on("value", e.to_string()))
    }

    /// Creates secrets owned by the caller, all or none: every one is checked first (names
    /// unique in the request, values against their templates, tags), then one transaction.
    pub async fn create_secrets(
        &self,
        caller: &Caller,
        workspace: &str,
        new: Vec<NewSecret>,
    ) -> Result<Vec<Written>, ServiceError> {
        let owner = caller.manager()?.clone();
        self.member(caller, workspace)?;
        if new.is_empty() {
            return Err(ServiceError::invalid("no secret to create"));
        }
        let mut seen = BTreeSet::new();
        let mut warnings = Vec::with_capacity(new.len());
        for n in &new {
            if !seen.insert(n.name.clone()) {
                return Err(ServiceError::invalid_on(
                    "name",
                    format!("secret \"{}\" appears twice in the request", n.name),
                ));
            }
            validate_tags(&n.tags).map_err(|e| ServiceError::invalid_on("tags", e))?;
            warnings.push(self.check_value(n.kind, &n.value)?);
        }
        let now = Timestamp::now();
        let rows: Vec<StoredSecret> = new
            .iter()
            .map(|n| StoredSecret {
                id: new_id(),
                workspace: workspace.to_owned(),
                owner_id: owner.id.clone(),
                meta: SecretMeta {
                    name: n.name.clone(),
                    kind: n.kind,
                    visibility: n.visibility,
                    owner: owner.name.clone(),
                    tags: n.tags.clone(),
                    version: 1,
                    created_at: now,
                    updated_at: now,
                },
                sealed: Vec::new(),
            })
            .collect();
        self.commit_sealed(caller, || {
            let mut batch = Batch::default();
            for (row, n) in rows.iter().zip(&new) {
                let mut row = row.clone();
                row.sealed = self.vault.seal(&row, 1, &n.value);
                batch.audit.push(caller.audit(
                    workspace,
                    AuditAction::Create,
                    (TargetKind::Secret, row.meta.name.as_str(), &row.id),
                    1,
                    format!("kind={} visibility={}", row.meta.kind, row.meta.visibility),
                ));
                batch.ops.push(Op::InsertSecret(row));
            }
            Ok(batch)
        })
        .await?;
        Ok(rows
            .into_iter()
            .zip(warnings)
            .map(|(r, warnings)| Written {
                meta: r.meta,
                warnings,
            })
            .collect())
    }

    /// Replaces the value (a new version) and/or changes visibility or tags, atomically: only
    /// its owner or an admin, and only a secret they can see.
    pub async fn update_secret(
        &self,
        caller: &Caller,
        workspace: &str,
        name: &SecretName,
        update: SecretUpdate,
    ) -> Result<Written, ServiceError> {
        let tags = match &update.tags {
            Some(tags) => {
                Some(validate_tags(tags).map_err(|e| ServiceError::invalid_on("tags", e))?)
            }
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
        // Only the visibility: an action of its own in the log.
        let action = if update.value.is_none() && tags.is_none() && update.visibility.is_some() {
            AuditAction::Visibility
        } else {
            AuditAction::Update
        };
        for _ in 0..MAX_RETRIES {
            let current = self.fresh_row(caller, workspace, name).await?;
            owner_or_admin(caller, &current)?;
            let warnings = match &update.value {
                Some(v) => self.check_value(current.meta.kind, v)?,
                None => Vec::new(),
            };
            let version = current.meta.version;
            let new_version = version + u64::from(update.value.is_some());
            let at = Timestamp::now();
            let result = self
                .commit_sealed(caller, || {
                    let sealed = update
                        .value
                        .as_ref()
                        .map(|v| self.vault.seal(&current, new_version, v));
                    Ok(Batch {
                        ops: vec![Op::UpdateSecret {
                            id: current.id.clone(),
                            name: name.clone(),
                            expected_version: version,
                            expected: Expected {
                                owner_id: current.owner_id.clone(),
                                visibility: current.meta.visibility,
                            },
                            change: Change {
                                sealed,
                                visibility: update.visibility,
                                tags: tags.clone(),
                                kind: None,
                            },
                            at,
                        }],
                        audit: vec![caller.audit(
                            workspace,
                            action,
                            (TargetKind::Secret, name.as_str(), &current.id),
                            new_version,
                            detail.join(" "),
                        )],
                    })
                })
                .await;
            match result {
                Err(ServiceError::Store(StoreError::VersionConflict(_))) => continue,
                Err(ServiceError::Store(StoreError::NotFound(_))) => {
                    return Err(ServiceError::secret_not_found(name));
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    let mut meta = current.meta;
                    meta.version = new_version;
                    if update.value.is_some() {
                        meta.updated_at = at;
                    }
                    if let Some(v) = update.visibility {
                        meta.visibility = v;
                    }
                    if let Some(t) = tags {
                        meta.tags = t;
                    }
                    return Ok(Written { meta, warnings });
                }
            }
        }
        Err(StoreError::VersionConflict(name.clone()).into())
    }

    /// Deletes a secret: 404 unless visible, 403 unless the caller owns it or is an admin. Every
    /// grant on it is void from then on: a later secret of the same name is another secret.
    pub async fn delete_secret(
        &self,
        caller: &Caller,
        workspace: &str,
        name: &SecretName,
    ) -> Result<(), ServiceError> {
        let current = self.fresh_row(caller, workspace, name).await?;
        owner_or_admin(caller, &current)?;
        let batch = Batch {
            ops: vec![Op::DeleteSecret {
                id: current.id.clone(),
                name: name.clone(),
                expected: Expected {
                    owner_id: current.owner_id.clone(),
                    visibility: current.meta.visibility,
                },
            }],
            audit: vec![caller.audit(
                workspace,
                AuditAction::Delete,
                (TargetKind::Secret, name.as_str(), &current.id),
                current.meta.version,
                String::new(),
            )],
        };
        match self.commit(caller, batch).await {
            Err(ServiceError::Store(StoreError::NotFound(_))) => {
                Err(ServiceError::secret_not_found(name))
            }
            other => other,
        }
    }

    /// The values of `names` for the local CLI's daemon or launcher (a local store), one result
    /// per name so that every missing one can be reported at once; each value read is audited.
    pub async fn local_read(
        &self,
        caller: &Caller,
        workspace: &str,
        names: &[SecretName],
    ) -> Result<Vec<Result<(SecretMeta, SecretValue), ServiceError>>, ServiceError> {
        if !caller.local() {
            return Err(ServiceError::Forbidden(
                "only the local store's own processes read it directly".into(),
            ));
        }
        let mut rows: std::collections::HashMap<SecretName, StoredSecret> = self
            .store()
            .secrets(SecretFilter::Named(workspace, names))
            .await?
            .into_iter()
            .map(|r| (r.meta.name.clone(), r))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        let mut audits = Vec::new();
        for name in names {
            let result = match rows.remove(name) {
                Some(row) => match self.vault.open_row(&row).await {
                    Ok(value) => {
                        let mut audit = caller.audit(
                            workspace,
                            AuditAction::Read,
                            (TargetKind::Secret, name.as_str(), &row.id),
                            row.meta.version,
                            String::new(),
                        );
                        // A read by the local store's own daemon or launcher, not by a person.
                        audit.actor = format!("local:{}", caller.user().name);
                        audits.push(audit);
                        Ok((row.meta, value))
                    }
                    Err(e) => Err(e.into()),
                },
                None => Err(ServiceError::secret_not_found(name)),
            };
            out.push(result);
        }
        self.record_reads(audits).await?;
        Ok(out)
    }

    /// The metadata of every secret of the local store (the daemon's listing).
    pub async fn local_list(
        &self,
        caller: &Caller,
        workspace: &str,
    ) -> Result<Vec<SecretMeta>, ServiceError> {
        if !matches!(caller.who, Who::Local { .. }) {
            return Err(ServiceError::Forbidden(
                "only the local store's own processes read it directly".into(),
            ));
        }
        Ok(self
            .store()
            .secrets(SecretFilter::Workspace(workspace))
            .await?
            .into_iter()
            .map(|r| r.meta)
            .collect())
    }
}

/// 403 unless the caller owns the secret or is an admin (or the local CLI).
fn owner_or_admin(caller: &Caller, s: &StoredSecret) -> Result<(), ServiceError> {
    let user = caller.user();
    if s.owner_id == user.id || user.admin || caller.local() {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(format!(
            "only the owner of \"{}\" ({}) or an admin may change or delete it",
            s.meta.name, s.meta.owner
        )))
    }
}
