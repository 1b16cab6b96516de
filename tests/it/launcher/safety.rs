//! What the launcher refuses and keeps to itself: every problem at once, no value in a log, private
//! memory files, dangerous variables, its own credentials.

use std::process::Command;

use super::secrets_dir;
use crate::support::{CANARY, Scratch, assert_no_canary, run_with, unique_canary};

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
