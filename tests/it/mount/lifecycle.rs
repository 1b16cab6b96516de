//! A mount's life: start and refusal, clean stops, kills in every order, and a new daemon taking
//! over a dead mount.

use nix::sys::signal::Signal;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::store_with;
use crate::support::{
    Daemon, FS_LIMIT, Running, Scratch, eventually, fuse_available, is_mounted, list_within,
    open_up, read_within, stat_within, try_within, within,
};

#[test]
fn sigterm_unmounts_and_exits_zero() {
    if !fuse_available("sigterm_unmounts_and_exits_zero") {
        return;
    }
    let s = store_with(&[("A", b"x")]);
    let mnt = s.path().join("mnt");
    let mut d = Daemon::start(&s, &mnt, &[]);
    assert!(is_mounted(&mnt));
    assert_eq!(d.stop(Signal::SIGTERM), Some(0));
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);

    let mut d = Daemon::start(&s, &mnt, &[]);
    assert_eq!(d.stop(Signal::SIGINT), Some(0));
    assert!(!is_mounted(&mnt), "still mounted after SIGINT");
}

/// The pids of `pid`'s children (every thread's), from /proc.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// The daemon's unmount guard (`secretfs __mount-guard DIR`).
fn guard_of(d: &Daemon) -> i32 {
    children(d.pid())
        .into_iter()
        .find(|c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|argv| argv.windows(15).any(|w| w == b"__mount-guard\0/"))
        })
        .expect("the daemon has an unmount guard child")
}

/// kill -9 leaves no mount behind, whatever the daemon did before: nothing, a readdir (after
/// which the kernel opens the directory without the daemon, which fooled fusermount3's own
/// check), reads, a rotation, or while 1,000 readers are at work.
#[test]
fn a_killed_daemon_leaves_no_mount_in_any_order() {
    if !fuse_available("a_killed_daemon_leaves_no_mount_in_any_order") {
        return;
    }
    let s = store_with(&[("A", b"alpha"), ("B", b"bravo")]);
    let mnt = s.path().join("mnt");
    let ls = |mnt: &Path| {
        let names: Vec<_> = std::fs::read_dir(mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2);
    };
    type Before<'a> = &'a dyn Fn(&Path);
    let orders: [(&str, Before); 4] = [
        ("nothing", &|_| {}),
        ("after a readdir", &|m| ls(m)),
        ("after reads", &|m| {
            ls(m);
            assert_eq!(std::fs::read(m.join("A")).unwrap(), b"alpha");
            assert_eq!(std::fs::read(m.join("B")).unwrap(), b"bravo");
        }),
        ("after a rotation", &|m| {
            ls(m);
            assert_eq!(std::fs::read(m.join("A")).unwrap(), b"alpha");
            s.ok(&["secret", "update", "A"], b"alpha-2");
            assert!(eventually(5, || std::fs::read(m.join("A")).unwrap() == b"alpha-2"));
            s.ok(&["secret", "update", "A"], b"alpha");
            assert!(eventually(5, || std::fs::read(m.join("A")).unwrap() == b"alpha"));
        }),
    ];
    // Where the time went, should this fail (printed with the failure).
    let started = std::time::Instant::now();
    for (order, before) in orders {
        eprintln!("{:?}: a daemon killed {order}", started.elapsed());
        let mut d = Daemon::start(&s, &mnt, &["--refresh", "100ms"]);
        before(&mnt);
        d.stop(Signal::SIGKILL);
        assert!(
            eventually(5, || !is_mounted(&mnt)),
            "a daemon killed {order} left its mount behind"
        );
        assert_eq!(list_within(&mnt).unwrap().len(), 0, "{order}");
        if order != "nothing" {
            // fusermount3's helper cannot tell this daemon died; the guard did the work (and
            // says so just after the unmount, which the check above may see first).
            assert!(
                eventually(5, || d
                    .log()
                    .contains("the mount daemon is gone; unmounted")),
                "{order}: {}",
                d.log()
            );
        }
    }

    // Under 1,000 readers, each opening and reading a file in a loop until the mount goes.
    eprintln!("{:?}: under 1,000 readers", started.elapsed());
    let mut d = Daemon::start(&s, &mnt, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let go = std::sync::Arc::new(std::sync::Barrier::new(1001));
    let readers: Vec<_> = (0..1000)
        .map(|i| {
            let path = mnt.join(if i % 2 == 0 { "A" } else { "B" });
            let (stop, reads, tids, go) = (stop.clone(), reads.clone(), tids.clone(), go.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    tids.lock()
                        .unwrap()
                        .push(nix::unistd::gettid().as_raw().to_string());
                    go.wait();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if std::fs::read(&path).is_ok() {
                            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    // At the lowest priority (nice is per thread on Linux): 1,000 readers served from the
    // kernel's cache keep both cores busy even once the daemon is dead, and the guard must still
    // get its turn, as beside a real workload of a few threads.
    assert!(eventually(10, || tids.lock().unwrap().len() == 1000));
    let reniced = Command::new("renice")
        .args(["-n", "19", "-p"])
        .args(tids.lock().unwrap().iter())
        .output()
        .unwrap();
    assert!(
        reniced.status.success(),
        "{}",
        String::from_utf8_lossy(&reniced.stderr)
    );
    go.wait();
    assert!(eventually(10, || reads
        .load(std::sync::atomic::Ordering::Relaxed)
        > 10_000));
    eprintln!(
        "{:?}: {} reads; killing the daemon",
        started.elapsed(),
        reads.load(std::sync::atomic::Ordering::Relaxed)
    );
    d.stop(Signal::SIGKILL);
    let gone = eventually(5, || !is_mounted(&mnt));
    // The readers stop first, so that a failure is reported rather than spun on.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        gone,
        "a daemon killed under 1,000 readers left its mount behind: {}",
        d.log()
    );
    assert_eq!(list_within(&mnt).unwrap().len(), 0);
}

#[test]
fn a_clean_stop_leaves_the_guard_nothing_to_do() {
    if !fuse_available("a_clean_stop_leaves_the_guard_nothing_to_do") {
        return;
    }
    let s = store_with(&[("A", b"x")]);
    let mnt = s.path().join("mnt");
    let mut d = Daemon::start(&s, &mnt, &[]);
    let guard = guard_of(&d);
    assert_eq!(d.stop(Signal::SIGTERM), Some(0));
    // The guard ends with the daemon, quietly.
    assert!(eventually(5, || !Path::new(&format!(
        "/proc/{guard}/cmdline"
    ))
    .exists()
        || std::fs::read_to_string(format!("/proc/{guard}/stat"))
            .is_ok_and(|s| s.contains(") Z "))));
    assert!(!d.log().contains("the mount daemon is gone"), "{}", d.log());
}

/// Holds copies of process PID's descriptors FD... (pidfd_getfd, as root), says so, then stops
/// itself: a stopped helper that keeps a daemon's FUSE connection open after the daemon dies (so
/// the kernel does not abort it, and nobody answers it: fusermount3 caught between handing the
/// descriptor over and closing its own, as CI once saw), and, here, the daemon's end of its
/// guard's pipe (so the guard learns of the death only when this helper goes).
const HOLD_FDS: &str = r#"
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_getfd = 438
pidfd = os.pidfd_open(int(sys.argv[1]))
for n in sys.argv[2:]:
    if libc.syscall(SYS_pidfd_getfd, pidfd, int(n), 0) < 0:
        sys.exit("pidfd_getfd: " + os.strerror(ctypes.get_errno()))
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
signal.pause()
"#;

/// The descriptor of process `pid` whose link reads `target`.
fn fd_linked_to(pid: i32, target: &Path) -> i32 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == target))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("process {pid} holds no {}", target.display()))
}

