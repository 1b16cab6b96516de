//! The workload read over HTTP: the one endpoint that returns values (the service decides which:
//! only a workload token's grants its user may still use).
//!
//! Two forms of one read. `POST /api/v1/workload/read` (since 0.2) answers per name, found or
//! `missing`, skips the values a reader already holds, and long-polls: one request per resolve
//! or refresh round. `GET /api/v1/workload/secrets` is the first form, kept for its clients: a
//! missing name fails the whole read with 404, and `wait`/`since` long-poll the same way.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::Json;
use super::query::Query;
use super::secrets::parse_name;
use super::{ApiError, AppState, Auth};
use crate::protocol::{TokenLife, WorkloadRead, WorkloadReadRequest, WorkloadSecret};
use crate::secret::{SecretName, ValueStamp};
use crate::service::{WorkloadAnswer, WorkloadQuery};

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

fn names_of<'a>(
    list: impl Iterator<Item = &'a str>,
    field: &'static str,
) -> Result<Vec<SecretName>, ApiError> {
    list.filter(|n| !n.is_empty())
        .map(|n| parse_name(n).map_err(|e| e.on(field)))
        .collect()
}

/// `GET /api/v1/workload/secrets`.
pub async fn read(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let names = match &q.names {
        Some(list) => Some(names_of(list.split(','), "names")?),
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
                per_name: false,
                held: Vec::new(),
                values: q.values.unwrap_or(true),
                wait,
                since: q.since,
            },
        )
        .await?;
    Ok(axum::Json(wire(answer)).into_response())
}

/// `POST /api/v1/workload/read`.
pub async fn read_per_name(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Json(body): Json<WorkloadReadRequest>,
) -> Result<Response, ApiError> {
    let names = match &body.names {
        Some(list) => Some(names_of(list.iter().map(String::as_str), "names")?),
        None => None,
    };
    let held = body
        .held
        .iter()
        .map(|h| {
            Ok(ValueStamp {
                name: parse_name(&h.name).map_err(|e| e.on("held"))?,
                version: h.version,
                updated_at: h.updated_at,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let answer = state
        .service
        .workload_read(
            &caller,
            WorkloadQuery {
                names,
                per_name: true,
                held,
                values: body.values,
                wait: Duration::from_secs(body.wait_secs.unwrap_or(0)),
                since: body.since,
            },
        )
        .await?;
    Ok(axum::Json(wire(answer)).into_response())
}

fn wire(answer: WorkloadAnswer) -> WorkloadRead {
    WorkloadRead {
        revision: answer.revision,
        workspace: answer.workspace,
        secrets: answer
            .secrets
            .into_iter()
            .map(|s| WorkloadSecret {
                name: s.meta.name,
                version: s.meta.version,
                kind: s.meta.kind,
                visibility: s.meta.visibility,
                owner: s.meta.owner,
                updated_at: s.meta.updated_at,
                value: s.value,
            })
            .collect(),
        missing: answer.missing,
        token: Some(TokenLife {
            expires_at: answer.expires_at,
            ttl_secs: answer.ttl_secs,
        }),
    }
}
