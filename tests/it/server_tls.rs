//! `secretfs serve --tls-cert --tls-key`: a server certificate from a private CA, trusted with
//! `--ca-file` and refused without it.

use crate::support::{Scratch, Server};

#[test]
fn tls_with_a_private_ca() {
    let s = Scratch::new();
    // A private CA, and a server certificate it signs for 127.0.0.1.
    let (ca, cert, key) = crate::support::private_ca(s.path(), "IP:127.0.0.1,DNS:localhost");
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
            .env("SECRETFS_TOKEN_FILE", &admin_file)
            .env_remove("SECRETFS_STORE");
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
