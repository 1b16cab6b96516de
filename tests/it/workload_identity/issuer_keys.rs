//! Workload identity: an issuer's keys, fetched, cached, rotated, unreachable, and never from
//! this host for a remote issuer.

#[allow(unused_imports)]
use super::*;

/// Serves, over TLS on the other host, a discovery document per path `/sN` whose `jwks_uri` is
/// the N-th line of `uris` (argv: port, cert, key, the issuer base URL, the uris file).
const DISCOVERY: &str = r#"
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, cert, key, base, uris = sys.argv[1:6]
targets = open(uris).read().split()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if not self.path.startswith("/s"):
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        n = int(self.path.split("/")[1][1:])
        body = json.dumps({"issuer": f"{base}/s{n}", "jwks_uri": targets[n]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = ThreadingHTTPServer(("0.0.0.0", int(port)), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
open(uris + ".ready", "w").close()
srv.serve_forever()
"#;

/// An issuer on another host cannot aim the server's key fetch at this host, however it spells
/// it: its discovery document naming this host's listener through each loopback, unspecified,
/// mapped or own-interface spelling is refused (the binding is not added, and says why), and the
/// listener sees not one connection. A document naming a host elsewhere is fetched from.
#[test]
fn a_remote_issuer_cannot_aim_the_key_fetch_at_this_host() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").is_ok_and(|v| v != "true") || std::env::var("CI").is_err(),
            "CI=true needs root for the other host"
        );
        eprintln!("skipping: another host needs root (a network namespace)");
        return;
    }
    let s = Scratch::new();
    let other = crate::support::OtherHost::new();
    let (ca, cert, key) = crate::support::private_ca(s.path(), &format!("IP:{}", other.there));
    // A listener on every address of this host: any connection the server makes to it counts.
    let listener = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let reached = |l: &std::net::TcpListener| {
        let mut n = 0;
        while l.accept().is_ok() {
            n += 1;
        }
        n
    };
    let spellings = [
        format!("https://127.1:{port}/jwks"),
        format!("https://127.0.0.3:{port}/jwks"),
        format!("https://0.0.0.0:{port}/jwks"),
        format!("https://2130706433:{port}/jwks"),
        format!("https://0x7f.1:{port}/jwks"),
        format!("https://[::1]:{port}/jwks"),
        format!("https://[::ffff:127.0.0.1]:{port}/jwks"),
        format!("https://localhost:{port}/jwks"),
        format!("https://{}:{port}/jwks", other.here),
        // Elsewhere (the other host itself): fetched, and found to hold no key.
        format!("https://{}:8443/nothing", other.there),
    ];
    let uris = s.path().join("uris");
    std::fs::write(&uris, spellings.join("\n")).unwrap();
    let base = format!("https://{}:8443", other.there);
    let _discovery = crate::support::Running::spawn(
        "the other host's discovery server",
        other
            .command(crate::support::python())
            .args(["-c", DISCOVERY, "8443"])
            .args([&cert, &key])
            .arg(&base)
            .arg(&uris),
    );
    assert!(
        eventually(10, || s.path().join("uris.ready").exists()),
        "the discovery server did not start"
    );
    let server = Server::start_env(&s, &[], &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, v) =
        rt.block_on(Api::new(&server).create(&server.admin_token, "S", "v", "private"));
    assert_eq!(status, 201, "{v}");
    for (n, uri) in spellings.iter().enumerate() {
        let issuer = format!("{base}/s{n}");
        let out = add(
            &s,
            &server,
            &format!("b{n}"),
            &issuer,
            K8S_AUD,
            "system:serviceaccount:ns:sa",
            &["--user", "admin", "-s", "S"],
        );
        assert_ne!(out.code, 0, "{uri}: {}", out.stdout);
        let said = out.stderr.to_lowercase();
        if n + 1 < spellings.len() {
            assert!(said.contains("this host"), "{uri}: {}", out.stderr);
        } else {
            assert!(said.contains("answered 404"), "{uri}: {}", out.stderr);
        }
    }
    assert_eq!(
        reached(&listener),
        0,
        "the server's fetch reached this host"
    );
}

