//! `secretfs mount`: real FUSE mounts of a real local store, checked with real tools.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{
    CANARY, Daemon, FS_LIMIT, NO_PTRACE, Running, Scratch, assert_hardened, assert_no_canary,
    eventually, fuse_available, is_mounted, list_within, open_up, read_within, stat_within,
    try_within, within,
};

/// A scratch store holding `secrets`, plus a mount point inside it.
fn store_with(secrets: &[(&str, &[u8])]) -> Scratch {
    let s = Scratch::new();
    for (name, value) in secrets {
        s.ok(&["secret", "create", name], value);
    }
    s
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list_json(s: &Scratch) -> serde_json::Value {
    serde_json::from_str(&s.ok(&["secret", "list", "-o", "json"], b"")).unwrap()
}

#[test]
fn files_show_true_content_sizes_modes_and_times() {
    if !fuse_available("files_show_true_content_sizes_modes_and_times") {
        return;
    }
    let s = store_with(&[
        ("HF_TOKEN", b"hf_abc123"),
        ("db-password", CANARY.as_bytes()),
    ]);
    let mnt = s.path().join("mnt");
    let d = Daemon::start(&s, &mnt, &["--refresh", "200ms"]);
    assert!(
        d.ready_line.starts_with("secretfs: mounted 2 secrets at "),
        "{}",
        d.ready_line
    );

    assert_eq!(std::fs::read(mnt.join("HF_TOKEN")).unwrap(), b"hf_abc123");
    assert_eq!(
        std::fs::read(mnt.join("db-password")).unwrap(),
        CANARY.as_bytes()
    );
    let listed = list_json(&s);
    let uid = nix::unistd::getuid().as_raw();
    for entry in listed.as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let m = std::fs::metadata(mnt.join(name)).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o400, "{name}");
        assert_eq!(
            (m.uid(), m.gid(), m.nlink()),
            (uid, nix::unistd::getgid().as_raw(), 1)
        );
        assert_eq!(
            m.size(),
            std::fs::read(mnt.join(name)).unwrap().len() as u64
        );
        // mtime is the secret's update time, to the microsecond the list shows.
        let updated = entry["updated_at"].as_str().unwrap();
        let updated = humantime::parse_rfc3339(updated).unwrap();
        let mtime = std::time::UNIX_EPOCH + Duration::new(m.mtime() as u64, m.mtime_nsec() as u32);
        let diff = mtime
            .duration_since(updated)
            .unwrap_or_else(|e| e.duration());
        assert!(
            diff < Duration::from_micros(1),
            "{name}: mtime {mtime:?} vs {updated:?}"
        );
    }
    let root = std::fs::metadata(&mnt).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o500);

    // Inode numbers are stable across refreshes that change nothing.
    let ino = std::fs::metadata(mnt.join("HF_TOKEN")).unwrap().ino();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(std::fs::metadata(mnt.join("HF_TOKEN")).unwrap().ino(), ino);

    // Everyday tools.
    let (code, out, err) = run(Command::new("ls").arg("-la").arg(&mnt));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("-r-------- 1") && out.contains("HF_TOKEN") && out.contains("db-password"),
        "{out}"
    );
    let (code, out, _) = run(Command::new("find").arg(&mnt).arg("-type").arg("f"));
    assert_eq!((code, out.lines().count()), (0, 2), "{out}");
    let copy = s.path().join("copy");
    let (code, _, err) = run(Command::new("cp").arg("-a").arg(&mnt).arg(&copy));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(copy.join("HF_TOKEN")).unwrap(), b"hf_abc123");
    let (code, out, err) = run(Command::new("tar")
        .arg("cf")
        .arg("-")
        .arg("-C")
        .arg(&mnt)
        .arg("."));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hf_abc123"));
    let (code, out, err) = run(Command::new("stat")
        .arg("-c")
        .arg("%s %a %h")
        .arg(mnt.join("HF_TOKEN")));
    assert_eq!((code, out.trim()), (0, "9 400 1"), "{err}");
    let script = "import os,sys\n\
                  d=sys.argv[1]\n\
                  names=sorted(e.name for e in os.scandir(d) if e.is_file())\n\
                  print(names)\n\
                  print(open(os.path.join(d,'HF_TOKEN')).read())";
    let (code, out, err) = run(Command::new("python3").arg("-c").arg(script).arg(&mnt));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "['HF_TOKEN', 'db-password']\nhf_abc123\n");
}

