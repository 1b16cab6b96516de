//! The OpenAPI document, generated: every operation from its handler's `#[utoipa::path]` (the
//! router is built from the same handlers, `mod.rs`), every schema from the types the handlers
//! parse and answer with (`protocol.rs`, with the rules the server enforces), and the answers
//! every route shares (authentication, a malformed body or query, a store that cannot be had)
//! added here by rule, so no route can forget one.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::protocol::{ErrorBody, NameList, Since, Wait};
use crate::service::{AuditAction, TargetKind};

/// The document's fixed parts; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "secretfs",
        description = "Workspace secrets: stored once, write-only, read by workloads through a \
                       FUSE mount or the launcher. Values appear in exactly one answer: the \
                       workload read (`/api/v1/workload/*`), to a workload token."
    ),
    components(schemas(ErrorBody, AuditAction, TargetKind, NameList, Since, Wait))
)]
pub struct Fixed;

/// Routes anyone may call: no bearer token.
const PUBLIC: &[&str] = &[
    "/",
    "/app.js",
    "/app.css",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/api/v1/templates",
    // Authenticated by the platform token in its form body (RFC 8693), not a bearer token.
    "/api/v1/identity/exchange",
];

/// Adds what every route of a kind answers, unless the route says it otherwise.
pub fn add_shared_answers(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("sfs_u_... (user) or sfs_w_... (workload) token"))
                .build(),
        ),
    );
    for (path, item) in api.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        let ops = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (op, writes) in ops {
            if let Some(op) = op {
                shared_answers(path, op, public, writes);
            }
        }
    }
}

fn shared_answers(path: &str, op: &mut Operation, public: bool, writes: bool) {
    let params: &[Parameter] = op.parameters.as_deref().unwrap_or_default();
    let query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let in_path = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let body = op.request_body.is_some();
    let mut answers: Vec<(u16, &str)> = Vec::new();
    if !public {
        op.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        answers.extend([
            (401, "no token, or one that is unknown, expired or revoked"),
            (
                403,
                "the token may not do this (a workload token, or not an admin)",
            ),
            (
                429,
                "too many failed authentications from this address: retry after Retry-After",
            ),
            (503, "the store cannot be had now: retry"),
        ]);
    }
    if query || body {
        answers.push((400, "a malformed query string or body"));
    }
    if query {
        answers.push((
            422,
            "a parameter breaks the rule the document states (the answer names it)",
        ));
    }
    if body {
        answers.extend([
            (413, "the body is larger than the server takes"),
            (415, "the body is not application/json"),
            (
                422,
                "a field breaks a rule the schema states (the answer names it)",
            ),
        ]);
    }
    if in_path {
        answers.push((
            404,
            "no such workspace, secret, user, token or binding the caller may see",
        ));
        if path.contains("{name}") || path.contains("{user}") {
            answers.push((422, "the name in the path breaks the name rule"));
        }
    }
    if writes && !public {
        answers.extend([
            (
                404,
                "a workspace, user or secret the body names does not exist for the caller",
            ),
            (
                409,
                "the change conflicts with the store's state (the answer says which)",
            ),
            (507, "the store's disk is full: nothing was written"),
        ]);
    }
    let responses = &mut op.responses.responses;
    for (status, why) in answers {
        responses.entry(status.to_string()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(why)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        });
    }
}

static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The document as served, made once from the router's own parts (`super::router` hands them
/// over when it builds the router, so the handlers' paths are collected once per process).
pub fn json() -> &'static str {
    DOCUMENT.get_or_init(|| finish(super::parts().1))
}

/// Keeps the document of the parts a router was just built from, if none is kept yet.
pub fn keep(api: OpenApi) {
    DOCUMENT.get_or_init(|| finish(api));
}

fn finish(api: OpenApi) -> String {
    let mut doc = serde_json::to_value(&api).expect("the OpenAPI document serializes");
    drop(api);
    value_rules(&mut doc);
    serde_json::to_string(&doc).expect("the OpenAPI document serializes")
}

/// What a derive cannot say about a body's value (`protocol::value_of`): a new secret has
/// exactly one of `value` and `value_base64`, a change at most one.
fn value_rules(doc: &mut serde_json::Value) {
    let schemas = &mut doc["components"]["schemas"];
    let one = |field: &str| serde_json::json!({ "required": [field] });
    for new in ["CreateSecret", "LeptonItem"] {
        schemas[new]["oneOf"] = serde_json::json!([one("value"), one("value_base64")]);
    }
    schemas["UpdateSecret"]["not"] = serde_json::json!({ "required": ["value", "value_base64"] });
    // The Lepton create's list is a body of its own (no type to carry the rule).
    doc["paths"]["/api/v2/workspaces/{ws}/usersecrets"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["minItems"] = serde_json::json!(1);
    let schemas = &mut doc["components"]["schemas"];
    // An audit line's words are the store's enums (`protocol` keeps to plain strings).
    let line = &mut schemas["AuditLine"]["properties"];
    for (field, schema) in [("action", "AuditAction"), ("target_kind", "TargetKind")] {
        line[field] = serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") });
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This document",
    responses((status = 200, description = "this document", content_type = "application/json", body = serde_json::Value))
)]
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}
