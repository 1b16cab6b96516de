//! The launcher's rendered files: memory files named in variables, and supervised re-rendering.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{hard_value, keygen};
use crate::support::{FS_LIMIT, Running, Scratch, eventually, tools_python, unique_canary};

/// A job spec in the scratch dir reading the scratch store, with `files` (TOML) appended.
fn job_spec(s: &Scratch, files: &str, templates: &[(&str, &str)]) -> PathBuf {
    for (name, text) in templates {
        std::fs::write(s.path().join(name), text).unwrap();
    }
    let path = s.path().join("job.toml");
    std::fs::write(&path, format!("[source]\nstore = \"store.db\"\n{files}")).unwrap();
    path
}

#[test]
fn the_launcher_hands_rendered_files_over_as_memory_files_named_in_variables() {
    let Some(tools) = tools_python(
        "the_launcher_hands_rendered_files_over_as_memory_files_named_in_variables",
        "huggingface_hub",
    ) else {
        return;
    };
    let canary = unique_canary("render-run");
    let value = hard_value(&canary);
    let s = Scratch::new();
    s.ok(&["secret", "create", "DB_PASSWORD"], value.as_bytes());
    s.ok(
        &["secret", "create", "HF", "-t", "huggingface"],
        b"hf_fromTheLauncher42",
    );
    let (_, public) = keygen(s.path(), "user");
    s.ok(
        &["secret", "create", "USER_KEY", "-t", "ssh-public-key"],
        &public,
    );
    let spec = job_spec(
        &s,
        r#"
        [files."config.json"]
        template = "config.json.tmpl"
        env = "APP_CONFIG"
        [files."hf-token"]
        builtin = "huggingface-token"
        env = "HF_TOKEN_PATH"
        [files.authorized_keys]
        builtin = "authorized_keys"
        env = "KEYS_FILE"
        "#,
        &[(
            "config.json.tmpl",
            "{\"password\": {{ secret \"DB_PASSWORD\" | json }}}\n",
        )],
    );
    let check = "import json, os, stat, sys, huggingface_hub\n\
                 path = os.environ['APP_CONFIG']\n\
                 assert path.startswith('/proc/%d/fd/' % os.getpid()), path\n\
                 assert os.readlink(path).startswith('/memfd:secretfs:config.json'), os.readlink(path)\n\
                 assert stat.S_IMODE(os.stat(path).st_mode) == 0o400\n\
                 assert json.load(open(path, encoding='utf-8')) == {'password': sys.argv[1]}\n\
                 assert huggingface_hub.get_token() == 'hf_fromTheLauncher42'\n\
                 keys = open(os.environ['KEYS_FILE']).read()\n\
                 assert keys.endswith(' USER_KEY\\n') and keys.startswith('ssh-ed25519 '), keys\n\
                 print('ok')\n";
    let out = s.run(
        &[
            "run",
            "--spec",
            spec.to_str().unwrap(),
            "--",
            tools.to_str().unwrap(),
            "-c",
            check,
            &value,
        ],
        b"",
    );
    assert_eq!((out.code, out.stdout.trim()), (0, "ok"), "{}", out.stderr);

    // --dry-run says which variable gets which file; no value.
    let out = s.run(
        &[
            "run",
            "--spec",
            spec.to_str().unwrap(),
            "--dry-run",
            "--",
            "true",
        ],
        b"",
    );
    assert!(
        out.stdout.contains(
            "HF_TOKEN_PATH=<file hf-token rendered by builtin huggingface-token>  # spec [files]"
        ),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&canary) && !out.stderr.contains(&canary));
}

