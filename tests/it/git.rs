//! git through a mount: `secretfs git-credential` answers git's credential requests from the
//! mount's rendered credential file, for a real `git clone` and `git fetch` over HTTPS with
//! basic authentication (git's own `http-backend` behind a small TLS server the test runs), with
//! no `fatal:` after a success (git's `store` helper writes back, and fails, on a read-only
//! mount) and a rotation between two fetches.

use std::path::Path;
use std::process::Command;

use crate::support::{
    Daemon, Running, Scratch, bin, eventually, fuse_available, private_ca, python, read_within,
};

/// HTTPS in front of `git http-backend`: basic auth with the user `x-access-token` and the
/// password in TOKEN_FILE (read at each request, so the test can rotate it). Argv: port file,
/// certificate, key, the repositories' root, the token file.
const GIT_SERVER: &str = r#"
import base64, os, ssl, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port_file, cert, key, root, token_file = sys.argv[1:6]

class H(BaseHTTPRequestHandler):
    def serve(self):
        token = open(token_file).read().strip()
        want = "Basic " + base64.b64encode(("x-access-token:" + token).encode()).decode()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization", "") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                   QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(length),
                   REMOTE_USER="x-access-token", REMOTE_ADDR="127.0.0.1",
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, content = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = serve
    do_POST = serve

    def log_message(self, *args):
        pass

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
"#;

/// `git ARGS` in `dir`, with nothing of the machine's git configuration or credentials.
fn git(home: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn git_clones_and_fetches_through_the_mounts_credentials_with_no_fatal_and_across_a_rotation() {
    if !fuse_available(
        "git_clones_and_fetches_through_the_mounts_credentials_with_no_fatal_and_across_a_rotation",
    ) {
        return;
    }
    let s = Scratch::new();
    let home = s.path();
    // A repository with one commit, served bare.
    let seed = s.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    let commit = |msg: &str| {
        std::fs::write(seed.join("file"), msg).unwrap();
        assert!(git(home, &seed, &["add", "file"]).0);
        let (ok, err) = git(home, &seed, &["commit", "-q", "-m", msg]);
        assert!(ok, "{err}");
    };
    assert!(git(home, &seed, &["init", "-q", "-b", "main"]).0);
    commit("first");
    let root = s.path().join("served");
    std::fs::create_dir(&root).unwrap();
    let (ok, err) = git(
        home,
        &root,
        &["clone", "-q", "--bare", seed.to_str().unwrap(), "repo.git"],
    );
    assert!(ok, "{err}");

    // The server, with the token it wants.
    let (ca, cert, key) = private_ca(s.path(), "IP:127.0.0.1");
    let wanted = s.path().join("server-token");
    std::fs::write(&wanted, "ghp_first_0123456789").unwrap();
    let port_file = s.path().join("git.port");
    let _server = Running::spawn(
        "the git server",
        Command::new(python())
            .args(["-c", GIT_SERVER])
            .arg(&port_file)
            .args([&cert, &key, &root, &wanted]),
    );
    assert!(
        eventually(10, || port_file.exists()),
        "the git server did not start"
    );
    let port = std::fs::read_to_string(&port_file).unwrap();
    let url = format!("https://127.0.0.1:{port}/repo.git");

    // The secret, and the mount rendering git's credential file from it.
    s.ok(
        &["secret", "create", "GH", "-t", "github"],
        b"ghp_first_0123456789",
    );
    let files = s.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(
        files.join("cred.tmpl"),
        format!("https://x-access-token:{{{{ secret \"GH\" | url }}}}@127.0.0.1:{port}\n"),
    )
    .unwrap();
    std::fs::write(
        files.join("files.toml"),
        "[files.\"git-credentials\"]\ntemplate = \"cred.tmpl\"\n",
    )
    .unwrap();
    let mnt = s.path().join("mnt");
    let _d = Daemon::start(
        &s,
        &mnt,
        &[
            "--files",
            files.join("files.toml").to_str().unwrap(),
            "--refresh",
            "200ms",
        ],
    );
    let creds = mnt.join("git-credentials");
    // The line the README gives; git appends the action (get, store or erase).
    let helper = format!(
        "credential.helper=!{} git-credential --file {}",
        bin(),
        creds.display()
    );
    let cainfo = format!("http.sslCAInfo={}", ca.display());
    let with_helper = |dir: &Path, args: &[&str]| {
        let mut all = vec!["-c", "credential.helper=", "-c", &helper, "-c", &cainfo];
        all.extend_from_slice(args);
        git(home, dir, &all)
    };
    // Without a credential the server refuses: the helper is what lets git in.
    let (ok, _) = git(
        home,
        s.path(),
        &[
            "-c",
            "credential.helper=",
            "-c",
            &cainfo,
            "clone",
            "-q",
            &url,
            "refused",
        ],
    );
    assert!(!ok, "the server let git in without a credential");
    let (ok, err) = with_helper(s.path(), &["clone", "-q", &url, "work"]);
    assert!(ok, "clone: {err}");
    assert!(!err.contains("fatal:"), "clone: {err}");
    let work = s.path().join("work");
    assert_eq!(std::fs::read_to_string(work.join("file")).unwrap(), "first");

    // A rotation: the server wants the new token, the secret is updated, the mount renders it;
    // the next fetch authenticates with it, and brings the new commit.
    commit("second");
    let (ok, err) = git(
        home,
        &seed,
        &[
            "push",
            "-q",
            root.join("repo.git").to_str().unwrap(),
            "main",
        ],
    );
    assert!(ok, "{err}");
    std::fs::write(&wanted, "ghp_second_0123456789").unwrap();
    s.ok(&["secret", "update", "GH"], b"ghp_second_0123456789");
    assert!(
        eventually(5, || read_within(&creds)
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("ghp_second"))),
        "the mount did not render the rotated token"
    );
    let (ok, err) = with_helper(&work, &["fetch", "-q", "origin"]);
    assert!(ok, "fetch: {err}");
    assert!(!err.contains("fatal:"), "fetch: {err}");
    let (ok, err) = git(home, &work, &["merge", "-q", "--ff-only", "origin/main"]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(work.join("file")).unwrap(),
        "second"
    );
}
