//! The server's HTTP/1.1 (`src/connections.rs`, read and written by hand) as clients speak it:
//! curl's chunked uploads, `Expect: 100-continue`, HTTP/1.0 and HEAD, Python's `http.client`
//! reading pipelined answers, and raw sockets for what must be refused and for clients that
//! leave while their long-poll is held.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Api, Scratch, Server, eventually};

/// A server with secret A and a workload token for it.
struct World {
    _s: Scratch,
    server: Server,
    rt: tokio::runtime::Runtime,
    admin: String,
    workload: String,
    addr: String,
}

fn world(extra: &[&str]) -> World {
    let s = Scratch::new();
    let server = Server::start_with(&s, extra);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    let (workload, _) = rt.block_on(api.reader_of(&admin, "A", "a-value"));
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();
    World {
        _s: s,
        server,
        rt,
        admin,
        workload,
        addr,
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (scripts/test-prereqs installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a workload token for `name` reads `value`.
fn reads(w: &World, name: &str, value: &str) -> bool {
    let api = Api::new(&w.server);
    let (status, v) = w.rt.block_on(api.mint(&w.admin, &[name], json!({})));
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let (status, v) = w.rt.block_on(api.workload(&token, ""));
    status == 200 && v["secrets"][0]["value"] == value
}

#[test]
fn curl_and_python_speak_to_it_as_to_any_server() {
    let w = world(&[]);
    let secrets = format!("{}/api/v1/workspaces/default/secrets", w.server.url);
    let bearer = format!("Authorization: Bearer {}", w.admin);
    let json_type = "Content-Type: application/json";

    // A chunked upload (curl sends the file as chunks of its own sizing).
    let value = "chunked-".repeat(2000);
    let body = json!({ "name": "CHUNKED", "value": value }).to_string();
    let (out, _) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        json_type,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        &secrets,
    ]);
    assert_eq!(out, "201");
    assert!(
        reads(&w, "CHUNKED", &value),
        "the chunked body did not arrive whole"
    );

    // Expect: 100-continue: the server says continue, then reads the body.
    let body = json!({ "name": "EXPECTED", "value": "e".repeat(3000) }).to_string();
    let (out, err) = curl(&[
        "-v",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        json_type,
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "10",
        "--data-binary",
        &body,
        &secrets,
    ]);
    assert_eq!(out, "201", "{err}");
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    assert!(reads(&w, "EXPECTED", &"e".repeat(3000)));

    // HTTP/1.0: answered, and the connection closed after it.
    let healthz = format!("{}/healthz", w.server.url);
    let (out, _) = curl(&["--http1.0", "-D", "-", "-o", "/dev/null", &healthz]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );

    // HEAD: the GET's length, no body.
    let (get, _) = curl(&[&healthz]);
    let (head, _) = curl(&["-I", &healthz]);
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", get.len())),
        "{head} (GET body {get:?})"
    );

    // Three pipelined requests on one socket, read back in order by Python's http.client.
    let script = r#"
import http.client, json, socket, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port))
s.sendall(("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           "GET /api/v1/workload/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\n\r\n"
           "GET /no/such/route HTTP/1.1\r\nHost: x\r\n\r\n").encode())
# One reader for the three answers: a reader per answer would lose what the one before read ahead.
class Reader:
    def __init__(self, f): self.f = f
    def __getattr__(self, name): return getattr(self.f, name)
    def close(self): pass
class Sock:
    def __init__(self, f): self.f = f
    def makefile(self, *args, **kwargs): return self.f
shared = Sock(Reader(s.makefile("rb")))
out = []
for _ in range(3):
    r = http.client.HTTPResponse(shared)
    r.begin()
    body = r.read()
    out.append([r.status, body.decode()])
print(json.dumps(out))
"#;
    let (host, port) = w.addr.split_once(':').unwrap();
    let out = Command::new("python3")
        .args(["-c", script, host, port, &w.workload])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers[0][0], 200, "{answers}");
    assert_eq!(answers[1][0], 200, "{answers}");
    let read: Value = serde_json::from_str(answers[1][1].as_str().unwrap()).unwrap();
    assert_eq!(read["secrets"][0]["value"], "a-value");
    assert_eq!(answers[2][0], 404, "{answers}");
}

/// Sends `request` on a new connection: the answer's status, and whether the server closed the
/// connection after it (end of file within 5 s).
fn send(addr: &str, request: &[u8]) -> (u16, String, bool) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text, closed)
}

