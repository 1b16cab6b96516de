//! The audit over time: how repeated events reach the store (batched, coalesced), failed
//! authentications recorded, the retention of repeated-event records, the export's reads, and
//! each workspace's audit settings.
//!
//! Records of changes are written in their change's transaction (`Batch::audit`) and never
//! pruned. Records of repeated events ([`AuditAction::REPEATED`]: reads, brokered calls,
//! refused credentials and exchanges) change nothing; on a server they go through the
//! [`Coalescer`](super::coalesce::Coalescer) and the batch writer, and are pruned after the
//! retention.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Caller, READ_QUEUE, ReadAudit, Service, ServiceError};
use crate::secret::Timestamp;
use crate::store::{AuditAction, AuditRecord, AuditSettings, Batch, Op, TargetKind, TokenRecord};

/// The coalescing interval a workspace has unless it says otherwise.
pub(super) const DEFAULT_COALESCE: Duration = Duration::from_secs(60);
/// The shortest coalescing interval: below it, a loaded server writes a record per token and
/// secret every few seconds, and the audit grows as if nothing were coalesced.
const MIN_COALESCE: Duration = Duration::from_secs(10);
/// How long records of repeated events are kept unless a workspace says otherwise.
pub(super) const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// The longest coalescing interval: counted events wait this long to be written.
const MAX_COALESCE: Duration = Duration::from_secs(3600);
/// The shortest retention (an hour): a shorter one would prune what a shipper has not read.
const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// The longest retention a workspace may set (100 years): beyond it, keep every record.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 86_400);
/// The memory the open intervals may take: past it, new kinds are written uncounted (see
/// `Coalescer::new`). About 60,000 kinds of read; fewer of long brokered calls.
pub(super) const COALESCER_BUDGET: usize = 64 << 20;
/// Records deleted per pruning transaction: a few milliseconds of the write lock, so a writer
/// never waits long behind the pruner.
const PRUNE_BATCH: u32 = 500;
/// The pause between two pruning transactions, in which writers take their turn.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// What is wrong with a coalescing interval, if anything (the server's flag and a workspace's
/// setting alike).
pub fn coalesce_problem(d: Duration) -> Option<String> {
    (!(MIN_COALESCE..=MAX_COALESCE).contains(&d)).then(|| {
        format!(
            "the coalescing interval is 10s to 1h (got {}): counted events wait that long",
            humantime::format_duration(d)
        )
    })
}

/// What is wrong with a retention, if anything.
pub fn retention_problem(d: Duration) -> Option<String> {
    (!(MIN_RETENTION..=MAX_RETENTION).contains(&d)).then(|| {
        format!(
            "the retention is 1h to 100 years (got {})",
            humantime::format_duration(d)
        )
    })
}

/// Every workspace's audit settings, by name.
pub(super) type SettingsByWorkspace = HashMap<String, AuditSettings>;

/// Why a presented credential was refused, as the audit says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthFailure {
    /// Not a token's form.
    Malformed,
    /// No such token (or its user was deleted).
    Unknown,
    /// A real token's id with the wrong secret part.
    WrongSecret,
    Expired,
    Revoked,
    /// A user token where a workload token belongs, or the reverse.
    WrongKind,
}

impl AuthFailure {
    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown-token",
            AuthFailure::WrongSecret => "wrong-secret",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::WrongKind => "wrong-kind",
        }
    }
}

/// Who failed, as refusals are slowed down (the API's failure guard) and counted (the audit):
/// an IPv4 address, or an IPv6 client's /64, what one host can draw addresses from at will.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FailureSource {
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl FailureSource {
    pub fn of(ip: std::net::IpAddr) -> FailureSource {
        match ip {
            std::net::IpAddr::V4(v4) => FailureSource::V4(v4),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => FailureSource::V4(v4),
                None => FailureSource::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for FailureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            FailureSource::V4(v4) => write!(f, "{v4}"),
            FailureSource::V6Prefix(p) => {
                write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*p) << 64))
            }
        }
    }
}

