//! Access control end to end: the visibility rules through the Lepton routes and through
//! mounts, and what a mount does when its token stops working.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Daemon, Http, Scratch, Server, eventually, fuse_available};

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_visibility_matrix_through_the_lepton_routes() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let h = Http::new(&server);
    let alice = h.user(&server.admin_token, "alice");
    let bob = h.user(&server.admin_token, "bob");
    let base = "/api/v2/workspaces/default/usersecrets";
    let create = |token: &str, name: &str, visibility: &str| {
        h.call(
            "POST",
            base,
            token,
            Some(json!([{ "name": name, "value": "v", "visibility": visibility }])),
        )
    };
    assert_eq!(create(&alice, "A_PRIV", "private").0, 201);
    assert_eq!(create(&alice, "A_PUB", "public").0, 201);
    assert_eq!(create(&bob, "B_PRIV", "private").0, 201);
    // list
    assert_eq!(
        names(&h.call("GET", base, &alice, None).1),
        ["A_PRIV", "A_PUB"]
    );
    assert_eq!(
        names(&h.call("GET", base, &bob, None).1),
        ["A_PUB", "B_PRIV"]
    );
    let (_, info) = h.call("GET", "/api/v2/workspaces/default/workspace", &bob, None);
    assert_eq!(info["workloads"]["num_secrets"], 2);
    // create over a name bob cannot see: the same 409 as over one he can
    let (status, v) = create(&bob, "A_PRIV", "private");
    assert_eq!(
        (status, v["message"].as_str()),
        (
            409,
            Some("name \"A_PRIV\" already in use in this workspace")
        )
    );
    // delete
    assert_eq!(
        h.call("DELETE", &format!("{base}/A_PRIV"), &bob, None).0,
        404
    );
    assert_eq!(
        h.call("DELETE", &format!("{base}/A_PUB"), &bob, None).0,
        403
    );
    assert_eq!(
        names(&h.call("GET", base, &alice, None).1),
        ["A_PRIV", "A_PUB"]
    );
    assert_eq!(
        h.call("DELETE", &format!("{base}/A_PUB"), &alice, None).0,
        200
    );
    assert_eq!(
        h.call("DELETE", &format!("{base}/A_PRIV"), &alice, None).0,
        200
    );
    // A workload token reaches none of it.
    let (_, w) = h.call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        &bob,
        Some(json!({ "secrets": ["B_PRIV"] })),
    );
    let w = w["token"].as_str().unwrap();
    for (method, path) in [
        ("GET", base),
        ("GET", "/api/v2/workspaces/default/workspace"),
        ("GET", "/api/v1/workspaces/default/secrets"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/workspaces/default/tokens"),
    ] {
        let (status, v) = h.call(method, path, w, Some(json!({})));
        assert_eq!(status, 403, "{method} {path}: {v}");
    }
}

#[test]
fn a_mount_shows_only_what_its_token_may_read() {
    if !fuse_available("a_mount_shows_only_what_its_token_may_read") {
        return;
    }
    let s = Scratch::new();
    let server = Server::start(&s);
    let h = Http::new(&server);
    let alice = h.user(&server.admin_token, "alice");
    let bob = h.user(&server.admin_token, "bob");
    let secrets = "/api/v1/workspaces/default/secrets";
    for (token, name, vis) in [
        (&alice, "A_PRIV", "private"),
        (&alice, "A_PUB", "public"),
        (&bob, "B_PRIV", "private"),
    ] {
        assert_eq!(
            h.call(
                "POST",
                secrets,
                token,
                Some(json!({ "name": name, "value": format!("{name}-value"), "visibility": vis }))
            )
            .0,
            201
        );
    }
    // bob cannot put alice's private secret in a token at all.
    assert_eq!(
        h.call(
            "POST",
            "/api/v1/workspaces/default/tokens",
            &bob,
            Some(json!({ "secrets": ["A_PRIV", "A_PUB"] }))
        )
        .0,
        404
    );
    let (_, w) = h.call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        &bob,
        Some(json!({ "secrets": ["A_PUB", "B_PRIV"] })),
    );
    std::fs::write(s.path().join("bob.tok"), w["token"].as_str().unwrap()).unwrap();
    let mnt = s.path().join("mnt");
    let url = server.url.clone();
    let d = Daemon::start_with(&s, &mnt, &["--token-file", "bob.tok"], |c| {
        c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
    });
    let listed = || {
        let mut v: Vec<String> = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed(), ["A_PUB", "B_PRIV"]);
    assert!(!mnt.join("A_PRIV").exists());
    // alice makes her public secret private: it leaves bob's mount.
    assert_eq!(
        h.call(
            "PATCH",
            &format!("{secrets}/A_PUB"),
            &alice,
            Some(json!({ "visibility": "private" }))
        )
        .0,
        200
    );
    assert!(
        eventually(5, || listed() == ["B_PRIV"]),
        "{:?}\n{}",
        listed(),
        d.log()
    );
}

#[test]
fn a_mount_whose_token_expires_keeps_its_values_and_says_so() {
    if !fuse_available("a_mount_whose_token_expires_keeps_its_values_and_says_so") {
        return;
    }
    let s = Scratch::new();
    let server = Server::start(&s);
    let h = Http::new(&server);
    let alice = h.user(&server.admin_token, "alice");
    assert_eq!(
        h.call(
            "POST",
            "/api/v1/workspaces/default/secrets",
            &alice,
            Some(json!({ "name": "E", "value": "kept" }))
        )
        .0,
        201
    );
    // A token that cannot be renewed past two seconds.
    let (status, w) = h.call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        &alice,
        Some(json!({ "secrets": ["E"], "ttl": "2s", "max_ttl": "2s" })),
    );
    assert_eq!(status, 201, "{w}");
    std::fs::write(s.path().join("w.tok"), w["token"].as_str().unwrap()).unwrap();
    let mnt = s.path().join("mnt");
    let url = server.url.clone();
    let d = Daemon::start_with(&s, &mnt, &["--token-file", "w.tok"], |c| {
        c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
    });
    assert_eq!(std::fs::read(mnt.join("E")).unwrap(), b"kept");
    // The next watch round after expiry is refused; the mount keeps what it had and says why.
    assert!(
        h.call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/E",
            &alice,
            Some(json!({ "value": "new" }))
        )
        .0 == 200
    );
    assert!(
        eventually(10, || d.log().contains("refused the token")),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let v = std::fs::read(mnt.join("E")).unwrap();
    assert!(v == b"kept" || v == b"new", "{v:?}");
    assert!(
        d.log().contains("serving the last known good values"),
        "{}",
        d.log()
    );
}
