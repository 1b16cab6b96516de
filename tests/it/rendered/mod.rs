//! Rendered files (`secretfs mount --files`): checked with the programs that read them: sshd, git,
//! huggingface_hub, Python's json, PyYAML and sh.

mod launcher;
mod templates;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::Scratch;

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes the files spec and its templates into the scratch dir; returns the spec's path.
fn files_spec(s: &Scratch, spec: &str, templates: &[(&str, &str)]) -> PathBuf {
    let dir = s.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in templates {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let path = dir.join("files.toml");
    std::fs::write(&path, spec).unwrap();
    path
}

/// A value every escaping must get right: quotes of both kinds, a backslash, newlines, a tab,
/// shell syntax, non-ASCII, and the canary.
fn hard_value(canary: &str) -> String {
    format!("q\"uo'te \\back\nnew\r\tline $HOME `id` ; naïve 雪 🔑 {canary}")
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let key = dir.join(name);
    let (code, _, err) = run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &format!("{name}@test"),
            "-f",
        ])
        .arg(&key));
    assert_eq!(code, 0, "{err}");
    let public = std::fs::read(key.with_extension("pub")).unwrap();
    (key, public)
}