/// Python gives the errno of each operation by name, so every row of the table is checked the
/// way a program sees it.
const MUTATIONS: &str = r#"
import errno, os, sys
d = sys.argv[1]
f = os.path.join(d, "A")
def attempt(name, fn):
    try:
        fn()
        print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
attempt("write", lambda: open(f, "w"))
attempt("append", lambda: open(f, "a"))
attempt("create", lambda: open(os.path.join(d, "new"), "w"))
attempt("mkdir", lambda: os.mkdir(os.path.join(d, "dir")))
attempt("unlink", lambda: os.unlink(f))
attempt("rmdir", lambda: os.rmdir(f))
attempt("rename", lambda: os.rename(f, os.path.join(d, "B")))
attempt("chmod", lambda: os.chmod(f, 0o644))
attempt("chown", lambda: os.chown(f, 1, 1))
attempt("truncate", lambda: os.truncate(f, 0))
attempt("utime", lambda: os.utime(f, (0, 0)))
attempt("link", lambda: os.link(f, os.path.join(d, "hard")))
attempt("symlink", lambda: os.symlink("A", os.path.join(d, "soft")))
attempt("mknod", lambda: os.mkfifo(os.path.join(d, "fifo")))
attempt("setxattr", lambda: os.setxattr(f, "user.x", b"1"))
attempt("removexattr", lambda: os.removexattr(f, "user.x"))
attempt("getxattr", lambda: os.getxattr(f, "user.x"))
attempt("listxattr", lambda: print(os.listxattr(f)) or (_ for _ in ()).throw(OSError(errno.ENODATA, "")))
attempt("open-missing", lambda: open(os.path.join(d, "NOPE")))
attempt("read", lambda: open(f).read())
"#;

#[test]
fn every_mutation_is_refused_read_only() {
    if !fuse_available("every_mutation_is_refused_read_only") {
        return;
    }
    let s = store_with(&[("A", b"value")]);
    let mnt = s.path().join("mnt");
    let _d = Daemon::start(&s, &mnt, &[]);
    let (code, out, err) = run(Command::new("python3").arg("-c").arg(MUTATIONS).arg(&mnt));
    assert_eq!(code, 0, "{err}");
    let got: Vec<(&str, &str)> = out.lines().filter_map(|l| l.rsplit_once(' ')).collect();
    let expected = [
        ("write", "EROFS"),
        ("append", "EROFS"),
        ("create", "EROFS"),
        ("mkdir", "EROFS"),
        ("unlink", "EROFS"),
        ("rmdir", "EROFS"),
        ("rename", "EROFS"),
        ("chmod", "EROFS"),
        ("chown", "EROFS"),
        ("truncate", "EROFS"),
        ("utime", "EROFS"),
        ("link", "EROFS"),
        ("symlink", "EROFS"),
        ("mknod", "EROFS"),
        ("setxattr", "EROFS"),
        ("removexattr", "EROFS"),
        ("getxattr", "ENOTSUP"),
        ("listxattr", "ENOTSUP"),
        ("open-missing", "ENOENT"),
        ("read", "OK"),
    ];
    assert_eq!(got, expected, "{out}");
    // The mount itself says read-only, nosuid, nodev, noexec.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canon = mnt.canonicalize().unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
        .expect("mount listed");
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            line.split(' ').nth(5).unwrap().split(',').any(|o| o == opt),
            "{opt} missing: {line}"
        );
    }
    assert!(
        line.contains("default_permissions") && line.contains("allow_other"),
        "{line}"
    );
}

#[test]
fn only_the_owner_uid_may_read() {
    if !fuse_available("only_the_owner_uid_may_read") {
        return;
    }
    let s = store_with(&[("A", b"for-nobody"), ("B", b"other")]);
    let mnt = s.path().join("mnt");
    open_up(mnt.parent().unwrap());
    let _d = Daemon::start(
        &s,
        &mnt,
        &["--uid", "65534", "--gid", "65534", "--secret", "A"],
    );
    let as_uid = |uid: &str, path: &Path| {
        run(Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "cat",
            ])
            .arg(path))
    };
    let (code, out, err) = as_uid("65534", &mnt.join("A"));
    assert_eq!((code, out.as_str()), (0, "for-nobody"), "{err}");
    let (code, _, err) = as_uid("65533", &mnt.join("A"));
    assert_eq!(code, 1);
    assert!(err.contains("Permission denied"), "{err}");
    // Another uid cannot even list the directory (0500, owned by the workload user).
    let (code, _, err) = run(Command::new("setpriv")
        .args(["--reuid=65533", "--regid=65533", "--clear-groups", "ls"])
        .arg(&mnt));
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    // --secret limits the mount to the named secrets.
    assert!(!mnt.join("B").exists());
    let m = std::fs::metadata(mnt.join("A")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
}

