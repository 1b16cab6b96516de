//! The files a mount shows: contents, sizes, modes and owners, read-only, who may read, and how
//! changes and reads interleave.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{list_json, run, store_with};
use crate::support::{
    CANARY, Daemon, Scratch, assert_no_canary, eventually, fuse_available, open_up,
};

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
