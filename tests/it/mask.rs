//! `secretfs run --mask`: a real workload's output through the launcher, to a pipe and (under
//! `script`, which gives the launcher a terminal) to a pseudo-terminal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{FS_LIMIT, Running, Scratch, bin, eventually, python, unique_canary};

fn dir_with(s: &Scratch, secrets: &[(&str, &str)]) -> PathBuf {
    let dir = s.path().join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    for (n, v) in secrets {
        std::fs::write(dir.join(n), v).unwrap();
    }
    dir
}

/// A Python workload that prints the value of `$TOK` cut across two writes (flushed apart),
/// its standard and URL-safe base64 and its percent-encoding, `$PIN` (too short to mask), the
/// value on stderr, whether stdout is a terminal, then exits 7.
const PRINTS: &str = r#"
import base64, os, sys, time, urllib.parse
t = os.environ["TOK"]
sys.stdout.write("split " + t[:7]); sys.stdout.flush()
time.sleep(0.2)
sys.stdout.write(t[7:] + " end\n")
print("b64", base64.b64encode(t.encode()).decode())
print("url", urllib.parse.quote(t, safe=""))
print("pin", os.environ["PIN"])
print("tty", sys.stdout.isatty(), flush=True)
print("err", t, file=sys.stderr)
sys.exit(7)
"#;

#[test]
fn values_split_across_writes_and_their_encodings_are_masked_and_the_status_kept() {
    let s = Scratch::new();
    // A canary with characters base64 and percent-encoding change.
    let canary = format!("{}/+?x", unique_canary("mask"));
    let dir = dir_with(&s, &[("TOK", &canary), ("PIN", "1")]);
    let out = Command::new(bin())
        .args(["run", "--mask", "--dir"])
        .arg(&dir)
        .args(["-s", "TOK", "-s", "PIN", "--", python(), "-c", PRINTS])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stdout.contains("split [secretfs: TOK] end\n"), "{stdout}");
    assert!(stdout.contains("b64 [secretfs: TOK]"), "{stdout}");
    assert!(stdout.contains("url [secretfs: TOK]\n"), "{stdout}");
    assert!(stdout.contains("pin 1\n"), "{stdout}");
    assert!(stdout.contains("tty False"), "{stdout}");
    assert!(stderr.contains("err [secretfs: TOK]"), "{stderr}");
    assert!(
        stderr.contains("secret \"PIN\" is shorter than 6 bytes and is not masked"),
        "{stderr}"
    );
    let base64_of = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&canary)
    };
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains(&canary), "{what}: {text}");
        assert!(
            !text.contains(base64_of.trim_end_matches('=')),
            "{what}: {text}"
        );
    }
}

