//! `secretfs secret ...` against a real SQLite store in a temp dir.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::support::{CANARY, Scratch, assert_no_canary};

fn list_json(s: &Scratch) -> Value {
    serde_json::from_str(&s.ok(&["secret", "list", "-o", "json"], b"")).unwrap()
}

#[test]
fn lifecycle_create_list_update_delete() {
    let s = Scratch::new();
    let out = s.run(
        &["secret", "create", "db-password", "--tag", "prod"],
        CANARY.as_bytes(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("created secret \"db-password\" (custom, private, version 1)"),
        "{}",
        out.stderr
    );

    // A template fills in its suggested name.
    s.ok(
        &["secret", "create", "--type", "huggingface", "--public"],
        b"hf_0123456789abcdef",
    );

    let table = s.ok(&["secret", "list"], b"");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("VISIBILITY")
            && lines[0].contains("VERSION")
    );
    assert!(
        lines[1].starts_with("HF_TOKEN")
            && lines[1].contains("huggingface")
            && lines[1].contains("public")
    );
    assert!(
        lines[2].starts_with("db-password")
            && lines[2].contains("private")
            && lines[2].contains("prod")
    );

    let list = list_json(&s);
    let db = &list[1];
    assert_eq!(db["name"], "db-password");
    assert_eq!(db["kind"], "custom");
    assert_eq!(db["visibility"], "private");
    assert_eq!(db["version"], 1);
    assert_eq!(db["tags"], serde_json::json!(["prod"]));
    assert!(db.get("value").is_none());
    assert_eq!(list[0]["name"], "HF_TOKEN");

    // Replacing the value bumps the version; a visibility change alone does not.
    let updated: Value = serde_json::from_str(&s.ok(
        &["secret", "update", "db-password", "-o", "json"],
        b"second value",
    ))
    .unwrap();
    assert_eq!(updated["version"], 2);
    let updated: Value = serde_json::from_str(&s.ok(
        &["secret", "update", "db-password", "--public", "-o", "json"],
        b"",
    ))
    .unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["visibility"], "public");
    std::fs::write(s.path().join("v3"), "third").unwrap();
    let updated: Value = serde_json::from_str(&s.ok(
        &[
            "secret",
            "update",
            "db-password",
            "--from-file",
            "v3",
            "--private",
            "-o",
            "json",
        ],
        b"",
    ))
    .unwrap();
    assert_eq!(
        (updated["version"].as_u64(), updated["visibility"].as_str()),
        (Some(3), Some("private"))
    );
    assert_eq!(list_json(&s)[1]["version"], 3);

    let out = s.run(&["secret", "delete", "db-password"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("deleted secret \"db-password\""));
    let names: Vec<_> = list_json(&s)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, ["HF_TOKEN"]);
}

#[test]
fn store_files_are_private_and_hold_no_plaintext() {
    let s = Scratch::new();
    let trace = |c: &mut std::process::Command| {
        c.env("RUST_LOG", "trace");
    };
    let mut outputs = Vec::new();
    let mut cmd = s.cmd(&["secret", "create", "canary", "-t", "github"]);
    trace(&mut cmd);
    outputs.push(crate::support::run_with(cmd, CANARY.as_bytes()));
    std::fs::write(s.path().join("value.txt"), format!("{CANARY}-v2")).unwrap();
    let mut cmd = s.cmd(&[
        "-vvv",
        "secret",
        "update",
        "canary",
        "--from-file",
        "value.txt",
    ]);
    trace(&mut cmd);
    outputs.push(crate::support::run_with(cmd, b""));
    std::fs::remove_file(s.path().join("value.txt")).unwrap();
    // A refused duplicate create, with the canary on stdin, at trace level.
    let mut cmd = s.cmd(&["secret", "create", "canary"]);
    trace(&mut cmd);
    outputs.push(crate::support::run_with(cmd, CANARY.as_bytes()));
    for out in &outputs {
        assert_no_canary("stdout", out.stdout.as_bytes());
        assert_no_canary("stderr", out.stderr.as_bytes());
    }
    assert_eq!(outputs[0].code, 0, "{}", outputs[0].stderr);
    assert!(
        outputs[0]
            .stderr
            .contains("warning: the value does not match the GitHub token format"),
        "{}",
        outputs[0].stderr
    );
    assert_eq!(outputs[2].code, 1);

    let files = s.files_starting_with("store.db");
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"store.db".to_owned()) && names.contains(&"store.db.key".to_owned()),
        "{names:?}"
    );
    for (path, bytes) in &files {
        assert_no_canary(&path.display().to_string(), bytes);
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
    // Keep the WAL: scan it while the store is open by another process's writes too.
    assert!(
        names.iter().any(|n| n == "store.db-wal")
            || files
                .iter()
                .any(|(p, b)| p.ends_with("store.db") && b.len() > 4096)
    );
}

