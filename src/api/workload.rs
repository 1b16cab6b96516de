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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Comma-separated names; all of them must be readable (else 404 naming the missing ones).
    /// Without it: every secret of the token's set that is readable now.
    #[param(value_type = Option<crate::protocol::NameList>)]
    names: Option<String>,
    /// `false`: names, versions and the revision only (the watch).
    values: Option<bool>,
    /// Hold the request up to this long ("30s"; at most 60s) while the revision equals `since`.
    #[param(value_type = Option<crate::protocol::Wait>)]
    wait: Option<String>,
    since: Option<String>,
}

/// `wait`: `protocol::WAIT_PATTERN`, exactly (a hand-written check of a 7-character rule; the
/// long-poll clamps what it holds to `MAX_WAIT`).
fn parse_wait(w: &str) -> Option<Duration> {
    let (digits, n, unit) = super::query::number_and_unit(w)?;
    if digits.len() > 4 {
        return None;
    }
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
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
#[utoipa::path(
    get,
    path = "/api/v1/workload/secrets",
    summary = "Values of the workload token's secrets; long-polls with wait and since (version 1: a missing name fails the read with 404; prefer POST /api/v1/workload/read)",
    params(ReadQuery),
    responses(
        (status = 200, body = crate::protocol::WorkloadRead),
        (status = 404, description = "a name asked for cannot be read now (the whole read fails)", body = crate::protocol::ErrorBody)
    )
)]
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
        Some(w) => parse_wait(w).ok_or_else(|| {
            ApiError::invalid(format!(
                "wait {} is not a wait: a number and a unit, ms, s or m (\"30s\")",
                crate::secret::quote_for_error(w)
            ))
            .on("wait")
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
#[utoipa::path(
    post,
    path = "/api/v1/workload/read",
    summary = "The workload read, one request per round: the secrets found with their values, the names missing, the revision; long-polls with since and wait_secs, answering with what changed",
    request_body = crate::protocol::WorkloadReadRequest,
    responses((status = 200, body = crate::protocol::WorkloadRead))
)]
pub async fn read_per_name(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Json(body): Json<WorkloadReadRequest>,
) -> Result<Response, ApiError> {
    // Each name as given (the query string's list skips empty items; a JSON list has none).
    let names = match &body.names {
        Some(list) => Some(
            list.iter()
                .map(|n| parse_name(n).map_err(|e| e.on("names")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    // The document's maximum: a long-poll holds at most `MAX_WAIT`, and asking for more is a
    // mistake worth saying rather than a wait silently shortened.
    if body
        .wait_secs
        .is_some_and(|w| w > crate::protocol::WAIT_SECS_MAX)
    {
        return Err(ApiError::invalid(format!(
            "wait_secs is at most {}",
            crate::protocol::WAIT_SECS_MAX
        ))
        .on("wait_secs"));
    }
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

/// `POST /api/v1/workload/brokered`.
#[utoipa::path(
    post,
    path = "/api/v1/workload/brokered",
    summary = "Records calls a launcher's broker made for its workload with secrets of this token: one audit record (brokered) each",
    request_body = crate::protocol::BrokeredCalls,
    responses(
        (status = 200, body = crate::protocol::BrokeredRecorded),
        (status = 404, description = "a call names a secret this token cannot read now (nothing is recorded)", body = crate::protocol::ErrorBody)
    )
)]
pub async fn brokered(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Json(body): Json<crate::protocol::BrokeredCalls>,
) -> Result<Response, ApiError> {
    let recorded = state.service.record_brokered(&caller, &body.calls).await?;
    Ok(axum::Json(crate::protocol::BrokeredRecorded { recorded }).into_response())
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
