//! `/openapi.json`: generated from the handlers and the types they use, so it and the server
//! agree: every route is in it and every operation in it is answered, its enums are the
//! server's, its string rules are the server's (checked with Python's `re`, an independent
//! reader of the patterns), and a body of another shape than it describes is refused.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Api, Scratch, python};

async fn document(api: &Api) -> Value {
    let (status, text, headers) = api.raw("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    serde_json::from_str(&text).unwrap()
}

/// (method, path) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_operation_answered() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let doc = document(&api).await;
    assert_eq!(doc["openapi"], "3.1.0");
    // Every schema a parameter or body names is in the document (a `$ref` to nothing makes a
    // client generator fail and a fuzzer skip the parameter).
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (at, _) in text.match_indices("#/components/schemas/") {
        let name: String = text[at + 21..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            schemas.contains_key(&name),
            "{name} is referenced but not defined"
        );
    }
    let ops = operations(&doc);
    // The router is built from the annotated handlers only: a route added with axum's own
    // `.route(` would be served undocumented.
    let routes = include_str!("../../src/api/mod.rs");
    assert!(
        !routes.contains(".route("),
        "src/api/mod.rs adds a route that the document cannot see"
    );
    let handlers = routes.matches("routes!(").count();
    let listed: usize = routes
        .split("routes!(")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap().split(',').count())
        .sum();
    assert!(handlers >= 30, "{handlers}");
    assert_eq!(
        listed,
        ops.len(),
        "one operation per handler the router serves"
    );
    // Each operation is answered by its handler, not by the fallback ("no such endpoint") or
    // the method fallback: the path and method as documented reach code.
    for (method, path) in &ops {
        let concrete = path
            .replace("{ws}", "default")
            .replace("{name}", "NO_SUCH_NAME")
            .replace("{user}", "nobody")
            .replace("{id}", "no-such-id");
        let (status, text, _) = api.raw(method, &concrete, Some(&admin), None).await;
        assert_ne!(status, 405, "{method} {path}: {text}");
        assert!(
            !text.contains("no such endpoint"),
            "{method} {path} is documented but not served: {text}"
        );
    }
    // Every operation's answers are documented with the shared ones added by rule.
    let create = &doc["paths"]["/api/v1/workspaces/{ws}/secrets"]["post"];
    for status in [
        "201", "400", "401", "403", "404", "409", "413", "415", "422", "503",
    ] {
        assert!(
            create["responses"].get(status).is_some(),
            "create lacks {status}"
        );
    }
    let read = &doc["paths"]["/api/v1/workload/read"]["post"];
    for status in ["200", "400", "401", "403", "415", "422"] {
        assert!(
            read["responses"].get(status).is_some(),
            "read lacks {status}"
        );
    }
    assert_eq!(
        doc["paths"]["/healthz"]["get"].get("security"),
        None,
        "health needs no token"
    );
    assert_eq!(
        create["security"],
        json!([{ "bearer": [] }]),
        "the API needs a bearer token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_enums_and_rules_are_the_servers() {
    let s = Scratch::new();
    let (api, _) = Api::in_process(&s).await;
    let doc = document(&api).await;
    let schemas = &doc["components"]["schemas"];
    let enum_of = |name: &str| -> Vec<String> {
        schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no enum: {}", schemas[name]))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let actions: Vec<String> = secretfs::store::AuditAction::ALL
        .iter()
        .map(|a| a.as_str().to_owned())
        .collect();
    assert_eq!(enum_of("AuditAction"), actions);
    assert!(actions.contains(&"identity-exchange-refused".to_owned()));
    assert!(enum_of("TargetKind").contains(&"binding".to_owned()));
    let kinds: Vec<String> = secretfs::secret::SecretKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(enum_of("SecretKind"), kinds);
    assert_eq!(
        schemas["AuditLine"]["properties"]["action"]["$ref"],
        "#/components/schemas/AuditAction"
    );
    assert_eq!(schemas["CreateSecret"]["additionalProperties"], false);

    // The string rules: Python's `re` reads the document's patterns and lengths; the server's
    // own checks decide the same strings.
    let samples: Vec<String> = [
        "A",
        "_",
        "a.b-c_d",
        "9bad",
        ".hidden",
        "-x",
        "a/b",
        "a b",
        "é",
        "ok@host",
        "x,y",
        "tab\t",
        "ctl\u{1}",
        "nbsp\u{a0}",
        "",
        "..",
        "Ab.",
        "@me",
        "a@b.c",
        "ünï",
        "sp ace",
        "comma,",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "N".repeat(253),
        "N".repeat(254),
        "u".repeat(64),
        "u".repeat(65),
    ])
    .collect();
    let rules = json!({
        "SecretName": schemas["SecretName"],
        "AccountName": schemas["AccountName"],
        "Tag": schemas["Tag"],
    });
    let script = r#"
import json, re, sys
rules, samples = json.load(sys.stdin)
out = {}
for name, rule in rules.items():
    def ok(s):
        return (rule.get("minLength", 0) <= len(s) <= rule.get("maxLength", 10**9)
                and re.search(rule["pattern"], s) is not None)
    out[name] = [ok(s) for s in samples]
print(json.dumps(out))
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", script]);
    let out = crate::support::run_with(
        cmd,
        serde_json::to_string(&json!([rules, samples]))
            .unwrap()
            .as_bytes(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let by_python: Value = serde_json::from_str(&out.stdout).unwrap();
    for (i, sample) in samples.iter().enumerate() {
        let server = [
            (
                "SecretName",
                secretfs::secret::SecretName::parse(sample).is_ok(),
            ),
            ("AccountName", secretfs::store::valid_account_name(sample)),
            (
                "Tag",
                secretfs::secret::validate_tags(std::slice::from_ref(sample)).is_ok(),
            ),
        ];
        for (rule, decided) in server {
            assert_eq!(
                by_python[rule][i], decided,
                "{rule} on {sample:?}: the document and the server disagree"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_another_shape_than_documented_are_refused() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let post = |path: &'static str, body: &'static str| {
        let api = &api;
        let admin = admin.clone();
        async move {
            api.raw(
                "POST",
                path,
                Some(&admin),
                Some(("application/json", body.as_bytes().to_vec())),
            )
            .await
        }
    };
    let secrets = "/api/v1/workspaces/default/secrets";
    // serde's positional form of a struct: an array where an object is documented.
    for (path, body) in [
        (secrets, r#"["POSITIONAL", "v"]"#),
        (secrets, r#""a string""#),
        (
            "/api/v1/workspaces/default/secrets:import",
            r#"{"secrets": [["NESTED", "v"]]}"#,
        ),
        (
            "/api/v2/workspaces/default/usersecrets",
            r#"[["LEP", "v"]]"#,
        ),
        (
            "/api/v2/workspaces/default/usersecrets",
            r#"{"name": "LEP", "value": "v"}"#,
        ),
        ("/api/v1/users", r#"["someone"]"#),
    ] {
        let (status, text, _) = post(path, body).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains("not"), "{text}");
        assert!(
            !text.contains("POSITIONAL") && !text.contains("a string"),
            "{text}"
        );
    }
    // null where the document types a string without null: refused like a wrong type.
    for body in [
        r#"{"name": "NULLED", "value": null, "value_base64": "dmFsdWU="}"#,
        r#"{"name": "NULLED", "value": "v", "visibility": null}"#,
    ] {
        let (status, text, _) = post(secrets, body).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    // The documented forms still work, and the refusals created nothing.
    let (status, text, _) = post(secrets, r#"{"name": "OBJECT", "value": "v"}"#).await;
    assert_eq!(status, 201, "{text}");
    let (_, list) = api.call("GET", secrets, &admin, None).await;
    assert_eq!(crate::support::names(&list), ["OBJECT"]);
    // The API takes the canonical spellings its enums list.
    let (status, text, _) = post(secrets, r#"{"name": "K", "value": "v", "kind": "HF"}"#).await;
    assert_eq!(status, 422, "{text}");
    let (status, text, _) = post(
        secrets,
        r#"{"name": "K", "value": "v", "visibility": "Public"}"#,
    )
    .await;
    assert_eq!(status, 422, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_revoked_token_records_nothing_more() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let (status, v) = api
        .call(
            "POST",
            "/api/v1/users/admin/tokens",
            &admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, v) = api
            .call("DELETE", &format!("/api/v1/tokens/{id}"), &admin, None)
            .await;
        assert_eq!(status, 204, "{v}");
    }
    let (_, log) = api.call("GET", "/api/v1/audit", &admin, None).await;
    let revokes = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "token-revoke" && r["target_id"] == id.as_str())
        .count();
    assert_eq!(revokes, 1, "{log}");
    // Nor does removing the user of a revoked token record its revocation again.
    api.user(&admin, "bob").await;
    let (status, v) = api
        .call("POST", "/api/v1/users/bob/tokens", &admin, Some(json!({})))
        .await;
    assert_eq!(status, 201, "{v}");
    let bobs = v["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call("DELETE", &format!("/api/v1/tokens/{bobs}"), &admin, None)
        .await;
    assert_eq!(status, 204);
    let (status, v) = api.call("DELETE", "/api/v1/users/bob", &admin, None).await;
    assert_eq!(status, 200, "{v}");
    let (_, log) = api.call("GET", "/api/v1/audit", &admin, None).await;
    let records = |id: &str| {
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "token-revoke" && r["target_id"] == id)
            .count()
    };
    assert_eq!(records(&bobs), 1, "{log}");
}
