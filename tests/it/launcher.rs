//! `secretfs run`: real processes, real Python workloads, each source.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{
    CANARY, Daemon, FS_LIMIT, Out, Running, Scratch, assert_no_canary, eventually, fuse_available,
    run_with, unique_canary,
};

/// A Python workload that writes what it received to `report.json` in its working directory
/// (never to stdout), then exits with `EXIT` (default 0).
const DUMP: &str = r#"
import json, os, sys
names = sys.argv[1:]
got = {}
for n in names:
    if n in os.environ:
        got[n] = os.environ[n]
        if n.endswith("_FILE"):
            got[n + ":content"] = open(os.environ[n]).read()
got["__pid"] = os.getpid()
got["__cwd"] = os.getcwd()
got["__keys"] = sorted(os.environ)
json.dump(got, open(os.environ.get("REPORT", "report.json"), "w"))
sys.exit(int(os.environ.get("EXIT", "0")))
"#;

fn secrets_dir(s: &Scratch, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = s.path().join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, value) in files {
        std::fs::write(dir.join(name), value).unwrap();
    }
    dir
}

/// `secretfs run ARGS -- python3 -c DUMP NAMES...`, with the report path set.
fn launch(
    s: &Scratch,
    args: &[&str],
    names: &[&str],
    extra_env: &[(&str, &str)],
) -> (Out, Option<serde_json::Value>) {
    let report = s.path().join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut cmd = s.cmd(&["run"]);
    cmd.args(args)
        .arg("--")
        .args([crate::support::python(), "-c", DUMP])
        .args(names);
    cmd.env("REPORT", &report);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = run_with(cmd, b"");
    assert_no_canary("launcher stdout", out.stdout.as_bytes());
    assert_no_canary("launcher stderr", out.stderr.as_bytes());
    let report = std::fs::read_to_string(&report)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());
    (out, report)
}

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
fn the_spec_is_read_and_flags_override_it() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", b"from-a"), ("B", b"from-b"), ("C", b"from-c")]);
    std::fs::write(
        s.path().join("job.toml"),
        "command = [\"false\"]\ninherit_env = [\"PATH\", \"REPORT\"]\n[env]\nMODE = \"spec\"\nKEEP = \"k\"\n[secrets]\nX = \"A\"\nY = \"B\"\n[source]\ndir = \"secrets\"\n",
    )
    .unwrap();
    let (out, report) = launch(
        &s,
        &["--spec", "job.toml", "-e", "MODE=flag", "-s", "Y=C"],
        &["MODE", "KEEP", "X", "Y", "HOME"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report.unwrap();
    assert_eq!(
        (r["MODE"].as_str(), r["KEEP"].as_str()),
        (Some("flag"), Some("k"))
    );
    assert_eq!(
        (r["X"].as_str(), r["Y"].as_str()),
        (Some("from-a"), Some("from-c"))
    );
    // inherit_env is an allowlist: HOME (set for the launcher) did not pass.
    assert!(r.get("HOME").is_none());
    assert!(
        out.stderr
            .contains("warning: MODE is set by spec [env] and by -e; -e wins"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("warning: Y is set by spec [secrets] and by -s; -s wins"),
        "{}",
        out.stderr
    );

    // secretfs.toml in the working directory is the default spec.
    std::fs::rename(s.path().join("job.toml"), s.path().join("secretfs.toml")).unwrap();
    let (out, report) = launch(&s, &[], &["X"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(report.unwrap()["X"], "from-a");
}

#[test]
fn inherit_env_modes() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", b"a")]);
    let base = ["--dir", "secrets", "-s", "A"];
    let keys = |args: &[&str]| -> Vec<String> {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        let (out, report) = launch(&s, &all, &[], &[("EXTRA", "1")]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let keys: Vec<String> = serde_json::from_value(report.unwrap()["__keys"].clone()).unwrap();
        // Python sets LC_CTYPE itself when it finds the C locale (PEP 538).
        keys.into_iter().filter(|k| k != "LC_CTYPE").collect()
    };
    let all = keys(&[]);
    assert!(
        all.contains(&"EXTRA".into()) && all.contains(&"HOME".into()) && all.contains(&"A".into())
    );
    let none = keys(&["--inherit-env", "none", "-e", "REPORT=report.json"]);
    assert_eq!(
        none,
        ["A", "CREDENTIALS_DIRECTORY", "REPORT", "SECRETFS_DIR"]
    );
    let some = keys(&["--inherit-env", "EXTRA,REPORT"]);
    assert_eq!(
        some,
        [
            "A",
            "CREDENTIALS_DIRECTORY",
            "EXTRA",
            "REPORT",
            "SECRETFS_DIR"
        ]
    );
}

#[test]
fn the_local_store_source_uses_memory_files() {
    let s = Scratch::new();
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
fn fail_closed_every_problem_at_once_and_no_workload() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", b"a"), ("NUL", b"bad\0value")]);
    let marker = s.path().join("ran");
    let mut cmd = s.cmd(&[
        "run",
        "--dir",
        "secrets",
        "-s",
        "A",
        "-s",
        "MISSING_ONE",
        "-s",
        "MISSING_TWO",
        "--",
        "touch",
    ]);
    cmd.arg(&marker);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 125, "{}", out.stderr);
    assert!(
        out.stderr.contains("secret \"MISSING_ONE\" not found"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("secret \"MISSING_TWO\" not found"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("the workload was not started"));
    assert!(!marker.exists(), "the workload ran");

    let cases: &[(&[&str], &str)] = &[
        (
            &["-s", "NUL"],
            "contains a NUL byte, which an environment variable cannot hold; deliver it as a file with [secret_files]",
        ),
        (
            &["-s", "1BAD=A"],
            "invalid environment variable name \"1BAD\"",
        ),
        (&["-s", "X=bad/name"], "invalid secret name \"bad/name\""),
        (
            &["--spec", "missing.toml"],
            "cannot read job spec missing.toml",
        ),
        (&["--nope"], "unknown option \"--nope\""),
        (&["--wait", "forever"], "is not a duration"),
    ];
    for (args, needle) in cases {
        let mut cmd = s.cmd(&["run", "--dir", "secrets"]);
        cmd.args(*args).arg("--").arg("touch").arg(&marker);
        let out = run_with(cmd, b"");
        assert_eq!(out.code, 125, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?} in {}",
            out.stderr
        );
        assert!(!marker.exists(), "{args:?}: the workload ran");
        assert_no_canary("stderr", out.stderr.as_bytes());
    }

    for (toml, needle) in [
        ("command = [\"touch\"]\n\n[secrets\nA = \"A\"\n", "line 3"),
        (
            "command = [\"touch\"]\nsecrest = {}\n",
            "unknown field `secrest`",
        ),
        (
            "command = [\"touch\"]\n[source]\ndir = \"secrets\"\nwiat = \"1s\"\n",
            "line 4",
        ),
    ] {
        std::fs::write(s.path().join("bad.toml"), toml).unwrap();
        let out = s.run(&["run", "--spec", "bad.toml"], b"");
        assert_eq!(out.code, 125, "{toml}: {}", out.stderr);
        assert!(
            out.stderr.contains("job spec bad.toml") && out.stderr.contains(needle),
            "{toml}: {}",
            out.stderr
        );
    }
}

#[test]
fn exec_failures_have_their_own_codes_and_the_workload_status_passes_through() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", b"a")]);
    let out = s.run(
        &["run", "--dir", "secrets", "--", "no-such-command-xyz"],
        b"",
    );
    assert_eq!(out.code, 127, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("command not found: no-such-command-xyz")
    );
    std::fs::write(s.path().join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let out = s.run(&["run", "--dir", "secrets", "--", "./script.sh"], b"");
    assert_eq!(out.code, 126, "{}", out.stderr);
    assert!(out.stderr.contains("permission denied"));
    let out = s.run(&["run", "--dir", "secrets"], b"");
    assert_eq!(out.code, 125);
    assert!(out.stderr.contains("no command to run"));
    // The workload's own status, even 1 and 2, is the launcher's status.
    for code in ["0", "1", "2", "3"] {
        let (out, _) = launch(&s, &["--dir", "secrets"], &[], &[("EXIT", code)]);
        assert_eq!(out.code.to_string(), code);
    }
}

#[test]
fn exec_not_fork_same_pid_and_signals_reach_the_workload() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", b"a")]);
    let ready = s.path().join("ready");
    let got = s.path().join("got-sigterm");
    let script = format!(
        "import os, signal, sys, time\n\
         def on_term(*_):\n    open({got:?}, 'w').write('TERM')\n    sys.exit(0)\n\
         signal.signal(signal.SIGTERM, on_term)\n\
         open({ready:?}, 'w').write(str(os.getpid()))\n\
         time.sleep(30)\n"
    );
    let mut child = Running::spawn(
        "secretfs run",
        s.cmd(&[
            "run", "--dir", "secrets", "-s", "A", "--", "python3", "-c", &script,
        ])
        .stdin(Stdio::null()),
    );
    assert!(eventually(10, || std::fs::read_to_string(&ready)
        .is_ok_and(|p| !p.is_empty())));
    let pid: u32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    assert_eq!(
        pid,
        child.id(),
        "the workload is not the launcher's process"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = child.wait_within(FS_LIMIT);
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "TERM");
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
fn dry_run_and_trace_logging_never_show_a_value() {
    let s = Scratch::new();
    secrets_dir(&s, &[("A", CANARY.as_bytes())]);
    std::fs::write(s.path().join("job.toml"), "command = [\"true\"]\n[secrets]\nTOKEN = \"A\"\n[secret_files]\nTOKEN_FILE = \"A\"\n[source]\ndir = \"secrets\"\n").unwrap();
    let mut cmd = s.cmd(&["run", "--spec", "job.toml", "--dry-run", "-vvv"]);
    cmd.env("RUST_LOG", "trace");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("TOKEN=<secret A>  # spec [secrets]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("TOKEN_FILE=<file of secret A>"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.starts_with("command: true\n"), "{}", out.stdout);
    assert!(
        out.stderr.contains("resolved; exec"),
        "trace logging was not on: {}",
        out.stderr
    );
    assert_no_canary("dry-run stdout", out.stdout.as_bytes());
    assert_no_canary("trace stderr", out.stderr.as_bytes());
    // A dry run still fails closed.
    let out = s.run(
        &[
            "run",
            "--dir",
            "secrets",
            "-s",
            "GONE",
            "--dry-run",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.code, 125);
}

#[test]
fn lepton_job_bodies_are_accepted() {
    let s = Scratch::new();
    secrets_dir(&s, &[("HF_TOKEN", b"hf"), ("OPENAI_API_KEY", b"sk")]);
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lepton-job.json");
    let (out, report) = launch(
        &s,
        &["--dir", "secrets", "--lepton-job", job.to_str().unwrap()],
        &["PLAIN", "HF_TOKEN", "MY_KEY"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = report.unwrap();
    assert_eq!(
        (
            r["PLAIN"].as_str(),
            r["HF_TOKEN"].as_str(),
            r["MY_KEY"].as_str()
        ),
        (Some("1"), Some("hf"), Some("sk"))
    );
}

#[test]
fn the_example_workload_reads_env_and_files() {
    let s = Scratch::new();
    secrets_dir(
        &s,
        &[("HF_TOKEN", CANARY.as_bytes()), ("db-password", b"pw")],
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = s.path().join("secrets");
    // From the repository root, where the spec's command finds examples/workload.py; --dir
    // replaces the spec's store source.
    let mut cmd = Command::new(crate::support::bin());
    cmd.args([
        "run",
        "--spec",
        "examples/job.toml",
        "--dir",
        dir.to_str().unwrap(),
    ])
    .current_dir(root)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap());
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("workload: HF_TOKEN_FILE -> "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("same value as os.environ['HF_TOKEN']"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("workload: ok, 4 variables received"),
        "{}",
        out.stdout
    );
    assert_no_canary("workload stdout", out.stdout.as_bytes());
    // A missing secret: the example exits non-zero and names it.
    std::fs::remove_file(s.path().join("secrets/db-password")).unwrap();
    let mut cmd = Command::new(crate::support::bin());
    cmd.args([
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "-s",
        "HF_TOKEN",
        "--",
    ])
    .args([
        "python3",
        "examples/workload.py",
        "HF_TOKEN",
        "DB_PASSWORD_FILE",
    ])
    .current_dir(root);
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("MISSING: DB_PASSWORD_FILE is not set"),
        "{}",
        out.stderr
    );
}

#[test]
fn options_before_run_go_through_the_full_parser() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"via-store");
    // `secretfs --store X run ...`: the global store option reaches the launcher.
    let (out, report) = {
        let report = s.path().join("report.json");
        let mut cmd = crate::support::Scratch::cmd(
            &s,
            &[
                "--store",
                s.store().to_str().unwrap(),
                "run",
                "-s",
                "A",
                "--",
            ],
        );
        cmd.args([crate::support::python(), "-c", DUMP, "A"])
            .env("REPORT", &report);
        let out = run_with(cmd, b"");
        (out, std::fs::read_to_string(&report).ok())
    };
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(report.unwrap().contains("via-store"));
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

/// A memory file looks like a mounted secret file: 0400, the workload's uid, and one path that
/// every process of the workload can open. `ssh-keygen -y` (which refuses a key file others may
/// read) derives the public key from it, and a Python workload's subprocess (Python closes
/// inherited descriptors) reads it by the same path.
#[test]
fn memory_files_are_private_and_reachable_from_subprocesses() {
    let s = Scratch::new();
    let key = s.path().join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen is installed by scripts/test-prereqs");
    assert!(status.success());
    let private = std::fs::read(&key).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    s.ok(&["secret", "create", "deploy-key"], &private);
    s.ok(&["secret", "create", "db-password"], CANARY.as_bytes());
    let store = s.store();
    let store = store.to_str().unwrap();

    let out = s.run(
        &[
            "run",
            "--store",
            store,
            "--secret-file",
            "KEY_FILE=deploy-key",
            "--",
            "sh",
            "-c",
            "stat -L -c '%a %u' \"$KEY_FILE\"; ssh-keygen -y -f \"$KEY_FILE\"",
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("400 {}", nix::unistd::getuid())
    );
    assert_eq!(
        lines.next().unwrap().split(' ').take(2).collect::<Vec<_>>(),
        public.split(' ').take(2).collect::<Vec<_>>()
    );

    let script = r#"
import os, subprocess, sys
p = os.environ["DB_PASSWORD_FILE"]
child = subprocess.run(["sh", "-c", 'cat "$DB_PASSWORD_FILE"'], capture_output=True)
grandchild = subprocess.run([sys.executable, "-c", "import os; print(open(os.environ['DB_PASSWORD_FILE']).read() == open('/proc/self/fd/0').read())"], stdin=open(p), capture_output=True)
print(child.returncode, child.stdout == open(p, "rb").read(), grandchild.stdout.decode().strip())
"#;
    let out = s.run(
        &[
            "run",
            "--store",
            store,
            "--secret-file",
            "DB_PASSWORD_FILE=db-password",
            "--",
            crate::support::python(),
            "-c",
            script,
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "0 True True");
    assert_no_canary("stderr", out.stderr.as_bytes());
}

/// `-s LD_PRELOAD=...` would make ld.so print the value ("object '...' cannot be preloaded").
/// The launcher refuses before anything starts, naming the variable and the rule, never the
/// value; `--allow-unsafe-env` is the explicit way through.
#[test]
fn secrets_aimed_at_loader_and_shell_variables_are_refused() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "lib"], CANARY.as_bytes());
    let store = s.store();
    let store = store.to_str().unwrap();
    let marker = s.path().join("started");
    let started = format!("touch {}", marker.display());
    for var in ["LD_PRELOAD", "BASH_ENV", "GCONV_PATH"] {
        let out = s.run(
            &[
                "run",
                "--store",
                store,
                "-s",
                &format!("{var}=lib"),
                "--",
                "sh",
                "-c",
                &started,
            ],
            b"",
        );
        assert_eq!(out.code, 125, "{var}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("refusing to put secret \"lib\" in {var}"))
                && out.stderr.contains(&format!("--allow-unsafe-env {var}")),
            "{}",
            out.stderr
        );
        assert_no_canary("stderr", out.stderr.as_bytes());
        assert!(!marker.exists(), "the workload started");
    }
    // Explicitly allowed: the workload runs (and ld.so's complaint is the user's choice).
    let out = s.run(
        &[
            "run",
            "--store",
            store,
            "-s",
            "LD_PRELOAD=lib",
            "--allow-unsafe-env",
            "LD_PRELOAD",
            "--",
            "sh",
            "-c",
            &started,
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(marker.exists());
}

/// Variables a runtime prints back when it cannot use their value, or turns into a path on disk:
/// each shown doing it (run through the explicit `--allow-unsafe-env` way, the canary comes out
/// or lands on disk) and each refused without it, naming the variable, before anything starts.
#[test]
fn interpreter_variables_that_print_or_store_their_value_are_refused() {
    let s = Scratch::new();
    let canary = unique_canary("runtime-env");
    s.ok(&["secret", "create", "lib"], canary.as_bytes());
    let store = s.store();
    let store = store.to_str().unwrap();
    let python = crate::support::python();
    // (variable, the workload that shows what the runtime does with it)
    let cases: &[(&str, &[&str])] = &[
        ("PYTHONWARNINGS", &[python, "-c", "pass"]),
        ("PYTHONIOENCODING", &[python, "-c", "pass"]),
        ("PYTHONPLATLIBDIR", &[python, "-c", "pass"]),
        ("PYTHONPYCACHEPREFIX", &[python, "-c", "import json"]),
        ("PYTHONBREAKPOINT", &[python, "-c", "breakpoint()"]),
        ("LC_ALL", &["bash", "-c", "true"]),
        ("LC_CTYPE", &["perl", "-e", "1"]),
        ("LC_MESSAGES", &["perl", "-e", "1"]),
        ("LANG", &["perl", "-e", "1"]),
        ("BASH_XTRACEFD", &["bash", "-c", "true"]),
        ("OPTIND", &["sh", "-c", "true"]),
        ("PERL_SIGNALS", &["perl", "-e", "1"]),
        ("PERL_PERTURB_KEYS", &["perl", "-e", "1"]),
        ("NODE_V8_COVERAGE", &["node", "-e", "1"]),
        (
            "NODE_REDIRECT_WARNINGS",
            &["node", "-e", "process.emitWarning('w')"],
        ),
    ];
    for (var, workload) in cases {
        let mapped = format!("{var}=lib");
        let mut allowed = vec![
            "run",
            "--store",
            store,
            "-s",
            &mapped,
            "--allow-unsafe-env",
            var,
            "--",
        ];
        allowed.extend_from_slice(workload);
        let out = s.run(&allowed, b"");
        let printed = out.stdout.contains(&canary) || out.stderr.contains(&canary);
        let on_disk = std::fs::read_dir(s.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains(&canary));
        assert!(
            printed || on_disk,
            "{var}: {workload:?} neither printed nor stored the value; the rule is not needed: {}",
            out.stderr
        );
        for e in std::fs::read_dir(s.path()).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().contains(&canary) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }

        let mut refused = vec!["run", "--store", store, "-s", &mapped, "--"];
        refused.extend_from_slice(workload);
        let out = s.run(&refused, b"");
        assert_eq!(out.code, 125, "{var}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("refusing to put secret \"lib\" in {var}")),
            "{var}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(&canary),
            "{var}: the refusal holds the value"
        );
    }
}

/// The launcher's own token does not reach the workload (a renewable token for the whole set),
/// unless it is set explicitly; a token file others may read earns a warning with the chmod.
#[test]
fn the_launchers_credentials_stay_with_the_launcher() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"a");
    let store = s.store();
    let store = store.to_str().unwrap();
    let env_of = |extra: &[&str]| -> String {
        let mut args = vec!["run", "--store", store, "-s", "A"];
        args.extend_from_slice(extra);
        args.extend(["--", "env"]);
        let mut cmd = s.cmd(&args);
        cmd.env("SECRETFS_TOKEN", CANARY)
            .env("SECRETFS_TOKEN_FILE", "/run/token")
            .env("SECRETFS_IDENTITY_TOKEN_FILE", "/run/id-token");
        let out = run_with(cmd, b"");
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    let env = env_of(&[]);
    assert!(env.contains("A=a\n"), "{env}");
    assert!(
        !env.contains("SECRETFS_TOKEN") && !env.contains("SECRETFS_IDENTITY"),
        "{env}"
    );
    assert_no_canary("the workload's environment", env.as_bytes());
    let env = env_of(&["-e", "SECRETFS_TOKEN_FILE=/run/token"]);
    assert!(env.contains("SECRETFS_TOKEN_FILE=/run/token"), "{env}");
    assert!(!env.contains("SECRETFS_TOKEN="), "{env}");

    // A world-readable token file (a Kubernetes Secret volume's default 0644): warned about,
    // with the command that fixes it, and used.
    let token = s.path().join("token");
    std::fs::write(&token, "sfs_w_0123456789abcdef_x\n").unwrap();
    let launch_with_mode = |mode: u32| {
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        let token = token.to_str().unwrap();
        let args = [
            "run",
            "--url",
            "http://127.0.0.1:1",
            "--token-file",
            token,
            "-s",
            "A",
            "--",
            "true",
        ];
        s.run(&args, b"")
    };
    let out = launch_with_mode(0o644);
    assert_eq!(out.code, 125, "{}", out.stderr);
    let warning = format!(
        "warning: token file {} can be read by group or others (mode 0644); run \"chmod 600 {}\"",
        token.display(),
        token.display()
    );
    assert!(out.stderr.contains(&warning), "{}", out.stderr);
    let out = launch_with_mode(0o600);
    assert!(
        !out.stderr.contains("warning: token file"),
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
