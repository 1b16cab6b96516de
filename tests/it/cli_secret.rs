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
    assert_eq!(names_of(&list_json(&s)), ["HF_TOKEN", "db-password"]);
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

/// The names in the store, sorted.
fn names_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The values secretfs would hand a workload, read back through the launcher (values are
/// write-only: the launcher is the way to see one), as a name -> value map.
fn stored_values(s: &Scratch, names: &[&str]) -> std::collections::BTreeMap<String, String> {
    let report = s.path().join("values.json");
    let mut args = vec![
        "run",
        "--store",
        s.store().to_str().unwrap().to_owned().leak(),
    ];
    for n in names {
        args.extend(["-s", n]);
    }
    let script = "import json, os, sys; json.dump({n: os.environ[n] for n in sys.argv[2:]}, open(sys.argv[1], 'w'))";
    args.extend([
        "--",
        crate::support::python(),
        "-c",
        script,
        report.to_str().unwrap(),
    ]);
    args.extend(names);
    s.ok(&args, b"");
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// A Kubernetes secret volume: `NAME -> ..data/NAME`, `..data -> ..2026_...` (swapped atomically
/// by the kubelet); Docker's /run/secrets is plain files. Both import under the names they show.
#[test]
fn import_reads_kubernetes_secret_volumes_and_docker_secrets() {
    use std::os::unix::fs::symlink;
    let s = Scratch::new();
    let vol = s.path().join("volume");
    let data = vol.join("..2026_12_01_09_30_00.123456789");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("HF_TOKEN"), CANARY).unwrap();
    std::fs::write(data.join("db-password"), "pw").unwrap();
    symlink("..2026_12_01_09_30_00.123456789", vol.join("..data")).unwrap();
    symlink("..data/HF_TOKEN", vol.join("HF_TOKEN")).unwrap();
    symlink("..data/db-password", vol.join("db-password")).unwrap();
    let out = s.run(&["secret", "import", vol.to_str().unwrap()], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("imported 2 secrets"), "{}", out.stderr);
    let values = stored_values(&s, &["HF_TOKEN", "db-password"]);
    assert_eq!(values["HF_TOKEN"], CANARY);
    assert_eq!(values["db-password"], "pw");

    let docker = s.path().join("run-secrets");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(docker.join("api_key"), "k").unwrap();
    let out = s.run(&["secret", "import", docker.to_str().unwrap()], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stored_values(&s, &["api_key"])["api_key"], "k");

    // A link that leaves the directory is not followed.
    let leaky = s.path().join("leaky");
    std::fs::create_dir(&leaky).unwrap();
    symlink("/etc/hostname", leaky.join("host")).unwrap();
    refused(
        &s,
        &["secret", "import", leaky.to_str().unwrap()],
        b"",
        1,
        "links to /etc/hostname outside the directory",
    );
}

/// Every problem is reported at once, and nothing is created until there are none.
#[test]
fn import_reports_every_problem_at_once_and_creates_nothing() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "taken"], b"old");
    let dir = s.path().join("many");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("GOOD"), "x").unwrap();
    std::fs::write(dir.join("9bad"), "x").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(dir.join("taken"), "new").unwrap();
    std::fs::write(dir.join("huge"), vec![b'a'; 1024 * 1024 + 1]).unwrap();
    let out = s.run(&["secret", "import", dir.to_str().unwrap()], b"");
    assert_eq!(out.code, 1, "{}", out.stderr);
    for needle in [
        "4 problems to fix first",
        "9bad\" cannot be a secret",
        "empty\": ",
        "secret \"taken\" already exists",
        "huge\": ",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    assert_eq!(
        names_of(&list_json(&s)),
        ["taken"],
        "an import with problems created something"
    );
    // Fixed, the same import goes through in full.
    for f in ["9bad", "empty", "taken", "huge"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    s.ok(&["secret", "import", dir.to_str().unwrap()], b"");
    assert_eq!(stored_values(&s, &["GOOD"])["GOOD"], "x");
}

/// `--dotenv` stores exactly what python-dotenv (the real client: what an application loading
/// the same file sees) makes of a file with every quoting rule in it.
#[test]
fn import_dotenv_agrees_with_python_dotenv() {
    let Some(python) =
        crate::support::tools_python("import_dotenv_agrees_with_python_dotenv", "dotenv")
    else {
        return;
    };
    let s = Scratch::new();
    let file = s.path().join(".env");
    let text = concat!(
        "# a comment\n",
        "export PLAIN=plain-value\n",
        "SPACED = two words here  # comment\n",
        "HASHED=abc#def\n",
        "DOLLARS=pa$$word$HOME\n",
        "DOUBLE=\"q \\\"x\\\" tab\\t nl\\n back\\\\ \\x41\"\n",
        "SINGLE='no \\n escapes \\' here'\n",
        "MULTI=\"line one\n",
        "line two\"\n",
        "UNICODE=\"é ü 日本\"\n",
        "BRACED=\"${PLAIN}/x ${NOPE:-fallback}\"\n",
        "CRLF=crlf\r\n",
        "  'QUOTED_KEY'=q\n",
    );
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys, dotenv; print(json.dumps(dotenv.dotenv_values(sys.argv[1])))",
        ])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(expected.len(), 11, "{expected:?}");

    let out = s.run(
        &["secret", "import", "--dotenv", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("imported 11 secrets"), "{}", out.stderr);
    let names: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(stored_values(&s, &names), expected);
}

