//! Workload identity against an independent issuer: `support/oidc_issuer.py` (PyJWT and
//! `cryptography`) serves OIDC discovery and a JWKS on 127.0.0.1 and mints tokens shaped like
//! Kubernetes' (and Lepton's `ws-<id>`/`default`) service-account tokens and GitHub Actions'.
//! The server verifies them with its own code; nothing here signs with it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Api, Daemon, FS_LIMIT, Running, Scratch, Server, eventually, fuse_available, tools_python,
};

const K8S_AUD: &str = "https://kubernetes.default.svc";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The answer of every refusal before a token's signature verifies.
const UNADMITTED: &str = "no identity binding admits the token";

/// A running issuer; stopped when dropped.
struct Issuer {
    child: Running,
    url: String,
    api: Api,
    rt: tokio::runtime::Runtime,
}

impl Issuer {
    fn start(s: &Scratch, python: &Path, suffix: &str) -> Issuer {
        Self::start_caching(s, python, suffix, 300)
    }

    /// An issuer whose JWKS answers say `Cache-Control: max-age=MAX_AGE` (0: `no-store`).
    fn start_caching(s: &Scratch, python: &Path, suffix: &str, max_age: u64) -> Issuer {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port_file = s.path().join(format!("issuer-{n}.port"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/oidc_issuer.py");
        let child = Running::spawn(
            "the issuer",
            Command::new(python)
                .arg(script)
                .arg("--port-file")
                .arg(&port_file)
                .args(["--issuer-suffix", suffix])
                .args(["--max-age", &max_age.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        assert!(
            eventually(20, || port_file.exists()),
            "the issuer did not start"
        );
        let port = std::fs::read_to_string(&port_file).unwrap();
        let base = format!("http://127.0.0.1:{}", port.trim());
        let url = format!("{base}{suffix}");
        Issuer {
            child,
            api: Api::at(&url),
            url,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self
            .rt
            .block_on(self.api.call("POST", path, "", Some(body)));
        assert_eq!(status, 200, "issuer {path}: {v}");
        v
    }

    /// A token of `claims` (over the issuer's `iss`, `iat`, `exp = iat + ttl`).
    fn mint(&self, body: Value) -> String {
        self.post("/mint", body)["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn jwks_fetches(&self) -> u64 {
        let (_, v) = self.rt.block_on(self.api.call("GET", "/stats", "", None));
        v["jwks_fetches"].as_u64().unwrap()
    }
}

/// Claims shaped like a Kubernetes projected service-account token of pod `pod` in namespace
/// `ns` (Lepton: `ws-<workspace id>`, service account `default`).
fn k8s(ns: &str, sa: &str, pod: &str) -> Value {
    json!({
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "aud": [K8S_AUD],
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": pod, "uid": "5a1f0c3e-0000-4000-8000-000000000001"},
            "serviceaccount": {"name": sa, "uid": "5a1f0c3e-0000-4000-8000-000000000002"},
            "node": {"name": "node-1", "uid": "5a1f0c3e-0000-4000-8000-000000000003"},
        },
    })
}

/// Claims shaped like a GitHub Actions OIDC token.
fn github(repo: &str, git_ref: &str) -> Value {
    json!({
        "sub": format!("repo:{repo}:ref:{git_ref}"),
        "aud": "secretfs",
        "repository": repo,
        "repository_owner": repo.split('/').next().unwrap(),
        "ref": git_ref,
        "workflow": "ci",
        "event_name": "push",
        "runner_environment": "github-hosted",
    })
}

/// `POST /api/v1/identity/exchange` with `token` (and a binding as the scope).
fn exchange(
    rt: &tokio::runtime::Runtime,
    api: &Api,
    token: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut form = format!(
        "grant_type={}&subject_token_type={}&subject_token={token}",
        enc(GRANT),
        enc(JWT)
    );
    if let Some(s) = scope {
        form.push_str(&format!("&scope={}", enc(s)));
    }
    let (status, text, _) = rt.block_on(api.raw(
        "POST",
        "/api/v1/identity/exchange",
        None,
        Some(("application/x-www-form-urlencoded", form.into_bytes())),
    ));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The names a workload token reads.
fn reads(rt: &tokio::runtime::Runtime, api: &Api, token: &str) -> Vec<String> {
    let (status, v) = rt.block_on(api.workload(token, ""));
    assert_eq!(status, 200, "{v}");
    let mut names: Vec<String> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// `secretfs identity ARGS` as the admin.
fn identity(s: &Scratch, server: &Server, args: &[&str]) -> crate::support::Out {
    let mut all = vec!["identity", "--url", &server.url];
    all.extend_from_slice(args);
    let mut cmd = s.cmd(&all);
    cmd.env("SECRETFS_TOKEN", &server.admin_token);
    crate::support::run_with(cmd, b"")
}

/// `identity add NAME --issuer ISSUER --audience AUDIENCE --subject SUBJECT REST...`.
fn add(
    s: &Scratch,
    server: &Server,
    name: &str,
    issuer: &str,
    audience: &str,
    subject: &str,
    rest: &[&str],
) -> crate::support::Out {
    let mut args = vec![
        "add",
        name,
        "--issuer",
        issuer,
        "--audience",
        audience,
        "--subject",
        subject,
    ];
    args.extend_from_slice(rest);
    identity(s, server, &args)
}

/// A server with alice's secrets, her colleague bob's, and an issuer.
struct World {
    s: Scratch,
    server: Server,
    api: Api,
    rt: tokio::runtime::Runtime,
    issuer: Issuer,
    alice: String,
    bob: String,
    _db: Option<crate::support::TempDatabase>,
}

fn world(test: &str, server_args: &[&str]) -> Option<World> {
    world_on(test, None, |s| Server::start_with(s, server_args))
}

/// The same on a PostgreSQL store (a database of its own).
fn world_on_postgres(test: &str) -> Option<World> {
    let admin_url = crate::support::postgres_url(test)?;
    let db = crate::support::TempDatabase::new(&admin_url);
    let url = db.url.clone();
    world_on(test, Some(db), |s| {
        Server::start_pg(s, &url, &s.path().join("pg.key"), true)
    })
}

fn world_on(
    test: &str,
    db: Option<crate::support::TempDatabase>,
    start: impl FnOnce(&Scratch) -> Server,
) -> Option<World> {
    let python = tools_python(test, "jwt")?;
    let s = Scratch::new();
    let server = start(&s);
    let api = Api::new(&server);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let alice = rt.block_on(api.user(&server.admin_token, "alice"));
    let bob = rt.block_on(api.user(&server.admin_token, "bob"));
    for (token, name, value, vis) in [
        (&alice, "HF_TOKEN", "hf_identity_value", "private"),
        (&alice, "OPENAI_API_KEY", "sk-identity-value", "private"),
        (&alice, "NOT_BOUND", "not-bound-value", "private"),
        (&bob, "BOBS_KEY", "bobs-value", "private"),
        (&bob, "SHARED", "shared-value", "public"),
    ] {
        let (status, v) = rt.block_on(api.create(token, name, value, vis));
        assert_eq!(status, 201, "{v}");
    }
    let issuer = Issuer::start(&s, &python, "");
    Some(World {
        s,
        server,
        api,
        rt,
        issuer,
        alice,
        bob,
        _db: db,
    })
}

impl World {
    /// Binds Lepton-shaped tokens of namespace `ws-abc` to alice's HF_TOKEN and the public SHARED.
    fn bind_lepton(&self, name: &str, extra: &[&str]) {
        let mut rest = vec![
            "--claim",
            "kubernetes.io.namespace=ws-abc",
            "--user",
            "alice",
            "-s",
            "HF_TOKEN",
            "-s",
            "SHARED",
        ];
        rest.extend_from_slice(extra);
        let subject = "system:serviceaccount:ws-*:default";
        let out = add(
            &self.s,
            &self.server,
            name,
            &self.issuer.url,
            K8S_AUD,
            subject,
            &rest,
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }

    fn audit(&self) -> Vec<Value> {
        let (status, v) = self.rt.block_on(self.api.call(
            "GET",
            "/api/v1/audit?limit=1000",
            &self.server.admin_token,
            None,
        ));
        assert_eq!(status, 200, "{v}");
        v.as_array().unwrap().clone()
    }
}

#[test]
fn a_platform_token_reads_exactly_its_bindings_secrets_and_every_refusal_says_why() {
    let Some(w) = world(
        "a_platform_token_reads_exactly_its_bindings_secrets_and_every_refusal_says_why",
        &[],
    ) else {
        return;
    };
    // A binding names secrets its user may use: bob's private key is refused, with the name.
    let out = add(
        &w.s,
        &w.server,
        "bad",
        &w.issuer.url,
        K8S_AUD,
        "*",
        &["--user", "alice", "-s", "BOBS_KEY", "--claim", "nodots"],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("\"BOBS_KEY\""), "{}", out.stderr);
    assert!(
        out.stderr.contains("no '='"),
        "every problem at once: {}",
        out.stderr
    );
    w.bind_lepton("lepton", &["--ttl", "10m"]);
    let listed = identity(&w.s, &w.server, &["list", "-o", "json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "lepton");
    assert_eq!(listed[0]["secrets"], json!(["HF_TOKEN", "SHARED"]));
    assert_eq!(listed[0]["keys"], "discovery");

    // Accepted: a Lepton pod's token reads its binding's two secrets, nothing else.
    let token = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-0"), "ttl": 600}));
    let (status, x) = exchange(&w.rt, &w.api, &token, None);
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["token_type"], "Bearer");
    assert_eq!(
        x["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(x["binding"], "lepton");
    let life = x["expires_in"].as_u64().unwrap();
    assert!((590..=600).contains(&life), "the binding's 10m ttl: {life}");
    let access = x["access_token"].as_str().unwrap();
    assert_eq!(reads(&w.rt, &w.api, access), ["HF_TOKEN", "SHARED"]);
    let (status, _) = w.rt.block_on(w.api.workload(access, "?names=NOT_BOUND"));
    assert_ne!(status, 200, "a secret outside the binding");
    // The workload token expires with the presented token when that comes first.
    let short = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-1"), "ttl": 120}));
    let (_, x) = exchange(&w.rt, &w.api, &short, None);
    assert!(x["expires_in"].as_u64().unwrap() <= 120, "{x}");

    // Refused, each for its own reason.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims_aud = k8s("ws-abc", "default", "p");
    claims_aud["aud"] = json!(["https://other.example"]);
    let mut claims_nbf = k8s("ws-abc", "default", "p");
    claims_nbf["nbf"] = json!(now + 600);
    let mut claims_nosub = k8s("ws-abc", "default", "p");
    claims_nosub["sub"] = Value::Null;
    let other = Issuer::start(&w.s, &tools_python("", "jwt").unwrap(), "");
    // A key the issuer signs with but does not publish (it becomes the current one: the other
    // cases name k1).
    w.issuer.post(
        "/rotate",
        json!({"alg": "RS256", "kid": "hidden", "publish": false}),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong audience", w.issuer.mint(json!({"claims": claims_aud, "kid": "k1"})), "audience is not one a binding accepts"),
        ("wrong issuer", other.mint(json!({"claims": k8s("ws-abc", "default", "p")})), UNADMITTED),
        ("expired", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "iat_offset": -700, "ttl": 600, "kid": "k1"})), "expired"),
        ("issued in the future", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "iat_offset": 300, "kid": "k1"})), "issued in the future"),
        ("expired within the clock skew", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "iat_offset": -610, "ttl": 600, "kid": "k1"})), "expired"),
        ("not yet valid", w.issuer.mint(json!({"claims": claims_nbf, "kid": "k1"})), "not valid yet"),
        ("alg none", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "none", "kid": "k1"})), "unsigned"),
        ("HS256 keyed with the public key", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "hs256-public", "kid": "k1"})), "symmetric algorithm \"HS256\""),
        ("header alg other than the key's", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "wrong-alg-header", "kid": "k1"})), UNADMITTED),
        ("unknown key", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "kid": "hidden"})), UNADMITTED),
        ("tampered", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "tampered", "kid": "k1"})), UNADMITTED),
        ("subject", w.issuer.mint(json!({"claims": k8s("ws-abc", "builder", "p"), "kid": "k1"})), "does not match a binding's subject pattern"),
        ("claim", w.issuer.mint(json!({"claims": k8s("ws-xyz", "default", "p"), "kid": "k1"})), "claim kubernetes.io.namespace is \"ws-xyz\""),
        ("no sub", w.issuer.mint(json!({"claims": claims_nosub, "kid": "k1"})), "no \"sub\" claim"),
        ("too long a life", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "ttl": 3 * 86400, "kid": "k1"})), "longer than a binding accepts"),
    ];
    for (what, token, says) in &cases {
        let (status, v) = exchange(&w.rt, &w.api, token, None);
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"], "invalid_grant", "{what}: {v}");
        let message = v["error_description"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        // Before the signature verifies (an issuer, a key, a signature), one answer, word for
        // word; after it, what the token failed.
        if *says == UNADMITTED {
            assert_eq!(message, UNADMITTED, "{what}");
        }
        assert!(
            !message.contains(token.as_str()),
            "{what}: the token in the answer"
        );
        for expected in [
            "system:serviceaccount:ws-*:default",
            "=ws-abc",
            "lepton",
            K8S_AUD,
        ] {
            assert!(
                !message.contains(expected),
                "{what}: the binding's {expected} told: {message}"
            );
        }
    }
    // A malformed request is refused before any token is looked at, with every problem.
    let (status, text, _) = w.rt.block_on(w.api.raw(
        "POST",
        "/api/v1/identity/exchange",
        None,
        Some((
            "application/x-www-form-urlencoded",
            b"grant_type=password".to_vec(),
        )),
    ));
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("grant_type must be") && text.contains("subject_token is missing"),
        "{text}"
    );

    // Every exchange is audited, accepted or refused, with binding, issuer and sub.
    let audit = w.audit();
    let accepted: Vec<&Value> = audit
        .iter()
        .filter(|a| a["action"] == "identity-exchange")
        .collect();
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|a| a["action"] == "identity-exchange-refused")
        .collect();
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    assert_eq!(refused.len(), cases.len(), "{refused:?}");
    assert!(
        accepted[0]["target"] == "lepton"
            && accepted[0]["detail"]
                .as_str()
                .unwrap()
                .contains("sub \"system:serviceaccount:ws-abc:default\""),
        "{:?}",
        accepted[0]
    );
    // The audit keeps what the answer does not say.
    for reason in [
        "no identity binding trusts the issuer",
        "publishes no key \"hidden\"",
        "signature does not verify",
        "is not its key's",
    ] {
        assert!(
            refused
                .iter()
                .any(|a| a["detail"].as_str().unwrap().contains(reason)),
            "{reason}: {refused:?}"
        );
    }
    let subject_refusal = refused
        .iter()
        .find(|a| a["detail"].as_str().unwrap().contains("builder"))
        .expect("the subject refusal");
    assert_eq!(subject_refusal["target"], "lepton", "{subject_refusal}");
    assert!(
        subject_refusal["detail"]
            .as_str()
            .unwrap()
            .contains(&w.issuer.url)
    );
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "identity-add" && a["target"] == "lepton")
    );
    // No presented or minted token reaches the log or the audit.
    let log = w.server.log();
    let audit_text = serde_json::to_string(&audit).unwrap();
    for (what, token, _) in &cases {
        let signature = token.rsplit('.').next().unwrap();
        if signature.len() > 8 {
            assert!(
                !log.contains(signature),
                "{what}: the token in the server's log"
            );
            assert!(
                !audit_text.contains(signature),
                "{what}: the token in the audit"
            );
        }
    }
    assert!(!log.contains(access) && !audit_text.contains(access));
}

