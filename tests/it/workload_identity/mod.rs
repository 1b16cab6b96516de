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

pub(crate) const K8S_AUD: &str = "https://kubernetes.default.svc";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The answer of every refusal before a token's signature verifies.
const UNADMITTED: &str = "no identity binding admits the token";

/// A running issuer; stopped when dropped.
pub(crate) struct Issuer {
    child: Running,
    pub(crate) url: String,
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
    pub(crate) fn mint(&self, body: Value) -> String {
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
pub(crate) fn identity(s: &Scratch, server: &Server, args: &[&str]) -> crate::support::Out {
    let mut all = vec!["identity", "--url", &server.url];
    all.extend_from_slice(args);
    let mut cmd = s.cmd(&all);
    cmd.env("SECRETFS_TOKEN", &server.admin_token);
    if let Some(ca) = &server.ca {
        cmd.env("SECRETFS_CA_FILE", ca);
    }
    crate::support::run_with(cmd, b"")
}

/// `identity add NAME --issuer ISSUER --audience AUDIENCE --subject SUBJECT REST...`.
pub(crate) fn add(
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
pub(crate) struct World {
    pub(crate) s: Scratch,
    pub(crate) server: Server,
    pub(crate) api: Api,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) issuer: Issuer,
    pub(crate) alice: String,
    pub(crate) bob: String,
    _db: Option<crate::support::TempDatabase>,
}

pub(crate) fn world(test: &str, server_args: &[&str]) -> Option<World> {
    world_on(test, None, |s| Server::start_with(s, server_args))
}

/// The same with the server on TLS, its certificate from a private CA (`server.ca`).
pub(crate) fn world_tls(test: &str, server_args: &[&str]) -> Option<World> {
    world_on(test, None, |s| Server::start_tls(s, server_args))
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

    pub(crate) fn audit(&self) -> Vec<Value> {
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

mod consumers;
mod issuer_keys;
mod refusals;
