//! From a spec and flags to a running workload: precedence, the inherited environment, exec and its
//! statuses, Lepton job bodies, the example workload.

use nix::sys::signal::Signal;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{DUMP, launch, secrets_dir};
use crate::support::{CANARY, FS_LIMIT, Running, Scratch, assert_no_canary, eventually, run_with};

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
