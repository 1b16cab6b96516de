//! One canary value through every path, with trace logging; then every place a value must never
//! be is searched for it: output, logs, HTTP bodies (but the workload read), the database files,
//! a PostgreSQL dump, every process's argv, and the temp directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Daemon, NotifySocket, Out, Scratch, Server, TempDatabase, fuse_available, postgres_url,
    run_with,
};

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Watches every process's argv while the test runs.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ArgvWatch {
    fn start(canary: &str) -> ArgvWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, h, c) = (stop.clone(), hits.clone(), canary.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                        && contains(&cmdline, &c)
                    {
                        h.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        ArgvWatch {
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.hits.lock().unwrap().clone()
    }
}

/// Every file under `dir` (not following symlinks, skipping mounts of FUSE), with its bytes.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !crate::support::is_mounted(&path) {
                files_under(&path, out);
            }
        } else if meta.is_file()
            && meta.len() < 16 << 20
            && let Ok(bytes) = std::fs::read(&path)
        {
            out.push((path, bytes));
        }
    }
}

#[test]
fn the_canary_never_leaks_anywhere() {
    let canary = crate::support::unique_canary("leaksuite");
    let argv = ArgvWatch::start(&canary);
    let s = Scratch::new();
    let mut outputs: Vec<(String, Out)> = Vec::new();
    let traced = |mut c: std::process::Command| {
        c.env("RUST_LOG", "trace");
        c
    };

    // The local store: create from stdin and from a file, update, a refused duplicate.
    let local = |args: &[&str]| traced(s.cmd(args));
    outputs.push((
        "create stdin".into(),
        run_with(
            local(&["-vvv", "secret", "create", "LOCAL"]),
            canary.as_bytes(),
        ),
    ));
    let input = s.path().join("value-input");
    std::fs::write(&input, format!("{canary}-file")).unwrap();
    outputs.push((
        "create file".into(),
        run_with(
            local(&[
                "secret",
                "create",
                "LOCAL2",
                "--from-file",
                input.to_str().unwrap(),
            ]),
            b"",
        ),
    ));
    outputs.push((
        "update file".into(),
        run_with(
            local(&[
                "secret",
                "update",
                "LOCAL",
                "--from-file",
                input.to_str().unwrap(),
            ]),
            b"",
        ),
    ));
    std::fs::remove_file(&input).unwrap();
    outputs.push((
        "duplicate".into(),
        run_with(local(&["secret", "create", "LOCAL"]), canary.as_bytes()),
    ));
    outputs.push((
        "value on argv".into(),
        run_with(local(&["secret", "create", "ARGV", &canary]), b""),
    ));

    // The launcher from the store: a run and a dry run.
    let store = s.store();
    outputs.push((
        "launcher dry-run".into(),
        run_with(
            local(&[
                "run",
                "--store",
                store.to_str().unwrap(),
                "-s",
                "LOCAL",
                "--dry-run",
                "-vvv",
                "--",
                "true",
            ]),
            b"",
        ),
    ));
    outputs.push((
        "launcher".into(),
        run_with(
            local(&[
                "run",
                "--store",
                store.to_str().unwrap(),
                "-s",
                "LOCAL",
                "--secret-file",
                "F=LOCAL",
                "-vvv",
                "--",
                "sh",
                "-c",
                "test -n \"$LOCAL\" && cat \"$F\" > /dev/null",
            ]),
            b"",
        ),
    ));

    // The server, at trace level, telling a service manager how it is and serving metrics.
    let notify = NotifySocket::abstract_named(&format!("secretfs-leaks-{}", std::process::id()));
    let server = Server::start_custom_env(
        &s,
        &[
            "--database",
            &format!("sqlite://{}", s.path().join("srv.db").display()),
            "--admin-token-file",
            s.path().join("srv-admin.tok").to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "trace"), ("NOTIFY_SOCKET", &notify.address)],
    );
    let admin = std::fs::read_to_string(s.path().join("srv-admin.tok"))
        .unwrap()
        .trim()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let bodies: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let call = |method: &str, path: &str, token: &str, body: Option<Vec<u8>>| -> (u16, String) {
        let mut req = http
            .request(method.parse().unwrap(), format!("{}{path}", server.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let (status, text) = rt.block_on(async {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        if !path.starts_with("/api/v1/workload/") {
            bodies
                .lock()
                .unwrap()
                .push((format!("{method} {path} {status}"), text.clone()));
        }
        (status, text)
    };
    let (_, alice) = call(
        "POST",
        "/api/v1/users",
        &admin,
        Some(json!({ "name": "alice" }).to_string().into_bytes()),
    );
    let alice: String = serde_json::from_str::<Value>(&alice).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let remote = |args: &[&str], stdin: &[u8]| {
        let mut c = traced(s.cmd(args));
        c.env("SECRETFS_URL", &server.url)
            .env("SECRETFS_TOKEN", &alice)
            .env_remove("SECRETFS_STORE");
        run_with(c, stdin)
    };
    outputs.push((
        "remote create".into(),
        remote(&["-vvv", "secret", "create", "REMOTE"], canary.as_bytes()),
    ));
    outputs.push((
        "remote update".into(),
        remote(
            &["secret", "update", "REMOTE"],
            format!("{canary}-2").as_bytes(),
        ),
    ));
    outputs.push((
        "remote duplicate".into(),
        remote(&["secret", "create", "REMOTE"], canary.as_bytes()),
    ));
    // Native API: a create, a wrong type carrying the canary, malformed JSON carrying it.
    call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(
            json!({ "name": "API", "value": canary })
                .to_string()
                .into_bytes(),
        ),
    );
    call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(
            json!({ "name": "BAD", "value": [canary] })
                .to_string()
                .into_bytes(),
        ),
    );
    call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(format!("{{\"name\": \"X\", \"value\": \"{canary}").into_bytes()),
    );
    call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/API",
        &alice,
        Some(
            json!({ "value": format!("{canary}-3"), "bogus": 1 })
                .to_string()
                .into_bytes(),
        ),
    );
    // Lepton routes.
    call(
        "POST",
        "/api/v2/workspaces/default/usersecrets",
        &alice,
        Some(
            json!([{ "name": "LEP", "value": canary, "visibility": "private" }])
                .to_string()
                .into_bytes(),
        ),
    );
    call(
        "POST",
        "/api/v2/workspaces/default/usersecrets",
        &alice,
        Some(
            json!([{ "name": "LEP", "value": canary }])
                .to_string()
                .into_bytes(),
        ),
    );
    call(
        "GET",
        "/api/v2/workspaces/default/usersecrets",
        &alice,
        None,
    );
    call("GET", "/api/v1/workspaces/default/secrets", &alice, None);
    // The canary as a bearer token, past the burst the failure guard answers at once, and as a
    // platform token to exchange: refusals, answered as they are answered, without it.
    for _ in 0..12 {
        call("GET", "/api/v1/whoami", &canary, None);
    }
    let exchange = rt.block_on(async {
        let r = http
            .post(format!("{}/api/v1/identity/exchange", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
                 &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt\
                 &subject_token={canary}.{canary}.{canary}&scope={canary}"
            ))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(exchange.0, 400, "{}", exchange.1);
    bodies
        .lock()
        .unwrap()
        .push(("POST /api/v1/identity/exchange".into(), exchange.1));
    // A workload token: its read is the one answer that carries values.
    let (_, minted) = call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        &alice,
        Some(
            json!({ "secrets": ["REMOTE", "API", "LEP"] })
                .to_string()
                .into_bytes(),
        ),
    );
    let wtok: String = serde_json::from_str::<Value>(&minted).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, read) = call("GET", "/api/v1/workload/secrets", &wtok, None);
    assert_eq!(status, 200);
    assert!(
        read.contains(&canary),
        "the workload read must carry the value"
    );
    let wfile = s.path().join("w.tok");
    std::fs::write(&wfile, &wtok).unwrap();
    // The launcher and the mount through the server.
    let mut c = traced(s.cmd(&[
        "run",
        "--url",
        &server.url,
        "--token-file",
        wfile.to_str().unwrap(),
        "-s",
        "API",
        "--dry-run",
        "--",
        "true",
    ]));
    c.env_remove("SECRETFS_STORE");
    outputs.push(("server launcher".into(), run_with(c, b"")));
    let mut mount_log = String::new();
    let scrape = |ready_line: &str| -> Vec<u8> {
        let url = ready_line
            .split_whitespace()
            .find(|w| w.ends_with("/metrics"))
            .unwrap()
            .to_owned();
        rt.block_on(async { http.get(url).send().await.unwrap().bytes().await.unwrap() })
            .to_vec()
    };
    let mut scrapes: Vec<(String, Vec<u8>)> = Vec::new();
    if fuse_available("the_canary_never_leaks_anywhere (mount part)") {
        let mnt = s.path().join("mnt");
        let url = server.url.clone();
        let mut d = Daemon::start_with(
            &s,
            &mnt,
            &[
                "--token-file",
                wfile.to_str().unwrap(),
                "--audit",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            |c| {
                c.env("SECRETFS_URL", &url)
                    .env("RUST_LOG", "trace")
                    .env("NOTIFY_SOCKET", &notify.address)
                    .env_remove("SECRETFS_STORE");
            },
        );
        assert!(contains(&std::fs::read(mnt.join("API")).unwrap(), &canary));
        call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/API",
            &alice,
            Some(
                json!({ "value": format!("{canary}-4") })
                    .to_string()
                    .into_bytes(),
            ),
        );
        assert!(crate::support::eventually(5, || std::fs::read(
            mnt.join("API")
        )
        .unwrap()
        .ends_with(b"-4")));
        scrapes.push(("the mount's metrics".into(), scrape(&d.ready_line)));
        d.stop(nix::sys::signal::Signal::SIGTERM);
        mount_log = d.log();
        assert!(
            mount_log.contains("TRACE"),
            "trace logging was not on in the daemon"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let (_, audit) = call("GET", "/api/v1/audit", &admin, None);
    assert!(audit.contains("\"read\""));

    // PostgreSQL holds ciphertext only: a pg_dump of a store with the canary in it.
    let mut dump = Vec::new();
    if let Some(admin_url) = postgres_url("the_canary_never_leaks_anywhere (PostgreSQL part)") {
        let db = TempDatabase::new(&admin_url);
        let key = s.path().join("pg.key");
        let pg = Server::start_pg(&s, &db.url, &key, true);
        let pg_admin = pg.admin_token.clone();
        let status = rt.block_on(async {
            http.post(format!("{}/api/v1/workspaces/default/secrets", pg.url))
                .bearer_auth(&pg_admin)
                .json(&json!({ "name": "PG", "value": canary }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(status, 201);
        let out = std::process::Command::new("pg_dump")
            .arg(&db.url)
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            contains(&out.stdout, "PG"),
            "the dump does not hold the secret's row"
        );
        dump = out.stdout;
    }

    scrapes.push(("the server's metrics".into(), scrape(&server.ready_line)));
    let argv_hits = argv.finish();
    drop(server);
    let datagrams = notify.drain(500).join("\n");
    assert!(
        datagrams.contains("READY=1") && datagrams.contains("STOPPING=1"),
        "{datagrams}"
    );
    // The scan.
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, out) in &outputs {
        places.push((format!("{what}: stdout"), out.stdout.clone().into_bytes()));
        places.push((format!("{what}: stderr"), out.stderr.clone().into_bytes()));
    }
    for (what, body) in bodies.lock().unwrap().iter() {
        places.push((format!("HTTP body of {what}"), body.clone().into_bytes()));
    }
    places.push(("daemon log".into(), mount_log.into_bytes()));
    places.push(("sd_notify datagrams".into(), datagrams.into_bytes()));
    places.extend(scrapes);
    places.push(("pg_dump".into(), dump));
    let mut files = Vec::new();
    files_under(s.path(), &mut files);
    files_under(&std::env::temp_dir(), &mut files);
    for (path, bytes) in files {
        places.push((path.display().to_string(), bytes));
    }
    let leaks: Vec<&String> = places
        .iter()
        .filter(|(_, b)| contains(b, &canary))
        .map(|(w, _)| w)
        .collect();
    assert!(leaks.is_empty(), "the canary leaked into: {leaks:?}");
    assert!(
        argv_hits.iter().all(|a| a.contains("secret create ARGV")),
        "the canary appeared in argv: {argv_hits:?}"
    );
    // Sanity: the scan saw the server's log and the database files.
    assert!(
        places.iter().any(|(w, _)| w.ends_with("srv.db"))
            && places.iter().any(|(w, _)| w.contains("server-"))
    );
    assert!(
        outputs
            .iter()
            .find(|(w, _)| w == "value on argv")
            .unwrap()
            .1
            .code
            == 2
    );
}