/// A daemon killed while another process holds its FUSE connection open leaves a mount that
/// never answers: a new daemon takes it over within 5 s (its probe gets no answer; it aborts
/// the connection and mounts over it). The first daemon's guard and fusermount3's helper, held
/// up meanwhile, then leave the successor's mount alone: each unmounts only the mount it was
/// told about.
#[test]
fn a_new_daemon_takes_over_a_dead_mount_whose_connection_a_stopped_helper_holds() {
    if !fuse_available(
        "a_new_daemon_takes_over_a_dead_mount_whose_connection_a_stopped_helper_holds",
    ) {
        return;
    }
    let s = store_with(&[("A", b"x")]);
    let mnt = s.path().join("mnt");
    let mut first = Daemon::start(&s, &mnt, &[]);
    let guard = guard_of(&first);
    // fusermount3's helper is in a session of its own: stopped, it stays stopped.
    let helpers: Vec<i32> = children(first.pid())
        .into_iter()
        .filter(|c| *c != guard)
        .collect();
    for h in &helpers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*h), Signal::SIGSTOP).unwrap();
    }
    let guard_pipe = std::fs::read_link(format!("/proc/{guard}/fd/0")).unwrap();
    let mut holder = Running::spawn(
        "the descriptor holder",
        Command::new(crate::support::python())
            .args(["-c", HOLD_FDS, &first.pid().to_string()])
            .arg(fd_linked_to(first.pid(), Path::new("/dev/fuse")).to_string())
            .arg(fd_linked_to(first.pid(), &guard_pipe).to_string())
            .stdout(std::process::Stdio::piped()),
    );
    let stdout = holder.stdout.take().unwrap();
    let said = within("the holder's word", FS_LIMIT, move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    })
    .unwrap();
    assert_eq!(said, "holding\n");
    first.stop(Signal::SIGKILL);

    // The mount is dead but not disconnected: a lookup waits for an answer that never comes.
    let probe = mnt.join("never-looked-up");
    assert!(
        try_within(Duration::from_secs(1), move || std::fs::symlink_metadata(
            probe
        ))
        .is_none(),
        "the dead mount answered; the test did not make the mount it means to"
    );
    let started = std::time::Instant::now();
    let second = Daemon::start(&s, &mnt, &[]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the takeover took {took:?}: {}",
        second.log()
    );
    assert!(
        second
            .log()
            .contains("recovering a mount whose daemon does not answer"),
        "{}",
        second.log()
    );
    assert_eq!(read_within(&mnt.join("A")).unwrap(), b"x");

    // The first daemon's guard (its pipe ends with the holder) and fusermount3's helper wake up
    // to a successor's mount, and leave it.
    for h in &helpers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*h), Signal::SIGCONT);
    }
    drop(holder);
    assert!(
        eventually(5, || !Path::new(&format!("/proc/{guard}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{guard}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the first daemon's guard did not end with its pipe"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_mounted(&mnt),
        "the first daemon's guard or helper unmounted its successor: {}",
        first.log()
    );
    assert!(!first.log().contains("unmounted"), "{}", first.log());
    assert_eq!(read_within(&mnt.join("A")).unwrap(), b"x");
    drop(second);
    assert!(!is_mounted(&mnt));
}

#[test]
fn sigkill_leaves_no_mount_and_a_stale_mount_is_recovered() {
    if !fuse_available("sigkill_leaves_no_mount_and_a_stale_mount_is_recovered") {
        return;
    }
    let s = store_with(&[("A", b"x")]);
    let mnt = s.path().join("mnt");
    let mut d = Daemon::start(&s, &mnt, &[]);
    d.stop(Signal::SIGKILL);
    assert!(
        eventually(5, || !is_mounted(&mnt)),
        "a killed daemon left its mount behind"
    );

    // When everything that could clean up after a killed daemon is gone too (no fusermount3,
    // and its guard killed first) the mount goes stale ("Transport endpoint is not connected"),
    // and the next start must recover it.
    let mut d = Daemon::start_with(&s, &mnt, &[], |c| {
        c.env("PATH", "/nonexistent");
    });
    let guard = guard_of(&d);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard), Signal::SIGKILL).unwrap();
    d.stop(Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    assert!(is_mounted(&mnt));
    assert_eq!(
        stat_within(&mnt, FS_LIMIT)
            .map_err(|e| e.raw_os_error())
            .err(),
        Some(Some(libc::ENOTCONN)),
        "the mount of a daemon killed with nothing left to clean up is stale"
    );
    let d = Daemon::start(&s, &mnt, &[]);
    assert_eq!(read_within(&mnt.join("A")).unwrap(), b"x");
    assert!(d.log().contains("recovering a stale mount"), "{}", d.log());
    drop(d);
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_live_mount_nonexistent_dir_or_file_is_refused() {
    if !fuse_available("a_live_mount_nonexistent_dir_or_file_is_refused") {
        return;
    }
    let s = store_with(&[("A", b"x")]);
    let mnt = s.path().join("mnt");
    let _d = Daemon::start(&s, &mnt, &[]);
    let out = s.run(&["mount", mnt.to_str().unwrap()], b"");
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is already a live secretfs mount"),
        "{}",
        out.stderr
    );

    let out = s.run(&["mount", "nope"], b"");
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("does not exist; create it first"),
        "{}",
        out.stderr
    );
    std::fs::write(s.path().join("file"), "").unwrap();
    let out = s.run(&["mount", "file"], b"");
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);

    std::fs::create_dir(s.path().join("m2")).unwrap();
    let out = s.run(
        &[
            "mount", "m2", "--secret", "A", "--secret", "NOPE", "--secret", "GONE",
        ],
        b"",
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("secrets not found in the source: \"NOPE\", \"GONE\""),
        "{}",
        out.stderr
    );
    let out = s.run(&["mount", "m2", "--mode", "0600"], b"");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("read bits only"), "{}", out.stderr);
    assert!(!is_mounted(&s.path().join("m2")));
}

