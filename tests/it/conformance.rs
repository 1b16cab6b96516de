//! The API against its own document: schemathesis (PyPI, pinned by scripts/test) fuzzes a scratch
//! server from `/openapi.json` once per token kind (workload, user, admin), in a workspace of its
//! own. Every pass must end clean (no 5xx, no answer outside the response schemas, no status the
//! document does not list, every other default check), the harness's own admin and the other
//! users must come through untouched, and the budget must be one in which valid bodies do create
//! things: the secrets and tokens the fuzzer created are counted through the audit log.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Http, Running, Scratch, Server, tools_python, unique_canary};

/// The fuzzer's workspace; every workspace-scoped route is pinned to it.
const WS: &str = "fuzz";
/// Test cases per operation and phase: enough that valid bodies get through and create secrets
/// and tokens, small enough that a pass takes about 20 s on two busy cores.
const MAX_EXAMPLES: &str = "50";
/// Fixed, so a failure can be replayed (`--seed` of the same version on the same document).
const SEED: &str = "30";
/// A request answered later than this fails the pass: the server answers in milliseconds (a
/// long-poll holds only when `since` is the current revision, which generated input does not hit).
const REQUEST_TIMEOUT: &str = "10";
/// A pass still running after this is ended and fails the test; three of them stay inside the
/// per-test limit of .config/nextest.toml (4 minutes).
const PASS_LIMIT: Duration = Duration::from_secs(60);

/// What the command line cannot say. The token reaches schemathesis through its environment
/// (`${CONFORMANCE_TOKEN}`), never its command line, and its sanitiser keeps the header out of what
/// it prints; every workspace-scoped route is pinned to the fuzzer's workspace; the two
/// conformance checks are named so that no default can turn them off; nothing is kept between
/// runs (a replayed database or cache would make the same seed run differently).
const CONFIG: &str = r#"headers = { Authorization = "Bearer ${CONFORMANCE_TOKEN}" }
hooks = {hooks}

[parameters]
"path.ws" = {ws}

[checks]
status_code_conformance.enabled = true
response_schema_conformance = { enabled = true, validate-formats = true }

# Two operations whose valid bodies cannot all be described: the token exchange refuses every
# JWT no binding admits with 400 invalid_grant, as RFC 6749 section 5.2 has it, and adding a
# binding fetches the issuer's keys and refuses (422) one that could never verify a token; no
# schema can describe an admitted token or a reachable issuer.
[[operations]]
include-path-regex = "^/api/v1/identity/(exchange|bindings)$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "422", "429",
]

[generation]
database = "none"

[cache]
enabled = false

[output.sanitization]
enabled = true
"#;

fn hooks() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/conformance_hooks.py")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What schemathesis printed, with anything shaped like a token cut and the seeded values
/// (which all hold `canary`) hidden: the fuzzer mints tokens and reads values, and a failure
/// shows the response it was given.
fn redact(text: &str, canary: &str) -> String {
    let text = text.replace(canary, "[value]");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("sfs_") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(tail.len(), |(i, _)| i);
        out.push_str("sfs_[redacted]");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The failures of schemathesis's report (its FAILURES section, printed without colour) as
/// (check, operation, status) triples; the status is `-` when no response came.
fn failures(stdout: &str) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    let mut operation = String::new();
    let mut checks: Vec<String> = Vec::new();
    let mut in_failures = false;
    let flush =
        |checks: &mut Vec<String>, operation: &str, status: &str, found: &mut BTreeSet<_>| {
            for check in checks.drain(..) {
                found.insert((check, operation.to_owned(), status.to_owned()));
            }
        };
    for line in stdout.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("=====") {
            flush(&mut checks, &operation, "-", &mut found);
            in_failures = trimmed.contains(" FAILURES ");
            continue;
        }
        if !in_failures {
            continue;
        }
        if trimmed.starts_with("___") && trimmed.ends_with("___") {
            flush(&mut checks, &operation, "-", &mut found);
            operation = trimmed.trim_matches('_').trim().to_owned();
        } else if trimmed.contains(". Test Case ID: ") {
            flush(&mut checks, &operation, "-", &mut found);
        } else if let Some(check) = trimmed.strip_prefix("- ST") {
            checks.push(format!("ST{check}"));
        } else if trimmed.starts_with('[') && trimmed.ends_with(':') {
            let status = trimmed[1..].split(']').next().unwrap_or("-");
            flush(&mut checks, &operation, status, &mut found);
        }
    }
    flush(&mut checks, &operation, "-", &mut found);
    found
}

/// What the audit log says was created so far: secrets in the fuzzer's workspace, and tokens.
fn created(h: &Http, admin: &str) -> (usize, usize) {
    let (status, log) = h.call("GET", "/api/v1/audit?limit=100000", admin, None);
    assert_eq!(
        status, 200,
        "the audit log, read with the harness's admin token: {log}"
    );
    let log = log.as_array().unwrap();
    let count = |action: &str, ws: Option<&str>| {
        log.iter()
            .filter(|r| r["action"] == action && ws.is_none_or(|ws| r["workspace"] == ws))
            .count()
    };
    (count("create", Some(WS)), count("token-mint", None))
}