#[test]
fn import_dotenv_lists_every_problem_by_line_without_values() {
    let s = Scratch::new();
    let file = s.path().join("bad.env");
    std::fs::write(
        &file,
        format!(
            "GOOD={CANARY}\nOPEN=\"{CANARY}\nTWICE=a\nTWICE=b\nNOVALUE\nEMPTY=\n9bad=x\nAFTER='{CANARY}' trailing\n"
        ),
    )
    .unwrap();
    let out = s.run(
        &["secret", "import", "--dotenv", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let shown = file.display().to_string();
    for needle in [
        format!("{shown} line 2: cannot be parsed"),
        format!("{shown} line 8: cannot be parsed"),
        format!("{shown} line 4: TWICE is set again (first on line 3)"),
        format!("{shown} line 5: NOVALUE has no value"),
        format!("{shown} line 6: "),
        format!("{shown} line 7: invalid secret name"),
    ] {
        assert!(
            out.stderr.contains(&needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    assert_no_canary("stderr", out.stderr.as_bytes());
    assert!(
        !s.store().exists() || list_json(&s).as_array().unwrap().is_empty(),
        "an import with problems created something"
    );
}

/// `echo "$TOKEN" | secretfs secret create X` keeps the newline echo adds, and says so; the
/// bytes change only when asked.
#[test]
fn a_trailing_newline_is_kept_with_a_warning_or_trimmed_when_asked() {
    let s = Scratch::new();
    let out = s.run(&["secret", "create", "KEPT"], b"tok-123\n");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: the value for \"KEPT\" (from stdin) ends with a newline")
            && out.stderr.contains("--trim-newline"),
        "{}",
        out.stderr
    );
    let out = s.run(
        &["secret", "create", "TRIMMED", "--trim-newline"],
        b"tok-123\r\n",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("newline"), "{}", out.stderr);
    let out = s.run(&["secret", "create", "CLEAN"], b"tok-123");
    assert!(!out.stderr.contains("newline"), "{}", out.stderr);
    let file = s.path().join("v");
    std::fs::write(&file, "from-file\n").unwrap();
    let out = s.run(
        &[
            "secret",
            "update",
            "CLEAN",
            "--from-file",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        out.stderr.contains(&format!(
            "(from file {}) ends with a newline",
            file.display()
        )),
        "{}",
        out.stderr
    );
    // An SSH public key, as ssh-keygen writes the .pub file (ending in its newline): the newline
    // is the format's, dropped without a word, on create and on update.
    let pubfile = s.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&pubfile)
        .status()
        .unwrap();
    assert!(made.success());
    let pubfile = s.path().join("id_ed25519.pub");
    let line = std::fs::read_to_string(&pubfile).unwrap();
    assert!(line.ends_with('\n'));
    for args in [
        &[
            "secret",
            "create",
            "DEPLOY_KEY",
            "--type",
            "ssh-public-key",
            "--from-file",
        ][..],
        &["secret", "update", "DEPLOY_KEY", "--from-file"],
    ] {
        let mut args = args.to_vec();
        args.push(pubfile.to_str().unwrap());
        let out = s.run(&args, b"");
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(!out.stderr.contains("newline"), "{args:?}: {}", out.stderr);
    }
    let values = stored_values(&s, &["KEPT", "TRIMMED", "CLEAN", "DEPLOY_KEY"]);
    assert_eq!(values["KEPT"], "tok-123\n");
    assert_eq!(values["TRIMMED"], "tok-123");
    assert_eq!(values["CLEAN"], "from-file\n");
    assert_eq!(values["DEPLOY_KEY"], line.trim_end_matches('\n'));
}

/// Help as a newcomer meets it: `help run` is the launcher's own text, a variable set in the
/// environment does not show up as a typed option in usage lines, and the server's help lists
/// no client options.
#[test]
fn help_and_usage_lines_say_what_applies() {
    let s = Scratch::new();
    let out = s.run(&["help", "run"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("usage: secretfs run [OPTIONS]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--secret-file ENV=SECRET"),
        "{}",
        out.stdout
    );
    // Scratch sets SECRETFS_STORE.
    let out = s.run(&["mount"], b"");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("Usage: secretfs mount <DIR>"),
        "{}",
        out.stderr
    );
    let out = s.run(&["serve", "--help"], b"");
    assert_eq!(out.code, 0);
    for foreign in ["--url", "--token-file", "--workspace", "--store"] {
        assert!(
            !out.stdout.contains(foreign),
            "serve --help lists {foreign}"
        );
    }
    assert!(
        out.stdout.contains("--tls-key <PEM>") && out.stdout.contains("The private key (PEM)"),
        "{}",
        out.stdout
    );
    // The environment still selects the store, and an early --store still works.
    s.ok(&["secret", "create", "A"], b"a");
    let listed = s.ok(
        &["--store", s.store().to_str().unwrap(), "secret", "list"],
        b"",
    );
    assert!(listed.contains("A "), "{listed}");
}

/// Against a server an import is one request: the server creates every secret or none.
#[test]
fn import_to_a_server_is_all_or_nothing() {
    let s = Scratch::new();
    let server = crate::support::Server::start(&s);
    let admin = s.path().join("server.db.admin-token");
    let cli = |args: &[&str]| {
        let mut cmd = s.cmd(args);
        cmd.env("SECRETFS_URL", &server.url)
            .env("SECRETFS_TOKEN_FILE", &admin)
            .env_remove("SECRETFS_STORE");
        crate::support::run_with(cmd, b"")
    };
    let dir = s.path().join("first");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("A"), CANARY).unwrap();
    std::fs::write(dir.join("B"), "b").unwrap();
    let out = cli(&["secret", "import", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("imported 2 secrets"), "{}", out.stderr);
    // B exists now: the second import names it and creates neither C nor B.
    let again = s.path().join("second");
    std::fs::create_dir(&again).unwrap();
    std::fs::write(again.join("C"), "c").unwrap();
    std::fs::write(again.join("B"), "b2").unwrap();
    let out = cli(&["secret", "import", again.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("secret \"B\" already exists"),
        "{}",
        out.stderr
    );
    let listed = cli(&["secret", "list", "-o", "json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(names_of(&listed), ["A", "B"]);
    assert_no_canary("stderr", out.stderr.as_bytes());
}

/// A mistyped name gets the closest name the asker may see: in the CLI, in the launcher's list
/// of missing secrets (from the store and from a directory), and a `--json` gets pointed to
/// `-o json`.
#[test]
fn a_mistyped_name_gets_a_suggestion_and_a_json_flag_a_pointer() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "db-password"], b"pw");
    let out = s.run(&["secret", "update", "db-pasword"], b"x");
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("secret \"db-pasword\" not found; did you mean \"db-password\"?"),
        "{}",
        out.stderr
    );
    let out = s.run(&["secret", "delete", "nothing-like-it"], b"");
    assert!(!out.stderr.contains("did you mean"), "{}", out.stderr);
    let store = s.store();
    let out = s.run(
        &[
            "run",
            "--store",
            store.to_str().unwrap(),
            "-s",
            "DB=db-pasword",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.code, 125);
    assert!(
        out.stderr.contains("did you mean \"db-password\"?"),
        "{}",
        out.stderr
    );
    let dir = s.path().join("secrets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("HF_TOKEN"), "hf").unwrap();
    let out = s.run(
        &[
            "run",
            "--dir",
            dir.to_str().unwrap(),
            "-s",
            "HF_TOKN",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.code, 125);
    assert!(
        out.stderr.contains("did you mean \"HF_TOKEN\"?"),
        "{}",
        out.stderr
    );
    let out = s.run(&["secret", "list", "--json"], b"");
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("\"-o json\""), "{}", out.stderr);
}
