//! The master key, backups and the audit log: admins' (and the local CLI's) maintenance.

use std::path::Path;

use super::{Caller, Service, ServiceError};
use crate::secret::Timestamp;
use crate::store::{AuditAction, AuditQuery, AuditRecord, Batch, TargetKind};

impl Service {
    /// Rotates the master key: a new key becomes current, every value is re-sealed under it
    /// while the store keeps serving, and the old key leaves the key file. Returns how many
    /// values were re-sealed; the audit record is written with the new key check.
    pub async fn rotate_key(&self, caller: &Caller) -> Result<usize, ServiceError> {
        caller.admin()?;
        let Some(key) = self.key_path.clone() else {
            return Err(ServiceError::Conflict(
                "this server was started without a key file it may rotate".into(),
            ));
        };
        let audit = caller.audit(
            "",
            AuditAction::Rekey,
            (TargetKind::Key, "master key", ""),
            0,
            format!(
                "master key rotated; every value re-sealed under the new key (key file {})",
                key.display()
            ),
        );
        let moved = crate::store::local::rotate_key(&self.vault, &key, audit)
            .await
            .map_err(|e| match e {
                crate::store::local::LocalError::Store(e) => ServiceError::Store(e),
                other => {
                    tracing::error!(error = %other, "key rotation failed");
                    ServiceError::Store(crate::store::StoreError::Internal(
                        "the key file could not be rewritten".into(),
                    ))
                }
            })?;
        self.changed();
        tracing::info!(resealed = moved, by = %caller.user().name, "master key rotated");
        Ok(moved)
    }

    /// Writes a consistent copy of the store (ciphertext only) to `path`; audited first, so
    /// the copy holds the record of its own making.
    pub async fn backup(&self, caller: &Caller, path: &Path) -> Result<(), ServiceError> {
        caller.admin()?;
        let audit = caller.audit(
            "",
            AuditAction::Backup,
            (TargetKind::Store, &self.describe(), ""),
            0,
            String::new(),
        );
        self.commit(
            caller,
            Batch {
                ops: Vec::new(),
                audit: vec![audit],
            },
        )
        .await?;
        Ok(self.store().backup_to(path).await?)
    }

    /// Audit records at or after `since`, every workspace, oldest first, at most `limit`
    /// (admins).
    pub async fn audit_log(
        &self,
        caller: &Caller,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, ServiceError> {
        self.audit_query(
            caller,
            &AuditQuery {
                after: None,
                since,
                workspace: None,
                limit,
                newest: false,
            },
        )
        .await
    }

    /// The audit records `query` selects, oldest first, in time order or, with `after`, in
    /// the order they were committed (admins): what the log view and the export read.
    pub async fn audit_query(
        &self,
        caller: &Caller,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, ServiceError> {
        caller.admin()?;
        Ok(self.store().audit(query).await?)
    }

    /// The newest `limit` records of one workspace, oldest first (the local CLI, tests).
    pub async fn audit_tail(
        &self,
        caller: &Caller,
        workspace: &str,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, ServiceError> {
        caller.admin()?;
        Ok(self
            .store()
            .audit(&AuditQuery {
                after: None,
                since: Timestamp::from_nanos(0),
                workspace: Some(workspace.to_owned()),
                limit,
                newest: true,
            })
            .await?)
    }
}