/// `script -qc CMD`: CMD runs on a pseudo-terminal of script's (the launcher's stdout and
/// stderr are a terminal), and script copies it to its own stdout.
fn under_a_terminal(s: &Scratch, command: &str) -> (Option<i32>, String) {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .current_dir(s.path())
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn under_a_terminal_the_workload_keeps_its_tty_its_window_size_and_is_masked() {
    let s = Scratch::new();
    let canary = unique_canary("mask-tty");
    let dir = dir_with(&s, &[("TOK", &canary), ("PIN", "1")]);
    let (code, text) = under_a_terminal(
        &s,
        &format!(
            "{} run --mask --dir {} -s TOK -s PIN -- {} -c '{}'",
            bin(),
            dir.display(),
            python(),
            PRINTS.replace('\'', "\"")
        ),
    );
    assert_eq!(code, Some(7), "{text}");
    assert!(text.contains("tty True"), "{text}");
    // Each line ends as a terminal ends it, once: CR LF, not CR CR LF.
    assert!(text.contains("tty True\r\n"), "{text:?}");
    assert!(!text.contains("\r\r\n"), "{text:?}");
    assert!(text.contains("split [secretfs: TOK] end"), "{text}");
    assert!(text.contains("err [secretfs: TOK]"), "{text}");
    assert!(!text.contains(&canary), "{text}");

    // The window size passes through at the start and follows a change: the workload resizes
    // the outer terminal; the launcher (told by SIGWINCH, as a shell would be) resizes the
    // workload's, then passes the signal on.
    let script = s.path().join("win.py");
    std::fs::write(
        &script,
        r#"
import os, signal, subprocess, time
got = []
signal.signal(signal.SIGWINCH, lambda *a: got.append(os.get_terminal_size()))
print("start", tuple(os.get_terminal_size()), flush=True)
subprocess.run(["stty", "-F", "/dev/tty", "cols", "91", "rows", "33"])
for _ in range(250):
    if got and tuple(got[-1]) == (91, 33):
        break
    time.sleep(0.02)
print("after", tuple(got[-1]) if got else None, "\x1b[31mred\x1b[0m", flush=True)
"#,
    )
    .unwrap();
    let (code, text) = under_a_terminal(
        &s,
        &format!(
            "stty cols 123 rows 45; {} run --mask --dir {} -s TOK -- {} {}",
            bin(),
            dir.display(),
            python(),
            script.display()
        ),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("start (123, 45)"), "{text}");
    assert!(text.contains("after (91, 33)"), "{text}");
    // Colours pass as they are.
    assert!(text.contains("\x1b[31mred\x1b[0m"), "{text}");
}

#[test]
fn with_watch_a_restarted_workload_is_masked_for_its_new_value_and_the_old_one() {
    let s = Scratch::new();
    let dir = dir_with(&s, &[("TOK", "first-value-1")]);
    let out_path = s.path().join("out");
    let log = s.path().join("starts");
    // Prints both values whenever it starts (the old one as a stale log line would carry it).
    let script = format!(
        "trap 'exit 0' TERM; echo start >> {log}; echo \"now $TOK old first-value-1\"; \
         while true; do sleep 0.05; done",
        log = log.display()
    );
    let mut child = Running::spawn(
        "secretfs run --watch --mask",
        Command::new(bin())
            .args(["run", "--watch", "--mask", "--debounce", "0s", "--dir"])
            .arg(&dir)
            .args(["-s", "TOK", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null()),
    );
    let starts = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(eventually(10, || starts(&log) == 1));
    let tmp = dir.join(".tmp");
    std::fs::write(&tmp, "second-value-2").unwrap();
    std::fs::rename(&tmp, dir.join("TOK")).unwrap();
    assert!(eventually(10, || starts(&log) == 2));
    assert!(eventually(5, || std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .count()
        == 2));
    let status = child.signal_and_wait(nix::sys::signal::Signal::SIGTERM, FS_LIMIT);
    assert_eq!(status.code(), Some(0));
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(
        out,
        "now [secretfs: TOK] old [secretfs: TOK]\nnow [secretfs: TOK] old [secretfs: TOK]\n"
    );
}

#[test]
fn the_spec_turns_masking_on_and_dry_run_says_so() {
    let s = Scratch::new();
    let dir = dir_with(&s, &[("TOK", "spec-masked-value")]);
    let spec = s.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "mask = true\n[secrets]\nTOK = \"TOK\"\n[source]\ndir = \"{}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(bin())
            .args(["run", "--spec"])
            .arg(&spec)
            .args(extra)
            .args(["--", "sh", "-c", "echo $TOK"])
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[secretfs: TOK]\n");
    let out = run(&["--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("mask: stdout and stderr through the launcher"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A 168-byte key through the encoders people pipe keys through: GNU `base64` (wrapped at 76
/// columns, and `-w0`), `openssl base64` (wrapped at 64), Python's `quote()` (which keeps `/`),
/// full percent-encoding in upper- and lower-case hex. No run of the key's encodings comes out;
/// each line that carried one shows the label.
#[test]
fn a_long_key_is_masked_through_wrapped_base64_and_every_percent_encoding() {
    use base64::Engine;
    let s = Scratch::new();
    let body: String = unique_canary("longkey").chars().cycle().take(155).collect();
    let key = format!("sk-proj-{body}/+=ab");
    assert_eq!(key.len(), 168);
    let dir = dir_with(&s, &[("KEY", &key)]);
    let script = format!(
        "printf '%s' \"$KEY\" | base64; echo \"$KEY\" | base64; printf '%s' \"$KEY\" | base64 -w0; echo; \
         printf '%s' \"$KEY\" | openssl base64; \
         {python} -c 'import os, re, urllib.parse as u; k = os.environ[\"KEY\"]; \
         print(u.quote(k)); print(u.quote(k, safe=\"\")); \
         print(re.sub(\"%[0-9A-F]{{2}}\", lambda m: m.group(0).lower(), u.quote(k, safe=\"\"))); \
         print(u.quote_plus(k))'",
        python = python()
    );
    let out = Command::new(bin())
        .args(["run", "--mask", "--dir"])
        .arg(&dir)
        .args(["-s", "KEY", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every encoding, computed here, as it would be printed (line breaks aside).
    let b64 = base64::engine::general_purpose::STANDARD;
    let encodings = [
        b64.encode(&key),
        b64.encode(format!("{key}\n")),
        key.replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D"),
        key.replace('/', "%2f")
            .replace('+', "%2b")
            .replace('=', "%3d"),
        key.replace('+', "%2B").replace('=', "%3D"),
    ];
    let joined = stdout.replace(['\n', '\r'], "");
    for e in &encodings {
        // The first and last few characters mix in bytes around the value; the rest must not
        // appear, not even in part.
        let inner = &e.as_bytes()[4..e.len() - 4];
        for window in inner.windows(16) {
            let w = std::str::from_utf8(window).unwrap();
            assert!(!joined.contains(w), "{w:?} of {e} came out:\n{stdout}");
        }
    }
    assert!(!stdout.contains(&body[..20]), "{stdout}");
    assert!(stdout.matches("[secretfs: KEY]").count() >= 8, "{stdout}");
}
