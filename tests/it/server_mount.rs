//! A mount whose source is a server: rotations reach it, it rides out an outage, and it gives up
//! on a server it never reaches.

use std::time::Duration;

use serde_json::json;

use crate::support::{Api, Daemon, NotifySocket, Scratch, Server, eventually, fuse_available};

#[test]
fn rotation_reaches_a_mount_within_a_second_and_survives_an_outage() {
    if !fuse_available("rotation_reaches_a_mount_within_a_second_and_survives_an_outage") {
        return;
    }
    let s = Scratch::new();
    let mut server = Server::start(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let alice = rt.block_on(api.user(&server.admin_token, "alice"));
    rt.block_on(api.create(&alice, "ROT", "v1", "private"));
    let (_, w) = rt.block_on(api.mint(&alice, &["ROT"], json!({})));
    let wfile = s.path().join("w.tok");
    std::fs::write(&wfile, w["token"].as_str().unwrap()).unwrap();
    let mnt = s.path().join("mnt");
    let url = server.url.clone();
    let notify = NotifySocket::at_path(&s.path().join("notify"));
    let d = Daemon::start_with(&s, &mnt, &["--token-file", wfile.to_str().unwrap()], |c| {
        c.env("SECRETFS_URL", &url)
            .env_remove("SECRETFS_STORE")
            .env("NOTIFY_SOCKET", &notify.address);
    });
    notify.until("READY=1", 10);
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
    // systemctl status says so, and since when.
    let said = notify.until("source failing since", 10);
    assert!(said.last().unwrap().contains("1 secret at"), "{said:?}");
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
    notify.until("(source reachable again)", 10);
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
