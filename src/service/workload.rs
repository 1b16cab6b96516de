//! The workload read: the one operation that returns values, and only to a workload token, only
//! for the secrets it was minted for (by id) that its user may still use. A long-poll holds it
//! while nothing changes, and checks its principal again before it answers: a token revoked,
//! expired, or whose user or membership is gone while the request was held gets nothing.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Caller, Service, ServiceError, Who, may_use};
use crate::secret::{SecretMeta, SecretName, SecretValue, Timestamp, ValueStamp};
use crate::store::{AuditAction, StoredSecret, TargetKind};

/// The longest a long-poll is held.
pub const MAX_WAIT: Duration = Duration::from_secs(crate::protocol::WAIT_SECS_MAX);

/// What a workload asks for.
#[derive(Debug, Clone, Default)]
pub struct WorkloadQuery {
    /// Only these; `None`: every secret of the token's set that is readable now.
    pub names: Option<Vec<SecretName>>,
    /// Names that are not readable are answered in [`WorkloadAnswer::missing`]; otherwise the
    /// read fails with 404 naming them (the first API's answer, kept for its clients).
    pub per_name: bool,
    /// The values the reader holds (version and time of each): those still current are
    /// answered without their value, and are not reads.
    pub held: Vec<ValueStamp>,
    /// `false`: names, versions and the revision only (the watch).
    pub values: bool,
    /// Hold the request up to this long while the revision equals `since`.
    pub wait: Duration,
    pub since: Option<String>,
}

/// One secret as a workload receives it.
pub struct WorkloadSecret {
    pub meta: SecretMeta,
    pub value: Option<SecretValue>,
}

pub struct WorkloadAnswer {
    /// Changes whenever a secret of the set changes or becomes (un)readable.
    pub revision: String,
    pub workspace: String,
    pub secrets: Vec<WorkloadSecret>,
    /// With `per_name`: the names asked for that are not readable now, whatever the reason
    /// (never created, deleted, not granted, not visible), so that the answer reveals nothing.
    pub missing: Vec<SecretName>,
    /// When the reading token expires, and how far a renewal extends it.
    pub expires_at: Option<Timestamp>,
    pub ttl_secs: Option<u64>,
}

impl Service {
    /// The readable part of the caller's grants, and the revision over them.
    async fn readable(
        &self,
        caller: &Caller,
    ) -> Result<(Vec<StoredSecret>, String, String), ServiceError> {
        let Who::Workload { token, user } = &caller.who else {
            return Err(ServiceError::Forbidden(
                "only a workload token reads values; mint one with \"secretfs token create --workload\""
                    .into(),
            ));
        };
        let ws = token.workspace.clone().unwrap_or_default();
        let snapshot = self.snapshot(&ws).await?;
        let mut rows = Vec::new();
        let mut hasher = Sha256::new();
        for grant in &token.grants {
            if let Some(row) = snapshot
                .by_id(&grant.secret_id)
                .filter(|r| may_use(user, r))
            {
                hasher.update(row.id.as_bytes());
                hasher.update(row.meta.version.to_be_bytes());
                hasher.update(row.meta.updated_at.nanos().to_be_bytes());
                hasher.update([0]);
                rows.push(row.clone());
            }
        }
        let digest = hasher.finalize();
        let revision: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Ok((rows, revision, ws))
    }

    /// `GET /api/v1/workload/secrets`: the values (or metadata) of the caller's grants, after a
    /// long-poll if asked.
    pub async fn workload_read(
        &self,
        caller: &Caller,
        q: WorkloadQuery,
    ) -> Result<WorkloadAnswer, ServiceError> {
        let (caller, rows, revision, ws) = self.hold(caller, &q).await?;
        // Boxed: the answer's futures (decrypting, auditing) are larger than the wait's, and a
        // future is allocated at the size of its largest state for its whole life: unboxed, each
        // of 10,000 held polls would carry them (issue 32).
        Box::pin(self.answer(caller, q, rows, revision, ws)).await
    }

