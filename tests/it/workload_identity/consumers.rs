//! Workload identity through the consumers: a mount and a supervised run exchange the
//! platform's token and follow its rewrites and its binding's removal.

#[allow(unused_imports)]
use super::*;

/// The mount and the launcher with `--identity-token-file`: no workload token handed over; the
/// file re-read before the exchanged token expires; a removed binding stops the values within a
/// second.
#[test]
fn mounts_and_runs_exchange_the_platform_token_and_follow_its_rewrites() {
    let test = "mounts_and_runs_exchange_the_platform_token_and_follow_its_rewrites";
    if !fuse_available(test) {
        return;
    }
    let Some(w) = world(test, &[]) else {
        return;
    };
    // Workload tokens of 4 s: the client exchanges again after two thirds of that.
    w.bind_lepton("lepton", &["--ttl", "4s"]);
    let token_file = w.s.path().join("sa-token");
    // Each platform token lives 8 s: a client that kept the first file's token would be refused
    // from 8 s on.
    let write_token = |pod: &str| {
        let t = w
            .issuer
            .mint(json!({"claims": k8s("ws-abc", "default", pod), "ttl": 8}));
        // kubelet's way: a new file renamed over the old.
        let tmp = w.s.path().join("sa-token.tmp");
        std::fs::write(&tmp, t).unwrap();
        std::fs::rename(&tmp, &token_file).unwrap();
    };
    write_token("pod-0");

    // The launcher: the identity variable is its own, stripped from the workload.
    let report = w.s.path().join("env.json");
    let mut cmd = w.s.cmd(&[
        "run",
        "--url",
        &w.server.url,
        "-s",
        "HF_TOKEN",
        "--",
        crate::support::python(),
        "-c",
        "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))",
        report.to_str().unwrap(),
    ]);
    cmd.env("SECRETFS_IDENTITY_TOKEN_FILE", &token_file);
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(env["HF_TOKEN"], "hf_identity_value");
    assert!(env.get("SECRETFS_IDENTITY_TOKEN_FILE").is_none(), "{env}");
    // Fail closed: a secret outside the binding, or a token the binding does not admit.
    let mut cmd = w.s.cmd(&[
        "run",
        "--url",
        &w.server.url,
        "--identity-token-file",
        token_file.to_str().unwrap(),
        "-s",
        "NOT_BOUND",
        "--",
        "true",
    ]);
    cmd.env_remove("SECRETFS_IDENTITY_TOKEN_FILE");
    let out = crate::support::run_with(cmd, b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("NOT_BOUND"), "{}", out.stderr);

    // The mount.
    let mnt = w.s.path().join("mnt");
    let url = w.server.url.clone();
    let mut d = Daemon::start_with(
        &w.s,
        &mnt,
        &[
            "--identity-token-file",
            token_file.to_str().unwrap(),
            "--refresh",
            "1s",
        ],
        |c| {
            c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
        },
    );
    assert_eq!(
        std::fs::read(mnt.join("HF_TOKEN")).unwrap(),
        b"hf_identity_value"
    );
    assert!(!mnt.join("NOT_BOUND").exists());
    // Past three lives of the first workload token: exchanged again, from rewritten files.
    for pod in ["pod-1", "pod-2", "pod-3"] {
        write_token(pod);
        std::thread::sleep(Duration::from_secs(4));
    }
    let (status, _) = w.rt.block_on(w.api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/HF_TOKEN",
        &w.alice,
        Some(json!({"value": "hf_rotated"})),
    ));
    assert_eq!(status, 200);
    assert!(
        eventually(5, || std::fs::read(mnt.join("HF_TOKEN")).ok().as_deref()
            == Some(b"hf_rotated")),
        "the mount stopped following after the first token's expiry: {}",
        d.log()
    );
    let exchanges = w
        .audit()
        .iter()
        .filter(|a| a["action"] == "identity-exchange")
        .filter(|a| {
            a["detail"]
                .as_str()
                .unwrap()
                .contains("sub \"system:serviceaccount:ws-abc:default\"")
        })
        .count();
    assert!(exchanges >= 4, "the mount exchanged {exchanges} times");

    // A granted secret its user may no longer use (bob makes his public one private): gone from
    // the mount within a second, and logged.
    assert!(mnt.join("SHARED").exists());
    let (status, _) = w.rt.block_on(w.api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/SHARED",
        &w.bob,
        Some(json!({"visibility": "private"})),
    ));
    assert_eq!(status, 200);
    let hidden = Instant::now();
    assert!(
        eventually(5, || !mnt.join("SHARED").exists()),
        "{}",
        d.log()
    );
    assert!(
        hidden.elapsed() < Duration::from_secs(2),
        "{:?}",
        hidden.elapsed()
    );
    assert!(
        d.log().contains("secret removed secret=SHARED"),
        "{}",
        d.log()
    );

    // The binding removed: no new values within a second, and the log says why.
    write_token("pod-4");
    let out = identity(&w.s, &w.server, &["remove", "lepton"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let removed = Instant::now();
    w.rt.block_on(w.api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/HF_TOKEN",
        &w.alice,
        Some(json!({"value": "hf_after_removal"})),
    ));
    assert!(
        eventually(5, || d.log().contains(UNADMITTED)),
        "{}",
        d.log()
    );
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "{:?}",
        removed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(
        std::fs::read(mnt.join("HF_TOKEN")).ok().as_deref(),
        Some(&b"hf_after_removal"[..]),
        "a value written after the binding's removal reached the mount"
    );
    let log = d.log();
    let presented = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !log.contains(presented.rsplit('.').next().unwrap()),
        "the token in the mount's log"
    );
    d.stop(nix::sys::signal::Signal::SIGTERM);
}

