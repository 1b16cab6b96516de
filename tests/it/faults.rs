//! Worst days: a server killed mid-write, a full disk, a source that answers garbage.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{Daemon, Scratch, Server, eventually, fuse_available};

async fn call(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut req = http
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Writers create and replace secrets while the server is killed with SIGKILL again and again;
/// every write the server acknowledged is there after each restart, at its latest acknowledged
/// version (or later), with the value of that version.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let s = Scratch::new();
    let mut server = Server::start(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = server.url.clone();
    let admin = server.admin_token.clone();
    let alice = rt
        .block_on(call(
            &http,
            &url,
            "POST",
            "/api/v1/users",
            &admin,
            Some(json!({ "name": "alice" })),
        ))
        .unwrap()
        .1["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // name -> (acknowledged version, value of that version)
    let acked: Arc<Mutex<HashMap<String, (u64, String)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, alice, acked, count, stop) = (
            http.clone(),
            url.clone(),
            alice.clone(),
            acked.clone(),
            count.clone(),
            stop.clone(),
        );
        writers.push(rt.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("W{w}_{}", i % 25);
                let value = format!("w{w}-{i}");
                let known = acked.lock().unwrap().contains_key(&name);
                let result = if known {
                    call(
                        &http,
                        &url,
                        "PATCH",
                        &format!("/api/v1/workspaces/default/secrets/{name}"),
                        &alice,
                        Some(json!({ "value": value })),
                    )
                    .await
                } else {
                    call(
                        &http,
                        &url,
                        "POST",
                        "/api/v1/workspaces/default/secrets",
                        &alice,
                        Some(json!({ "name": name, "value": value })),
                    )
                    .await
                };
                match result {
                    Ok((200 | 201, meta)) => {
                        let version = meta["version"].as_u64().unwrap();
                        acked.lock().unwrap().insert(name, (version, value));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // A create whose answer was lost to a kill: the row exists; replace it next.
                    Ok((409, _)) => {
                        acked
                            .lock()
                            .unwrap()
                            .entry(name)
                            .or_insert((0, String::new()));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let mut kills = 0;
    while kills < 4 || count.load(Ordering::Relaxed) < 1000 {
        std::thread::sleep(Duration::from_millis(300 + 150 * (kills % 3)));
        server.kill(Signal::SIGKILL);
        kills += 1;
        server.restart(&s);
        assert!(
            kills < 40,
            "too few acknowledged writes: {}",
            count.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    // One last kill, then check everything against a fresh process.
    server.kill(Signal::SIGKILL);
    server.restart(&s);
    let acked = acked.lock().unwrap().clone();
    let names: Vec<&String> = acked.keys().collect();
    let (status, minted) = rt
        .block_on(call(
            &http,
            &server.url,
            "POST",
            "/api/v1/workspaces/default/tokens",
            &alice,
            Some(json!({ "secrets": names })),
        ))
        .unwrap();
    assert_eq!(status, 201, "{minted}");
    let (status, read) = rt
        .block_on(call(
            &http,
            &server.url,
            "GET",
            "/api/v1/workload/secrets",
            minted["token"].as_str().unwrap(),
            None,
        ))
        .unwrap();
    assert_eq!(status, 200);
    let stored: HashMap<String, (u64, String)> = read["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                (
                    s["version"].as_u64().unwrap(),
                    s["value"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let total = count.load(Ordering::Relaxed);
    assert!(total >= 1000 && kills >= 4, "{total} writes, {kills} kills");
    for (name, (version, value)) in &acked {
        let (got_version, got_value) = stored.get(name).unwrap_or_else(|| panic!("{name} lost"));
        assert!(
            got_version >= version,
            "{name}: version {got_version} < acknowledged {version}"
        );
        if got_version == version && *version > 0 {
            assert_eq!(got_value, value, "{name} at version {version}");
        }
    }
    eprintln!("{total} acknowledged writes over {kills} SIGKILLs: none lost");
}

/// A full disk: writes fail with a clear 507 and change nothing; what was stored stays readable.
#[test]
fn a_full_disk_refuses_writes_and_keeps_the_data() {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("a_full_disk_refuses_writes_and_keeps_the_data needs root (a tmpfs mount)");
        }
        eprintln!("skipping a_full_disk_refuses_writes_and_keeps_the_data: needs root");
        return;
    }
    let s = Scratch::new();
    let small = s.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1200k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(small.clone());
    let db = small.join("s.db");
    let mut cmd_args = vec![
        "--database".to_owned(),
        format!("sqlite://{}", db.display()),
    ];
    cmd_args.push("--admin-token-file".into());
    cmd_args.push(s.path().join("admin.tok").display().to_string());
    let refs: Vec<&str> = cmd_args.iter().map(String::as_str).collect();
    let server = Server::start_custom(&s, &refs);
    let admin = std::fs::read_to_string(s.path().join("admin.tok"))
        .unwrap()
        .trim()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let big = "x".repeat(200 * 1024);
    let mut stored = Vec::new();
    let mut refusal = None;
    for i in 0..40 {
        let name = format!("FILL{i}");
        let (status, v) = rt
            .block_on(call(
                &http,
                &server.url,
                "POST",
                "/api/v1/workspaces/default/secrets",
                &admin,
                Some(json!({ "name": name, "value": big })),
            ))
            .unwrap();
        match status {
            201 => stored.push(name),
            _ => {
                refusal = Some((status, v));
                break;
            }
        }
    }
    let (status, v) = refusal.expect("the disk never filled");
    assert_eq!(status, 507, "{v}");
    assert_eq!(
        v["message"],
        "the store is out of disk space; nothing was written"
    );
    assert!(!stored.is_empty());
    // Everything acknowledged before is intact and readable.
    let (status, list) = rt
        .block_on(call(
            &http,
            &server.url,
            "GET",
            "/api/v1/workspaces/default/secrets",
            &admin,
            None,
        ))
        .unwrap();
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), stored.len(), "{names:?}");
    let (status, w) = rt
        .block_on(call(
            &http,
            &server.url,
            "POST",
            "/api/v1/workspaces/default/tokens",
            &admin,
            Some(json!({ "secrets": [stored[0]] })),
        ))
        .unwrap();
    if status == 201 {
        let (status, read) = rt
            .block_on(call(
                &http,
                &server.url,
                "GET",
                "/api/v1/workload/secrets",
                w["token"].as_str().unwrap(),
                None,
            ))
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            read["secrets"][0]["value"].as_str().map(str::len),
            Some(big.len())
        );
    } else {
        // Minting a token is a write too: refused the same way while the disk is full.
        assert_eq!(status, 507, "{w}\n{}", server.log());
    }
}

/// A fake server for one workload token: answers like secretfs until `broken` is set, then
/// with garbage (or an oversized body).
fn fake_server(broken: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let broken = broken.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let body: Vec<u8> = match broken.load(Ordering::Relaxed) {
                        _ if path.starts_with("/api/v1/whoami") => br#"{"user":"u","admin":false,"workspaces":["default"],"token":{"expires_at":null,"ttl_secs":null}}"#.to_vec(),
                        0 => {
                            let value = if path.contains("values=false") { "" } else { r#","value":"good""# };
                            format!(r#"{{"revision":"r1","workspace":"default","secrets":[{{"name":"S","version":1,"kind":"custom","visibility":"private","owner":"u","updated_at":"2026-01-01T00:00:00Z"{value}}}]}}"#).into_bytes()
                        }
                        1 => b"{this is not json".to_vec(),
                        _ => {
                            // Announces 300 MiB and starts sending it.
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 314572800\r\n\r\n";
                            let _ = stream.write_all(head.as_bytes());
                            let chunk = vec![b' '; 1 << 20];
                            for _ in 0..300 {
                                if stream.write_all(&chunk).is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(&body))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_source_answering_garbage_keeps_the_last_known_good_values() {
    if !fuse_available("a_source_answering_garbage_keeps_the_last_known_good_values") {
        return;
    }
    let s = Scratch::new();
    let broken = Arc::new(AtomicUsize::new(0));
    let url = fake_server(broken.clone());
    std::fs::write(
        s.path().join("w.tok"),
        "sfs_w_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .unwrap();
    let mnt = s.path().join("mnt");
    let d = Daemon::start_with(&s, &mnt, &["--token-file", "w.tok"], |c| {
        c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
    });
    assert_eq!(std::fs::read(mnt.join("S")).unwrap(), b"good");
    broken.store(1, Ordering::Relaxed);
    assert!(
        eventually(10, || d
            .log()
            .contains("serving the last known good values")),
        "{}",
        d.log()
    );
    assert_eq!(std::fs::read(mnt.join("S")).unwrap(), b"good");
    broken.store(2, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::read(mnt.join("S")).unwrap(), b"good");
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let rss: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss < 100 * 1024,
        "the daemon grew to {rss} kB on an oversized answer"
    );
    assert!(d.log().contains("larger than"), "{}", d.log());
}