    /// Holds a long-poll while nothing changes: returns the principal as the store has it now
    /// and its readable secrets. While held, this future keeps only the wait (the change
    /// receiver, the timer and the caller); the reads around it are boxed and gone by then.
    async fn hold(
        &self,
        caller: &Caller,
        q: &WorkloadQuery,
    ) -> Result<(Caller, Vec<StoredSecret>, String, String), ServiceError> {
        let mut changes = self.changes.subscribe();
        let wait = q.wait.min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        // The principal as last checked: the caller's own until a re-check, then boxed (the
        // handler holds the caller already; a second copy inline would be held by every poll).
        let mut rechecked: Option<Box<Caller>> = None;
        let mut held_poll = None;
        loop {
            let current = rechecked.as_deref().unwrap_or(caller);
            let (rows, revision, ws) = Box::pin(self.readable(current)).await?;
            if q.since.as_deref() != Some(revision.as_str()) || wait.is_zero() || self.is_stopping()
            {
                if held_poll.is_some() && q.since.as_deref() != Some(revision.as_str()) {
                    self.metrics.answered_change();
                }
                let current = match rechecked {
                    Some(now) => *now,
                    None => caller.clone(),
                };
                return Ok((current, rows, revision, ws));
            }
            // Not kept across the wait: the next look reads them again.
            drop((rows, revision, ws));
            held_poll.get_or_insert_with(|| self.metrics.long_poll());
            // Nothing new: wait for a committed change (a token revoked and a user removed are
            // changes too), the end of the wait, or the token's expiry; then look again, as the
            // principal the store has now.
            let until = match current.token().and_then(|t| t.expires_at) {
                Some(expiry) => deadline.min(tokio::time::Instant::now() + until_time(expiry)),
                None => deadline,
            };
            let timed_out = match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => false,
                Ok(Err(_)) | Err(_) => true,
            };
            let now =
                Box::new(Box::pin(self.revalidate(rechecked.as_deref().unwrap_or(caller))).await?);
            rechecked = Some(now);
            if timed_out && tokio::time::Instant::now() >= deadline {
                let current = rechecked.map_or_else(|| caller.clone(), |now| *now);
                let (rows, revision, ws) = Box::pin(self.readable(&current)).await?;
                return Ok((current, rows, revision, ws));
            }
        }
    }

    /// The answer to a read whose wait is over: the names asked for, their values unless held,
    /// one audit record per value served.
    async fn answer(
        &self,
        caller: Caller,
        q: WorkloadQuery,
        rows: Vec<StoredSecret>,
        revision: String,
        ws: String,
    ) -> Result<WorkloadAnswer, ServiceError> {
        let mut by_name: std::collections::BTreeMap<SecretName, StoredSecret> =
            rows.into_iter().map(|r| (r.meta.name.clone(), r)).collect();
        let mut missing = Vec::new();
        let selected: Vec<StoredSecret> = match &q.names {
            Some(names) => {
                missing = names
                    .iter()
                    .filter(|n| !by_name.contains_key(*n))
                    .cloned()
                    .collect();
                if !missing.is_empty() && !q.per_name {
                    self.record_refused_read(&caller, &ws, &missing).await?;
                    let quoted: Vec<String> = missing.iter().map(|n| format!("\"{n}\"")).collect();
                    return Err(ServiceError::NotFound(format!(
                        "secret{} not found: {}",
                        if quoted.len() == 1 { "" } else { "s" },
                        quoted.join(", ")
                    )));
                }
                names.iter().filter_map(|n| by_name.remove(n)).collect()
            }
            None => by_name.into_values().collect(),
        };
        let mut secrets = Vec::with_capacity(selected.len());
        let mut audits = Vec::new();
        for row in selected {
            let held = q.held.iter().any(|h| h.describes_as_sent(&row.meta));
            let value = if q.values && !held {
                audits.push(caller.audit(
                    &ws,
                    AuditAction::Read,
                    (TargetKind::Secret, row.meta.name.as_str(), &row.id),
                    row.meta.version,
                    format!("user={}", caller.user().name),
                ));
                Some(self.vault.open_row(&row).await?)
            } else {
                None
            };
            secrets.push(WorkloadSecret {
                meta: row.meta,
                value,
            });
        }
        let served = audits.len();
        self.metrics.workload_secrets("served", served);
        self.metrics.workload_secrets(
            if q.values { "held" } else { "listed" },
            secrets.len() - served,
        );
        self.metrics.workload_secrets("missing", missing.len());
        self.record_reads(audits).await?;
        let token = caller.token();
        Ok(WorkloadAnswer {
            revision,
            workspace: ws,
            secrets,
            missing,
            expires_at: token.and_then(|t| t.expires_at),
            ttl_secs: token.and_then(|t| t.ttl_secs),
        })
    }
}

