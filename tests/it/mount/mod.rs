//! `secretfs mount`: real FUSE mounts of a real local store, checked with real tools.

mod files;
mod hardening;
mod lifecycle;

use crate::support::Scratch;
use std::process::Command;

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