/// An attacker without a trusted issuer's key learns nothing from refusals: a forged token
/// carrying a trusted `iss`, with a real binding's name as `scope`, a guessed one, or none, and a
/// token of an issuer nobody trusts all get the same status and the same body, byte for byte.
/// A genuinely signed token that a binding refuses gets that same answer whenever it names a
/// scope (so binding names cannot be probed with a token anyone can mint at some issuers). And
/// the refusals come slower and slower from one address, the same answer later, while an
/// admitted exchange from that address is never held up.
#[test]
fn a_forged_token_learns_nothing_of_bindings_or_issuers() {
    let Some(w) = world("a_forged_token_learns_nothing_of_bindings_or_issuers", &[]) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let attacker = Issuer::start(&w.s, &tools_python("", "jwt").unwrap(), "/attacker");
    let mut forged_claims = k8s("ws-abc", "default", "job-0");
    forged_claims["iss"] = json!(w.issuer.url);
    let forged = attacker.mint(json!({"claims": forged_claims}));
    let untrusted = attacker.mint(json!({"claims": k8s("ws-abc", "default", "job-0")}));
    let mut wrong_aud = k8s("ws-abc", "default", "job-0");
    wrong_aud["aud"] = json!(["https://other.example"]);
    let genuine_refused = w.issuer.mint(json!({"claims": wrong_aud}));
    let raw = |token: &str, scope: Option<&str>| {
        let mut form = format!(
            "grant_type={}&subject_token_type={}&subject_token={token}",
            enc(GRANT),
            enc(JWT)
        );
        if let Some(s) = scope {
            form.push_str(&format!("&scope={}", enc(s)));
        }
        let (status, text, _) = w.rt.block_on(w.api.raw(
            "POST",
            "/api/v1/identity/exchange",
            None,
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        ));
        (status, text)
    };
    let probes = [
        ("forged, real scope", raw(&forged, Some("lepton"))),
        ("forged, guessed scope", raw(&forged, Some("lepton-prod"))),
        ("forged, no scope", raw(&forged, None)),
        (
            "untrusted issuer, real scope",
            raw(&untrusted, Some("lepton")),
        ),
        ("untrusted issuer, no scope", raw(&untrusted, None)),
        (
            "genuine but refused, real scope",
            raw(&genuine_refused, Some("lepton")),
        ),
        (
            "genuine but refused, guessed scope",
            raw(&genuine_refused, Some("lepton-prod")),
        ),
    ];
    let (first_status, first_body) = &probes[0].1;
    assert_eq!(*first_status, 400, "{first_body}");
    assert!(first_body.contains(UNADMITTED), "{first_body}");
    for (what, (status, body)) in &probes {
        assert_eq!((status, body), (first_status, first_body), "{what}");
    }
    // Without a scope, a genuinely signed token is told what it failed.
    let (status, told) = raw(&genuine_refused, None);
    assert_eq!(status, 400);
    assert!(told.contains("audience"), "{told}");
    assert_ne!(&told, first_body);

    // Past the burst, each refusal from this address comes later than the last, the same answer;
    // an admitted exchange in between is not held up.
    let mut delays = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let (status, body) = raw(&forged, Some("lepton"));
        assert_eq!((status, &body), (400, first_body));
        delays.push(started.elapsed());
    }
    assert!(
        delays[5] >= Duration::from_millis(300) && delays[5] > delays[0],
        "{delays:?}"
    );
    let good = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-1")}));
    let started = Instant::now();
    let (status, v) = exchange(&w.rt, &w.api, &good, None);
    assert_eq!(status, 200, "{v}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "an admitted exchange was held up: {:?}",
        started.elapsed()
    );
}

