//! The server process holds the master key and passes values on every workload read: it is not
//! dumpable, not traceable, and writes no core files.

use crate::support::{NO_PTRACE, Running, Scratch, assert_hardened};

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