#[test]
fn group_mode_lets_the_group_read() {
    if !fuse_available("group_mode_lets_the_group_read") {
        return;
    }
    let s = store_with(&[("A", b"shared")]);
    let mnt = s.path().join("mnt");
    open_up(mnt.parent().unwrap());
    let _d = Daemon::start(
        &s,
        &mnt,
        &["--uid", "65534", "--gid", "4242", "--mode", "0440"],
    );
    assert_eq!(std::fs::metadata(&mnt).unwrap().mode() & 0o7777, 0o550);
    let (code, out, err) = run(Command::new("setpriv")
        .args(["--reuid=5000", "--regid=4242", "--clear-groups", "cat"])
        .arg(mnt.join("A")));
    assert_eq!((code, out.as_str()), (0, "shared"), "{err}");
}

#[test]
fn rotation_deletion_and_creation_are_seen() {
    if !fuse_available("rotation_deletion_and_creation_are_seen") {
        return;
    }
    let s = store_with(&[("A", b"version-1"), ("B", b"bee")]);
    let mnt = s.path().join("mnt");
    let d = Daemon::start(&s, &mnt, &["--refresh", "200ms"]);
    let ino1 = std::fs::metadata(mnt.join("A")).unwrap().ino();
    let mut before = std::fs::File::open(mnt.join("A")).unwrap();

    s.ok(&["secret", "update", "A"], b"version-2, longer");
    assert!(eventually(5, || std::fs::read(mnt.join("A")).unwrap()
        == b"version-2, longer"));
    // A rotation is an atomic replace: a new inode under the name; the fd opened before it still
    // reads the version it opened, like a file replaced by rename.
    assert_ne!(std::fs::metadata(mnt.join("A")).unwrap().ino(), ino1);
    let mut old = String::new();
    std::io::Read::read_to_string(&mut before, &mut old).unwrap();
    assert_eq!(old, "version-1");
    assert_eq!(before.metadata().unwrap().nlink(), 0);
    drop(before);

    s.ok(&["secret", "delete", "B"], b"");
    s.ok(&["secret", "create", "C"], b"sea");
    assert!(eventually(5, || !mnt.join("B").exists() && mnt.join("C").exists()));
    assert_eq!(std::fs::read(mnt.join("C")).unwrap(), b"sea");
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["A", "C"]);
    let logged = || {
        let log = d.log();
        log.contains("secret rotated")
            && log.contains("secret removed")
            && log.contains("secret added")
    };
    assert!(eventually(5, logged), "{}", d.log());
}

/// A reader that keeps reading a 256 KiB value in single `read` calls while it is rotated
/// between two uniform values: every read returns bytes of one version only.
#[test]
fn a_single_read_never_mixes_versions() {
    if !fuse_available("a_single_read_never_mixes_versions") {
        return;
    }
    const LEN: usize = 256 * 1024;
    let s = store_with(&[("BIG", &vec![b'a'; LEN])]);
    let mnt = s.path().join("mnt");
    let _d = Daemon::start(&s, &mnt, &["--refresh", "100ms"]);
    let path = mnt.join("BIG");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            let mut seen = std::collections::HashSet::new();
            let mut buf = vec![0u8; LEN];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = std::fs::File::open(&path).unwrap();
                let n = std::io::Read::read(&mut f, &mut buf).unwrap();
                assert!(n > 0);
                let first = buf[0];
                assert!(
                    buf[..n].iter().all(|b| *b == first),
                    "a read mixed two versions"
                );
                seen.insert(first);
                reads += 1;
            }
            (reads, seen)
        })
    };
    for i in 0..6 {
        let byte = if i % 2 == 0 { b'b' } else { b'a' };
        s.ok(&["secret", "update", "BIG"], &vec![byte; LEN]);
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, seen) = reader.join().expect("reader saw a mixed read");
    assert!(reads > 10, "only {reads} reads");
    assert_eq!(seen.len(), 2, "the reader never saw a rotation");
}