/// Serves, over TLS on the other host, a discovery document per path `/sN` whose `jwks_uri` is
/// the N-th line of `uris` (argv: port, cert, key, the issuer base URL, the uris file).
const DISCOVERY: &str = r#"
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, cert, key, base, uris = sys.argv[1:6]
targets = open(uris).read().split()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if not self.path.startswith("/s"):
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        n = int(self.path.split("/")[1][1:])
        body = json.dumps({"issuer": f"{base}/s{n}", "jwks_uri": targets[n]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = ThreadingHTTPServer(("0.0.0.0", int(port)), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
open(uris + ".ready", "w").close()
srv.serve_forever()
"#;

/// An issuer on another host cannot aim the server's key fetch at this host, however it spells
/// it: its discovery document naming this host's listener through each loopback, unspecified,
/// mapped or own-interface spelling is refused (the binding is not added, and says why), and the
/// listener sees not one connection. A document naming a host elsewhere is fetched from.
#[test]
fn a_remote_issuer_cannot_aim_the_key_fetch_at_this_host() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").is_ok_and(|v| v != "true") || std::env::var("CI").is_err(),
            "CI=true needs root for the other host"
        );
        eprintln!("skipping: another host needs root (a network namespace)");
        return;
    }
    let s = Scratch::new();
    let other = crate::support::OtherHost::new();
    let (ca, cert, key) = crate::support::private_ca(s.path(), &format!("IP:{}", other.there));
    // A listener on every address of this host: any connection the server makes to it counts.
    let listener = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let reached = |l: &std::net::TcpListener| {
        let mut n = 0;
        while l.accept().is_ok() {
            n += 1;
        }
        n
    };
    let spellings = [
        format!("https://127.1:{port}/jwks"),
        format!("https://127.0.0.3:{port}/jwks"),
        format!("https://0.0.0.0:{port}/jwks"),
        format!("https://2130706433:{port}/jwks"),
        format!("https://0x7f.1:{port}/jwks"),
        format!("https://[::1]:{port}/jwks"),
        format!("https://[::ffff:127.0.0.1]:{port}/jwks"),
        format!("https://localhost:{port}/jwks"),
        format!("https://{}:{port}/jwks", other.here),
        // Elsewhere (the other host itself): fetched, and found to hold no key.
        format!("https://{}:8443/nothing", other.there),
    ];
    let uris = s.path().join("uris");
    std::fs::write(&uris, spellings.join("\n")).unwrap();
    let base = format!("https://{}:8443", other.there);
    let _discovery = crate::support::Running::spawn(
        "the other host's discovery server",
        other
            .command(crate::support::python())
            .args(["-c", DISCOVERY, "8443"])
            .args([&cert, &key])
            .arg(&base)
            .arg(&uris),
    );
    assert!(
        eventually(10, || s.path().join("uris.ready").exists()),
        "the discovery server did not start"
    );
    let server = Server::start_env(&s, &[], &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, v) =
        rt.block_on(Api::new(&server).create(&server.admin_token, "S", "v", "private"));
    assert_eq!(status, 201, "{v}");
    for (n, uri) in spellings.iter().enumerate() {
        let issuer = format!("{base}/s{n}");
        let out = add(
            &s,
            &server,
            &format!("b{n}"),
            &issuer,
            K8S_AUD,
            "system:serviceaccount:ns:sa",
            &["--user", "admin", "-s", "S"],
        );
        assert_ne!(out.code, 0, "{uri}: {}", out.stdout);
        let said = out.stderr.to_lowercase();
        if n + 1 < spellings.len() {
            assert!(said.contains("this host"), "{uri}: {}", out.stderr);
        } else {
            assert!(said.contains("answered 404"), "{uri}: {}", out.stderr);
        }
    }
    assert_eq!(
        reached(&listener),
        0,
        "the server's fetch reached this host"
    );
}

