//! Where the launcher finds values: a directory (late, missing, a live mount), the local store, and
//! the lean launcher handing the rest on.

use std::process::Command;
use std::time::Duration;

use super::{DUMP, launch, secrets_dir};
use crate::support::{CANARY, Daemon, Scratch, fuse_available, run_with};

#[test]
fn a_dir_source_delivers_env_vars_and_file_paths() {
    let s = Scratch::new();
    let dir = secrets_dir(
        &s,
        &[("HF_TOKEN", CANARY.as_bytes()), ("db-password", b"hunter2")],
    );
    let d = dir.to_str().unwrap();
    let (out, report) = launch(
        &s,
        &[
            "--dir",
            d,
            "-s",
            "HF_TOKEN",
            "-s",
            "DB=db-password",
            "--secret-file",
            "DB_FILE=db-password",
            "-e",
            "PLAIN=yes",
        ],
        &[
            "HF_TOKEN",
            "DB",
            "DB_FILE",
            "PLAIN",
            "SECRETFS_DIR",
            "CREDENTIALS_DIRECTORY",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report.unwrap();
    assert_eq!(r["HF_TOKEN"], CANARY);
    assert_eq!(r["DB"], "hunter2");
    assert_eq!(r["DB_FILE"], dir.join("db-password").to_str().unwrap());
    assert_eq!(r["DB_FILE:content"], "hunter2");
    assert_eq!(r["PLAIN"], "yes");
    assert_eq!(r["SECRETFS_DIR"], d);
    assert_eq!(r["CREDENTIALS_DIRECTORY"], d);
    assert_eq!(out.stdout, "");
}

#[test]
fn the_local_store_source_uses_memory_files() {
    let s = Scratch::new();
    // Files older than the test cannot hold what it wrote (a developer's /tmp may hold large
    // ones, which searching byte by byte outlasted the time limit).
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
    // This test's own canary: the temp dir is shared with every other test, and some write the
    // common one there on purpose.
    let canary = crate::support::unique_canary("memfiles");
    let tmp = s.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    s.ok(&["secret", "create", "HF_TOKEN"], canary.as_bytes());
    s.ok(&["secret", "create", "db-password"], b"p@ss");
    let store = s.store();
    let (out, report) = launch(
        &s,
        &[
            "--store",
            store.to_str().unwrap(),
            "-s",
            "HF_TOKEN",
            "--secret-file",
            "DB_FILE=db-password",
        ],
        &["HF_TOKEN", "DB_FILE", "SECRETFS_DIR"],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains(&canary) && !out.stdout.contains(&canary));
    let r = report.unwrap();
    assert_eq!(r["HF_TOKEN"], canary.as_str());
    // The workload's own pid (the launcher's, which exec kept): the same path in every process.
    assert!(
        r["DB_FILE"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/proc/{}/fd/", r["__pid"])),
        "{r}"
    );
    assert_eq!(r["DB_FILE:content"], "p@ss");
    assert!(r.get("SECRETFS_DIR").is_none());
    // Nothing was written next to the store, in the TMPDIR it was given, or in /tmp.
    let leftovers: Vec<_> = [s.path(), tmp.as_path(), std::env::temp_dir().as_path()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .filter_map(|e| {
            let path = e.ok()?.path();
            // The workload's own report of what it received holds the value by design.
            if path.file_name()? == "report.json" {
                return None;
            }
            if std::fs::metadata(&path).ok()?.modified().ok()? < started {
                return None;
            }
            let bytes = std::fs::read(&path).ok()?;
            bytes
                .windows(canary.len())
                .any(|w| w == canary.as_bytes())
                .then_some(path)
        })
        .collect();
    assert!(leftovers.is_empty(), "a value was written to {leftovers:?}");
}

#[test]
fn a_live_mount_is_a_dir_source() {
    if !fuse_available("a_live_mount_is_a_dir_source") {
        return;
    }
    let s = Scratch::new();
    s.ok(&["secret", "create", "HF_TOKEN"], CANARY.as_bytes());
    let mnt = s.path().join("mnt");
    let _d = Daemon::start(&s, &mnt, &[]);
    let (out, report) = launch(
        &s,
        &[
            "--dir",
            mnt.to_str().unwrap(),
            "-s",
            "HF_TOKEN",
            "--secret-file",
            "HF_TOKEN_FILE=HF_TOKEN",
        ],
        &["HF_TOKEN", "HF_TOKEN_FILE"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report.unwrap();
    assert_eq!(r["HF_TOKEN"], CANARY);
    assert_eq!(r["HF_TOKEN_FILE:content"], CANARY);
}

#[test]
fn wait_for_a_directory_that_fills_late_or_never() {
    let s = Scratch::new();
    let dir = secrets_dir(&s, &[]);
    let late = dir.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(late.join("LATE"), "arrived").unwrap();
    });
    let started = std::time::Instant::now();
    let (out, report) = launch(
        &s,
        &["--dir", "secrets", "--wait", "5s", "-s", "LATE"],
        &["LATE"],
        &[],
    );
    writer.join().unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(report.unwrap()["LATE"], "arrived");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = std::time::Instant::now();
    let (out, report) = launch(
        &s,
        &[
            "--dir", "secrets", "--wait", "400ms", "-s", "LATE", "-s", "NEVER",
        ],
        &[],
        &[],
    );
    assert_eq!(out.code, 125);
    assert!(report.is_none());
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        out.stderr.contains("secret \"NEVER\" not found"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("\"LATE\""), "{}", out.stderr);
    assert!(
        out.stderr.contains("gave up after waiting 400ms"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_lean_launcher_reads_dirs_and_hands_other_sources_to_secretfs_run() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", CANARY.as_bytes())]);
    let lean = env!("CARGO_BIN_EXE_secretfs-run");
    let report = s.path().join("report.json");
    let mut cmd = Command::new(lean);
    cmd.args([
        "--dir",
        "secrets",
        "-s",
        "A",
        "--",
        crate::support::python(),
        "-c",
        DUMP,
        "A",
    ])
    .current_dir(s.path())
    .env("REPORT", &report);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["A"], CANARY);
    // exec, not fork, here too.
    assert!(r["__pid"].as_u64().is_some());

    // The local store: secretfs-run execs the secretfs next to it.
    s.ok(&["secret", "create", "S"], b"from-store");
    let _ = std::fs::remove_file(&report);
    let mut cmd = Command::new(lean);
    cmd.args([
        "--store",
        s.store().to_str().unwrap(),
        "-s",
        "S",
        "--",
        crate::support::python(),
        "-c",
        DUMP,
        "S",
    ])
    .current_dir(s.path())
    .env("REPORT", &report);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["S"], "from-store");
    // Fail closed the same way.
    let mut cmd = Command::new(lean);
    cmd.args(["--dir", "secrets", "-s", "MISSING", "--", "true"])
        .current_dir(s.path());
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 125);
    assert!(
        out.stderr.contains("secret \"MISSING\" not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_source_directory_is_named_as_such() {
    let s = Scratch::new();
    let out = s.run(
        &[
            "run",
            "--dir",
            "/nonexistent",
            "-s",
            "X",
            "-s",
            "Y",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.code, 125, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: the source directory /nonexistent does not exist"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("no file"), "{}", out.stderr);
    let file = s.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let out = s.run(
        &[
            "run",
            "--dir",
            file.to_str().unwrap(),
            "-s",
            "X",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.code, 125);
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);
}