#[test]
fn audit_mode_logs_each_open_and_fds_keep_their_version() {
    if !fuse_available("audit_mode_logs_each_open_and_fds_keep_their_version") {
        return;
    }
    let s = store_with(&[("A", CANARY.as_bytes())]);
    let mnt = s.path().join("mnt");
    let d = Daemon::start(&s, &mnt, &["--audit", "--refresh", "200ms"]);
    for _ in 0..3 {
        assert_eq!(std::fs::read(mnt.join("A")).unwrap(), CANARY.as_bytes());
    }
    let mut held = std::fs::File::open(mnt.join("A")).unwrap();
    s.ok(&["secret", "update", "A"], b"second");
    assert!(eventually(5, || std::fs::read(mnt.join("A")).unwrap() == b"second"));
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut old).unwrap();
    assert_eq!(old, CANARY.as_bytes());
    assert!(eventually(2, || d.log().matches(" open").count() >= 5));
    let log = d.log();
    // FUSE reports the calling thread's id.
    let pid = nix::unistd::gettid();
    let line = log.lines().find(|l| l.contains("open")).unwrap();
    for field in [
        "secret=A",
        "version=1",
        "uid=0",
        "gid=0",
        &format!("pid={pid}"),
    ] {
        assert!(line.contains(field), "audit line lacks {field}: {line}");
    }
    assert!(log.contains("version=2"), "{log}");
    assert_no_canary("daemon log", log.as_bytes());
}

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
    let readers: Vec<_> = (0..1000)
        .map(|i| {
            let path = mnt.join(if i % 2 == 0 { "A" } else { "B" });
            let (stop, reads) = (stop.clone(), reads.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if std::fs::read(&path).is_ok() {
                            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    assert!(eventually(10, || reads
        .load(std::sync::atomic::Ordering::Relaxed)
        > 10_000));
    eprintln!(
        "{:?}: {} reads; killing the daemon",
        started.elapsed(),
        reads.load(std::sync::atomic::Ordering::Relaxed)
    );
    d.stop(Signal::SIGKILL);
    assert!(
        eventually(5, || !is_mounted(&mnt)),
        "a daemon killed under 1,000 readers left its mount behind: {}",
        d.log()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
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
fn strict_permission_readers_accept_the_files() {
    if !fuse_available("strict_permission_readers_accept_the_files") {
        return;
    }
    // ssh refuses a private key that group or others can read; a 0400 file it accepts.
    let s = Scratch::new();
    let key = s.path().join("id");
    let (code, _, err) = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "t", "-f"])
        .arg(&key));
    assert_eq!(code, 0, "{err}");
    let private = std::fs::read(&key).unwrap();
    s.ok(&["secret", "create", "deploy_key"], &private);
    let mnt = s.path().join("mnt");
    let d = Daemon::start(&s, &mnt, &[]);
    let (code, out, err) = run(Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(mnt.join("deploy_key")));
    assert_eq!(code, 0, "{err}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    assert_eq!(
        out.split_whitespace().take(2).collect::<Vec<_>>(),
        public.split_whitespace().take(2).collect::<Vec<_>>()
    );
    drop(d);
    // The same reader refuses the file when the mount makes it world-readable: the check is real.
    let _d = Daemon::start(&s, &mnt, &["--mode", "0444"]);
    let (code, _, err) = run(Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(mnt.join("deploy_key")));
    assert_ne!(code, 0);
    assert!(err.contains("UNPROTECTED PRIVATE KEY FILE"), "{err}");
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

/// `--uid`/`--gid` take names as `chown` does (Debian's nobody:nogroup is 65534:65534), and an
/// unknown name is a usage error that says what to give instead.
#[test]
fn owner_and_group_may_be_given_by_name() {
    if !fuse_available("owner_and_group_may_be_given_by_name") {
        return;
    }
    let s = store_with(&[("A", b"x")]);
    let mnt = s.path().join("mnt");
    let _d = Daemon::start(&s, &mnt, &["--uid", "nobody", "--gid", "nogroup"]);
    let m = std::fs::metadata(mnt.join("A")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    let out = s.run(
        &["mount", mnt.to_str().unwrap(), "--uid", "no-such-user-here"],
        b"",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no user named \"no-such-user-here\" on this system"),
        "{}",
        out.stderr
    );
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