#[test]
fn the_launcher_fails_closed_on_a_rendered_file_it_cannot_build() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"value-of-a");
    let marker = s.path().join("started");
    let start = ["sh", "-c", "touch \"$0\"", marker.to_str().unwrap()];
    let launch = |spec: &Path, extra: &[&str]| {
        let mut args = vec!["run", "--spec", spec.to_str().unwrap()];
        args.extend(extra);
        args.push("--");
        args.extend(start);
        s.run(&args, b"")
    };
    // Every problem at once, with the template's line; the workload never starts.
    let spec = job_spec(
        &s,
        "[files.\"a.conf\"]\ntemplate = \"a.tmpl\"\nenv = \"A_CONF\"\n\
         [files.hf]\nbuiltin = \"huggingface-token\"\nenv = \"HF_TOKEN_PATH\"\n",
        &[(
            "a.tmpl",
            "a={{ secret \"A\" }}\nb={{ secret \"GONE\" | shell }}\n",
        )],
    );
    let out = launch(&spec, &[]);
    assert_eq!(out.code, 125, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("a.tmpl, line 2: secret \"GONE\" not found"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hf: no Hugging Face token secret is visible"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists());
    assert!(!out.stderr.contains("value-of-a"));

    // A file without the variable that would name it.
    let spec = job_spec(&s, "[files.\"a.conf\"]\ntemplate = \"a.tmpl\"\n", &[]);
    let out = launch(&spec, &[]);
    assert_eq!(out.code, 125);
    assert!(out.stderr.contains("set env = \"VAR\""), "{}", out.stderr);

    // A directory has files but no kinds: a built-in cannot be made from one.
    let dir = s.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let spec = job_spec(
        &s,
        "[files.keys]\nbuiltin = \"authorized_keys\"\nenv = \"K\"\n",
        &[],
    );
    let out = launch(&spec, &["--dir", dir.to_str().unwrap()]);
    assert_eq!(out.code, 125);
    assert!(
        out.stderr.contains("only the store or a server knows"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists());

    // From a directory, a template is rendered from its files.
    std::fs::write(dir.join("A"), "from-the-dir").unwrap();
    std::fs::write(s.path().join("a.tmpl"), "a={{ secret \"A\" | shell }}\n").unwrap();
    let spec = job_spec(
        &s,
        "[files.\"a.conf\"]\ntemplate = \"a.tmpl\"\nenv = \"A_CONF\"\n",
        &[],
    );
    let mut args = vec![
        "run",
        "--spec",
        spec.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend(["--", "sh", "-c", ". \"$A_CONF\"; printf %s \"$a\""]);
    let out = s.run(&args, b"");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "from-the-dir"),
        "{}",
        out.stderr
    );
}

/// `secretfs run --watch --debounce 0s --spec SPEC -- sh -c SCRIPT` from the scratch dir,
/// stopped (with its workload) however the test ends.
struct Supervised {
    child: Running,
    err: PathBuf,
}

impl Supervised {
    fn start(s: &Scratch, spec: &Path, script: &str) -> Supervised {
        let err = s.path().join("run.err");
        let mut cmd = s.cmd(&[
            "run",
            "--watch",
            "--debounce",
            "0s",
            "--spec",
            spec.to_str().unwrap(),
        ]);
        cmd.args(["--", "sh", "-c", script])
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap());
        Supervised {
            child: Running::spawn("secretfs run --watch", &mut cmd),
            err,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// SIGTERM to the supervisor; its exit status.
    fn stop(mut self) -> Option<i32> {
        self.child
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM, FS_LIMIT)
            .code()
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_supervised_run_restarts_with_a_new_rendering_when_a_secret_inside_changes() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "PW"], b"pw-1");
    s.ok(&["secret", "create", "UNUSED"], b"u-1");
    let spec = job_spec(
        &s,
        "[files.\"app.conf\"]\ntemplate = \"app.tmpl\"\nenv = \"APP_CONF\"\n\
         [files.keys]\nbuiltin = \"authorized_keys\"\nenv = \"KEYS\"\n",
        &[("app.tmpl", "password={{ secret \"PW\" }}\n")],
    );
    let log = s.path().join("starts.log");
    // Each start logs "PID password=... KEYS", KEYS the names of the keys in its file.
    let script = format!(
        "trap 'exit 3' TERM; echo \"$$ $(cat \"$APP_CONF\") $(cut -d' ' -f3 \"$KEYS\" | tr '\\n' ,)\" >> {}; \
         while true; do sleep 0.05; done",
        log.display()
    );
    let run = Supervised::start(&s, &spec, &script);
    let starts = || lines_of(&log);
    let err = || run.stderr();
    assert!(eventually(10, || starts().len() == 1), "{}", err());
    assert!(starts()[0].ends_with(" password=pw-1 "), "{:?}", starts());
    s.ok(&["secret", "update", "UNUSED"], b"u-2");
    s.ok(&["secret", "update", "PW"], b"pw-2");
    assert!(eventually(10, || starts().len() == 2), "{}", err());
    assert!(starts()[1].ends_with(" password=pw-2 "), "{:?}", starts());
    // A key added is a change of the authorized_keys built-in (its kind is followed, not only
    // the names it held at start), and so is its deletion.
    let (_, public) = keygen(s.path(), "k");
    s.ok(
        &["secret", "create", "NEW_KEY", "-t", "ssh-public-key"],
        &public,
    );
    assert!(eventually(10, || starts().len() == 3), "{}", err());
    assert!(
        starts()[2].ends_with(" password=pw-2 NEW_KEY,"),
        "{:?}",
        starts()
    );
    s.ok(&["secret", "delete", "NEW_KEY"], b"");
    assert!(eventually(10, || starts().len() == 4), "{}", err());
    assert!(starts()[3].ends_with(" password=pw-2 "), "{:?}", starts());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        starts().len(),
        4,
        "the unrelated update restarted it: {}",
        err()
    );
    assert_eq!(run.stop(), Some(3));
}

