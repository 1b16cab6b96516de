//! Master key rotation and backups: through the CLI on a local store, through a server that keeps
//! serving, against processes holding a stale key, and restoring a backup on a fresh server.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use secretfs::secret::{SecretName, SecretValue, ValueLimit};
use secretfs::service::{
    Caller, DEFAULT_WORKSPACE, NewSecret, Options, SecretUpdate, Service, ServiceError,
};
use secretfs::store::local::{self, LocalPaths, OpenMode};
use secretfs::store::postgres::PgStore;
use secretfs::store::sqlite::SqliteStore;
use secretfs::store::{Store, StoreError, Vault};
use serde_json::{Value, json};

use crate::support::{Out, Scratch, Server, add_user, assert_no_canary, run_with};

fn name(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

fn new(n: &str, v: &str) -> NewSecret {
    NewSecret {
        name: name(n),
        kind: Default::default(),
        visibility: Default::default(),
        tags: Vec::new(),
        value: SecretValue::from_slice(v.as_bytes(), ValueLimit::default()).unwrap(),
    }
}

fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The values of `names` as a workload launched from the local store sees them.
fn launched_values(s: &Scratch, names: &[&str]) -> Value {
    let report = s.path().join("values.json");
    let _ = std::fs::remove_file(&report);
    let store = s.store();
    let mut args = vec!["run", "--store", store.to_str().unwrap()];
    for n in names {
        args.extend(["-s", n]);
    }
    let mut cmd = s.cmd(&args);
    cmd.arg("--")
        .args([crate::support::python(), "-c"])
        .arg(
            "import json, os, sys; json.dump({n: os.environ[n] for n in sys.argv[1:]}, \
             open('values.json', 'w'))",
        )
        .args(names);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

#[test]
fn local_rotation_reseals_every_value_and_retires_the_old_key() {
    let s = Scratch::new();
    for (n, v) in [("A", "alpha"), ("B", "bravo"), ("C", "charlie")] {
        s.ok(&["secret", "create", n], v.as_bytes());
    }
    let old_key = key_lines(&s.key());
    assert_eq!(old_key.len(), 1);
    let old_copy = s.path().join("old.key");
    std::fs::copy(s.key(), &old_copy).unwrap();

    let out = s.run(&["key", "rotate"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("3 values re-sealed"), "{}", out.stderr);

    // One key, a new one, still readable only by its owner.
    let new_key = key_lines(&s.key());
    assert_eq!(
        new_key.len(),
        1,
        "the old key is dropped once everything moved"
    );
    assert_ne!(new_key, old_key);
    assert_eq!(new_key[0].len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(s.key()).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let values = launched_values(&s, &["A", "B", "C"]);
    assert_eq!(values, json!({"A": "alpha", "B": "bravo", "C": "charlie"}));
    // Versions do not move: the values did not change.
    let list: Value = serde_json::from_str(&s.ok(&["secret", "list", "-o", "json"], b"")).unwrap();
    assert!(list.as_array().unwrap().iter().all(|m| m["version"] == 1));

    // A copy of the old key file no longer opens the store.
    let out = s.run(
        &["--key-file", old_copy.to_str().unwrap(), "secret", "list"],
        b"",
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("does not open store"), "{}", out.stderr);

    // New writes after the rotation, and a second rotation, keep working.
    s.ok(&["secret", "update", "A"], b"alpha-2");
    s.ok(&["key", "rotate"], b"");
    assert_eq!(
        launched_values(&s, &["A", "C"]),
        json!({"A": "alpha-2", "C": "charlie"})
    );
}

/// A rotation killed with `kill -9` after it wrote the new key beside the old one (the key file
/// holds both; the store's values are still sealed under the old key): no value is lost, and the
/// next start finishes the rotation, so the old key leaves the key file and opens nothing
/// current again. Audited.
#[test]
fn an_unfinished_rotation_is_finished_at_the_next_start() {
    let s = Scratch::new();
    for (n, v) in [("A", "alpha"), ("B", "bravo")] {
        s.ok(&["secret", "create", n], v.as_bytes());
    }
    let old = key_lines(&s.key());
    let old_copy = s.path().join("old.key");
    std::fs::copy(s.key(), &old_copy).unwrap();
    // What `key rotate` writes first: the new key, then the old one.
    let new_key: String = {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).unwrap();
        b.iter().map(|x| format!("{x:02x}")).collect()
    };
    std::fs::write(s.key(), format!("{new_key}\n{}\n", old[0])).unwrap();

    // The next start (any command that opens the store) finishes it.
    let out = s.run(&["secret", "list"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("finished a key rotation that had not completed"),
        "{}",
        out.stderr
    );
    assert_eq!(key_lines(&s.key()), [new_key], "only the new key is left");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(s.key()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        launched_values(&s, &["A", "B"]),
        json!({"A": "alpha", "B": "bravo"})
    );
    let out = s.run(
        &["--key-file", old_copy.to_str().unwrap(), "secret", "list"],
        b"",
    );
    assert_ne!(out.code, 0, "the old key still opens the store");
    let audit = s.local_audit();
    assert!(
        audit.iter().any(|a| a.actor == "secretfs"
            && a.detail
                .contains("an unfinished key rotation completed at start")),
        "{:?}",
        audit.iter().map(|a| &a.detail).collect::<Vec<_>>()
    );
    // Nothing left to do at the start after.
    let out = s.run(&["secret", "list"], b"");
    assert!(!out.stderr.contains("key rotation"), "{}", out.stderr);
}

/// Another process's vault (a second replica, a CLI) rotates the key under `stale`: writes of
/// the stale vault re-read the key file and land under the new key; a vault that cannot re-read
/// it is refused, and nothing it sealed lands.
async fn stale_writers(
    open: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>>>>,
    key: &Path,
) {
    let bind = |store: Arc<dyn Store>| local::bind_key(store, key, "test store", true);
    let service = |vault: Vault, key: Option<&Path>| {
        Service::new(vault, Options::default(), key.map(Path::to_owned))
    };
    let stale = service(bind(open().await).await.unwrap(), None);
    let caller: Caller = stale.local_caller(true).await.unwrap();
    stale
        .create_secrets(&caller, DEFAULT_WORKSPACE, vec![new("BEFORE", "before")])
        .await
        .unwrap();
    // A vault with the old key and no key file to follow (a process given the key some other
    // way).
    let old_key = secretfs::keyfile::load(key).unwrap();
    let pinned = service(
        Vault::open(open().await, &old_key, ValueLimit::default())
            .await
            .unwrap(),
        None,
    );

    let rotator = service(bind(open().await).await.unwrap(), Some(key));
    let moved = rotator.rotate_key(&caller).await.unwrap();
    assert_eq!(moved, 1);
    assert_eq!(key_lines(key).len(), 1);

    // The stale vault's write is refused by the store, it reloads, and the value it wrote is
    // readable with the key file as it now is.
    stale
        .create_secrets(&caller, DEFAULT_WORKSPACE, vec![new("AFTER", "after")])
        .await
        .unwrap();
    stale
        .update_secret(
            &caller,
            DEFAULT_WORKSPACE,
            &name("BEFORE"),
            SecretUpdate {
                value: Some(SecretValue::from_slice(b"before-2", ValueLimit::default()).unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let fresh = service(bind(open().await).await.unwrap(), None);
    let read = fresh
        .local_read(&caller, DEFAULT_WORKSPACE, &[name("BEFORE"), name("AFTER")])
        .await
        .unwrap();
    let values: Vec<Vec<u8>> = read
        .into_iter()
        .map(|r| r.unwrap().1.expose_secret().to_vec())
        .collect();
    assert_eq!(values, vec![b"before-2".to_vec(), b"after".to_vec()]);

    // The pinned vault cannot follow: its write fails closed and leaves nothing behind.
    let refused = pinned
        .create_secrets(&caller, DEFAULT_WORKSPACE, vec![new("PINNED", "pinned")])
        .await;
    assert!(
        matches!(refused, Err(ServiceError::Store(StoreError::KeyRotated))),
        "{refused:?}"
    );
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("rotated") && err.contains("key file"), "{err}");
    assert!(matches!(
        fresh
            .secret(&caller, DEFAULT_WORKSPACE, &name("PINNED"))
            .await,
        Err(ServiceError::NotFound(_))
    ));

    // A stale reader picks up the new key too (a server reading its cached rows).
    let (_, value) = stale
        .local_read(&caller, DEFAULT_WORKSPACE, &[name("AFTER")])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(value.expose_secret(), b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_processes_with_a_stale_key_follow_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let key = dir.path().join("s.db.key");
    SqliteStore::open(&path, true).await.unwrap();
    let open = move || {
        let path = path.clone();
        Box::pin(async move {
            Arc::new(SqliteStore::open(&path, false).await.unwrap()) as Arc<dyn Store>
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>>>>
    };
    stale_writers(open, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_with_a_stale_key_follow_a_rotation() {
    let Some(admin) = crate::support::postgres_url("postgres_replicas_with_a_stale_key") else {
        return;
    };
    let db = crate::support::TempDatabase::new(&admin);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pg.key");
    let url = db.url.clone();
    let open = move || {
        let url = url.clone();
        Box::pin(async move { Arc::new(PgStore::open(&url, 2).await.unwrap()) as Arc<dyn Store> })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>>>>
    };
    stale_writers(open, &key).await;
}

/// `secretfs ARGS` against `server` as its admin (no local store in the environment).
fn remote(s: &Scratch, server: &Server, args: &[&str]) -> Out {
    let token = s.path().join("admin.token");
    std::fs::write(&token, &server.admin_token).unwrap();
    let mut cmd = Command::new(crate::support::bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", s.path())
        .env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN_FILE", &token)
        .current_dir(s.path());
    run_with(cmd, b"")
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method.parse().unwrap(), url)
        .header("Authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Creates `count` secrets through the API and mints a workload token for them.
async fn seed(http: &reqwest::Client, server: &Server, values: &[(String, String)]) -> String {
    for (n, v) in values {
        let (status, body) = call(
            http,
            &format!("{}/api/v1/workspaces/default/secrets", server.url),
            "POST",
            &server.admin_token,
            Some(json!({ "name": n, "value": v })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
    let (status, body) = call(
        http,
        &format!("{}/api/v1/workspaces/default/tokens", server.url),
        "POST",
        &server.admin_token,
        Some(json!({ "secrets": names })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn read_all(http: &reqwest::Client, server: &Server, token: &str) -> (u16, Value) {
    call(
        http,
        &format!("{}/api/v1/workload/secrets", server.url),
        "GET",
        token,
        None,
    )
    .await
}

fn values_of(read: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = read["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_rotates_its_key_while_serving_reads_and_writes() {
    secretfs::client::install_crypto_provider();
    let s = Scratch::new();
    let mut server = Server::start(&s);
    let http = reqwest::Client::new();
    let mut values: Vec<(String, String)> = (0..40)
        .map(|i| (format!("S{i:02}"), format!("value-{i}")))
        .collect();
    values.sort();
    let token = seed(&http, &server, &values).await;
    let key = s.path().join("server.db.key");
    assert_eq!(key_lines(&key).len(), 1);

    // Readers check every answer; a writer keeps replacing one value.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (http, url, token, stop, reads, expected) = (
            http.clone(),
            server.url.clone(),
            token.clone(),
            stop.clone(),
            reads.clone(),
            values.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = call(
                    &http,
                    &format!("{url}/api/v1/workload/secrets"),
                    "GET",
                    &token,
                    None,
                )
                .await;
                assert_eq!(status, 200, "a read failed during the rotation: {body}");
                let got = values_of(&body);
                assert_eq!(got.len(), expected.len());
                for (g, e) in got.iter().zip(&expected) {
                    assert_eq!(g.0, e.0);
                    if g.0 != "S00" {
                        assert_eq!(g.1, e.1, "{} changed", g.0);
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let writes = Arc::new(AtomicUsize::new(0));
    {
        let (http, url, admin, stop, writes, log) = (
            http.clone(),
            server.url.clone(),
            server.admin_token.clone(),
            stop.clone(),
            writes.clone(),
            server.log_path.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = writes.load(Ordering::Relaxed) + 1;
                let (status, body) = call(
                    &http,
                    &format!("{url}/api/v1/workspaces/default/secrets/S00"),
                    "PATCH",
                    &admin,
                    Some(json!({ "value": format!("written-{n}") })),
                )
                .await;
                assert_eq!(
                    status,
                    200,
                    "a write failed during the rotation: {body}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                writes.store(n, Ordering::Relaxed);
            }
        }));
    }

    let before = key_lines(&key);
    let (s2, server_ref) = (&s, &server);
    let out = tokio::task::block_in_place(|| remote(s2, server_ref, &["key", "rotate"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // S00 may already have been rewritten under the new key by the writer: 39 or 40 moved.
    assert!(
        out.stderr.contains("40 values re-sealed") || out.stderr.contains("39 values re-sealed"),
        "{}",
        out.stderr
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 0 && writes.load(Ordering::Relaxed) > 0);

    let after = key_lines(&key);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);

    // The rotation is in the audit log, attributed to the admin.
    let (status, audit) = call(
        &http,
        &format!("{}/api/v1/audit?limit=1000000", server.url),
        "GET",
        &server.admin_token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let rekeys: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "rekey")
        .collect();
    assert_eq!(
        rekeys.len(),
        1,
        "{} audit records",
        audit.as_array().unwrap().len()
    );
    assert_eq!(rekeys[0]["actor"], "admin");
    assert!(rekeys[0]["detail"].as_str().unwrap().contains("re-sealed"));

    // Only the new key opens the store: a restarted server serves every value, the last
    // write included.
    server.kill(nix::sys::signal::Signal::SIGTERM);
    server.restart(&s);
    let (status, body) = read_all(&http, &server, &token).await;
    assert_eq!(status, 200, "{body}");
    let got = values_of(&body);
    let last = format!("written-{}", writes.load(Ordering::Relaxed));
    assert_eq!(got[0], ("S00".to_owned(), last));
    assert_eq!(&got[1..], &values[1..]);

    // Rotation is an admin's: a member is refused.
    let member = add_user(&server.url, &server.admin_token, "bob").await;
    let (status, _) = call(
        &http,
        &format!("{}/api/v1/admin/rotate-key", server.url),
        "POST",
        &member,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_on_a_fresh_server_with_the_key_file() {
    secretfs::client::install_crypto_provider();
    let canary = format!("canary-backup-{}", std::process::id());
    let s = Scratch::new();
    let server = Server::start(&s);
    let http = reqwest::Client::new();
    let values = vec![
        ("API_KEY".to_owned(), canary.clone()),
        ("OTHER".to_owned(), "other".to_owned()),
    ];
    let token = seed(&http, &server, &values).await;

    let out = tokio::task::block_in_place(|| remote(&s, &server, &["backup", "copy.db"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let copy = s.path().join("copy.db");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Sealed values only, and no leftover partial file.
    assert_no_canary("the backup", &std::fs::read(&copy).unwrap());
    assert!(!s.path().join("copy.db.partial").exists());
    // An existing file is not overwritten without --force.
    let out = tokio::task::block_in_place(|| remote(&s, &server, &["backup", "copy.db"]));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);

    // A member may not take a backup.
    let member = add_user(&server.url, &server.admin_token, "bob").await;
    let resp = http
        .get(format!("{}/api/v1/admin/backup", server.url))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    drop(server);

    // A fresh server on the backup and the key file serves the same token the same values.
    let restored = Server::start_custom(
        &s,
        &[
            "--database",
            &format!("sqlite://{}", copy.display()),
            "--key-file",
            s.path().join("server.db.key").to_str().unwrap(),
        ],
    );
    let (status, body) = read_all(&http, &restored, &token).await;
    assert_eq!(status, 200, "{body}");
    let mut expected = values.clone();
    expected.sort();
    assert_eq!(values_of(&body), expected);

    // Without the key file, the backup is useless.
    let other_key = s.path().join("wrong.key");
    secretfs::keyfile::create(&other_key).unwrap();
    let mut cmd = Command::new(crate::support::bin());
    cmd.args([
        "--store",
        copy.to_str().unwrap(),
        "--key-file",
        other_key.to_str().unwrap(),
        "secret",
        "list",
    ])
    .env_clear()
    .env("HOME", s.path());
    let out = run_with(cmd, b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("does not open store"), "{}", out.stderr);
}

#[test]
fn a_local_backup_opens_with_the_stores_key_file() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"alpha");
    s.ok(&["backup", "b.db"], b"");
    let b = s.path().join("b.db");
    let paths = LocalPaths {
        store: b.clone(),
        key: s.key(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = rt.block_on(async {
        let service = Service::open_local(&paths, OpenMode::Existing, 1)
            .await
            .unwrap();
        let caller = service.local_caller(false).await.unwrap();
        service
            .local_read(&caller, DEFAULT_WORKSPACE, &[name("A")])
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap()
            .1
            .expose_secret()
            .to_vec()
    });
    assert_eq!(read, b"alpha");
    // Without --store, a missing local store is named, not created.
    let out = s.run(&["--store", "nowhere.db", "backup", "c.db"], b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}
