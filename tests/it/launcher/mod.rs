//! `secretfs run`: real processes, real Python workloads, each source.

mod launch;
mod safety;
mod sources;

use crate::support::{Out, Scratch, assert_no_canary, run_with};
use std::path::PathBuf;

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