#[test]
fn a_supervised_one_secret_builtin_keeps_its_secret_and_ignores_others_of_its_kind() {
    let s = Scratch::new();
    s.ok(
        &["secret", "create", "HF_PROD", "-t", "huggingface"],
        b"hf_prod1",
    );
    let spec = job_spec(
        &s,
        "[files.hf]\nbuiltin = \"huggingface-token\"\nenv = \"HF_TOKEN_PATH\"\n",
        &[],
    );
    let log = s.path().join("starts.log");
    let script = format!(
        "trap 'exit 3' TERM; echo \"$$ $(cat \"$HF_TOKEN_PATH\")\" >> {}; while true; do sleep 0.05; done",
        log.display()
    );
    let run = Supervised::start(&s, &spec, &script);
    let starts = || lines_of(&log);
    let err = || run.stderr();
    assert!(eventually(10, || starts().len() == 1), "{}", err());
    // Another token of the kind, created and updated: not a change of this workload's file.
    s.ok(
        &["secret", "create", "HF_DEV", "-t", "huggingface"],
        b"hf_dev1",
    );
    s.ok(&["secret", "update", "HF_DEV"], b"hf_dev2");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(starts().len(), 1, "{}", err());
    // Its own secret rotated: a restart with it, although two of the kind are visible now.
    s.ok(&["secret", "update", "HF_PROD"], b"hf_prod2");
    assert!(eventually(10, || starts().len() == 2), "{}", err());
    assert!(
        starts()[1].ends_with(" hf_prod2"),
        "{:?} {}",
        starts(),
        err()
    );
}

/// sshd cannot read a launcher's memory file (it closes inherited descriptors, and StrictModes
/// refuses a /proc/PID/fd path): the launcher says so at start, and where to go instead.
#[test]
fn the_launcher_warns_that_sshd_cannot_read_a_memory_authorized_keys() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "OTHER"], b"value");
    let spec = job_spec(
        &s,
        "[files.authorized_keys]\nbuiltin = \"authorized_keys\"\nenv = \"KEYS\"\n",
        &[],
    );
    for (command, warned) in [("/usr/sbin/sshd", true), ("/usr/bin/true", false)] {
        let out = s.run(
            &[
                "run",
                "--spec",
                spec.to_str().unwrap(),
                "--dry-run",
                "--",
                command,
                "-D",
            ],
            b"",
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            out.stderr.contains("sshd cannot use a memory file")
                && out.stderr.contains("secretfs mount DIR --files"),
            warned,
            "{command}: {}",
            out.stderr
        );
    }
}

/// The launcher's `[files]` problems come with the rest of the plan's, in one refusal: a missing
/// template and a bad secret name, together.
#[test]
fn the_launcher_reports_files_and_plan_problems_at_once() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"value");
    let spec = job_spec(
        &s,
        "[secrets]\nX = \"1BAD\"\n[files.conf]\ntemplate = \"gone.tmpl\"\nenv = \"CONF\"\n",
        &[],
    );
    let out = s.run(
        &["run", "--spec", spec.to_str().unwrap(), "--", "true"],
        b"",
    );
    assert_eq!(out.code, 125, "{}", out.stderr);
    for want in ["gone.tmpl", "1BAD"] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
}