#[test]
fn key_rotation_is_followed_and_a_flood_of_unknown_keys_costs_one_fetch() {
    let Some(w) = world(
        "key_rotation_is_followed_and_a_flood_of_unknown_keys_costs_one_fetch",
        &["--jwks-refetch-interval", "3s"],
    ) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let first = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "a")}));
    assert_eq!(exchange(&w.rt, &w.api, &first, None).0, 200);
    let fetched_at = Instant::now();
    let before = w.issuer.jwks_fetches();
    // The issuer rotates to an EdDSA key: tokens of the new kid are refused until the refetch
    // interval since the last fetch has passed, then followed.
    w.issuer
        .post("/rotate", json!({"alg": "EdDSA", "kid": "ed-2"}));
    let rotated = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "b")}));
    let flood_started = Instant::now();
    let mut refused = 0;
    for i in 0..40 {
        let t = w
            .issuer
            .mint(json!({"claims": k8s("ws-abc", "default", "c"), "kid": "ed-2"}));
        let _ = i;
        if exchange(&w.rt, &w.api, &t, None).0 == 400 {
            refused += 1;
        }
        if fetched_at.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    assert!(
        refused > 0,
        "the unknown kid was accepted before any refetch"
    );
    assert!(
        w.issuer.jwks_fetches() - before <= 1,
        "{} fetches for {refused} tokens of an unknown kid within {:?}",
        w.issuer.jwks_fetches() - before,
        flood_started.elapsed()
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(fetched_at.elapsed()) + Duration::from_millis(300),
    );
    let (status, v) = exchange(&w.rt, &w.api, &rotated, None);
    assert_eq!(
        status, 200,
        "the rotated key is followed after the interval: {v}"
    );
    // A key the issuer does not publish, after the interval: fetched again once, still unknown,
    // refused.
    w.issuer.post(
        "/rotate",
        json!({"alg": "ES256", "kid": "unpublished", "publish": false}),
    );
    std::thread::sleep(Duration::from_millis(3300));
    let before = w.issuer.jwks_fetches();
    let t = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "e")}));
    let (status, v) = exchange(&w.rt, &w.api, &t, None);
    assert_eq!(status, 400, "{v}");
    // The caller gets the answer of every refusal before a signature verifies; the audit says
    // which key was missing: the first unknown key from this address is named, and later ones
    // (this one included) are counted into its record, a flood of made-up key ids being one
    // kind of refusal.
    assert_eq!(v["error_description"], UNADMITTED, "{v}");
    assert!(
        w.audit().iter().any(|a| a["detail"]
            .as_str()
            .unwrap()
            .contains("publishes no key \"ed-2\"")),
        "the audit names the key"
    );
    assert_eq!(
        w.issuer.jwks_fetches() - before,
        1,
        "the unknown key was looked for again"
    );
    // A key still published keeps working after the rotation.
    let old = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "d"), "kid": "k1"}));
    assert_eq!(exchange(&w.rt, &w.api, &old, None).0, 200);
}

#[test]
fn an_unreachable_issuer_fails_closed_with_a_clear_error() {
    let Some(mut w) = world(
        "an_unreachable_issuer_fails_closed_with_a_clear_error",
        &["--jwks-refetch-interval", "1s"],
    ) else {
        return;
    };
    // Refused at add time, each with its reason: discovery at an issuer that does not answer,
    // plain HTTP to another host, and a binding that does not narrow the issuer's subjects.
    let issuer = w.issuer.url.clone();
    for (name, iss, subject, says) in [
        (
            "gone",
            "http://127.0.0.1:9/none",
            "job:*",
            "cannot reach http://127.0.0.1:9/none/.well-known/openid-configuration",
        ),
        (
            "plain",
            "http://issuer.example.com",
            "job:*",
            "must be an https:// URL",
        ),
        (
            "everyone",
            issuer.as_str(),
            "*",
            "admits every token of the issuer",
        ),
    ] {
        let rest = ["--user", "alice", "-s", "HF_TOKEN"];
        let out = add(&w.s, &w.server, name, iss, "a", subject, &rest);
        assert_ne!(out.code, 0, "{name}");
        assert!(out.stderr.contains(says), "{name}: {}", out.stderr);
    }
    // Bound while reachable, to an issuer whose keys may not be kept (no-store: kept for the
    // refetch interval, 1 s, from the fetch at `identity add`); the issuer goes away; once its
    // keys have expired they cannot be had: 503, said so, and audited.
    let python = tools_python("", "jwt").unwrap();
    w.issuer = Issuer::start_caching(&w.s, &python, "", 0);
    w.bind_lepton("lepton", &[]);
    let token = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "a")}));
    // A second issuer whose keys may not be kept (no-store): they are kept for the refetch
    // interval (1 s here), used while fresh, then the issuer's absence fails closed.
    let mut brief = Issuer::start_caching(&w.s, &python, "/brief", 0);
    let out = add(
        &w.s,
        &w.server,
        "brief",
        &brief.url,
        "secretfs",
        "job:*",
        &["--user", "alice", "-s", "HF_TOKEN"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job =
        |n: u32| brief.mint(json!({"claims": {"sub": format!("job:{n}"), "aud": "secretfs"}}));
    let (first, second, third) = (job(1), job(2), job(3));
    assert_eq!(exchange(&w.rt, &w.api, &first, None).0, 200);
    brief
        .child
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, FS_LIMIT);
    let fetched = Instant::now();
    let (status, v) = exchange(&w.rt, &w.api, &second, None);
    if fetched.elapsed() < Duration::from_millis(900) {
        assert_eq!(status, 200, "keys still fresh: {v}");
    }
    std::thread::sleep(Duration::from_millis(1300));
    let (status, v) = exchange(&w.rt, &w.api, &third, None);
    assert_eq!(status, 503, "expired keys of an unreachable issuer: {v}");
    let mut issuer = w.issuer;
    issuer
        .child
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, FS_LIMIT);
    let (status, v) = exchange(&w.rt, &w.api, &token, None);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"], "temporarily_unavailable");
    let why = v["error_description"].as_str().unwrap();
    assert!(why.contains("cannot get the issuer's keys now"), "{v}");
    assert!(
        !why.contains("127.0.0.1"),
        "the caller is not told where the keys live: {why}"
    );
    let log = w.server.log();
    assert!(
        log.contains("cannot fetch the issuer's keys"),
        "the log says why: {log}"
    );
}
