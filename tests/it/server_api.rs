//! The HTTP API's answers: who sees what, the status of every kind of bad input, token expiry
//! and revocation, the failure delay, long-polls, batch imports, the audit log, health and the
//! OpenAPI document.
//!
//! Most tests ask the router in this process (`Api::in_process`: the same router and service as
//! `secretfs serve`, over a SQLite store in the scratch dir); the two that look at the server's
//! log or run the CLI against it start a real `secretfs serve`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Api, CANARY, Scratch, Server, assert_no_canary, eventually, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visibility_matrix() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let alice = api.user(&admin, "alice").await;
    let bob = api.user(&admin, "bob").await;
    assert_eq!(api.create(&alice, "A_PRIV", CANARY, "private").await.0, 201);
    assert_eq!(
        api.create(&alice, "A_PUB", &format!("{CANARY}-pub"), "public")
            .await
            .0,
        201
    );
    assert_eq!(api.create(&bob, "B_PRIV", "bob's", "private").await.0, 201);

    // list
    let (_, list) = api
        .call("GET", "/api/v1/workspaces/default/secrets", &alice, None)
        .await;
    assert_eq!(names(&list), ["A_PRIV", "A_PUB"]);
    let (_, list) = api
        .call("GET", "/api/v1/workspaces/default/secrets", &bob, None)
        .await;
    assert_eq!(names(&list), ["A_PUB", "B_PRIV"]);
    assert_eq!(list[0]["owner"], "alice");

    let path = |n: &str| format!("/api/v1/workspaces/default/secrets/{n}");
    // get: a private secret of another user does not exist for the caller.
    assert_eq!(api.call("GET", &path("A_PRIV"), &alice, None).await.0, 200);
    assert_eq!(api.call("GET", &path("A_PUB"), &alice, None).await.0, 200);
    // (The "did you mean" comes from bob's own names, the same for a name that never existed.)
    let (status, v) = api.call("GET", &path("A_PRIV"), &bob, None).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (
            404,
            Some("secret \"A_PRIV\" not found; did you mean \"B_PRIV\"?")
        )
    );
    let (status, v) = api.call("GET", &path("C_PRIV"), &bob, None).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (
            404,
            Some("secret \"C_PRIV\" not found; did you mean \"B_PRIV\"?")
        )
    );
    assert_eq!(api.call("GET", &path("A_PUB"), &bob, None).await.0, 200);
    assert_eq!(api.call("GET", &path("NOPE"), &bob, None).await.0, 404);

    // replace
    let replace = json!({ "value": "v2" });
    assert_eq!(
        api.call("PATCH", &path("A_PRIV"), &bob, Some(replace.clone()))
            .await
            .0,
        404
    );
    let (status, v) = api
        .call("PATCH", &path("A_PUB"), &bob, Some(replace.clone()))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("only the owner"),
        "{v}"
    );
    let (status, v) = api
        .call(
            "PATCH",
            &path("A_PUB"),
            &alice,
            Some(json!({ "value": format!("{CANARY}-pub2") })),
        )
        .await;
    assert_eq!((status, v["version"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(
        api.call(
            "PATCH",
            &path("A_PRIV"),
            &alice,
            Some(json!({ "tags": ["t"] }))
        )
        .await
        .0,
        200
    );

    // mint workload tokens
    let (status, v) = api.mint(&bob, &["A_PRIV"], json!({})).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (404, Some("secret not found: \"A_PRIV\""))
    );
    let (status, bob_w) = api.mint(&bob, &["A_PUB", "B_PRIV"], json!({})).await;
    assert_eq!(status, 201, "{bob_w}");
    let (status, alice_w) = api.mint(&alice, &["A_PRIV", "A_PUB"], json!({})).await;
    assert_eq!(status, 201);
    let bob_w = bob_w["token"].as_str().unwrap().to_owned();
    let alice_w = alice_w["token"].as_str().unwrap().to_owned();

    // workload reads
    let (status, v) = api.workload(&alice_w, "").await;
    assert_eq!(status, 200);
    assert_eq!(v["secrets"][0]["name"], "A_PRIV");
    assert_eq!(v["secrets"][0]["value"], CANARY);
    assert_eq!(v["secrets"][1]["value"], format!("{CANARY}-pub2"));
    let (status, v) = api.workload(&bob_w, "").await;
    assert_eq!(status, 200);
    let got: Vec<&str> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["A_PUB", "B_PRIV"]);
    assert_eq!(api.workload(&bob_w, "?names=A_PRIV").await.0, 404);
    // A user token never reads a value.
    let (status, v) = api.workload(&alice, "").await;
    assert_eq!(status, 403, "{v}");

    // delete
    assert_eq!(api.call("DELETE", &path("A_PRIV"), &bob, None).await.0, 404);
    assert_eq!(api.call("DELETE", &path("A_PUB"), &bob, None).await.0, 403);
    // An admin may replace and delete public secrets of others.
    assert_eq!(
        api.call(
            "PATCH",
            &path("A_PUB"),
            &admin,
            Some(json!({ "visibility": "public" }))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        api.call("DELETE", &path("A_PUB"), &admin, None).await.0,
        204
    );
    assert_eq!(
        api.call("DELETE", &path("A_PRIV"), &alice, None).await.0,
        204
    );
    assert_eq!(api.call("GET", &path("A_PRIV"), &alice, None).await.0, 404);
    // Deleted: the workload tokens no longer read them.
    let (_, v) = api.workload(&alice_w, "").await;
    assert_eq!(v["secrets"].as_array().unwrap().len(), 0);

    api.assert_no_canary();
}

// A real server: the last check scans its log for the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_collide_invisibly_and_bad_input_gets_its_status() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let alice = api.user(&server.admin_token, "alice").await;
    let bob = api.user(&server.admin_token, "bob").await;
    assert_eq!(api.create(&alice, "TAKEN", CANARY, "private").await.0, 201);
    let (status, v) = api.create(&bob, "TAKEN", "x", "private").await;
    assert_eq!(
        (status, v["message"].as_str()),
        (409, Some("name \"TAKEN\" already in use in this workspace"))
    );
    let (status, v) = api.create(&alice, "TAKEN", "x", "private").await;
    assert_eq!(
        (status, v["message"].as_str()),
        (409, Some("name \"TAKEN\" already in use in this workspace"))
    );
    // A mistyped name: "did you mean" names only what the caller may see. Alice is told of her
    // own private secret; bob, for whom it does not exist, gets the plain 404 (until he has a
    // name of his own close to it).
    let path = "/api/v1/workspaces/default/secrets/TAKNE";
    let (status, v) = api.call("DELETE", path, &alice, None).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (
            404,
            Some("secret \"TAKNE\" not found; did you mean \"TAKEN\"?")
        )
    );
    let (status, v) = api.call("DELETE", path, &bob, None).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (404, Some("secret \"TAKNE\" not found"))
    );

    let post = "/api/v1/workspaces/default/secrets";
    type Case<'a> = (Option<(&'a str, Vec<u8>)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Some((
                "application/json",
                b"{\"name\": \"A\", \"value\": ".to_vec(),
            )),
            400,
            "malformed JSON at line 1",
        ),
        (
            Some((
                "application/json",
                format!("{{\"name\": \"A\", \"value\": \"v\", \"x\": \"{CANARY}\"}}").into_bytes(),
            )),
            400,
            "unknown field \"x\"",
        ),
        (
            Some((
                "application/json",
                format!("{{\"name\": \"A\", \"value\": [\"{CANARY}\"]}}").into_bytes(),
            )),
            400,
            "does not have the expected fields or types",
        ),
        (
            Some(("text/plain", b"{}".to_vec())),
            415,
            "Content-Type: application/json",
        ),
        (None, 415, "Content-Type: application/json"),
        (
            Some((
                "application/json",
                b"{\"name\": \"a/b\", \"value\": \"x\"}".to_vec(),
            )),
            422,
            "invalid secret name \"a/b\"",
        ),
        (
            Some((
                "application/json",
                b"{\"name\": \"E\", \"value\": \"\"}".to_vec(),
            )),
            422,
            "secret value is empty",
        ),
        (
            Some(("application/json", b"{\"name\": \"N\"}".to_vec())),
            422,
            "has no value",
        ),
        (
            Some((
                "application/json",
                b"{\"name\": \"K\", \"value\": \"x\", \"kind\": \"ssh-public-key\"}".to_vec(),
            )),
            422,
            "not a valid SSH public key",
        ),
        (
            Some((
                "application/json",
                format!(
                    "{{\"name\": \"BIG\", \"value\": \"{}\"}}",
                    "x".repeat((1 << 20) + 1)
                )
                .into_bytes(),
            )),
            422,
            "over the limit of 1048576 bytes",
        ),
        (
            Some(("application/json", vec![b' '; 2 << 20])),
            413,
            "larger than the limit of",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, text, headers) = api.raw("POST", post, Some(&alice), body).await;
        assert_eq!(got, status, "{needle}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{needle}: {text}"
        );
        assert!(v["code"].is_string());
        assert_eq!(headers["content-type"], "application/json");
        // A body left unread closes the connection, and the answer says so.
        if status == 413 || status == 415 {
            assert_eq!(headers["connection"], "close", "{needle}");
        }
    }
    // Tokens: missing, malformed, unknown; each a JSON 401 with WWW-Authenticate.
    for token in [
        None,
        Some("garbage"),
        Some("sfs_u_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let (status, text, headers) = api.raw("GET", "/api/v1/whoami", token, None).await;
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("\"code\":\"unauthorized\""), "{text}");
        assert!(headers.contains_key("www-authenticate"));
    }
    let (status, text, _) = api.raw("GET", "/api/v1/nope", Some(&alice), None).await;
    assert_eq!(status, 404, "{text}");
    let (status, text, _) = api
        .raw(
            "PUT",
            "/api/v1/workspaces/default/secrets",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 405, "{text}");
    // A workspace the user is not in does not exist for them.
    let (status, v) = api
        .call("GET", "/api/v1/workspaces/other/secrets", &alice, None)
        .await;
    assert_eq!(
        (status, v["message"].as_str()),
        (404, Some("workspace \"other\" not found"))
    );
    // Admin-only endpoints.
    assert_eq!(api.call("GET", "/api/v1/users", &alice, None).await.0, 403);
    assert_eq!(api.call("GET", "/api/v1/audit", &alice, None).await.0, 403);
    api.assert_no_canary();
    assert_no_canary("server log", server.log().as_bytes());
}