#[test]
fn framing_a_proxy_could_read_another_way_is_refused_and_the_connection_closed() {
    let w = world(&[]);
    let post = "POST /api/v1/workspaces/default/secrets HTTP/1.1\r\nHost: x\r\n";
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(17 * 1024)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{post}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
            "not both",
        ),
        (
            format!("{post}Transfer-Encoding: gzip\r\n\r\n"),
            501,
            "only transfer coding",
        ),
        (
            format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n"),
            501,
            "only transfer coding",
        ),
        (
            format!("{post}Content-Length: 5, 6\r\n\r\nhello"),
            400,
            "differing",
        ),
        (
            format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
            400,
            "differing",
        ),
        (
            format!("{post}Content-Length: +5\r\n\r\nhello"),
            400,
            "not a length",
        ),
        (
            format!("{post}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400,
            "hexadecimal",
        ),
        (
            format!("{post}Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
            400,
            "does not end",
        ),
        // Refused before a byte of the body is sent: the client need not send 100 MB.
        (
            format!("{post}Content-Length: 100000000\r\n\r\n"),
            413,
            "larger than the limit",
        ),
        (big_header, 431, "over 16384 bytes"),
        // A size with a sign, a bare LF in a chunk line, a size past the limit after a first
        // chunk (the sum must not wrap), trailers past a head's worth, chunks from HTTP/1.0.
        (format!("{post}Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"), 400, "hexadecimal"),
        (format!("{post}Transfer-Encoding: chunked\r\n\r\n5;x\nA\r\nhello\r\n0\r\n\r\n"), 400, "control byte"),
        (format!("{post}Transfer-Encoding: chunked\r\n\r\n1\r\na\r\nfffffffffffffff\r\n"), 413, "larger than the limit"),
        (
            format!(
                "{post}Transfer-Encoding: chunked\r\n\r\n0\r\n{}\r\n",
                "X-T: t\r\n".repeat(3000)
            ),
            431,
            "trailers are over",
        ),
        (
            "POST /api/v1/workspaces/default/secrets HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_owned(),
            400,
            "HTTP/1.0",
        ),
        (
            "HELLO THERE\r\n\r\n".to_owned(),
            400,
            "not an HTTP/1 request",
        ),
    ];
    for (request, status, needle) in cases {
        let (got, text, closed) = send(&w.addr, request.as_bytes());
        assert_eq!(got, status, "{request:.120}: {text}");
        assert!(text.contains(needle), "{request:.120}: {text}");
        assert!(closed, "{request:.120}: the connection stayed open");
    }
    // The same server still answers a well-formed request.
    let (got, _, _) = send(
        &w.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(got, 200);
}

/// The server's `secretfs_long_polls_held` gauge.
fn held(w: &World) -> f64 {
    w.rt.block_on(w.server.metric("long_polls_held"))
}

#[test]
fn a_client_that_leaves_ends_its_held_poll_and_one_that_pipelines_behind_it_is_answered_after() {
    let w = world(&["--metrics-listen", "127.0.0.1:0"]);
    let api = Api::new(&w.server);
    let (_, now) = w.rt.block_on(api.workload(&w.workload, ""));
    let revision = now["revision"].as_str().unwrap().to_owned();
    let poll = format!(
        "GET /api/v1/workload/secrets?wait=60s&since={revision} HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\n\r\n",
        w.workload
    );

    // Held, then the client goes: the server lets the poll go at once.
    let c = TcpStream::connect(&w.addr).unwrap();
    (&c).write_all(poll.as_bytes()).unwrap();
    assert!(eventually(10, || held(&w) == 1.0), "the poll was not held");
    drop(c);
    assert!(
        eventually(10, || held(&w) == 0.0),
        "the poll outlived its client"
    );

    // Held with a second request pipelined behind it: both answered, in order, after a change.
    let mut c = TcpStream::connect(&w.addr).unwrap();
    c.write_all(
        format!("{poll}GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert!(
        eventually(10, || held(&w) == 1.0),
        "the pipelined poll was not held"
    );
    let (status, v) = w.rt.block_on(api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/A",
        &w.admin,
        Some(json!({ "value": "a-rotated" })),
    ));
    assert_eq!(status, 200, "{v}");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    let second = text.find("HTTP/1.1 200").and_then(|first| {
        text[first + 1..]
            .find("HTTP/1.1 200")
            .map(|i| i + first + 1)
    });
    let second = second.unwrap_or_else(|| panic!("two answers expected: {text}"));
    assert!(text[..second].contains("a-rotated"), "{text}");
    assert!(!text[..second].contains(&revision), "{text}");
    assert!(text[second..].contains("connection: close"), "{text}");
}

/// A body trickled in a byte at a time (each read well within the header timeout) is cut at
/// 30 s for the whole body, and the connection with it.
#[test]
fn a_body_trickled_in_is_cut_at_its_deadline() {
    let w = world(&[]);
    let mut c = TcpStream::connect(&w.addr).unwrap();
    c.write_all(
        b"POST /api/v1/workspaces/default/secrets HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let cut = loop {
        std::thread::sleep(Duration::from_secs(2));
        if c.write_all(b" ").is_err() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the trickle was never cut"
        );
        // The server's close shows as a read of end of file (or a reset) once it has happened.
        c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break started.elapsed(),
            _ => {}
        }
    };
    assert!(
        (Duration::from_secs(28)..Duration::from_secs(40)).contains(&cut),
        "cut after {cut:?}"
    );
}
