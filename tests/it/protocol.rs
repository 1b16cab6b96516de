//! The workload read's protocol (`POST /api/v1/workload/read`): one answer per name, the missing
//! ones all alike whatever the reason, held values left out, the long-poll answering with what
//! changed; the typed client taking values of any bytes; and the launcher and a mount each
//! reading in one request per round, counted on the wire by a relay in front of a real server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Api, Daemon, Scratch, Server, eventually, fuse_available};

/// The per-name read, as raw JSON.
async fn read(api: &Api, token: &str, body: Value) -> (u16, Value) {
    api.call("POST", "/api/v1/workload/read", token, Some(body))
        .await
}

fn sorted_names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            m => m["name"].as_str().unwrap().to_owned(),
        })
        .collect();
    names.sort();
    names
}

fn entry<'v>(answer: &'v Value, name: &str) -> &'v Value {
    answer["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_name_read_answers_found_and_missing_alike() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let alice = api.user(&admin, "alice").await;
    let bob = api.user(&admin, "bob").await;
    for (name, vis) in [
        ("shared", "public"),
        ("mine", "private"),
        ("gone", "public"),
    ] {
        assert_eq!(
            api.create(&alice, name, &format!("v-{name}"), vis).await.0,
            201
        );
    }
    assert_eq!(api.create(&bob, "flip", "v-flip", "public").await.0, 201);
    assert_eq!(api.create(&bob, "bobs", "v-bobs", "private").await.0, 201);
    let (status, minted) = api
        .mint(
            &alice,
            &["shared", "mine", "gone", "flip"],
            json!({ "ttl": "1h" }),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let w = minted["token"].as_str().unwrap().to_owned();
    // A grant whose secret is deleted, and one whose secret its user may no longer see.
    let ws = "/api/v1/workspaces/default/secrets";
    assert_eq!(
        api.call("DELETE", &format!("{ws}/gone"), &alice, None)
            .await
            .0,
        204
    );
    let (status, v) = api
        .call(
            "PATCH",
            &format!("{ws}/flip"),
            &bob,
            Some(json!({ "visibility": "private" })),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    let asked = ["shared", "mine", "gone", "flip", "bobs", "never"];
    let (status, answer) = read(&api, &w, json!({ "names": asked })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(sorted_names(&answer["secrets"]), ["mine", "shared"]);
    assert_eq!(entry(&answer, "shared")["value"], "v-shared");
    assert_eq!(entry(&answer, "mine")["value"], "v-mine");
    // Deleted, no longer visible, never granted, never created: one answer for all four.
    assert_eq!(
        sorted_names(&answer["missing"]),
        ["bobs", "flip", "gone", "never"]
    );
    assert_eq!(answer["token"]["ttl_secs"], 3600, "{answer}");
    assert!(answer["token"]["expires_at"].is_string(), "{answer}");

    // Asked alone, each missing name gets the same answer, byte for byte but for its name.
    let mut alone = Vec::new();
    for name in ["bobs", "flip", "gone", "never"] {
        let (_, text, _) = api
            .raw(
                "POST",
                "/api/v1/workload/read",
                Some(&w),
                Some((
                    "application/json",
                    serde_json::to_vec(&json!({ "names": [name] })).unwrap(),
                )),
            )
            .await;
        alone.push(text.replace(&format!("\"{name}\""), "\"NAME\""));
    }
    assert!(alone.windows(2).all(|p| p[0] == p[1]), "{alone:#?}");
    assert!(alone[0].contains("\"missing\":[\"NAME\"]"), "{}", alone[0]);

    // The first form is kept for its clients: a missing name fails the whole read.
    assert_eq!(api.workload(&w, "?names=shared,gone").await.0, 404);
    assert_eq!(api.workload(&w, "?names=shared").await.0, 200);

    // What the reader holds comes back without its value; once it changes, with the new one.
    let shared = entry(&answer, "shared").clone();
    let held = json!({
        "names": ["shared", "mine"],
        "held": [{
            "name": "shared",
            "version": shared["version"],
            "updated_at": shared["updated_at"],
        }],
    });
    let (_, again) = read(&api, &w, held.clone()).await;
    assert!(entry(&again, "shared").get("value").is_none(), "{again}");
    assert_eq!(entry(&again, "shared")["version"], shared["version"]);
    assert_eq!(entry(&again, "mine")["value"], "v-mine");
    assert_eq!(again["revision"], answer["revision"]);
    let (status, _) = api
        .call(
            "PATCH",
            &format!("{ws}/shared"),
            &alice,
            Some(json!({ "value": "v2" })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, after) = read(&api, &w, held).await;
    assert_eq!(entry(&after, "shared")["value"], "v2", "{after}");
    assert_ne!(after["revision"], answer["revision"]);

    // Metadata only.
    let (_, meta) = read(&api, &w, json!({ "values": false })).await;
    assert_eq!(sorted_names(&meta["secrets"]), ["mine", "shared"]);
    assert!(
        meta["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("value").is_none() && s.get("value_base64").is_none()),
        "{meta}"
    );

    // Bad requests name the field; a user token may not read values at all.
    let (status, v) = read(&api, &w, json!({ "names": ["no spaces allowed"] })).await;
    assert_eq!((status, v["field"].as_str()), (422, Some("names")), "{v}");
    let (status, v) = read(&api, &w, json!({ "name": ["shared"] })).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("name"), "{v}");
    assert_eq!(read(&api, &alice, json!({})).await.0, 403);

    // A held value of a secret deleted and created again under its name is not current: the new
    // secret is another id, which the token was never granted, so the name is missing (and a
    // reader holding the old value learns to drop it) rather than answered from what it holds.
    let mine = entry(&after, "mine").clone();
    assert_eq!(
        api.call("DELETE", &format!("{ws}/mine"), &alice, None)
            .await
            .0,
        204
    );
    assert_eq!(
        api.create(&alice, "mine", "v-mine-again", "private")
            .await
            .0,
        201
    );
    let (_, recreated) = read(
        &api,
        &w,
        json!({
            "names": ["mine"],
            "held": [{ "name": "mine", "version": mine["version"], "updated_at": mine["updated_at"] }],
        }),
    )
    .await;
    assert_eq!(sorted_names(&recreated["missing"]), ["mine"], "{recreated}");
    assert!(
        recreated["secrets"].as_array().unwrap().is_empty(),
        "{recreated}"
    );
    api.assert_no_canary();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_poll_answers_with_what_changed() {
    let s = Scratch::new();
    let (api, admin) = Api::in_process(&s).await;
    let alice = api.user(&admin, "alice").await;
    for name in ["A", "B"] {
        assert_eq!(api.create(&alice, name, "one", "private").await.0, 201);
    }
    let (_, minted) = api.mint(&alice, &["A", "B"], json!({})).await;
    let w = minted["token"].as_str().unwrap().to_owned();
    let (_, first) = read(&api, &w, json!({})).await;
    let held: Vec<Value> = first["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!({ "name": s["name"], "version": s["version"], "updated_at": s["updated_at"] }))
        .collect();
    let poll = json!({ "held": held, "since": first["revision"], "wait_secs": 20 });

    let started = std::time::Instant::now();
    let (answer, _) = tokio::join!(read(&api, &w, poll.clone()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/B",
            &alice,
            Some(json!({ "value": "two" })),
        )
        .await
    });
    let (status, answer) = answer;
    assert_eq!(status, 200, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(answer["revision"], first["revision"]);
    // Only the change carries a value.
    assert_eq!(entry(&answer, "B")["value"], "two", "{answer}");
    assert!(entry(&answer, "A").get("value").is_none(), "{answer}");

    // Nothing changes: the poll ends at its wait with the same revision and no values.
    let quiet =
        json!({ "held": poll["held"].clone(), "since": answer["revision"], "wait_secs": 1 });
    let (_, quiet) = read(&api, &w, quiet).await;
    assert_eq!(quiet["revision"], answer["revision"]);
    assert!(entry(&quiet, "A").get("value").is_none());
}

#[test]
fn the_typed_client_reads_values_of_any_bytes() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let alice = rt.block_on(api.user(&server.admin_token, "alice"));
    let bytes: &[u8] = &[0xff, 0x00, 0x80, b'\n', 0xfe];
    let (status, v) = rt.block_on(api.call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(json!({ "name": "BIN", "value_base64": "/wCACv4=" })),
    ));
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        rt.block_on(api.create(&alice, "TEXT", "plain text", "private"))
            .0,
        201
    );
    let (_, minted) = rt.block_on(api.mint(&alice, &["BIN", "TEXT"], json!({})));
    let token = secretfs::auth::Token::from_string(minted["token"].as_str().unwrap().to_owned());
    let client = secretfs::client::Client::new(&server.url, &token, None).unwrap();
    let request = secretfs::protocol::WorkloadReadRequest {
        names: Some(vec!["BIN".into(), "TEXT".into(), "NOPE".into()]),
        ..Default::default()
    };
    let read = rt.block_on(client.workload_read(&request)).unwrap();
    let value = |name: &str| {
        read.secrets
            .iter()
            .find(|s| s.name.as_str() == name)
            .and_then(|s| s.value.as_ref())
            .map(|v| v.expose_secret().to_vec())
    };
    assert_eq!(value("BIN").as_deref(), Some(bytes));
    assert_eq!(value("TEXT").as_deref(), Some(&b"plain text"[..]));
    assert_eq!(
        read.missing.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["NOPE"]
    );
    // The typed errors: a user token reading values is Forbidden, a bad token Unauthorized.
    let user = secretfs::auth::Token::from_string(alice.clone());
    let as_user = secretfs::client::Client::new(&server.url, &user, None).unwrap();
    let err = rt.block_on(as_user.workload_read(&request)).unwrap_err();
    assert!(
        matches!(err, secretfs::client::ClientError::Forbidden { .. }),
        "{err:?}"
    );
    let bogus = secretfs::auth::Token::from_string("sfs_w_0123456789abcdef_nope".into());
    let bad = secretfs::client::Client::new(&server.url, &bogus, None).unwrap();
    let err = rt.block_on(bad.whoami()).unwrap_err();
    assert!(
        matches!(err, secretfs::client::ClientError::Unauthorized { .. }),
        "{err:?}"
    );
}

/// A TCP relay in front of `upstream` that keeps what clients send, to count their requests.
struct Relay {
    url: String,
    /// What each connection sent, kept whole so that a request line split across reads is too.
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Relay {
    fn start(upstream: &str) -> Relay {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("a plain-HTTP server");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    return;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let log = log.clone();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        // Logged before it is passed on: a request the server answered is counted.
                        log.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay { url, sent }
    }

    /// The request lines sent so far, e.g. `POST /api/v1/workload/read`.
    fn requests(&self) -> Vec<String> {
        let sent = self.sent.lock().unwrap().clone();
        let mut lines = Vec::new();
        for connection in sent {
            let text = String::from_utf8_lossy(&connection);
            for (end, _) in text.match_indices(" HTTP/1.1\r\n") {
                let line = &text[..end];
                let start = ["GET /", "POST /", "PATCH /", "DELETE /"]
                    .iter()
                    .filter_map(|m| line.rfind(m))
                    .max()
                    .unwrap_or(0);
                lines.push(line[start..].to_owned());
            }
        }
        lines
    }
}

#[test]
fn the_launcher_and_a_mount_read_in_one_request_each() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let alice = rt.block_on(api.user(&server.admin_token, "alice"));
    let names: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
    for n in &names {
        assert_eq!(
            rt.block_on(api.create(&alice, n, &format!("value-{n}"), "private"))
                .0,
            201
        );
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_, minted) = rt.block_on(api.mint(&alice, &refs, json!({})));
    let wfile = s.path().join("w.tok");
    std::fs::write(&wfile, minted["token"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&wfile, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // The launcher: ten secrets, one request.
    let relay = Relay::start(&server.url);
    let mut args = vec![
        "run",
        "--url",
        &relay.url,
        "--token-file",
        wfile.to_str().unwrap(),
    ];
    for n in &refs {
        args.extend(["-s", n]);
    }
    args.extend([
        "--",
        "sh",
        "-c",
        "test \"$S0\" = value-S0 && test \"$S9\" = value-S9",
    ]);
    let out = s.run(&args, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(relay.requests(), ["POST /api/v1/workload/read"]);

    // A missing name still fails the launch, in the same one request.
    let relay = Relay::start(&server.url);
    let out = s.run(
        &[
            "run",
            "--url",
            &relay.url,
            "--token-file",
            wfile.to_str().unwrap(),
            "-s",
            "S0",
            "-s",
            "NOT_GRANTED",
            "--",
            "true",
        ],
        b"",
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("NOT_GRANTED"), "{}", out.stderr);
    assert_eq!(relay.requests().len(), 1, "{:?}", relay.requests());

    if !fuse_available("the_launcher_and_a_mount_read_in_one_request_each") {
        return;
    }
    // The mount: one request to start, one per refresh round (the long-poll brings the change).
    let relay = Relay::start(&server.url);
    let mnt = s.path().join("mnt");
    let url = relay.url.clone();
    let _d = Daemon::start_with(&s, &mnt, &["--token-file", wfile.to_str().unwrap()], |c| {
        c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
    });
    assert_eq!(std::fs::read(mnt.join("S3")).unwrap(), b"value-S3");
    // The start, then the first long-poll, held.
    assert!(
        eventually(5, || relay.requests().len() == 2),
        "{:?}",
        relay.requests()
    );
    rt.block_on(api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/S3",
        &alice,
        Some(json!({ "value": "rotated" })),
    ));
    assert!(eventually(5, || std::fs::read(mnt.join("S3")).unwrap() == b"rotated"));
    std::thread::sleep(Duration::from_millis(500));
    // The poll that brought the change, and the next one, held: nothing else.
    assert_eq!(
        relay.requests(),
        ["POST /api/v1/workload/read"; 3],
        "the mount's rounds"
    );
}