/// Failed authentication from one source: a burst of 10 is answered at once, then failures
/// queue, each answered later than the last, also when they arrive in parallel (16 at once: the
/// last waits 50 + 100 + ... + 1,600 ms); a valid request meanwhile is not held up and resets
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_slowed_down_per_source_in_parallel_too() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let api = std::sync::Arc::new(api);
    let started = std::time::Instant::now();
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let status = api
                    .raw(
                        "GET",
                        "/api/v1/whoami",
                        Some("sfs_u_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                        None,
                    )
                    .await
                    .0;
                (status, started.elapsed())
            })
        })
        .collect();
    // A valid token while the failures queue: answered at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let valid = std::time::Instant::now();
    assert_eq!(
        api.raw("GET", "/api/v1/whoami", Some(&admin), None).await.0,
        200
    );
    assert!(
        valid.elapsed() < Duration::from_millis(300),
        "{:?}",
        valid.elapsed()
    );
    let mut times = Vec::new();
    for a in attempts {
        let (status, took) = a.await.unwrap();
        assert_eq!(status, 401);
        times.push(took);
    }
    times.sort();
    assert!(
        times[9] < Duration::from_millis(1000),
        "the burst: {times:?}"
    );
    assert!(
        times[15] >= Duration::from_millis(3000),
        "queued: {times:?}"
    );
    // The valid request reset nothing: the next failure still waits its turn.
    let next = std::time::Instant::now();
    assert_eq!(
        api.raw("GET", "/api/v1/whoami", Some("garbage"), None)
            .await
            .0,
        401
    );
    assert!(
        next.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        next.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_tokens_expire_are_revoked_and_lose_access() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let alice = api.user(&admin, "alice").await;
    let bob = api.user(&admin, "bob").await;
    api.create(&alice, "SHARED", "shared-value", "public").await;
    api.create(&alice, "OTHER", "other-value", "public").await;

    // A set of one: the other secret is 404 even though bob may use it.
    let (_, w) = api
        .mint(&bob, &["SHARED"], json!({ "ttl": "1h", "max_ttl": "2h" }))
        .await;
    let w_tok = w["token"].as_str().unwrap().to_owned();
    let (status, v) = api.workload(&w_tok, "?names=SHARED").await;
    assert_eq!(
        (status, v["secrets"][0]["value"].as_str()),
        (200, Some("shared-value"))
    );
    assert_eq!(api.workload(&w_tok, "?names=OTHER").await.0, 404);
    assert_eq!(api.workload(&w_tok, "?names=SHARED,OTHER").await.0, 404);
    // It cannot manage anything.
    assert_eq!(
        api.call("GET", "/api/v1/workspaces/default/secrets", &w_tok, None)
            .await
            .0,
        403
    );

    // The owner makes it private: bob's token loses it at once.
    let (status, _) = api
        .call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/SHARED",
            &alice,
            Some(json!({ "visibility": "private" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.workload(&w_tok, "?names=SHARED").await.0, 404);
    let (_, v) = api.workload(&w_tok, "").await;
    assert_eq!(v["secrets"].as_array().unwrap().len(), 0);
    api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/SHARED",
        &alice,
        Some(json!({ "visibility": "public" })),
    )
    .await;
    assert_eq!(api.workload(&w_tok, "?names=SHARED").await.0, 200);

    // Renewal moves the expiry, never past the maximum.
    let (status, r) = api
        .call("POST", "/api/v1/tokens/renew", &w_tok, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["expires_at"].as_str().unwrap() <= r["max_expires_at"].as_str().unwrap());
    assert_eq!(
        api.call("POST", "/api/v1/tokens/renew", &bob, Some(json!({})))
            .await
            .0,
        403
    );

    // Revoked: 401.
    let id = w["id"].as_str().unwrap();
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/tokens/{id}"), &alice, None)
            .await
            .0,
        404,
        "not alice's token"
    );
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/tokens/{id}"), &bob, None)
            .await
            .0,
        204
    );
    assert_eq!(api.workload(&w_tok, "").await.0, 401);

    // Expired: 401.
    let (_, short) = api.mint(&bob, &["SHARED"], json!({ "ttl": "1s" })).await;
    let short = short["token"].as_str().unwrap().to_owned();
    assert_eq!(api.workload(&short, "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(api.workload(&short, "").await.0, 401);

    // Token lists never show a token.
    let (_, list) = api
        .call("GET", "/api/v1/tokens?all=true", &admin, None)
        .await;
    let text = list.to_string();
    assert!(
        !text.contains(&w_tok[10..]) && !text.contains(&alice[10..]),
        "{text}"
    );
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|t| t["revoked"] == true)
    );

    // A removed user's tokens stop working.
    let (_, w2) = api.mint(&bob, &["SHARED"], json!({})).await;
    let w2 = w2["token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("DELETE", "/api/v1/users/bob", &admin, None)
            .await
            .0,
        200,
        "the answer says what went with the user"
    );
    assert_eq!(api.workload(&w2, "").await.0, 401);
    assert_eq!(api.call("GET", "/api/v1/whoami", &bob, None).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_on_change_or_timeout() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let api = Arc::new(api);
    let alice = api.user(&admin, "alice").await;
    api.create(&alice, "A", "1", "private").await;
    let (_, w) = api.mint(&alice, &["A"], json!({})).await;
    let w = w["token"].as_str().unwrap().to_owned();
    let (_, v) = api.workload(&w, "?values=false").await;
    let rev = v["revision"].as_str().unwrap().to_owned();
    assert!(v["secrets"][0].get("value").is_none());

    // Timeout: no change within 1s.
    let started = std::time::Instant::now();
    let (_, v) = api
        .workload(&w, &format!("?values=false&wait=1s&since={rev}"))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(v["revision"], rev.as_str());

    // A change wakes the poll at once.
    let poll = {
        let api = api.clone();
        let w = w.clone();
        let rev = rev.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (_, v) = api
                .workload(&w, &format!("?values=false&wait=30s&since={rev}"))
                .await;
            (started.elapsed(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/A",
        &alice,
        Some(json!({ "value": "2" })),
    )
    .await;
    let (elapsed, v) = poll.await.unwrap();
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_ne!(v["revision"], rev.as_str());
    assert_eq!(v["secrets"][0]["version"], 2);
}

// A real server: the CLI reads the same log from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_who_did_what_without_values() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let alice = api.user(&server.admin_token, "alice").await;
    api.create(&alice, "A", CANARY, "private").await;
    api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/A",
        &alice,
        Some(json!({ "value": format!("{CANARY}2"), "visibility": "public" })),
    )
    .await;
    let (_, w) = api.mint(&alice, &["A"], json!({})).await;
    let w = w["token"].as_str().unwrap().to_owned();
    assert_eq!(api.workload(&w, "").await.0, 200);
    api.call(
        "DELETE",
        "/api/v1/workspaces/default/secrets/A",
        &alice,
        None,
    )
    .await;
    // Reads are written in batches: wait for the batch.
    let mut log = Value::Null;
    assert!(eventually(5, || {
        let rt = tokio::runtime::Handle::current();
        log = tokio::task::block_in_place(|| {
            rt.block_on(api.call("GET", "/api/v1/audit", &server.admin_token, None))
        })
        .1;
        log.as_array()
            .is_some_and(|a| a.iter().any(|r| r["action"] == "read"))
    }));
    let actions: Vec<(String, String, u64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
                r["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("create".into(), "alice".into(), 1)),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("update".into(), "alice".into(), 2)),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(a, who, v)| a == "read" && who.starts_with("workload:") && *v == 2),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("delete".into(), "alice".into(), 2)),
        "{actions:?}"
    );
    // Every record of a request carries the client's address (the server's own `--init`
    // records have none).
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["actor"] != "secretfs serve --init")
            .all(|r| r["address"] == "127.0.0.1"),
        "{log}"
    );
    let update = log
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "update")
        .unwrap();
    assert_eq!(update["detail"], "value visibility=public");
    assert_no_canary("audit log", log.to_string().as_bytes());
    // The CLI shows the same log.
    let mut cmd = s.cmd(&["audit", "-o", "json"]);
    cmd.env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN", &server.admin_token)
        .env_remove("SECRETFS_STORE");
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"action\": \"read\""));
    assert_no_canary("audit CLI", out.stdout.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let s = Scratch::new();
    let (api, _) = Api::in_process(&s).await;
    assert_eq!(api.raw("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(api.raw("GET", "/readyz", None, None).await.0, 200);
}

/// `secrets:import` (what `secret import` sends) creates all of a batch or none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_import_is_all_or_none() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let path = "/api/v1/workspaces/default/secrets:import";
    let (status, v) = api
        .call(
            "POST",
            path,
            &admin,
            Some(json!({ "secrets": [{ "name": "A", "value": CANARY }, { "name": "B", "value": "b" }] })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["secrets"][1]["name"], "B");
    // B exists: the batch with C and B is refused as a whole.
    let (status, v) = api
        .call(
            "POST",
            path,
            &admin,
            Some(json!({ "secrets": [{ "name": "C", "value": "c" }, { "name": "B", "value": "b2" }] })),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    // So is one with a bad entry, and an empty one.
    let (status, v) = api
        .call(
            "POST",
            path,
            &admin,
            Some(json!({ "secrets": [{ "name": "D", "value": "d" }, { "name": "9bad", "value": "x" }] })),
        )
        .await;
    assert_eq!((status, v["field"].as_str()), (422, Some("name")), "{v}");
    let (status, _) = api
        .call("POST", path, &admin, Some(json!({ "secrets": [] })))
        .await;
    assert_eq!(status, 422);
    let (_, list) = api
        .call("GET", "/api/v1/workspaces/default/secrets", &admin, None)
        .await;
    assert_eq!(names(&list), ["A", "B"]);
    api.assert_no_canary();
}
