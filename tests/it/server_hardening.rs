//! The server process holds the master key and passes values on every workload read: it is not
//! dumpable, not traceable, and writes no core files.

use std::time::{Duration, Instant};

use crate::support::{Api, NO_PTRACE, Running, Scratch, Server, assert_hardened, eventually};

#[test]
fn the_server_process_is_hardened() {
    let s = Scratch::new();
    // Started without CAP_SYS_PTRACE, so a reader with the same uid and capabilities passes every
    // ptrace check but dumpability (as in the daemon's test).
    // Stopped however the test ends: a failed assertion must not leave a server behind.
    let mut child = Running::spawn(
        "secretfs serve",
        std::process::Command::new("setpriv")
            .args(NO_PTRACE)
            .arg(crate::support::bin())
            .args(["serve", "--init", "--listen", "127.0.0.1:0", "--database"])
            .arg(format!("sqlite://{}", s.path().join("h.db").display()))
            .current_dir(s.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("serving"), "{line}");
    assert_hardened(child.id(), "server");
}

/// Slow and idle clients cannot hold the server's connections: 400 connections that send half a
/// request are closed once the 10 s for headers have passed, and so is a kept-alive connection
/// left idle after its answer; a long-poll held past those 10 s is answered as usual.
#[test]
fn half_sent_requests_and_idle_connections_are_closed_and_long_polls_are_not() {
    use std::io::{Read, Write};
    let s = Scratch::new();
    let server = Server::start(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    let (workload, revision) = rt.block_on(api.reader_of(&admin, "A", "a-value"));

    let addr = server.url.strip_prefix("http://").unwrap().to_owned();
    // A long-poll that the 10 s must not cut: held 13 s, answered with no change.
    let poll = {
        let url = server.url.clone();
        let token = workload.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let (status, _) = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(Api::at(&url).workload(&token, &format!("?wait=13s&since={revision}")));
            (status, started.elapsed())
        })
    };
    let started = Instant::now();
    let mut half: Vec<std::net::TcpStream> = (0..400)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bear")
                .unwrap();
            c
        })
        .collect();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    // Each is closed by the server (end of file, or a reset), within the limit and a margin.
    let closed = |c: &mut std::net::TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    assert!(
        closed(&mut idle),
        "an idle kept-alive connection stayed open"
    );
    for (i, c) in half.iter_mut().enumerate() {
        assert!(closed(c), "half-sent request {i} stayed open");
    }
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(14)).contains(&took),
        "closed after {took:?}"
    );
    let (status, held) = poll.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        held >= Duration::from_secs(12),
        "the long-poll was cut after {held:?}"
    );
}

/// SIGTERM with long-polls held (one of them over a kept-alive connection that served a read
/// first): each is answered at once with what it has (status 200, the revision unchanged), not
/// after the 10 s the shutdown lets requests run, and the server exits 0 with its port closed.
#[test]
fn a_shutdown_answers_held_long_polls_at_once() {
    use nix::sys::signal::{Signal, kill};
    let s = Scratch::new();
    let mut server = Server::start_with(&s, &["--metrics-listen", "127.0.0.1:0"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    let (workload, revision) = rt.block_on(api.reader_of(&admin, "A", "a-value"));

    let polls: Vec<_> = (0..3)
        .map(|_| {
            let url = server.url.clone();
            let token = workload.clone();
            let since = revision.clone();
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    let api = Api::at(&url);
                    // A read first, so that the poll reuses a kept-alive connection.
                    let (status, _) = api.workload(&token, "").await;
                    assert_eq!(status, 200);
                    let (status, v) = api
                        .workload(&token, &format!("?wait=60s&since={since}"))
                        .await;
                    (status, v, Instant::now())
                })
            })
        })
        .collect();
    // Every poll held (the server's gauge says so) before the signal.
    assert!(
        eventually(10, || rt.block_on(server.metric("long_polls_held")) >= 3.0),
        "the polls were not all held"
    );
    let signalled = Instant::now();
    kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    for p in polls {
        let (status, v, answered) = p.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["revision"].as_str(), Some(revision.as_str()), "{v}");
        let after = answered.saturating_duration_since(signalled);
        assert!(
            after < Duration::from_secs(3),
            "answered {after:?} after SIGTERM"
        );
    }
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "the server still runs 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let addr = server.url.strip_prefix("http://").unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
}
