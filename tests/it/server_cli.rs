//! The management CLI against a real server: `user add`, `login`, remote `secret` and `token`
//! commands, and the launcher reading through the server with a workload token.

use serde_json::Value;

use crate::support::{CANARY, Scratch, Server, assert_no_canary};

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

/// `secretfs token create ... > job.token` as a walk-through writes it: the shell makes the file
/// 0644, the token goes in and the file is 0600 (no consumer then warns about it); and a login
/// made while `SECRETFS_STORE` is set says that the store comes first until it is unset.
#[test]
fn a_token_sent_to_a_file_is_private_and_a_shadowed_login_says_so() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let s = Scratch::new();
    let server = Server::start(&s);
    let admin_file = s.path().join("server.db.admin-token");
    let job = s.path().join("job.token");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&job)
        .unwrap();
    let mut cmd = s.cmd(&["user", "add", "alice"]);
    cmd.env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN_FILE", &admin_file)
        .env_remove("SECRETFS_STORE")
        .stdout(file);
    let status = cmd.status().unwrap();
    assert!(status.success());
    let mode = std::fs::metadata(&job).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&job).unwrap();
    assert!(token.starts_with("sfs_u_"), "the token is in the file");

    // A terminal or a pipe is left alone: only a regular file is a file others may read later.
    let out = crate::support::run_with(
        {
            let mut c = s.cmd(&["token", "list"]);
            c.env("SECRETFS_URL", &server.url)
                .env("SECRETFS_TOKEN_FILE", &job)
                .env_remove("SECRETFS_STORE");
            c
        },
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // Scratch::cmd sets SECRETFS_STORE, as a walk-through's `export` would.
    let out = crate::support::run_with(
        s.cmd(&["login", &server.url, "--token-file", job.to_str().unwrap()]),
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "warning: SECRETFS_STORE is set: commands use the local store {} rather than this \
             login until it is unset",
            s.store().display()
        )),
        "{}",
        out.stderr
    );
    let mut plain = s.cmd(&["login", &server.url, "--token-file", job.to_str().unwrap()]);
    plain.env_remove("SECRETFS_STORE");
    let out = crate::support::run_with(plain, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}
