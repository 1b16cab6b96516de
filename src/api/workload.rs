//! The workload read over HTTP: the one endpoint that returns values (the service decides which:
//! only a workload token's grants its user may still use). Long-polls with `wait` and `since`
//! for the mount's watch.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::query::Query;
use super::{ApiError, AppState, Auth};
use crate::secret::{SecretKind, SecretName, Timestamp, Visibility};
use crate::service::WorkloadQuery;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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

/// `GET /api/v1/workload/secrets`.
pub async fn read(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let names: Option<Vec<SecretName>> = match &q.names {
        Some(list) => Some(
            list.split(',')
                .filter(|n| !n.is_empty())
                .map(super::secrets::parse_name)
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let wait = match &q.wait {
        Some(w) => humantime::parse_duration(w.trim()).map_err(|e| {
            ApiError::invalid(format!("wait {w:?} is not a duration ({e})")).on("wait")
        })?,
        None => Duration::ZERO,
    };
    let answer = state
        .service
        .workload_read(
            &caller,
            WorkloadQuery {
                names,
                values: q.values.unwrap_or(true),
                wait,
                since: q.since,
            },
        )
        .await?;
    let secrets = answer
        .secrets
        .into_iter()
        .map(|s| {
            let (value, value_base64) = match &s.value {
                Some(v) => match std::str::from_utf8(v.expose_secret()) {
                    Ok(t) => (Some(t.to_owned()), None),
                    Err(_) => (
                        None,
                        Some(base64::engine::general_purpose::STANDARD.encode(v.expose_secret())),
                    ),
                },
                None => (None, None),
            };
            WorkloadSecret {
                name: s.meta.name,
                version: s.meta.version,
                kind: s.meta.kind,
                visibility: s.meta.visibility,
                owner: s.meta.owner,
                updated_at: s.meta.updated_at,
                value,
                value_base64,
            }
        })
        .collect();
    Ok(axum::Json(WorkloadRead {
        revision: answer.revision,
        workspace: answer.workspace,
        secrets,
    })
    .into_response())
}