impl Service {
    /// Records a read refused for names the token may not read: one record per refused read,
    /// never coalesced, naming the secrets of the workspace it asked for by name and counting
    /// the names of no secret (a value passed where a name belongs must not be kept).
    async fn record_refused_read(
        &self,
        caller: &Caller,
        ws: &str,
        missing: &[SecretName],
    ) -> Result<(), ServiceError> {
        let names: std::collections::BTreeSet<&SecretName> = missing.iter().collect();
        let snapshot = self.snapshot(ws).await?;
        let (known, unknown): (Vec<&SecretName>, Vec<&SecretName>) = names
            .into_iter()
            .partition(|n| snapshot.by_name.contains_key(*n));
        let mut detail = String::new();
        if !known.is_empty() {
            let listed: Vec<&str> = known.iter().map(|n| n.as_str()).collect();
            detail = format!("not readable by this token: {}", listed.join(", "));
        }
        if !unknown.is_empty() {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str(&format!(
                "{} name{} of no secret",
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" }
            ));
        }
        let target = known.first().map_or("", |n| n.as_str());
        let record = caller.audit(
            ws,
            AuditAction::ReadRefused,
            (TargetKind::Secret, target, ""),
            0,
            detail,
        );
        self.record_reads(vec![record]).await
    }

    /// Records calls a launcher's broker made for its workload (`POST
    /// /api/v1/workload/brokered`): one audit record per call, batched like reads. Only a
    /// workload token, for the secrets it may read now (any other name gets a read's 404), or
    /// the launcher on a local store. Every call is checked before any is recorded.
    pub async fn record_brokered(
        &self,
        caller: &Caller,
        calls: &[crate::protocol::BrokeredCall],
    ) -> Result<u64, ServiceError> {
        if calls.is_empty() || calls.len() > crate::protocol::BROKERED_CALLS_MAX {
            return Err(ServiceError::Invalid {
                message: format!(
                    "calls holds 1 to {} calls",
                    crate::protocol::BROKERED_CALLS_MAX
                ),
                field: Some("calls"),
            });
        }
        let (rows, ws) = match &caller.who {
            Who::Workload { .. } => {
                let (rows, _, ws) = self.readable(caller).await?;
                (rows, ws)
            }
            Who::Local { user } => {
                let ws = super::DEFAULT_WORKSPACE.to_owned();
                let snapshot = self.snapshot(&ws).await?;
                let rows = snapshot
                    .by_name
                    .values()
                    .filter(|r| may_use(user, r))
                    .cloned()
                    .collect();
                (rows, ws)
            }
            Who::User { .. } => {
                return Err(ServiceError::Forbidden(
                    "only a workload token records the calls its launcher's broker made".into(),
                ));
            }
        };
        let mut records = Vec::with_capacity(calls.len());
        for call in calls {
            if let Some(problem) = call.problem() {
                return Err(ServiceError::Invalid {
                    message: problem,
                    field: Some("calls"),
                });
            }
            let row = SecretName::parse(&call.secret)
                .ok()
                .and_then(|name| rows.iter().find(|r| r.meta.name == name));
            let Some(row) = row else {
                return Err(ServiceError::NotFound(format!(
                    "secret {} not found",
                    crate::secret::quote_for_error(&call.secret)
                )));
            };
            records.push(caller.audit(
                &ws,
                AuditAction::Brokered,
                (TargetKind::Secret, row.meta.name.as_str(), &row.id),
                row.meta.version,
                format!(
                    "upstream={} method={} path={} status={} pid={} uid={}",
                    call.upstream, call.method, call.path, call.status, call.pid, call.uid
                ),
            ));
        }
        let recorded = records.len() as u64;
        self.record_reads(records).await?;
        Ok(recorded)
    }
}

/// How long until `t` (zero when it has passed).
fn until_time(t: Timestamp) -> Duration {
    let now = Timestamp::now().nanos();
    Duration::from_nanos(u64::try_from(t.nanos().saturating_sub(now)).unwrap_or(0))
}