/// How a pass ended.
fn ended(exit: Option<i32>) -> String {
    match exit {
        Some(code) => format!("schemathesis exited {code}"),
        None => format!("schemathesis still ran at the limit ({PASS_LIMIT:?}) and was ended"),
    }
}

/// The id of `token` (not a secret: the part between the kind and the secret).
fn token_id(h: &Http, token: &str) -> String {
    let (status, v) = h.call("GET", "/api/v1/whoami", token, None);
    assert_eq!(status, 200, "{v}");
    v["token"]["id"].as_str().unwrap().to_owned()
}

/// One run of schemathesis, with what it found and what it created.
struct Pass {
    kind: &'static str,
    exit: Option<i32>,
    took: Duration,
    failures: BTreeSet<(String, String, String)>,
    /// The tail of its output when it ended otherwise than by finding failures.
    trouble: String,
    secrets: usize,
    tokens: usize,
}

/// One schemathesis run with `token`, every route scoped to `WS`, reports in `dir`.
fn fuzz(
    schemathesis: &Path,
    s: &Scratch,
    url: &str,
    kind: &'static str,
    token: &str,
    protected: &str,
) -> (Option<i32>, Duration, String) {
    let dir = s.path().join(format!("conformance-{kind}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = CONFIG
        .replace("{hooks}", &toml_str(&hooks().display().to_string()))
        .replace("{ws}", &toml_str(WS));
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config).unwrap();
    let args: Vec<String> = [
        "--config-file",
        &config_path.display().to_string(),
        "run",
        &format!("{url}/openapi.json"),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--request-timeout",
        REQUEST_TIMEOUT,
        // One worker: the same order of requests for the same seed, and one core left.
        "--workers",
        "1",
        // Every operation's whole budget, failing or not (creations are counted), and no
        // shrinking, whose extra requests have no bound.
        "--continue-on-failure",
        "--no-shrink",
        "--report",
        "junit,json",
        "--report-dir",
        &dir.display().to_string(),
        "--no-color",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    eprintln!(
        "conformance: {kind} pass: schemathesis {}",
        args.iter()
            .map(|a| a.replace(&s.path().display().to_string(), "$SCRATCH"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let stdout_path = dir.join("stdout");
    let start = Instant::now();
    let mut child = Running::spawn(
        &format!("schemathesis ({kind} pass)"),
        Command::new(schemathesis)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", s.path())
            // The hooks file is imported from the source tree: no __pycache__ beside it.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CONFORMANCE_TOKEN", token)
            .env("CONFORMANCE_PROTECTED", protected)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap()),
    );
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > PASS_LIMIT {
            // Dropping `child` ends it.
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = start.elapsed();
    drop(child);
    let mut out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    out.push_str(&std::fs::read_to_string(dir.join("stderr")).unwrap_or_default());
    (exit, took, out)
}

#[test]
fn the_api_answers_as_its_openapi_document_says_for_every_token_kind() {
    let test = "the_api_answers_as_its_openapi_document_says_for_every_token_kind";
    let Some(python) = tools_python(test, "schemathesis") else {
        return;
    };
    let schemathesis = python.with_file_name("schemathesis");
    let s = Scratch::new();
    // Schemathesis sends requests without a token and with broken ones (its ignored-auth check):
    // failed authentication must not be slowed down for it.
    let server = Server::start_with(&s, &["--failure-burst", "1000000"]);
    let h = Http::new(&server);
    let admin = server.admin_token.clone();
    let canary = unique_canary("conformance");

    // Out of the fuzzer's reach: the harness's admin, and a bystander with a private secret in
    // the default workspace, of which the two users the fuzzer acts as are not members.
    let bystander = h.user(&admin, "bystander");
    let (status, v) = h.call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &bystander,
        Some(json!({ "name": "BYSTANDER_KEY", "value": format!("{canary}-bystander") })),
    );
    assert_eq!(status, 201, "{v}");
    let users_before = users(&h, &admin);

    // The fuzzer's admin is an admin user of its own, so the harness's admin token is never
    // in schemathesis's hands; it creates the workspace and its member, and belongs to no
    // other workspace.
    let (status, v) = h.call(
        "POST",
        "/api/v1/users",
        &admin,
        Some(json!({ "name": "fuzz-operator", "admin": true, "workspaces": [] })),
    );
    assert_eq!(status, 201, "{v}");
    let operator = v["token"].as_str().unwrap().to_owned();
    let (status, v) = h.call(
        "POST",
        "/api/v1/workspaces",
        &operator,
        Some(json!({ "name": WS })),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = h.call(
        "POST",
        "/api/v1/users",
        &operator,
        Some(json!({ "name": "fuzz-member", "workspaces": [WS] })),
    );
    assert_eq!(status, 201, "{v}");
    let member = v["token"].as_str().unwrap().to_owned();
    let secrets_path = format!("/api/v1/workspaces/{WS}/secrets");
    for (name, visibility) in [("SEEDED_PUBLIC", "public"), ("SEEDED_PRIVATE", "private")] {
        let (status, v) = h.call(
            "POST",
            &secrets_path,
            &member,
            Some(json!({
                "name": name,
                "value": format!("{canary}-{name}"),
                "visibility": visibility,
            })),
        );
        assert_eq!(status, 201, "{v}");
    }
    let (status, v) = h.call(
        "POST",
        &format!("/api/v1/workspaces/{WS}/tokens"),
        &member,
        Some(json!({ "secrets": ["SEEDED_PUBLIC", "SEEDED_PRIVATE"], "ttl": "1h" })),
    );
    assert_eq!(status, 201, "{v}");
    let workload = v["token"].as_str().unwrap().to_owned();

    // Each pass keeps its own token (revoking it would leave the rest of its budget to 401s),
    // and none reaches the harness's admin or the bystander: their names and every token id the
    // harness minted are what conformance_hooks.py keeps out of requests.
    let mut protected = vec!["admin".to_owned(), "bystander".to_owned()];
    for token in [&admin, &bystander, &operator, &member, &workload] {
        protected.push(token_id(&h, token));
    }
    let protected = protected.join(",");

    // The workload pass first (the user pass deletes the secrets its token reads), the admin
    // pass last (it deletes users, the fuzzer's member among them).
    let mut passes = Vec::new();
    for (kind, token) in [
        ("workload", &workload),
        ("user", &member),
        ("admin", &operator),
    ] {
        let before = created(&h, &admin);
        let (exit, took, out) = fuzz(&schemathesis, &s, &server.url, kind, token, &protected);
        let after = created(&h, &admin);
        let out = redact(&out, &canary);
        let failures = failures(&out);
        // Errors (a request that timed out, a crash) are not failures of a check: their part
        // of the output is shown as it is.
        let errors = out
            .lines()
            .any(|l| l.starts_with("=====") && l.contains(" ERRORS "));
        let trouble = if exit == Some(0) || (exit == Some(1) && !failures.is_empty() && !errors) {
            String::new()
        } else {
            let lines: Vec<&str> = out.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let pass = Pass {
            kind,
            exit,
            took,
            failures,
            trouble,
            secrets: after.0 - before.0,
            tokens: after.1 - before.1,
        };
        eprintln!(
            "conformance: {kind} pass: {} after {:.1} s, {} failures; created {} secrets in {WS} \
             and {} tokens",
            ended(exit),
            took.as_secs_f64(),
            pass.failures.len(),
            pass.secrets,
            pass.tokens
        );
        passes.push(pass);
    }

    // The harness's admin token still works, still an admin's; the users it did not hand the
    // fuzzer are as they were, the bystander's token and private secret too.
    let (status, me) = h.call("GET", "/api/v1/whoami", &admin, None);
    assert_eq!(
        status, 200,
        "the harness's admin token stopped working: {me}"
    );
    assert_eq!(
        (me["user"].as_str(), me["admin"].as_bool()),
        (Some("admin"), Some(true))
    );
    let users_after = users(&h, &admin);
    for user in &users_before {
        assert!(
            users_after.contains(user),
            "{user} changed or went: {users_after:?}"
        );
    }
    let (status, v) = h.call(
        "GET",
        "/api/v1/workspaces/default/secrets",
        &bystander,
        None,
    );
    assert_eq!(status, 200, "the bystander's token stopped working: {v}");
    let kept: Vec<(&str, i64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(kept, [("BYSTANDER_KEY", 1)]);

    // Every pass clean, and valid bodies got through: the user and the admin passes created
    // secrets in the workspace, and tokens were minted.
    let mut report = String::new();
    for p in &passes {
        if p.exit == Some(0) {
            continue;
        }
        writeln!(
            report,
            "{} pass: {} after {:.1} s; (check | operation | status):",
            p.kind,
            ended(p.exit),
            p.took.as_secs_f64()
        )
        .unwrap();
        for (check, operation, status) in &p.failures {
            writeln!(report, "  {check} | {operation} | {status}").unwrap();
        }
        if !p.trouble.is_empty() {
            writeln!(report, "  its output ends:\n{}", p.trouble).unwrap();
        }
    }
    for p in passes.iter().filter(|p| p.kind != "workload") {
        if p.secrets == 0 {
            writeln!(
                report,
                "{} pass: no valid body created a secret in {WS}",
                p.kind
            )
            .unwrap();
        }
    }
    if passes.iter().map(|p| p.tokens).sum::<usize>() == 0 {
        writeln!(report, "no pass minted a token").unwrap();
    }
    assert!(report.is_empty(), "conformance:\n{report}");
}

/// Every user as the admin lists them (id, name, admin, workspaces).
fn users(h: &Http, admin: &str) -> Vec<Value> {
    let (status, v) = h.call("GET", "/api/v1/users", admin, None);
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().clone()
}