/// A mount that cannot be made (here: a user the FUSE device refuses) says why once, with what
/// to do: fusermount3's own line is not repeated by the error's cause chain.
#[test]
fn a_refused_mount_says_why_once() {
    if !fuse_available("a_refused_mount_says_why_once") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // Where others may open the device (many distributions make it 0666), nobody's mount would
    // succeed and run: this refusal cannot be made there.
    if std::fs::metadata("/dev/fuse").is_ok_and(|m| m.permissions().mode() & 0o006 != 0) {
        eprintln!("skipping: /dev/fuse is open to every user here");
        return;
    }
    let s = Scratch::new();
    let shared = s.path().join("shared");
    let mnt = shared.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    open_up(&mnt);
    for d in [&shared, &mnt] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let as_nobody = |args: &[&str], stdin: &[u8]| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            crate::support::bin(),
        ])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &shared)
        .env("SECRETFS_STORE", shared.join("s.db"))
        .current_dir("/");
        crate::support::run_with(cmd, stdin)
    };
    let out = as_nobody(&["secret", "create", "A"], b"value");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = as_nobody(&["mount", mnt.to_str().unwrap()], b"");
    assert_ne!(out.code, 0, "{}", out.stderr);
    let err = out.stderr;
    assert!(err.contains("cannot mount at"), "{err}");
    assert_eq!(err.matches("fusermount3: failed").count(), 1, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one error, on one line: {err}"
    );
    assert!(!is_mounted(&mnt));
}
