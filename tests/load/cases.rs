//! Load, bounded: many readers on a mount, and a server under reads and writes at once. Zero
//! errors, memory flat. `SECRETFS_LOAD_SECS` lengthens the runs (RELIABILITY.md records a 60 s
//! one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Daemon, Scratch, Server, fuse_available};

fn load_secs(default: u64) -> u64 {
    std::env::var("SECRETFS_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_readers_on_a_mount() {
    let _serial = crate::SERIAL.blocking_lock();
    if !fuse_available("a_thousand_readers_on_a_mount") {
        return;
    }
    let s = Scratch::new();
    let dir = s.path().join("values");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..50 {
        std::fs::write(
            dir.join(format!("S{i:02}")),
            format!("value-{i:02}-{}", "x".repeat(i * 20)),
        )
        .unwrap();
    }
    s.ok(&["secret", "import", dir.to_str().unwrap()], b"");
    let mnt = s.path().join("mnt");
    // Refreshing every 200 ms while being read: the readers meet rotations of nothing, and the
    // daemon's refresh path runs the whole time.
    let d = Daemon::start(&s, &mnt, &["--refresh", "200ms"]);
    let secs = load_secs(5);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start_rss = rss_kb(d.pid() as u32);
    let mut threads = Vec::new();
    for t in 0..1000 {
        let (stop, reads, errors, mnt) = (stop.clone(), reads.clone(), errors.clone(), mnt.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let n = i % 50;
                        match std::fs::read(mnt.join(format!("S{n:02}"))) {
                            Ok(v)
                                if v.starts_with(format!("value-{n:02}-").as_bytes())
                                    && v.len() == 9 + n * 20 =>
                            {
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        i += 7;
                    }
                })
                .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let end_rss = rss_kb(d.pid() as u32);
    let reads = reads.load(Ordering::Relaxed);
    eprintln!("1000 readers, {secs} s: {reads} reads, daemon VmRSS {start_rss} kB -> {end_rss} kB");
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(reads > 10_000, "{reads}");
    assert!(
        end_rss <= start_rss + 4 * 1024,
        "daemon VmRSS grew from {start_rss} kB to {end_rss} kB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_under_reads_and_writes() {
    let _serial = crate::SERIAL.lock().await;
    let s = Scratch::new();
    let server = Server::start(&s);
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = server.url.clone();
    let admin = server.admin_token.clone();
    let post = |path: &str, token: &str, body: Value| {
        let req = http
            .post(format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, alice) = post("/api/v1/users", &admin, json!({ "name": "alice" })).await;
    let alice = alice["token"].as_str().unwrap().to_owned();
    for i in 0..20 {
        assert_eq!(
            post(
                "/api/v1/workspaces/default/secrets",
                &alice,
                json!({ "name": format!("L{i}"), "value": format!("v{i}") })
            )
            .await
            .0,
            201
        );
    }
    let names: Vec<String> = (0..20).map(|i| format!("L{i}")).collect();
    let (_, w) = post(
        "/api/v1/workspaces/default/tokens",
        &alice,
        json!({ "secrets": names }),
    )
    .await;
    let w = w["token"].as_str().unwrap().to_owned();

    let secs = load_secs(6);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let warm = Instant::now() + Duration::from_secs(secs / 3);
    let ok = Arc::new(AtomicU64::new(0));
    let server_errors = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..16 {
        let (http, url, w, ok, bad) = (
            http.clone(),
            url.clone(),
            w.clone(),
            ok.clone(),
            server_errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let path = if r % 2 == 0 {
                    "/api/v1/workload/secrets".to_owned()
                } else {
                    format!("/api/v1/workload/secrets?names=L{}", r % 20)
                };
                match http
                    .get(format!("{url}{path}"))
                    .bearer_auth(&w)
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for m in 0..2 {
        let (http, url, alice, writes, bad) = (
            http.clone(),
            url.clone(),
            alice.clone(),
            writes.clone(),
            server_errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let resp = http
                    .patch(format!(
                        "{url}/api/v1/workspaces/default/secrets/L{}",
                        (i + m) % 20
                    ))
                    .bearer_auth(&alice)
                    .json(&json!({ "value": format!("v{i}") }))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep_until(warm.into()).await;
    let warm_rss = rss_kb(server.child.id());
    for t in tasks {
        t.await.unwrap();
    }
    let end_rss = rss_kb(server.child.id());
    let (ok, writes) = (ok.load(Ordering::Relaxed), writes.load(Ordering::Relaxed));
    eprintln!(
        "server, {secs} s: {ok} reads, {writes} writes; VmRSS {warm_rss} kB after warm-up -> {end_rss} kB"
    );
    assert_eq!(server_errors.load(Ordering::Relaxed), 0);
    assert!(ok > 1000 && writes > 50, "{ok} reads, {writes} writes");
    // Flat once warm: SQLite's page caches fill, nothing else grows. (A prepared-statement cache
    // of every audit batch size once grew the server by 20 MB a minute; this bound catches that
    // in the long runs of RELIABILITY.md, and a gross leak even in CI's few seconds.)
    assert!(
        end_rss <= warm_rss + warm_rss / 8 + 4 * 1024,
        "server VmRSS grew from {warm_rss} kB to {end_rss} kB"
    );
}
