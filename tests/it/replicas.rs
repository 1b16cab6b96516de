//! Scale-out: stateless server replicas over one real PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    NotifySocket, OwnPostgres, Scratch, Server, TempDatabase, add_user, postgres_url, run_with,
};

async fn call(
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let mut req = http
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres() {
    let Some(admin_url) = postgres_url("two_replicas_share_one_postgres") else {
        return;
    };
    let db = TempDatabase::new(&admin_url);
    let s = Scratch::new();
    let key = s.path().join("replicas.key");
    let mut a = Server::start_pg(&s, &db.url, &key, true);
    let b = Server::start_pg_with(
        &s,
        &db.url,
        &key,
        false,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    assert!(
        a.log().contains("postgres:")
            || std::fs::read_to_string(&a.log_path)
                .unwrap()
                .contains("store opened")
    );
    let admin = a.admin_token.clone();
    let alice = add_user(&a.url, &admin, "alice").await;

    // Create through A; list and read through B.
    let (status, _) = call(
        &a.url,
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(json!({ "name": "R", "value": "one" })),
    )
    .await;
    assert_eq!(status, 201);
    let (_, list) = call(
        &b.url,
        "GET",
        "/api/v1/workspaces/default/secrets",
        &alice,
        None,
    )
    .await;
    assert_eq!(list[0]["name"], "R");
    let (status, minted) = call(
        &b.url,
        "POST",
        "/api/v1/workspaces/default/tokens",
        &alice,
        Some(json!({ "secrets": ["R"] })),
    )
    .await;
    assert_eq!(status, 201);
    let w = minted["token"].as_str().unwrap().to_owned();
    let (status, read) = call(&a.url, "GET", "/api/v1/workload/secrets", &w, None).await;
    assert_eq!(
        (status, read["secrets"][0]["value"].as_str()),
        (200, Some("one"))
    );

    // A watch held by B wakes when A commits a change.
    let rev = read["revision"].as_str().unwrap().to_owned();
    let watch = {
        let (url, w, rev) = (b.url.clone(), w.clone(), rev.clone());
        tokio::spawn(async move {
            let (_, v) = call(
                &url,
                "GET",
                &format!("/api/v1/workload/secrets?values=false&wait=30s&since={rev}"),
                &w,
                None,
            )
            .await;
            (Instant::now(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = call(
        &a.url,
        "PATCH",
        "/api/v1/workspaces/default/secrets/R",
        &alice,
        Some(json!({ "value": "two" })),
    )
    .await;
    let updated = Instant::now();
    assert_eq!(status, 200);
    let (woke, v) = watch.await.unwrap();
    assert!(
        woke.duration_since(updated) < Duration::from_secs(1),
        "the watch on B woke {:?} after the update on A",
        woke.duration_since(updated)
    );
    assert_eq!(v["secrets"][0]["version"], 2);
    // B heard of A's commit through NOTIFY, said how late, and its long-poll answered it.
    let text = reqwest::get(b.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("secretfs_replica_notification_lag_seconds_count ") >= 1.0,
        "{text}"
    );
    assert!(
        count("secretfs_change_fanout_seconds_count ") >= 1.0,
        "{text}"
    );

    // A dies: a client given both URLs goes on through B.
    a.kill(nix::sys::signal::Signal::SIGKILL);
    let mut cmd = s.cmd(&["secret", "list", "-o", "json"]);
    cmd.env("SECRETFS_URL", format!("{},{}", a.url, b.url))
        .env("SECRETFS_TOKEN", &alice)
        .env_remove("SECRETFS_STORE");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"R\""), "{}", out.stdout);
    let mut cmd = s.cmd(&[
        "run",
        "--url",
        &format!("{},{}", a.url, b.url),
        "-s",
        "R",
        "--",
        "sh",
        "-c",
        "test \"$R\" = two",
    ]);
    cmd.env("SECRETFS_TOKEN", &w);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_through_two_replicas() {
    let Some(admin_url) = postgres_url("concurrent_creates_of_one_name_through_two_replicas")
    else {
        return;
    };
    let db = TempDatabase::new(&admin_url);
    let s = Scratch::new();
    let key = s.path().join("replicas.key");
    let a = Server::start_pg(&s, &db.url, &key, true);
    let b = Server::start_pg(&s, &db.url, &key, false);
    let alice = add_user(&a.url, &a.admin_token, "alice").await;
    for round in 0..10 {
        let name = format!("RACE{round}");
        let body = json!({ "name": name, "value": "x" });
        let (ra, rb) = tokio::join!(
            call(
                &a.url,
                "POST",
                "/api/v1/workspaces/default/secrets",
                &alice,
                Some(body.clone())
            ),
            call(
                &b.url,
                "POST",
                "/api/v1/workspaces/default/secrets",
                &alice,
                Some(body.clone())
            ),
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}: {ra:?} {rb:?}");
        assert_eq!(
            db.query(&format!(
                "SELECT count(*) FROM secrets WHERE name = '{name}'"
            )),
            "1"
        );
    }
    // Racing replacements through both replicas keep a consistent version history.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &url,
                "PATCH",
                "/api/v1/workspaces/default/secrets/RACE0",
                &alice,
                Some(json!({ "value": format!("v{i}") })),
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        db.query("SELECT version FROM secrets WHERE name = 'RACE0'"),
        "11"
    );
    let versions = db.query("SELECT string_agg(version::text, ',' ORDER BY version) FROM audit WHERE target = 'RACE0' AND action = 'update'");
    assert_eq!(
        versions,
        (2..=11)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_recovers_without_a_restart() {
    let Some(pg) =
        OwnPostgres::start("a_database_outage_answers_503_and_recovers_without_a_restart")
    else {
        return;
    };
    let s = Scratch::new();
    let key = s.path().join("k");
    let notify = NotifySocket::at_path(&s.path().join("notify"));
    let server = Server::start_pg_env(
        &s,
        &pg.url,
        &key,
        &["--metrics-listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", &notify.address)],
    );
    notify.until("READY=1", 10);
    let admin = server.admin_token.clone();
    let (status, _) = call(&server.url, "GET", "/readyz", &admin, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &server.url,
        "POST",
        "/api/v1/workspaces/default/secrets",
        &admin,
        Some(json!({ "name": "BEFORE", "value": "x" })),
    )
    .await;
    assert_eq!(status, 201);

    pg.stop();
    let (status, v) = call(&server.url, "GET", "/readyz", &admin, None).await;
    assert_eq!(status, 503, "{v}");
    let (status, v) = call(
        &server.url,
        "POST",
        "/api/v1/workspaces/default/secrets",
        &admin,
        Some(json!({ "name": "DURING", "value": "x" })),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["message"], "store unavailable; try again shortly");
    assert_eq!(v["code"], "unavailable");
    // The failures are counted by operation: the readiness check's, and the create's (which
    // fails at whichever store read or write it reaches first).
    let text = reqwest::get(server.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("secretfs_store_errors_total{operation=\"")?;
            let (operation, count) = rest.split_once("\"} ")?;
            Some((operation.to_owned(), count.trim().parse().ok()?))
        })
        .collect();
    assert!(
        errors.iter().any(|(o, n)| o == "ready" && *n >= 1.0),
        "{text}"
    );
    assert!(errors.iter().map(|(_, n)| n).sum::<f64>() >= 2.0, "{text}");
    // And systemctl status says so.
    notify.until("the store does not answer", 15);

    pg.resume();
    let mut recovered = false;
    for _ in 0..50 {
        if call(&server.url, "GET", "/readyz", &admin, None).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "readiness did not recover");
    notify.until("the store answers again", 15);
    let (status, list) = call(
        &server.url,
        "GET",
        "/api/v1/workspaces/default/secrets",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
}