#[test]
fn github_tokens_match_on_their_claims_and_bindings_can_be_named() {
    if let Some(w) = world(
        "github_tokens_match_on_their_claims_and_bindings_can_be_named",
        &[],
    ) {
        github_bindings(&w);
    }
}

#[test]
fn bindings_on_postgres() {
    if let Some(w) = world_on_postgres("bindings_on_postgres") {
        github_bindings(&w);
    }
}

/// Keys from a file; two bindings of one issuer told apart by claims and named by scope; a
/// binding removed with the tokens it minted.
fn github_bindings(w: &World) {
    let python = tools_python("", "jwt").unwrap();
    let gh = Issuer::start(&w.s, &python, "/gh");
    gh.post(
        "/rotate",
        json!({"alg": "ES256", "kid": "ec1", "keep_old": false}),
    );
    let jwks = w.rt.block_on(gh.api.call("GET", "/jwks", "", None)).1;
    let jwks_file = w.s.path().join("gh-jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    // Keys from a file: an issuer the server need not reach.
    for (name, r) in [("main", "refs/heads/main"), ("any-branch", "refs/heads/*")] {
        let out = add(
            &w.s,
            &w.server,
            name,
            &gh.url,
            "secretfs",
            &format!("repo:org/app:ref:{r}"),
            &[
                "--claim",
                "repository=org/app",
                "--claim",
                &format!("ref={r}"),
                "--user",
                "alice",
                "-s",
                "OPENAI_API_KEY",
                "--jwks-file",
                jwks_file.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let main = gh.mint(json!({"claims": github("org/app", "refs/heads/main")}));
    let (status, v) = exchange(&w.rt, &w.api, &main, None);
    assert_eq!(status, 400, "two bindings admit it: {v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("scope=NAME"),
        "{v}"
    );
    let (status, v) = exchange(&w.rt, &w.api, &main, Some("main"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["binding"], "main");
    assert_eq!(
        reads(&w.rt, &w.api, v["access_token"].as_str().unwrap()),
        ["OPENAI_API_KEY"]
    );
    let branch = gh.mint(json!({"claims": github("org/app", "refs/heads/feature")}));
    let (status, v) = exchange(&w.rt, &w.api, &branch, None);
    assert_eq!(status, 200, "only any-branch admits a feature branch: {v}");
    assert_eq!(v["binding"], "any-branch");
    let fork = gh.mint(json!({"claims": github("evil/app", "refs/heads/main")}));
    let (status, v) = exchange(&w.rt, &w.api, &fork, None);
    assert_eq!(status, 400, "{v}");
    let why = v["error_description"].as_str().unwrap();
    assert!(
        why.contains("does not match a binding's subject pattern"),
        "{why}"
    );
    assert!(
        !why.contains("repo:org/app") && !why.contains("any-branch"),
        "{why}"
    );
    let refusal = w
        .audit()
        .into_iter()
        .rev()
        .find(|a| a["action"] == "identity-exchange-refused")
        .unwrap();
    let detail = refusal["detail"].as_str().unwrap();
    assert!(
        detail.contains("binding main:") && detail.contains("binding any-branch:"),
        "{detail}"
    );
    assert!(
        detail.contains("repo:org/app:ref:refs/heads/*"),
        "the audit has the whole reason: {detail}"
    );

    // Removing a binding revokes what its exchanges minted, at once.
    let (_, v) = exchange(&w.rt, &w.api, &branch, None);
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(reads(&w.rt, &w.api, &access), ["OPENAI_API_KEY"]);
    let out = identity(&w.s, &w.server, &["remove", "any-branch"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (status, _) = w.rt.block_on(w.api.workload(&access, ""));
    assert_eq!(status, 401, "the removed binding's token still reads");
    let (status, v) = exchange(&w.rt, &w.api, &branch, None);
    assert_eq!(status, 400, "{v}");
    let out = identity(&w.s, &w.server, &["remove", "any-branch"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

#[test]
fn key_rotation_is_followed_and_a_flood_of_unknown_keys_costs_one_fetch() {
    let Some(w) = world(
        "key_rotation_is_followed_and_a_flood_of_unknown_keys_costs_one_fetch",
        &["--jwks-refetch-interval", "3s"],
    ) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let first = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "a")}));
    assert_eq!(exchange(&w.rt, &w.api, &first, None).0, 200);
    let fetched_at = Instant::now();
    let before = w.issuer.jwks_fetches();
    // The issuer rotates to an EdDSA key: tokens of the new kid are refused until the refetch
    // interval since the last fetch has passed, then followed.
    w.issuer
        .post("/rotate", json!({"alg": "EdDSA", "kid": "ed-2"}));
    let rotated = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "b")}));
    let flood_started = Instant::now();
    let mut refused = 0;
    for i in 0..40 {
        let t = w
            .issuer
            .mint(json!({"claims": k8s("ws-abc", "default", "c"), "kid": "ed-2"}));
        let _ = i;
        if exchange(&w.rt, &w.api, &t, None).0 == 400 {
            refused += 1;
        }
        if fetched_at.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    assert!(
        refused > 0,
        "the unknown kid was accepted before any refetch"
    );
    assert!(
        w.issuer.jwks_fetches() - before <= 1,
        "{} fetches for {refused} tokens of an unknown kid within {:?}",
        w.issuer.jwks_fetches() - before,
        flood_started.elapsed()
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(fetched_at.elapsed()) + Duration::from_millis(300),
    );
    let (status, v) = exchange(&w.rt, &w.api, &rotated, None);
    assert_eq!(
        status, 200,
        "the rotated key is followed after the interval: {v}"
    );
    // A key the issuer does not publish, after the interval: fetched again once, still unknown,
    // refused.
    w.issuer.post(
        "/rotate",
        json!({"alg": "ES256", "kid": "unpublished", "publish": false}),
    );
    std::thread::sleep(Duration::from_millis(3300));
    let before = w.issuer.jwks_fetches();
    let t = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "e")}));
    let (status, v) = exchange(&w.rt, &w.api, &t, None);
    assert_eq!(status, 400, "{v}");
    // The caller gets the answer of every refusal before a signature verifies; the audit says
    // which key was missing.
    assert_eq!(v["error_description"], UNADMITTED, "{v}");
    assert!(
        w.audit().iter().any(|a| a["detail"]
            .as_str()
            .unwrap()
            .contains("publishes no key \"unpublished\"")),
        "the audit names the key"
    );
    assert_eq!(
        w.issuer.jwks_fetches() - before,
        1,
        "the unknown key was looked for again"
    );
    // A key still published keeps working after the rotation.
    let old = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "d"), "kid": "k1"}));
    assert_eq!(exchange(&w.rt, &w.api, &old, None).0, 200);
}

