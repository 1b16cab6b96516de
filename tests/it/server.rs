//! `secretfs serve`: a real server process on 127.0.0.1, real HTTP, the real client binary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    CANARY, Daemon, NO_PTRACE, Scratch, Server, assert_hardened, assert_no_canary, eventually,
    fuse_available,
};

/// Raw HTTP to the server, keeping every response body that was not a workload read, for the
/// canary scan.
struct Api {
    http: reqwest::Client,
    url: String,
    /// The server's log, shown when a request fails below HTTP (the server died).
    log: std::path::PathBuf,
    bodies: Arc<Mutex<Vec<(String, String)>>>,
}

impl Api {
    fn new(server: &Server) -> Api {
        secretfs::client::install_crypto_provider();
        Api {
            http: reqwest::Client::new(),
            url: server.url.clone(),
            log: server.log_path.clone(),
            bodies: Arc::default(),
        }
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some((ctype, bytes)) = body {
            req = req.header("Content-Type", ctype).body(bytes);
        }
        let resp = req.send().await.unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e:?}\nserver log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        if !path.starts_with("/api/v1/workload/") {
            self.bodies
                .lock()
                .unwrap()
                .push((format!("{method} {path} -> {status}"), text.clone()));
        }
        (status, text, headers)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        let (status, text, _) = self.raw(method, path, Some(token), body).await;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// Every response body seen (but workload reads) is free of the canary.
    fn assert_no_canary(&self) {
        for (what, body) in self.bodies.lock().unwrap().iter() {
            assert_no_canary(what, body.as_bytes());
        }
    }
}

/// Creates a user through the API and returns their token.
async fn user(api: &Api, admin: &str, name: &str) -> String {
    let (status, v) = api
        .call(
            "POST",
            "/api/v1/users",
            admin,
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

async fn create(api: &Api, token: &str, name: &str, value: &str, visibility: &str) -> (u16, Value) {
    api.call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        token,
        Some(json!({ "name": name, "value": value, "visibility": visibility })),
    )
    .await
}

async fn mint(api: &Api, token: &str, secrets: &[&str], extra: Value) -> (u16, Value) {
    let mut body = json!({ "secrets": secrets });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    api.call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        token,
        Some(body),
    )
    .await
}