#[test]
fn default_store_lives_in_xdg_data_home() {
    let s = Scratch::new();
    let mut cmd = s.cmd(&["secret", "create", "A"]);
    cmd.env_remove("SECRETFS_STORE")
        .env("XDG_DATA_HOME", s.path().join("data"));
    let out = crate::support::run_with(cmd, b"x");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = s.path().join("data/secretfs");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(dir.join("store.db").is_file() && dir.join("store.db.key").is_file());
}

/// The store's rows, read past secretfs with Python's sqlite3 (for a store secretfs refuses to
/// open); the file's bytes when it is not SQLite at all. Checkpoints move bytes between the WAL
/// and the main file without changing a row, so rows are what is compared.
fn raw_snapshot(s: &Scratch) -> Option<String> {
    let dump = "import sqlite3,sys\n\
                c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\n\
                print(c.execute('select name,version,hex(sealed),updated_at,visibility,tags from secrets order by name').fetchall())\n\
                print(c.execute('select count(*) from audit').fetchall())";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(dump)
        .arg(s.store())
        .output()
        .ok()?;
    if out.status.success() {
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        std::fs::read(s.store()).ok().map(|b| format!("{b:?}"))
    }
}

/// Runs `args` (with `stdin`) expecting failure with `code` and a message containing `needle`,
/// and checks the store's content did not change.
fn refused(s: &Scratch, args: &[&str], stdin: &[u8], code: i32, needle: &str) {
    // A store that cannot be listed (corrupt, wrong key) is compared by its bytes instead.
    let listed = s.run(&["secret", "list", "-o", "json"], b"");
    let before = (listed.code == 0).then(|| listed.stdout.clone());
    let bytes_before = raw_snapshot(s);
    let out = s.run(args, stdin);
    assert_eq!(out.code, code, "secretfs {args:?}: {}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "secretfs {args:?}: expected {needle:?} in:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.starts_with("error: ") || code == 2,
        "{}",
        out.stderr
    );
    assert_no_canary("stderr", out.stderr.as_bytes());
    match before {
        Some(before) => assert_eq!(
            s.ok(&["secret", "list", "-o", "json"], b""),
            before,
            "store changed after refused {args:?}"
        ),
        None => assert_eq!(
            raw_snapshot(s),
            bytes_before,
            "store file changed after refused {args:?}"
        ),
    }
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let s = Scratch::new();
    // Before the store exists: a refused create does not create it.
    refused(&s, &["secret", "create", "a/b"], b"v", 1, "it contains '/'");
    refused(
        &s,
        &["secret", "create", "EMPTY"],
        b"",
        1,
        "secret value is empty",
    );
    assert!(!s.store().exists(), "a refused create made a store file");
    refused(
        &s,
        &["secret", "list"],
        b"",
        1,
        "does not exist; create a secret first",
    );

    s.ok(&["secret", "create", "A"], CANARY.as_bytes());
    refused(
        &s,
        &["secret", "create", "A"],
        b"v",
        1,
        "secret \"A\" already exists",
    );
    refused(
        &s,
        &["secret", "update", "NOPE"],
        b"v",
        1,
        "secret \"NOPE\" not found",
    );
    refused(
        &s,
        &["secret", "delete", "NOPE"],
        b"",
        1,
        "hint: run \"secretfs secret list\"",
    );
    refused(
        &s,
        &["secret", "create", "1abc"],
        b"v",
        1,
        "a letter or '_' first",
    );
    refused(
        &s,
        &["secret", "create", ".."],
        b"v",
        1,
        "invalid secret name \"..\"",
    );
    refused(
        &s,
        &["secret", "create", &"x".repeat(254)],
        b"v",
        1,
        "longer than 253",
    );
    refused(
        &s,
        &["secret", "update", "A"],
        b"",
        1,
        "secret value is empty",
    );
    refused(
        &s,
        &["secret", "create", "BIG"],
        &vec![b'x'; (1 << 20) + 1],
        1,
        "over the limit of 1048576 bytes",
    );
    refused(
        &s,
        &["secret", "create", "K", "-t", "ssh-public-key"],
        b"ssh-ed25519 AAAA",
        1,
        "not a valid SSH public key",
    );
    refused(
        &s,
        &["secret", "create", "T", "--tag", "a b"],
        b"v",
        1,
        "invalid tag",
    );
    refused(
        &s,
        &["secret", "create", "T", "-t", "aws"],
        b"v",
        2,
        "unknown secret type",
    );
    // A custom secret needs a name; a value is never taken from argv.
    refused(&s, &["secret", "create"], b"v", 2, "needs a name");
    refused(
        &s,
        &["secret", "create", "B", CANARY],
        b"",
        2,
        "never taken from the command line",
    );
    // Exactly 1 MiB is accepted.
    s.ok(&["secret", "create", "MAX"], &vec![b'x'; 1 << 20]);
}