/// With `--no-admin-impersonation` an admin binds their own secrets only.
#[test]
fn without_impersonation_an_admin_binds_only_their_own_secrets() {
    let Some(w) = world(
        "without_impersonation_an_admin_binds_only_their_own_secrets",
        &["--no-admin-impersonation"],
    ) else {
        return;
    };
    let out = add(
        &w.s,
        &w.server,
        "as-alice",
        &w.issuer.url,
        K8S_AUD,
        "*",
        &["--user", "alice", "-s", "HF_TOKEN"],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("--no-admin-impersonation"),
        "{}",
        out.stderr
    );
    // A user who is no admin may not bind at all, not even their own secrets.
    let mut cmd = w.s.cmd(&[
        "identity",
        "--url",
        &w.server.url,
        "add",
        "mine",
        "--issuer",
        &w.issuer.url,
        "--audience",
        K8S_AUD,
        "--subject",
        "*",
        "--user",
        "alice",
        "-s",
        "HF_TOKEN",
    ]);
    cmd.env("SECRETFS_TOKEN", &w.alice);
    let out = crate::support::run_with(cmd, b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("admin"), "{}", out.stderr);
}

/// A binding acts with its creator's authority as it stands at each exchange: the server
/// restarted with `--no-admin-impersonation`, an admin's binding of another user's secrets stops.
#[test]
fn a_binding_acts_with_its_creators_authority_as_it_stands() {
    let Some(mut w) = world(
        "a_binding_acts_with_its_creators_authority_as_it_stands",
        &[],
    ) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let token = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "a")}));
    assert_eq!(exchange(&w.rt, &w.api, &token, None).0, 200);
    w.server.kill(nix::sys::signal::Signal::SIGTERM);
    w.server.restart_with(&w.s, &["--no-admin-impersonation"]);
    let (status, v) = exchange(&w.rt, &w.api, &token, None);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("cannot be used now"),
        "{v}"
    );
    let refusal = w
        .audit()
        .into_iter()
        .rev()
        .find(|a| a["action"] == "identity-exchange-refused")
        .unwrap();
    assert!(
        refusal["detail"]
            .as_str()
            .unwrap()
            .contains("--no-admin-impersonation"),
        "{refusal}"
    );
}

