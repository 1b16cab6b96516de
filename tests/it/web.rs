//! The Secrets page: its security headers over plain HTTP, then the whole page driven in
//! headless Chromium (`tests/browser/secrets_page.mjs`), and the workload token it minted used by
//! `secretfs run`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Scratch, Server, add_user, run_with};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// Whether the browser test can run; under `CI=true` a missing piece is a failure.
fn browser_available(test: &str) -> bool {
    let node = Command::new("node").arg("--version").output().is_ok();
    let driver = repo()
        .join("tests/browser/node_modules/playwright-core")
        .exists();
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        chromium()
            .is_none()
            .then_some("chromium (/usr/bin/chromium or $CHROMIUM)"),
        (!driver).then_some("tests/browser/node_modules (npm ci --prefix tests/browser)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: needs {}; scripts/test installs them",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("skipping {why}");
    false
}

fn ssh_public_key(dir: &Path) -> String {
    let key = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@example", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_strict_security_headers() {
    secretfs::client::install_crypto_provider();
    let s = Scratch::new();
    let server = Server::start(&s);
    let http = reqwest::Client::new();

    let page = http.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    // No inline script, no inline style, no inline event handler: all of it is in app.js and
    // app.css, which is what lets the CSP forbid inline code.
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains("src="), "inline script: {tag}");
    }
    assert!(!html.contains("style="), "inline style in the page");
    assert!(!html.contains(" onclick=") && !html.contains(" onsubmit="));
    // Every input has a label.
    for (i, _) in html.match_indices("<input id=\"") {
        let id = html[i + 11..].split('"').next().unwrap();
        assert!(
            html.contains(&format!("for=\"{id}\""))
                || html[..i]
                    .rfind("<label")
                    .is_some_and(|l| !html[l..i].contains("</label>")),
            "input {id} has no label"
        );
    }

    for (asset, ctype) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let r = http
            .get(format!("{}/{asset}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ctype)
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }

    // API answers are data, never a document, and are not cached.
    let r = http
        .get(format!("{}/api/v1/templates", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    let templates: Value = r.json().await.unwrap();
    let kinds: Vec<&str> = templates
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "custom",
            "ssh-public-key",
            "github",
            "huggingface",
            "openai",
            "datadog",
            "ngc"
        ]
    );
    assert_eq!(templates[3]["name"], "HF_TOKEN");

    // State changes need the bearer token: a cookie is not a credential here.
    let r = http
        .post(format!("{}/api/v1/workspaces/default/secrets", server.url))
        .header("Cookie", format!("token={}", server.admin_token))
        .header("Origin", "https://evil.example")
        .json(&json!({ "name": "X", "value": "y" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Field-level errors, which the page shows next to the field.
    let create = |body: Value| {
        let req = http
            .post(format!("{}/api/v1/workspaces/default/secrets", server.url))
            .bearer_auth(&server.admin_token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = create(json!({ "name": "bad name", "value": "y" })).await;
    assert_eq!(status, 422);
    assert_eq!(body["field"], "name");
    let (status, body) =
        create(json!({ "name": "K", "kind": "ssh-public-key", "value": "nope" })).await;
    assert_eq!(status, 422);
    assert_eq!(body["field"], "value");
    // A token that does not look like the provider's is stored with a warning.
    let (status, body) =
        create(json!({ "name": "HF_TOKEN", "kind": "huggingface", "value": "nothf" })).await;
    assert_eq!(status, 201);
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Hugging Face token format"),
        "{body}"
    );
}

/// A JWKS of one RSA key for the page's identity binding (the page pastes it; nothing signs
/// with it here).
const PAGE_JWKS: &str = r#"{"keys": [{"kty": "RSA", "kid": "page", "alg": "RS256", "e": "AQAB", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_page_in_headless_chromium() {
    if !browser_available("the_secrets_page_in_headless_chromium") {
        return;
    }
    secretfs::client::install_crypto_provider();
    let s = Scratch::new();
    let server = Server::start(&s);
    let alice = add_user(&server.url, &server.admin_token, "alice").await;
    let bob = add_user(&server.url, &server.admin_token, "bob").await;
    let canary = crate::support::unique_canary("webpage");
    let ssh_key = ssh_public_key(s.path());
    let out = s.path().join("browser");
    std::fs::create_dir_all(&out).unwrap();
    // A coalesced record, as a server writes one after a token read a secret 42 times in an
    // interval: the page shows its count and its first and last times.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let planted = Command::new("sqlite3")
        .args([
            "-cmd",
            ".timeout 10000",
            server.db.to_str().unwrap(),
            &format!(
                "INSERT INTO audit (at, first_at, count, workspace, actor, actor_id, action, \
                 target_kind, target, target_id, version, detail, address) VALUES ({now}, {}, 42, \
                 'default', 'workload:planted', 'u', 'read', 'secret', 'PLANTED', 's', 3, \
                 'user=alice', '127.0.0.1')",
                now - 50_000_000_000
            ),
        ])
        .output()
        .unwrap();
    assert!(planted.status.success(), "{planted:?}");

    let mut cmd = Command::new("node");
    cmd.arg(repo().join("tests/browser/secrets_page.mjs"))
        .current_dir(repo().join("tests/browser"))
        .env("SFS_URL", &server.url)
        .env("ALICE_TOKEN", &alice)
        .env("BOB_TOKEN", &bob)
        .env("ADMIN_TOKEN", &server.admin_token)
        .env("JWKS", PAGE_JWKS)
        .env("CANARY", &canary)
        .env("SSH_KEY", &ssh_key)
        .env("OUT", &out)
        .env("CHROMIUM", chromium().unwrap())
        // Chromium's own caches and crash reports go to the scratch directory.
        .env("HOME", s.path())
        .env("XDG_CONFIG_HOME", s.path().join("xdg-config"))
        .env("XDG_CACHE_HOME", s.path().join("xdg-cache"));
    match std::env::var_os("SECRETFS_SCREENSHOTS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            cmd.env("SCREENSHOTS", dir);
        }
        None => {
            cmd.env_remove("SCREENSHOTS");
        }
    }
    let result = tokio::task::block_in_place(|| run_with(cmd, b""));
    assert_eq!(
        result.code,
        0,
        "the browser test failed:\n{}\n{}\n--- server log ---\n{}",
        result.stdout,
        result.stderr,
        server.log()
    );
    assert!(result.stdout.contains("ok:"), "{}", result.stdout);
    // The binding the page added is the server's, as the page showed it; the one it removed is
    // gone.
    let listed = crate::support::Api::new(&server)
        .call(
            "GET",
            "/api/v1/identity/bindings",
            &server.admin_token,
            None,
        )
        .await
        .1;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lepton-jobs"], "{listed}");
    assert_eq!(listed[0]["subject"], "system:serviceaccount:ws-abc:default");
    assert_eq!(
        listed[0]["claims"],
        serde_json::json!([
            "kubernetes.io.namespace=ws-abc",
            "kubernetes.io.pod.name=train-*"
        ])
    );
    assert_eq!(listed[0]["secrets"], serde_json::json!(["HF_TOKEN"]));
    assert_eq!(listed[0]["user"], "admin");
    assert_eq!(listed[0]["keys"], "inline (1 key)");
    assert!(!result.stdout.contains(&canary) && !result.stderr.contains(&canary));
    assert!(!server.log().contains(&canary));

    // The token the page minted (and showed once) works with the command line it showed.
    let token = out.join("job.token");
    let report = s.path().join("values.json");
    let mut run = Command::new(crate::support::bin());
    run.args(["run", "--url", &server.url, "--token-file"])
        .arg(&token)
        .args(["-s", "DB_PASSWORD", "-s", "HF_TOKEN", "--"])
        .args([crate::support::python(), "-c"])
        .arg(
            "import json, os; json.dump({k: os.environ[k] for k in ('DB_PASSWORD', 'HF_TOKEN')}, \
             open('values.json', 'w'))",
        )
        .current_dir(s.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", s.path());
    let ran = run_with(run, b"");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let values: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(values["DB_PASSWORD"], format!("{canary}-2"));
    assert_eq!(
        values["HF_TOKEN"],
        "hf_abcdefghijklmnopqrstuvwxyz0123456789"
    );

    // And the job spec snippet it showed runs as it is.
    std::fs::copy(&token, s.path().join("job.token")).unwrap();
    let spec = std::fs::read_to_string(out.join("job.toml")).unwrap();
    std::fs::write(s.path().join("job.toml"), &spec).unwrap();
    let _ = std::fs::remove_file(&report);
    let mut run = Command::new(crate::support::bin());
    run.args(["run", "--spec", "job.toml", "--"])
        .args([crate::support::python(), "-c"])
        .arg("import json, os; json.dump({'n': len(os.environ['DB_PASSWORD'])}, open('values.json', 'w'))")
        .current_dir(s.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", s.path());
    let ran = run_with(run, b"");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let values: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(values["n"], canary.len() + 2);
}