#[test]
fn key_file_problems() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"v");
    let key = s.key();

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    refused(&s, &["secret", "list"], b"", 1, "run \"chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let saved = s.path().join("saved.key");
    std::fs::rename(&key, &saved).unwrap();
    refused(&s, &["secret", "list"], b"", 1, "its key file");
    refused(
        &s,
        &["secret", "create", "B"],
        b"v",
        1,
        "restore the key file",
    );
    assert!(!key.exists(), "a new key was made for a sealed store");

    // Another store's key.
    let other = Scratch::new();
    other.ok(&["secret", "create", "X"], b"v");
    std::fs::copy(other.key(), &key).unwrap();
    refused(&s, &["secret", "list"], b"", 1, "it is another store's key");
    std::fs::rename(&saved, &key).unwrap();
    assert_eq!(list_json(&s)[0]["name"], "A");

    // --key-file points elsewhere.
    let moved = s.path().join("elsewhere.key");
    std::fs::rename(&key, &moved).unwrap();
    let out = s.ok(
        &["secret", "list", "--key-file", moved.to_str().unwrap()],
        b"",
    );
    assert!(out.contains('A'));
}

#[test]
fn corrupt_and_foreign_databases() {
    let s = Scratch::new();
    std::fs::write(s.store(), vec![0x5a; 8192]).unwrap();
    refused(&s, &["secret", "list"], b"", 1, "is not a secretfs store");
    refused(
        &s,
        &["secret", "create", "A"],
        b"v",
        1,
        "is not a secretfs store",
    );
    assert_eq!(
        std::fs::read(s.store()).unwrap(),
        vec![0x5a; 8192],
        "the corrupt file was written to"
    );

    // A valid SQLite database that belongs to another application.
    let foreign = Scratch::new();
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table t(x)'); c.commit()"])
        .arg(foreign.store())
        .status()
        .expect("python3");
    assert!(status.success());
    refused(
        &foreign,
        &["secret", "create", "A"],
        b"v",
        1,
        "another application's SQLite database",
    );
    assert!(
        !foreign.key().exists(),
        "a key was created for a foreign database"
    );
}

#[test]
fn import_makes_one_secret_per_file_and_checks_everything_first() {
    let s = Scratch::new();
    let dir = s.path().join("old-secrets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("HF_TOKEN"), CANARY).unwrap();
    std::fs::write(dir.join("db-password"), "pw").unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    let out = s.run(
        &[
            "secret",
            "import",
            dir.to_str().unwrap(),
            "--tag",
            "imported",
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("imported 2 secrets"), "{}", out.stderr);
    let names: Vec<String> = list_json(&s)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["HF_TOKEN", "db-password"]);
    assert_eq!(list_json(&s)[0]["tags"], serde_json::json!(["imported"]));

    // One bad file name stops the import before anything is created.
    let bad = s.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("GOOD"), "x").unwrap();
    std::fs::write(bad.join("9bad"), "x").unwrap();
    refused(
        &s,
        &["secret", "import", bad.to_str().unwrap()],
        b"",
        1,
        "cannot be a secret",
    );
}