#[test]
fn an_unreachable_issuer_fails_closed_with_a_clear_error() {
    let Some(mut w) = world(
        "an_unreachable_issuer_fails_closed_with_a_clear_error",
        &["--jwks-refetch-interval", "1s"],
    ) else {
        return;
    };
    // Refused at add time, each with its reason: discovery at an issuer that does not answer,
    // plain HTTP to another host, and a binding that does not narrow the issuer's subjects.
    let issuer = w.issuer.url.clone();
    for (name, iss, subject, says) in [
        (
            "gone",
            "http://127.0.0.1:9/none",
            "job:*",
            "cannot reach http://127.0.0.1:9/none/.well-known/openid-configuration",
        ),
        (
            "plain",
            "http://issuer.example.com",
            "job:*",
            "must be an https:// URL",
        ),
        (
            "everyone",
            issuer.as_str(),
            "*",
            "admits every token of the issuer",
        ),
    ] {
        let rest = ["--user", "alice", "-s", "HF_TOKEN"];
        let out = add(&w.s, &w.server, name, iss, "a", subject, &rest);
        assert_ne!(out.code, 0, "{name}");
        assert!(out.stderr.contains(says), "{name}: {}", out.stderr);
    }
    // Bound while reachable, to an issuer whose keys may not be kept (no-store: kept for the
    // refetch interval, 1 s, from the fetch at `identity add`); the issuer goes away; once its
    // keys have expired they cannot be had: 503, said so, and audited.
    let python = tools_python("", "jwt").unwrap();
    w.issuer = Issuer::start_caching(&w.s, &python, "", 0);
    w.bind_lepton("lepton", &[]);
    let token = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "a")}));
    // A second issuer whose keys may not be kept (no-store): they are kept for the refetch
    // interval (1 s here), used while fresh, then the issuer's absence fails closed.
    let mut brief = Issuer::start_caching(&w.s, &python, "/brief", 0);
    let out = add(
        &w.s,
        &w.server,
        "brief",
        &brief.url,
        "secretfs",
        "job:*",
        &["--user", "alice", "-s", "HF_TOKEN"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job =
        |n: u32| brief.mint(json!({"claims": {"sub": format!("job:{n}"), "aud": "secretfs"}}));
    let (first, second, third) = (job(1), job(2), job(3));
    assert_eq!(exchange(&w.rt, &w.api, &first, None).0, 200);
    brief
        .child
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, FS_LIMIT);
    let fetched = Instant::now();
    let (status, v) = exchange(&w.rt, &w.api, &second, None);
    if fetched.elapsed() < Duration::from_millis(900) {
        assert_eq!(status, 200, "keys still fresh: {v}");
    }
    std::thread::sleep(Duration::from_millis(1300));
    let (status, v) = exchange(&w.rt, &w.api, &third, None);
    assert_eq!(status, 503, "expired keys of an unreachable issuer: {v}");
    let mut issuer = w.issuer;
    issuer
        .child
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, FS_LIMIT);
    let (status, v) = exchange(&w.rt, &w.api, &token, None);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"], "temporarily_unavailable");
    let why = v["error_description"].as_str().unwrap();
    assert!(why.contains("cannot get the issuer's keys now"), "{v}");
    assert!(
        !why.contains("127.0.0.1"),
        "the caller is not told where the keys live: {why}"
    );
    let log = w.server.log();
    assert!(
        log.contains("cannot fetch the issuer's keys"),
        "the log says why: {log}"
    );
}