/// A supervised run (`--watch`) with an identity: its follower exchanges on its own, a rotation
/// restarts the workload with the new value, and once the binding is removed no new value
/// reaches it and the supervisor says why.
#[test]
fn a_supervised_run_follows_through_an_identity_until_its_binding_goes() {
    let test = "a_supervised_run_follows_through_an_identity_until_its_binding_goes";
    let Some(w) = world(test, &[]) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let token_file = w.s.path().join("sa-token");
    let t = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-0"), "ttl": 600}));
    std::fs::write(&token_file, t).unwrap();
    let log = w.s.path().join("starts.log");
    let err = w.s.path().join("run.err");
    let script = format!(
        "echo \"$$ $HF_TOKEN\" >> {}; while true; do sleep 0.05; done",
        log.display()
    );
    let mut run = w.s.cmd(&[
        "run",
        "--watch",
        "--debounce",
        "0s",
        "--url",
        &w.server.url,
        "--identity-token-file",
        token_file.to_str().unwrap(),
        "-s",
        "HF_TOKEN",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut child = Running::spawn(
        "secretfs run --watch",
        run.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    let starts = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').map_or("", |(_, v)| v).to_owned())
            .collect()
    };
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(eventually(10, || starts().len() == 1), "{}", stderr());
    assert_eq!(starts()[0], "hf_identity_value");
    let update = |value: &str| {
        let (status, v) = w.rt.block_on(w.api.call(
            "PATCH",
            "/api/v1/workspaces/default/secrets/HF_TOKEN",
            &w.alice,
            Some(json!({ "value": value })),
        ));
        assert_eq!(status, 200, "{v}");
    };
    update("hf_second");
    assert!(eventually(5, || starts().len() == 2), "{}", stderr());
    assert_eq!(starts()[1], "hf_second");

    let out = identity(&w.s, &w.server, &["remove", "lepton"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let removed = Instant::now();
    update("hf_after_removal");
    assert!(
        eventually(5, || stderr().contains(UNADMITTED)),
        "{}",
        stderr()
    );
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "{:?}",
        removed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(
        starts().len(),
        2,
        "a value after the removal restarted it: {}",
        stderr()
    );
    // Its follower asks every second; refused once, it does not ask again for 5 s (each
    // refusal is an audit record): one record, not one a second.
    let refusals = w
        .audit()
        .iter()
        .filter(|a| a["action"] == "identity-exchange-refused")
        .count();
    assert_eq!(refusals, 1, "{}", stderr());
    child.signal_and_wait(nix::sys::signal::Signal::SIGTERM, FS_LIMIT);
    let presented = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !stderr().contains(presented.rsplit('.').next().unwrap()),
        "the token in the log"
    );
}