/// The audit's address of a refusal from `address`: its [`FailureSource`] (an address that is
/// none, such as a local command's empty one, as it is).
pub(super) fn source_group(address: &str) -> String {
    address.parse().map_or_else(
        |_| address.to_owned(),
        |ip| FailureSource::of(ip).to_string(),
    )
}

/// A refusal's reason without what the client chose: every quoted value (`"..."`, as
/// `quote_for_error` writes them) and every number masked, so "no key \"k1\"" and "no key
/// \"k2\"" are one kind of reason.
pub(super) fn reason_kind(why: &str) -> String {
    let mut out = String::with_capacity(why.len());
    let mut chars = why.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // To the closing quote, past escaped ones.
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"…\"");
            }
            c if c.is_ascii_digit() => {
                while chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
                out.push('N');
            }
            c => out.push(c),
        }
    }
    out
}

/// A workspace's audit settings, checked: what `workspace audit` sets.
pub struct NewAuditSettings {
    pub workspace: String,
    pub coalesce: Option<Duration>,
    pub retention: Option<Duration>,
}

impl Service {
    /// Writes repeated events' audit records (reads, refusals) in batches, every `interval` at
    /// most, from a task of the current runtime, and the coalesced records as their intervals
    /// end. The task ends once the service is dropped (or [`Service::flush_reads`] is called),
    /// after writing what is left, counted events included.
    pub fn batch_reads(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(READ_QUEUE);
        *self.reads.lock().unwrap_or_else(|e| e.into_inner()) = ReadAudit::Batched(tx);
        let store = self.vault.store_arc();
        let metrics = self.metrics.clone();
        let coalescer = self.coalescer.clone();
        let due = move |all: bool| {
            let mut c = coalescer.lock().unwrap_or_else(|e| e.into_inner());
            if all {
                c.drain()
            } else {
                c.due(Timestamp::now())
            }
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut open = true;
            while open {
                let queued = std::time::Instant::now();
                let mut batch = tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => vec![r],
                        None => {
                            open = false;
                            Vec::new()
                        }
                    },
                    _ = tick.tick() => due(false),
                };
                if open && !batch.is_empty() {
                    let deadline = tokio::time::Instant::now() + interval;
                    loop {
                        while let Ok(r) = rx.try_recv() {
                            batch.push(r);
                        }
                        if batch.len() >= 5000 {
                            break;
                        }
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(r)) => batch.push(r),
                            Ok(None) => {
                                open = false;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                if !open {
                    // Stopping: what was counted and not yet written goes with the rest.
                    batch.extend(due(true));
                }
                if batch.is_empty() {
                    continue;
                }
                let started = std::time::Instant::now();
                let written = metrics
                    .store("record_reads", store.record_reads(&batch))
                    .await;
                metrics.audit_batch(batch.len(), queued.elapsed());
                match written {
                    Ok(()) => tracing::debug!(
                        records = batch.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "read audit batch written"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, records = batch.len(), "cannot write audit records")
                    }
                }
            }
        })
    }

    /// Stops batching: the batch task writes what it holds (counted events included) and ends.
    pub fn flush_reads(&self) {
        *self.reads.lock().unwrap_or_else(|e| e.into_inner()) = ReadAudit::Direct;
    }

    /// Records events that change nothing. With the batch writer running (a server), repeated
    /// ones are coalesced; one-shot commands write each at once.
    pub(super) async fn record_reads(&self, records: Vec<AuditRecord>) -> Result<(), ServiceError> {
        self.record_events(records.into_iter().map(|r| (r, None)).collect())
            .await
    }

    /// Records a refused exchange or credential, alike others from its source (`address`, an
    /// IPv6 client by its /64) with the same `group` (the kind of its reason, [`reason_kind`]),
    /// whatever else its detail holds: a client varying what it sends makes no new kind.
    pub(super) async fn record_refusal(
        &self,
        mut record: AuditRecord,
        group: String,
    ) -> Result<(), ServiceError> {
        record.address = source_group(&record.address);
        self.record_events(vec![(record, Some(group))]).await
    }

    /// Records events that change nothing, each with what it is grouped by instead of its
    /// detail, if anything.
    async fn record_events(
        &self,
        records: Vec<(AuditRecord, Option<String>)>,
    ) -> Result<(), ServiceError> {
        if records.is_empty() {
            return Ok(());
        }
        let sender = match &*self.reads.lock().unwrap_or_else(|e| e.into_inner()) {
            ReadAudit::Batched(tx) => Some(tx.clone()),
            ReadAudit::Direct => None,
        };
        let Some(tx) = sender else {
            let records: Vec<AuditRecord> = records.into_iter().map(|(r, _)| r).collect();
            return Ok(self.store().record_reads(&records).await?);
        };
        let directory = self.directory().await?;
        let settings = &directory.audit;
        let offered = records.len();
        let written: Vec<AuditRecord> = {
            let mut c = self.coalescer.lock().unwrap_or_else(|e| e.into_inner());
            records
                .into_iter()
                .filter_map(|(r, group)| {
                    if r.action.coalesced() {
                        let interval = self.coalesce_interval(settings, &r.workspace);
                        c.offer(r, interval, group.as_deref())
                    } else {
                        Some(r)
                    }
                })
                .collect()
        };
        self.metrics.audit_coalesced(offered - written.len());
        // A refusal's record is written before its answer, as a change's is: what a flood
        // costs is one record per kind and interval, and an attacker cannot outrun the
        // batch writer to make a refusal go unrecorded when the server is killed.
        let (refusals, written): (Vec<AuditRecord>, Vec<AuditRecord>) =
            written.into_iter().partition(|r| r.action.refusal());
        if !refusals.is_empty() {
            self.metrics
                .store("record_refusals", self.store().record_reads(&refusals))
                .await?;
        }
        for r in written {
            if let Err(unsent) = tx.send(r).await {
                // The writer is gone (shutting down): write it here.
                self.store().record_reads(&[unsent.0]).await?;
            }
        }
        Ok(())
    }

    fn coalesce_interval(
        &self,
        settings: &HashMap<String, AuditSettings>,
        workspace: &str,
    ) -> Duration {
        settings
            .get(workspace)
            .and_then(|s| s.coalesce_secs)
            .map_or(self.options.audit_coalesce, Duration::from_secs)
            .max(MIN_COALESCE)
    }

    fn retention(&self, settings: &HashMap<String, AuditSettings>, workspace: &str) -> Duration {
        settings
            .get(workspace)
            .and_then(|s| s.retention_secs)
            .map_or(self.options.audit_retention, Duration::from_secs)
    }

    /// Records a refused credential: coalesced per address and reason (and token, when the
    /// credential names a real one), so a flood of bad tokens is a few records with counts. A
    /// failure to record is logged, never answered: the caller is refused either way.
    pub(super) async fn record_auth_failure(
        &self,
        address: &str,
        why: AuthFailure,
        token: Option<&TokenRecord>,
    ) {
        let reason = format!("reason={}", why.as_str());
        let (workspace, target, target_id, detail) = match token {
            Some(t) => (
                t.workspace.clone().unwrap_or_default(),
                t.id.clone(),
                t.id.clone(),
                format!("reason={} user={}", why.as_str(), t.user),
            ),
            None => (
                String::new(),
                String::new(),
                String::new(),
                format!("reason={}", why.as_str()),
            ),
        };
        let record = AuditRecord {
            id: 0,
            at: Timestamp::now(),
            first_at: None,
            count: 1,
            workspace,
            actor: "-".into(),
            actor_id: String::new(),
            action: AuditAction::AuthFailed,
            target_kind: TargetKind::Token,
            target,
            target_id,
            version: 0,
            detail,
            address: address.to_owned(),
        };
        if let Err(e) = self.record_refusal(record, reason).await {
            tracing::error!(error = %e, "cannot record a failed authentication");
        }
    }

    /// Deletes the records of repeated events older than each workspace's retention, in small
    /// transactions with pauses between them; records of changes are never touched. How many
    /// it deleted.
    pub async fn prune_audit(&self) -> Result<u64, ServiceError> {
        let directory = self.directory().await?;
        let settings = &directory.audit;
        let mut workspaces: Vec<&str> = settings.keys().map(String::as_str).collect();
        // Records of no workspace: failed authentications of unknown tokens.
        workspaces.push("");
        workspaces.sort_unstable();
        let now = Timestamp::now();
        let mut total = 0;
        for ws in workspaces {
            let keep = i64::try_from(self.retention(settings, ws).as_nanos()).unwrap_or(i64::MAX);
            let before = Timestamp::from_nanos(now.nanos().saturating_sub(keep));
            loop {
                let deleted = self
                    .metrics
                    .store(
                        "prune_audit",
                        self.store()
                            .prune_audit(ws, before, &AuditAction::REPEATED, PRUNE_BATCH),
                    )
                    .await?;
                total += deleted;
                if deleted < u64::from(PRUNE_BATCH) {
                    break;
                }
                tokio::time::sleep(PRUNE_PAUSE).await;
            }
        }
        if total > 0 {
            tracing::info!(records = total, "pruned audit records past their retention");
        }
        self.metrics.audit_pruned(total);
        Ok(total)
    }

    /// Prunes every `every`, from a task of the current runtime, for as long as it runs.
    pub fn prune_periodically(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                if let Err(e) = service.prune_audit().await {
                    tracing::warn!(error = %e, "cannot prune the audit log; trying again later");
                }
            }
        })
    }

    /// Every workspace's own audit settings; `None` is the server's default (admin).
    pub async fn audit_settings(
        &self,
        caller: &Caller,
    ) -> Result<Vec<AuditSettings>, ServiceError> {
        caller.admin()?;
        Ok(self.store().audit_settings().await?)
    }

    /// Sets a workspace's coalescing interval and retention (`None`: the server's), as a
    /// recorded change (admin).
    pub async fn set_audit_settings(
        &self,
        caller: &Caller,
        new: NewAuditSettings,
    ) -> Result<(), ServiceError> {
        caller.admin()?;
        let mut problems = Vec::new();
        let mut field = None;
        if let Some(p) = new.coalesce.and_then(coalesce_problem) {
            problems.push(p);
            field = Some("coalesce_secs");
        }
        if let Some(p) = new.retention.and_then(retention_problem) {
            problems.push(p);
            field = field.or(Some("retention_secs"));
        }
        if !problems.is_empty() {
            return Err(ServiceError::Invalid {
                message: problems.join("; "),
                field,
            });
        }
        let shown = |d: Option<Duration>| {
            d.map_or("server default".to_owned(), |d| format!("{}s", d.as_secs()))
        };
        let detail = format!(
            "coalesce={} retention={}",
            shown(new.coalesce),
            shown(new.retention)
        );
        let batch = Batch {
            ops: vec![Op::SetAuditSettings(AuditSettings {
                workspace: new.workspace.clone(),
                coalesce_secs: new.coalesce.map(|d| d.as_secs()),
                retention_secs: new.retention.map(|d| d.as_secs()),
            })],
            audit: vec![caller.audit(
                &new.workspace,
                AuditAction::WorkspaceAudit,
                (TargetKind::Workspace, &new.workspace, &new.workspace),
                0,
                detail,
            )],
        };
        self.commit(caller, batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::{reason_kind, source_group};

    #[test]
    fn reasons_are_grouped_without_what_the_client_chose() {
        assert_eq!(
            reason_kind(r#"binding lepton: the issuer publishes no key "k1""#),
            reason_kind(r#"binding lepton: the issuer publishes no key "other \"quoted\"""#),
        );
        assert_eq!(
            reason_kind("the token lives 259200 s, longer than the binding's maximum of 86400 s"),
            "the token lives N s, longer than the binding's maximum of N s"
        );
        assert_ne!(
            reason_kind("the token's signature does not verify"),
            reason_kind("the token has expired")
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        assert_eq!(source_group("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(source_group("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
        assert_eq!(source_group("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(source_group("10.0.0.1"), "10.0.0.1");
        assert_eq!(source_group(""), "");
    }
}