/// The mount and the launcher with `--identity-token-file`: no workload token handed over; the
/// file re-read before the exchanged token expires; a removed binding stops the values within a
/// second.
#[test]
fn mounts_and_runs_exchange_the_platform_token_and_follow_its_rewrites() {
    let test = "mounts_and_runs_exchange_the_platform_token_and_follow_its_rewrites";
    if !fuse_available(test) {
        return;
    }
    let Some(w) = world(test, &[]) else {
        return;
    };
    // Workload tokens of 4 s: the client exchanges again after two thirds of that.
    w.bind_lepton("lepton", &["--ttl", "4s"]);
    let token_file = w.s.path().join("sa-token");
    // Each platform token lives 8 s: a client that kept the first file's token would be refused
    // from 8 s on.
    let write_token = |pod: &str| {
        let t = w
            .issuer
            .mint(json!({"claims": k8s("ws-abc", "default", pod), "ttl": 8}));
        // kubelet's way: a new file renamed over the old.
        let tmp = w.s.path().join("sa-token.tmp");
        std::fs::write(&tmp, t).unwrap();
        std::fs::rename(&tmp, &token_file).unwrap();
    };
    write_token("pod-0");

    // The launcher: the identity variable is its own, stripped from the workload.
    let report = w.s.path().join("env.json");
    let mut cmd = w.s.cmd(&[
        "run",
        "--url",
        &w.server.url,
        "-s",
        "HF_TOKEN",
        "--",
        crate::support::python(),
        "-c",
        "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))",
        report.to_str().unwrap(),
    ]);
    cmd.env("SECRETFS_IDENTITY_TOKEN_FILE", &token_file);
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(env["HF_TOKEN"], "hf_identity_value");
    assert!(env.get("SECRETFS_IDENTITY_TOKEN_FILE").is_none(), "{env}");
    // Fail closed: a secret outside the binding, or a token the binding does not admit.
    let mut cmd = w.s.cmd(&[
        "run",
        "--url",
        &w.server.url,
        "--identity-token-file",
        token_file.to_str().unwrap(),
        "-s",
        "NOT_BOUND",
        "--",
        "true",
    ]);
    cmd.env_remove("SECRETFS_IDENTITY_TOKEN_FILE");
    let out = crate::support::run_with(cmd, b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("NOT_BOUND"), "{}", out.stderr);

    // The mount.
    let mnt = w.s.path().join("mnt");
    let url = w.server.url.clone();
    let mut d = Daemon::start_with(
        &w.s,
        &mnt,
        &[
            "--identity-token-file",
            token_file.to_str().unwrap(),
            "--refresh",
            "1s",
        ],
        |c| {
            c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
        },
    );
    assert_eq!(
        std::fs::read(mnt.join("HF_TOKEN")).unwrap(),
        b"hf_identity_value"
    );
    assert!(!mnt.join("NOT_BOUND").exists());
    // Past three lives of the first workload token: exchanged again, from rewritten files.
    for pod in ["pod-1", "pod-2", "pod-3"] {
        write_token(pod);
        std::thread::sleep(Duration::from_secs(4));
    }
    let (status, _) = w.rt.block_on(w.api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/HF_TOKEN",
        &w.alice,
        Some(json!({"value": "hf_rotated"})),
    ));
    assert_eq!(status, 200);
    assert!(
        eventually(5, || std::fs::read(mnt.join("HF_TOKEN")).ok().as_deref()
            == Some(b"hf_rotated")),
        "the mount stopped following after the first token's expiry: {}",
        d.log()
    );
    let exchanges = w
        .audit()
        .iter()
        .filter(|a| a["action"] == "identity-exchange")
        .filter(|a| {
            a["detail"]
                .as_str()
                .unwrap()
                .contains("sub \"system:serviceaccount:ws-abc:default\"")
        })
        .count();
    assert!(exchanges >= 4, "the mount exchanged {exchanges} times");

    // A granted secret its user may no longer use (bob makes his public one private): gone from
    // the mount within a second, and logged.
    assert!(mnt.join("SHARED").exists());
    let (status, _) = w.rt.block_on(w.api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/SHARED",
        &w.bob,
        Some(json!({"visibility": "private"})),
    ));
    assert_eq!(status, 200);
    let hidden = Instant::now();
    assert!(
        eventually(5, || !mnt.join("SHARED").exists()),
        "{}",
        d.log()
    );
    assert!(
        hidden.elapsed() < Duration::from_secs(2),
        "{:?}",
        hidden.elapsed()
    );
    assert!(
        d.log().contains("secret removed secret=SHARED"),
        "{}",
        d.log()
    );

    // The binding removed: no new values within a second, and the log says why.
    write_token("pod-4");
    let out = identity(&w.s, &w.server, &["remove", "lepton"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let removed = Instant::now();
    w.rt.block_on(w.api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/HF_TOKEN",
        &w.alice,
        Some(json!({"value": "hf_after_removal"})),
    ));
    assert!(
        eventually(5, || d.log().contains(UNADMITTED)),
        "{}",
        d.log()
    );
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "{:?}",
        removed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(
        std::fs::read(mnt.join("HF_TOKEN")).ok().as_deref(),
        Some(&b"hf_after_removal"[..]),
        "a value written after the binding's removal reached the mount"
    );
    let log = d.log();
    let presented = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !log.contains(presented.rsplit('.').next().unwrap()),
        "the token in the mount's log"
    );
    d.stop(nix::sys::signal::Signal::SIGTERM);
}

