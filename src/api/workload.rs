//! The workload read: the one endpoint that returns values, and only to a workload token, only
//! for the secrets it was minted for and its user may still use. Long-polls with `wait` and
//! `since` for the mount's watch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, Auth, Principal, may_use};
use crate::secret::{SecretKind, SecretName, Timestamp, Visibility};
use crate::store::{Actor, AuditAction, Vault};

/// The longest a long-poll is held.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
pub struct ReadQuery {
    /// Comma-separated names; all of them must be readable (else 404 naming the missing ones).
    /// Without it: every secret of the token's set that is readable now.
    names: Option<String>,
    /// `false`: names, versions and the revision only (the watch).
    values: Option<bool>,
    /// Hold the request up to this long ("30s") while the revision equals `since`.
    wait: Option<String>,
    since: Option<String>,
}

/// One secret as a workload receives it.
#[derive(Serialize)]
pub struct WorkloadSecret {
    pub name: SecretName,
    pub version: u64,
    pub kind: SecretKind,
    pub visibility: Visibility,
    pub owner: String,
    pub updated_at: Timestamp,
    /// The value when it is UTF-8 text...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

#[derive(Serialize)]
pub struct WorkloadRead {
    /// Changes whenever a secret of the set changes or becomes (un)readable.
    pub revision: String,
    pub workspace: String,
    pub secrets: Vec<WorkloadSecret>,
}

/// The readable part of the token's set: (metadata rows) and the revision over them.
async fn readable(
    state: &AppState,
    auth: &Auth,
) -> Result<(Vec<crate::store::StoredSecret>, String, String), ApiError> {
    let Principal::Workload { token, user } = &auth.principal else {
        return Err(ApiError::forbidden(
            "only a workload token reads values; mint one with \"secretfs token create --workload\"",
        ));
    };
    let ws = token.workspace.clone().unwrap_or_default();
    let still_member = user.workspaces.contains(&ws);
    let snapshot = state.snapshot(&ws).await?;
    let mut rows = Vec::new();
    let mut hasher = Sha256::new();
    if still_member {
        for name in &token.secrets {
            if let Some(row) = snapshot.rows.get(name).filter(|r| may_use(user, &r.meta)) {
                hasher.update(name.as_str().as_bytes());
                hasher.update(row.meta.version.to_be_bytes());
                hasher.update(row.meta.updated_at.nanos().to_be_bytes());
                hasher.update([0]);
                rows.push(row.clone());
            }
        }
    }
    let digest = hasher.finalize();
    let revision: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok((rows, revision, ws))
}

async fn encode(
    vault: &Vault,
    ws: &str,
    row: crate::store::StoredSecret,
) -> Result<WorkloadSecret, ApiError> {
    let (meta, value) = vault.open_row(ws, row).await?;
    let bytes = value.expose_secret();
    let (text, b64) = match std::str::from_utf8(bytes) {
        Ok(t) => (Some(t.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
    Ok(WorkloadSecret {
        name: meta.name,
        version: meta.version,
        kind: meta.kind,
        visibility: meta.visibility,
        owner: meta.owner,
        updated_at: meta.updated_at,
        value: text,
        value_base64: b64,
    })
}

/// `GET /api/v1/workload/secrets`.
pub async fn read(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let wanted: Option<Vec<SecretName>> = match &q.names {
        Some(list) => Some(
            list.split(',')
                .filter(|n| !n.is_empty())
                .map(super::secrets::parse_name)
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let wait = match &q.wait {
        Some(w) => humantime::parse_duration(w.trim())
            .map_err(|e| ApiError::invalid(format!("wait {w:?} is not a duration ({e})")))?
            .min(MAX_WAIT),
        None => Duration::ZERO,
    };
    let mut changes = state.changes.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let (rows, revision, ws) = loop {
        let (rows, revision, ws) = readable(&state, &auth).await?;
        if q.since.as_deref() != Some(revision.as_str()) || wait.is_zero() {
            break (rows, revision, ws);
        }
        // Nothing new: wait for any committed change, then look again.
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => break (rows, revision, ws),
        }
    };
    let mut by_name: BTreeMap<SecretName, crate::store::StoredSecret> =
        rows.into_iter().map(|r| (r.meta.name.clone(), r)).collect();
    let selected: Vec<crate::store::StoredSecret> = match &wanted {
        Some(names) => {
            let missing: Vec<String> = names
                .iter()
                .filter(|n| !by_name.contains_key(*n))
                .map(|n| format!("\"{n}\""))
                .collect();
            if !missing.is_empty() {
                return Err(ApiError::not_found(format!(
                    "secret{} not found: {}",
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", ")
                )));
            }
            names.iter().filter_map(|n| by_name.remove(n)).collect()
        }
        None => by_name.into_values().collect(),
    };
    let with_values = q.values.unwrap_or(true);
    let mut secrets = Vec::with_capacity(selected.len());
    let mut audits = Vec::new();
    let actor = Actor {
        name: format!("workload:{}", auth.principal.token().id),
        address: auth.address.clone(),
    };
    for row in selected {
        if with_values {
            audits.push(Vault::audit(
                &ws,
                &actor,
                AuditAction::Read,
                &row.meta.name,
                row.meta.version,
                format!("user={}", auth.principal.user().name),
            ));
            secrets.push(encode(&state.vault, &ws, row).await?);
        } else {
            let m = row.meta;
            secrets.push(WorkloadSecret {
                name: m.name,
                version: m.version,
                kind: m.kind,
                visibility: m.visibility,
                owner: m.owner,
                updated_at: m.updated_at,
                value: None,
                value_base64: None,
            });
        }
    }
    state.audit.send(audits);
    Ok(axum::Json(WorkloadRead {
        revision,
        workspace: ws,
        secrets,
    })
    .into_response())
}