async fn workload(api: &Api, token: &str, query: &str) -> (u16, Value) {
    let (status, text, _) = api
        .raw(
            "GET",
            &format!("/api/v1/workload/secrets{query}"),
            Some(token),
            None,
        )
        .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visibility_matrix() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    let alice = user(&api, &admin, "alice").await;
    let bob = user(&api, &admin, "bob").await;
    assert_eq!(
        create(&api, &alice, "A_PRIV", CANARY, "private").await.0,
        201
    );
    assert_eq!(
        create(&api, &alice, "A_PUB", &format!("{CANARY}-pub"), "public")
            .await
            .0,
        201
    );
    assert_eq!(
        create(&api, &bob, "B_PRIV", "bob's", "private").await.0,
        201
    );

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
    let (status, v) = api.call("GET", &path("A_PRIV"), &bob, None).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (404, Some("secret \"A_PRIV\" not found"))
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
    let (status, v) = mint(&api, &bob, &["A_PRIV"], json!({})).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (404, Some("secret not found: \"A_PRIV\""))
    );
    let (status, bob_w) = mint(&api, &bob, &["A_PUB", "B_PRIV"], json!({})).await;
    assert_eq!(status, 201, "{bob_w}");
    let (status, alice_w) = mint(&api, &alice, &["A_PRIV", "A_PUB"], json!({})).await;
    assert_eq!(status, 201);
    let bob_w = bob_w["token"].as_str().unwrap().to_owned();
    let alice_w = alice_w["token"].as_str().unwrap().to_owned();

    // workload reads
    let (status, v) = workload(&api, &alice_w, "").await;
    assert_eq!(status, 200);
    assert_eq!(v["secrets"][0]["name"], "A_PRIV");
    assert_eq!(v["secrets"][0]["value"], CANARY);
    assert_eq!(v["secrets"][1]["value"], format!("{CANARY}-pub2"));
    let (status, v) = workload(&api, &bob_w, "").await;
    assert_eq!(status, 200);
    let got: Vec<&str> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["A_PUB", "B_PRIV"]);
    assert_eq!(workload(&api, &bob_w, "?names=A_PRIV").await.0, 404);
    // A user token never reads a value.
    let (status, v) = workload(&api, &alice, "").await;
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
    let (_, v) = workload(&api, &alice_w, "").await;
    assert_eq!(v["secrets"].as_array().unwrap().len(), 0);

    api.assert_no_canary();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_collide_invisibly_and_bad_input_gets_its_status() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let alice = user(&api, &server.admin_token, "alice").await;
    let bob = user(&api, &server.admin_token, "bob").await;
    assert_eq!(
        create(&api, &alice, "TAKEN", CANARY, "private").await.0,
        201
    );
    let (status, v) = create(&api, &bob, "TAKEN", "x", "private").await;
    assert_eq!(
        (status, v["message"].as_str()),
        (409, Some("name \"TAKEN\" already in use in this workspace"))
    );
    let (status, v) = create(&api, &alice, "TAKEN", "x", "private").await;
    assert_eq!(
        (status, v["message"].as_str()),
        (409, Some("name \"TAKEN\" already in use in this workspace"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_slowed_down() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(
            api.raw(
                "GET",
                "/api/v1/whoami",
                Some("sfs_u_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                None
            )
            .await
            .0,
            401
        );
        times.push(started.elapsed());
    }
    // 50, 100, 200, 400, 800 ms: each failure doubles the next delay.
    assert!(times[4] >= Duration::from_millis(700), "{times:?}");
    assert!(times[4] > times[1] * 3, "{times:?}");
    // A success resets it.
    assert_eq!(
        api.raw("GET", "/api/v1/whoami", Some(&server.admin_token), None)
            .await
            .0,
        200
    );
    let started = std::time::Instant::now();
    assert_eq!(
        api.raw("GET", "/api/v1/whoami", Some("garbage"), None)
            .await
            .0,
        401
    );
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_tokens_expire_are_revoked_and_lose_access() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let alice = user(&api, &server.admin_token, "alice").await;
    let bob = user(&api, &server.admin_token, "bob").await;
    create(&api, &alice, "SHARED", "shared-value", "public").await;
    create(&api, &alice, "OTHER", "other-value", "public").await;

    // A set of one: the other secret is 404 even though bob may use it.
    let (_, w) = mint(
        &api,
        &bob,
        &["SHARED"],
        json!({ "ttl": "1h", "max_ttl": "2h" }),
    )
    .await;
    let w_tok = w["token"].as_str().unwrap().to_owned();
    let (status, v) = workload(&api, &w_tok, "?names=SHARED").await;
    assert_eq!(
        (status, v["secrets"][0]["value"].as_str()),
        (200, Some("shared-value"))
    );
    assert_eq!(workload(&api, &w_tok, "?names=OTHER").await.0, 404);
    assert_eq!(workload(&api, &w_tok, "?names=SHARED,OTHER").await.0, 404);
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
    assert_eq!(workload(&api, &w_tok, "?names=SHARED").await.0, 404);
    let (_, v) = workload(&api, &w_tok, "").await;
    assert_eq!(v["secrets"].as_array().unwrap().len(), 0);
    api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/SHARED",
        &alice,
        Some(json!({ "visibility": "public" })),
    )
    .await;
    assert_eq!(workload(&api, &w_tok, "?names=SHARED").await.0, 200);

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
    assert_eq!(workload(&api, &w_tok, "").await.0, 401);

    // Expired: 401.
    let (_, short) = mint(&api, &bob, &["SHARED"], json!({ "ttl": "1s" })).await;
    let short = short["token"].as_str().unwrap().to_owned();
    assert_eq!(workload(&api, &short, "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(workload(&api, &short, "").await.0, 401);

    // Token lists never show a token.
    let (_, list) = api
        .call("GET", "/api/v1/tokens?all=true", &server.admin_token, None)
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
    let (_, w2) = mint(&api, &bob, &["SHARED"], json!({})).await;
    let w2 = w2["token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("DELETE", "/api/v1/users/bob", &server.admin_token, None)
            .await
            .0,
        200,
        "the answer says what went with the user"
    );
    assert_eq!(workload(&api, &w2, "").await.0, 401);
    assert_eq!(api.call("GET", "/api/v1/whoami", &bob, None).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_on_change_or_timeout() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Arc::new(Api::new(&server));
    let alice = user(&api, &server.admin_token, "alice").await;
    create(&api, &alice, "A", "1", "private").await;
    let (_, w) = mint(&api, &alice, &["A"], json!({})).await;
    let w = w["token"].as_str().unwrap().to_owned();
    let (_, v) = workload(&api, &w, "?values=false").await;
    let rev = v["revision"].as_str().unwrap().to_owned();
    assert!(v["secrets"][0].get("value").is_none());

    // Timeout: no change within 1s.
    let started = std::time::Instant::now();
    let (_, v) = workload(&api, &w, &format!("?values=false&wait=1s&since={rev}")).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(v["revision"], rev.as_str());

    // A change wakes the poll at once.
    let poll = {
        let api = api.clone();
        let w = w.clone();
        let rev = rev.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (_, v) = workload(&api, &w, &format!("?values=false&wait=30s&since={rev}")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_who_did_what_without_values() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let alice = user(&api, &server.admin_token, "alice").await;
    create(&api, &alice, "A", CANARY, "private").await;
    api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/A",
        &alice,
        Some(json!({ "value": format!("{CANARY}2"), "visibility": "public" })),
    )
    .await;
    let (_, w) = mint(&api, &alice, &["A"], json!({})).await;
    let w = w["token"].as_str().unwrap().to_owned();
    assert_eq!(workload(&api, &w, "").await.0, 200);
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
        .env("SECRETFS_TOKEN", &server.admin_token);
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"action\": \"read\""));
    assert_no_canary("audit CLI", out.stdout.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_the_openapi_document() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    assert_eq!(api.raw("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(api.raw("GET", "/readyz", None, None).await.0, 200);
    let (status, text, _) = api.raw("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    // Every route the server answers is described.
    let routes = include_str!("../../src/api/mod.rs");
    let mut described = 0;
    for (i, _) in routes.match_indices(".route(") {
        let path = routes[i..].split('"').nth(1).unwrap();
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} is not in openapi.json"
        );
        described += 1;
    }
    assert!(described >= 15, "{described}");
}

/// The CLI against a server: user add prints only the token on stdout; login; secrets; tokens.
#[test]
fn the_cli_drives_a_server() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let admin_file = s.path().join("server.db.admin-token");
    let cli = |args: &[&str], token_file: &std::path::Path, stdin: &[u8]| {
        let mut cmd = s.cmd(args);
        cmd.env("SECRETFS_URL", &server.url)
            .env("SECRETFS_TOKEN_FILE", token_file)
            .env_remove("SECRETFS_STORE");
        crate::support::run_with(cmd, stdin)
    };
    let out = cli(&["user", "add", "alice"], &admin_file, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.stdout.trim().to_owned();
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(token.starts_with("sfs_u_") && !out.stderr.contains(&token));
    let alice_file = s.path().join("alice.tok");
    std::fs::write(&alice_file, &token).unwrap();

    // login saves URL and token (0600); later commands need no environment.
    let mut login = s.cmd(&[
        "login",
        &server.url,
        "--token-file",
        alice_file.to_str().unwrap(),
    ]);
    login.env_remove("SECRETFS_STORE");
    let out = crate::support::run_with(login, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("logged in to") && out.stderr.contains("as alice"),
        "{}",
        out.stderr
    );
    let cfg = s.path().join(".config/secretfs/config.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let logged_in = |args: &[&str], stdin: &[u8]| {
        let mut cmd = s.cmd(args);
        cmd.env_remove("SECRETFS_STORE");
        crate::support::run_with(cmd, stdin)
    };
    let out = logged_in(
        &["secret", "create", "HF_TOKEN", "-t", "huggingface"],
        CANARY.as_bytes(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = logged_in(&["secret", "list", "-o", "json"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (list[0]["name"].as_str(), list[0]["owner"].as_str()),
        (Some("HF_TOKEN"), Some("alice"))
    );
    let out = logged_in(&["secret", "update", "HF_TOKEN", "--public"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = logged_in(&["secret", "create", "HF_TOKEN"], b"x");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    let out = logged_in(
        &[
            "token",
            "create",
            "--workload",
            "-s",
            "HF_TOKEN",
            "--ttl",
            "10m",
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.trim().starts_with("sfs_w_") && out.stdout.lines().count() == 1);
    let wtok = out.stdout.trim().to_owned();
    let out = logged_in(&["token", "list"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("workload") && !out.stdout.contains(&wtok[10..]),
        "{}",
        out.stdout
    );
    let out = logged_in(&["secret", "delete", "NOPE"], b"");
    assert!(
        out.stderr.contains("secret \"NOPE\" not found"),
        "{}",
        out.stderr
    );
    // --store keeps secret commands local even when logged in.
    let out = logged_in(
        &["--store", s.store().to_str().unwrap(), "secret", "list"],
        b"",
    );
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    // The launcher reads through the server with the workload token.
    let wfile = s.path().join("w.tok");
    std::fs::write(&wfile, &wtok).unwrap();
    let mut run = s.cmd(&[
        "run",
        "--url",
        &server.url,
        "--token-file",
        wfile.to_str().unwrap(),
        "-s",
        "HF_TOKEN",
        "--",
        "sh",
        "-c",
        "test \"$HF_TOKEN\" = \"$EXPECTED\"",
    ]);
    run.env("EXPECTED", CANARY);
    let out = crate::support::run_with(run, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_no_canary("cli stderr", out.stderr.as_bytes());
}

#[test]
fn rotation_reaches_a_mount_within_a_second_and_survives_an_outage() {
    if !fuse_available("rotation_reaches_a_mount_within_a_second_and_survives_an_outage") {
        return;
    }
    let s = Scratch::new();
    let mut server = Server::start(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let alice = rt.block_on(user(&api, &server.admin_token, "alice"));
    rt.block_on(create(&api, &alice, "ROT", "v1", "private"));
    let (_, w) = rt.block_on(mint(&api, &alice, &["ROT"], json!({})));
    let wfile = s.path().join("w.tok");
    std::fs::write(&wfile, w["token"].as_str().unwrap()).unwrap();
    let mnt = s.path().join("mnt");
    let url = server.url.clone();
    let d = Daemon::start_with(&s, &mnt, &["--token-file", wfile.to_str().unwrap()], |c| {
        c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
    });
    assert!(d.ready_line.contains("from server"), "{}", d.ready_line);
    assert_eq!(std::fs::read(mnt.join("ROT")).unwrap(), b"v1");

    let mut worst = Duration::ZERO;
    for i in 2..5 {
        let value = format!("v{i}");
        rt.block_on(api.call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/ROT",
            &alice,
            Some(json!({ "value": value })),
        ));
        let started = std::time::Instant::now();
        assert!(eventually(5, || std::fs::read(mnt.join("ROT")).unwrap()
            == value.as_bytes()));
        worst = worst.max(started.elapsed());
    }
    assert!(worst < Duration::from_secs(1), "rotation took {worst:?}");

    // Outage: the mount keeps its last known good values.
    server.kill(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(mnt.join("ROT")).unwrap(), b"v4");
    assert!(
        eventually(10, || d
            .log()
            .contains("source unavailable; serving the last known good values")),
        "{}",
        d.log()
    );
    // Back up: updates flow again.
    server.restart(&s);
    let api = Api::new(&server);
    rt.block_on(api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/ROT",
        &alice,
        Some(json!({ "value": "after" })),
    ));
    assert!(
        eventually(15, || std::fs::read(mnt.join("ROT")).unwrap() == b"after"),
        "{}",
        d.log()
    );
    assert!(d.log().contains("source reachable again"), "{}", d.log());
}

#[test]
fn a_mount_gives_up_on_an_unreachable_server_after_its_start_timeout() {
    let s = Scratch::new();
    std::fs::write(
        s.path().join("w.tok"),
        "sfs_w_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .unwrap();
    std::fs::create_dir(s.path().join("mnt")).unwrap();
    let mut cmd = s.cmd(&[
        "mount",
        "mnt",
        "--url",
        "http://127.0.0.1:9",
        "--token-file",
        "w.tok",
        "--start-timeout",
        "1s",
    ]);
    cmd.env_remove("SECRETFS_STORE");
    let started = std::time::Instant::now();
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        out.stderr.contains("still unavailable after 1s"),
        "{}",
        out.stderr
    );
}

#[test]
fn tls_with_a_private_ca() {
    let s = Scratch::new();
    let (ca, cert, key) = (
        s.path().join("ca.pem"),
        s.path().join("cert.pem"),
        s.path().join("key.pem"),
    );
    // A private CA, and a server certificate it signs for 127.0.0.1.
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(s.path())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    std::fs::write(s.path().join("leaf.ext"), "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let server = Server::start_with(
        &s,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let admin_file = s.path().join("server.db.admin-token");
    let whoami = |extra: &[&str]| {
        let mut cmd = s.cmd(&["workspace", "list"]);
        cmd.args(extra)
            .env("SECRETFS_URL", &server.url)
            .env("SECRETFS_TOKEN_FILE", &admin_file);
        crate::support::run_with(cmd, b"")
    };
    let out = whoami(&["--ca-file", ca.to_str().unwrap()]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "default\n"),
        "{}",
        out.stderr
    );
    // Without the CA the certificate is refused.
    let out = whoami(&[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_server_process_is_hardened() {
    let s = Scratch::new();
    // Started without CAP_SYS_PTRACE, so a reader with the same uid and capabilities passes every
    // ptrace check but dumpability (as in the daemon's test).
    let mut child = std::process::Command::new("setpriv")
        .args(NO_PTRACE)
        .arg(crate::support::bin())
        .args(["serve", "--init", "--listen", "127.0.0.1:0", "--database"])
        .arg(format!("sqlite://{}", s.path().join("h.db").display()))
        .current_dir(s.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("serving"), "{line}");
    let pid = child.id();
    // Stopped however the test ends: a failed assertion must not leave a server behind.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let _stop = Stop(pid);
    assert_hardened(pid, "server");
    drop(_stop);
    let _ = child.wait();
}

/// `secrets:import` (what `secret import` sends) creates all of a batch or none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_import_is_all_or_none() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
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