/// A supervised run (`--watch`) with an identity: its follower exchanges on its own, a rotation
/// restarts the workload with the new value, and once the binding is removed no new value
/// reaches it and the supervisor says why.
#[test]
fn a_supervised_run_follows_through_an_identity_until_its_binding_goes() {
    let test = "a_supervised_run_follows_through_an_identity_until_its_binding_goes";
    let Some(w) = world(test, &[]) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let token_file = w.s.path().join("sa-token");
    let t = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-0"), "ttl": 600}));
    std::fs::write(&token_file, t).unwrap();
    let log = w.s.path().join("starts.log");
    let err = w.s.path().join("run.err");
    let script = format!(
        "echo \"$$ $HF_TOKEN\" >> {}; while true; do sleep 0.05; done",
        log.display()
    );
    let mut run = w.s.cmd(&[
        "run",
        "--watch",
        "--debounce",
        "0s",
        "--url",
        &w.server.url,
        "--identity-token-file",
        token_file.to_str().unwrap(),
        "-s",
        "HF_TOKEN",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut child = Running::spawn(
        "secretfs run --watch",
        run.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    let starts = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').map_or("", |(_, v)| v).to_owned())
            .collect()
    };
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(eventually(10, || starts().len() == 1), "{}", stderr());
    assert_eq!(starts()[0], "hf_identity_value");
    let update = |value: &str| {
        let (status, v) = w.rt.block_on(w.api.call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/HF_TOKEN",
            &w.alice,
            Some(json!({ "value": value })),
        ));
        assert_eq!(status, 200, "{v}");
    };
    update("hf_second");
    assert!(eventually(5, || starts().len() == 2), "{}", stderr());
    assert_eq!(starts()[1], "hf_second");

    let out = identity(&w.s, &w.server, &["remove", "lepton"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let removed = Instant::now();
    update("hf_after_removal");
    assert!(
        eventually(5, || stderr().contains(UNADMITTED)),
        "{}",
        stderr()
    );
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "{:?}",
        removed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(
        starts().len(),
        2,
        "a value after the removal restarted it: {}",
        stderr()
    );
    // Its follower asks every second; refused once, it does not ask again for 5 s (each
    // refusal is an audit record): one record, not one a second.
    let refusals = w
        .audit()
        .iter()
        .filter(|a| a["action"] == "identity-exchange-refused")
        .count();
    assert_eq!(refusals, 1, "{}", stderr());
    child.signal_and_wait(nix::sys::signal::Signal::SIGTERM, FS_LIMIT);
    let presented = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !stderr().contains(presented.rsplit('.').next().unwrap()),
        "the token in the log"
    );
}
