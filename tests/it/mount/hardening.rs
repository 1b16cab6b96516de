//! The daemon's hardening: locked, undumpable memory, silent logs, terminal ioctls, and what it
//! needs of the machine.

use nix::sys::signal::Signal;
use std::process::Command;

use super::store_with;
use crate::support::{
    CANARY, Daemon, NO_PTRACE, Scratch, assert_hardened, assert_no_canary, eventually,
    fuse_available,
};

/// Python opens every text file with an `isatty()` check, an ioctl the kernel forwards to the
/// daemon each time; it is answered as tmpfs answers it (ENOTTY), without a log line.
#[test]
fn terminal_ioctls_are_answered_enotty_without_a_log_line() {
    if !fuse_available("terminal_ioctls_are_answered_enotty_without_a_log_line") {
        return;
    }
    let s = store_with(&[("A", b"alpha")]);
    let mnt = s.path().join("mnt");
    let d = Daemon::start(&s, &mnt, &["-vv"]);
    let script = r#"
import errno, fcntl, os, sys, termios
p = sys.argv[1]
for _ in range(2000):
    assert open(p).read() == "alpha"
fd = os.open(p, os.O_RDONLY)
assert not os.isatty(fd)
try:
    fcntl.ioctl(fd, termios.TCGETS, bytes(64))
    sys.exit("TCGETS succeeded")
except OSError as e:
    assert e.errno == errno.ENOTTY, e
print("ok")
"#;
    let out = Command::new(crate::support::python())
        .args(["-c", script])
        .arg(mnt.join("A"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = d.log();
    assert!(
        !log.contains("ioctl") && !log.contains("Not Implemented"),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn daemon_memory_is_locked_and_not_dumpable() {
    if !fuse_available("daemon_memory_is_locked_and_not_dumpable") {
        return;
    }
    let s = store_with(&[("A", CANARY.as_bytes())]);
    let mnt = s.path().join("mnt");
    // The daemon runs without CAP_SYS_PTRACE (it keeps CAP_SYS_ADMIN to mount), so a reader with
    // the same uid and capabilities passes every ptrace check except dumpability.
    let reduced = ["setpriv", NO_PTRACE[0], NO_PTRACE[1]];
    let d = Daemon::start_wrapped(&s, &mnt, &[], &reduced, |_| {});
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let vmlck: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(vmlck > 0, "VmLck is 0:\n{status}");
    assert_hardened(d.pid() as u32, "daemon");
}

#[test]
fn the_canary_never_reaches_the_log_even_at_trace_level() {
    if !fuse_available("the_canary_never_reaches_the_log_even_at_trace_level") {
        return;
    }
    let s = store_with(&[("A", CANARY.as_bytes())]);
    let mnt = s.path().join("mnt");
    let mut d = Daemon::start_with(&s, &mnt, &["--refresh", "150ms", "--audit"], |c| {
        c.env("RUST_LOG", "trace");
    });
    assert_eq!(std::fs::read(mnt.join("A")).unwrap(), CANARY.as_bytes());
    s.ok(&["secret", "update", "A"], format!("{CANARY}-2").as_bytes());
    assert!(eventually(5, || std::fs::read(mnt.join("A"))
        .unwrap()
        .ends_with(b"-2")));
    d.stop(Signal::SIGTERM);
    let log = d.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace logging was not on"
    );
    assert_no_canary("daemon log at trace level", log.as_bytes());
    assert_no_canary("daemon ready line", d.ready_line.as_bytes());
}

#[test]
fn doctor_reports_what_fuse_needs() {
    if !fuse_available("doctor_reports_what_fuse_needs") {
        return;
    }
    let s = Scratch::new();
    let out = s.run(&["doctor"], b"");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("ok   /dev/fuse") && out.stdout.contains("ok   fusermount3"),
        "{}",
        out.stdout
    );
    let mut cmd = s.cmd(&["doctor"]);
    cmd.env("PATH", "/nonexistent");
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("FAIL fusermount3: not found: install the fuse3 package"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_memlock_limit_is_a_warning_not_a_failure() {
    if !fuse_available("a_memlock_limit_is_a_warning_not_a_failure") {
        return;
    }
    let s = store_with(&[("A", b"value")]);
    let mnt = s.path().join("mnt");
    // Without CAP_IPC_LOCK and with a zero limit, mlock fails; the mount still serves.
    let wrapper = [
        "prlimit",
        "--memlock=0:0",
        "setpriv",
        "--bounding-set=-ipc_lock",
        "--inh-caps=-ipc_lock",
    ];
    let d = Daemon::start_wrapped(&s, &mnt, &[], &wrapper, |_| {});
    assert!(
        d.ready_line.contains("(memory NOT locked)"),
        "{}",
        d.ready_line
    );
    assert!(d.log().contains("cannot lock secret memory"), "{}", d.log());
    assert_eq!(std::fs::read(mnt.join("A")).unwrap(), b"value");
}
