//! Rendering by the mount: what the readers read, what fails closed, and rotations.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{files_spec, hard_value, keygen, run};
use crate::support::{Daemon, Scratch, eventually, fuse_available, tools_python, unique_canary};

#[test]
fn templates_give_json_yaml_and_shell_readers_the_exact_value() {
    if !fuse_available("templates_give_json_yaml_and_shell_readers_the_exact_value") {
        return;
    }
    let Some(tools) = tools_python(
        "templates_give_json_yaml_and_shell_readers_the_exact_value",
        "yaml",
    ) else {
        return;
    };
    let canary = unique_canary("render");
    let value = hard_value(&canary);
    let s = Scratch::new();
    s.ok(&["secret", "create", "DB_PASSWORD"], value.as_bytes());
    s.ok(&["secret", "create", "DB_USER"], b"app user");
    // Every character YAML or JSON must escape, and those only YAML does (C1, line and paragraph
    // separators, the byte-order mark).
    let odd: String = (1u8..0x20)
        .map(char::from)
        .chain([
            '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffe}',
        ])
        .collect();
    s.ok(&["secret", "create", "ODD"], odd.as_bytes());
    let spec = files_spec(
        &s,
        r#"
        [files."config.json"]
        template = "config.json.tmpl"
        mode = "0440"
        [files."config.yaml"]
        template = "config.yaml.tmpl"
        [files."env.sh"]
        template = "env.sh.tmpl"
        [files."dsn"]
        template = "dsn.tmpl"
        "#,
        &[
            (
                "config.json.tmpl",
                "{\"user\": {{ secret \"DB_USER\" | json }},\n \"password\": {{ secret \"DB_PASSWORD\" | json }},\n \"odd\": {{ secret \"ODD\" | json }}}\n",
            ),
            (
                "config.yaml.tmpl",
                "db:\n  user: {{ secret \"DB_USER\" | yaml }}\n  password: {{ secret \"DB_PASSWORD\" | yaml }}\nodd: {{ secret \"ODD\" | yaml }}\n",
            ),
            ("env.sh.tmpl", "PW={{ secret \"DB_PASSWORD\" | shell }}\n"),
            (
                "dsn.tmpl",
                "postgresql://{{ secret \"DB_USER\" | url }}:{{ secret \"DB_PASSWORD\" | url }}@db/app\n\
                 b64={{ secret \"DB_PASSWORD\" | base64 }}\n",
            ),
        ],
    );
    let mnt = s.path().join("mnt");
    let d = Daemon::start(
        &s,
        &mnt,
        &[
            "--files",
            spec.to_str().unwrap(),
            "--audit",
            "--refresh",
            "200ms",
        ],
    );
    // The secrets are files as always; the rendered files are beside them, not counted.
    assert!(
        d.ready_line.starts_with("secretfs: mounted 3 secrets"),
        "{}",
        d.ready_line
    );

    let check = "import json, sys, yaml, base64, urllib.parse\n\
         want = sys.argv[2]\n\
         j = json.load(open(sys.argv[1] + '/config.json', encoding='utf-8'))\n\
         odd = sys.argv[3]\n\
         assert j == {'user': 'app user', 'password': want, 'odd': odd}, repr(j)\n\
         y = yaml.safe_load(open(sys.argv[1] + '/config.yaml', encoding='utf-8'))\n\
         assert y == {'db': {'user': 'app user', 'password': want}, 'odd': odd}, repr(y)\n\
         dsn, b64 = open(sys.argv[1] + '/dsn', encoding='utf-8').read().splitlines()\n\
         u = urllib.parse.urlsplit(dsn)\n\
         assert urllib.parse.unquote(u.password) == want and urllib.parse.unquote(u.username) == 'app user', dsn\n\
         assert base64.b64decode(b64[4:]).decode() == want\n\
         print('ok')\n";
    let (code, out, err) = run(Command::new(&tools)
        .args(["-c", check])
        .arg(&mnt)
        .arg(&value)
        .arg(&odd));
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");

    // The shell-escaped value survives `sh`, as one word.
    let (code, out, err) = run(Command::new("sh")
        .args(["-c", ". \"$1\"/env.sh; printf %s \"$PW\"", "sh"])
        .arg(&mnt));
    assert_eq!((code, out.as_str()), (0, value.as_str()), "{err}");

    // Modes: the entry's, or the mount's.
    let mode = |f: &str| std::fs::metadata(mnt.join(f)).unwrap().mode() & 0o777;
    assert_eq!((mode("config.json"), mode("config.yaml")), (0o440, 0o400));

    // --audit logs the opens of rendered files with the secrets (and versions) inside.
    assert!(
        eventually(5, || d
            .log()
            .contains("file=config.json secrets=DB_PASSWORD@1,DB_USER@1,ODD@1")),
        "{}",
        d.log()
    );
    // The canary is nowhere but in the mount: not in the log, not in the store in the clear.
    let mut seen = d.log().into_bytes();
    seen.extend(
        s.files_starting_with("store.db")
            .into_iter()
            .flat_map(|(_, b)| b),
    );
    let needle = canary.as_bytes();
    assert!(
        !seen.windows(needle.len()).any(|w| w == needle),
        "the canary leaked"
    );
}

#[test]
fn a_template_naming_an_unknown_secret_fails_closed_with_every_problem_and_its_line() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"value-a");
    let spec = files_spec(
        &s,
        r#"
        [files."a.conf"]
        template = "a.tmpl"
        [files."A"]
        builtin = "git-credentials"
        "#,
        &[(
            "a.tmpl",
            "a = {{ secret \"A\" }}\nb = {{ secret \"NOPE\" | json }}\nc = {{ secret \"ALSO_NOPE\" }}\n",
        )],
    );
    let mnt = s.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // A mount with this files spec: it must not start; what it said.
    let refused = |spec: &Path| {
        let out = s.run(
            &[
                "mount",
                mnt.to_str().unwrap(),
                "--files",
                spec.to_str().unwrap(),
            ],
            b"",
        );
        assert_ne!(out.code, 0, "{}", out.stdout);
        out
    };
    let out = refused(&spec);
    // Every problem in one start: the collision and both references.
    for want in [
        "the rendered file \"A\" has the name of the secret \"A\"",
        "a.tmpl, line 2: secret \"NOPE\" not found",
        "a.tmpl, line 3: secret \"ALSO_NOPE\" not found",
    ] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    // And a template file that is missing, with the two others: three kinds of problem, one
    // start, one error (no need to start it three times to learn them one by one).
    let spec = files_spec(
        &s,
        r#"
        [files."a.conf"]
        template = "a.tmpl"
        [files."A"]
        builtin = "git-credentials"
        [files."gone.conf"]
        template = "gone.tmpl"
        "#,
        &[],
    );
    let out = refused(&spec);
    for want in [
        "gone.tmpl",
        "the rendered file \"A\" has the name of the secret \"A\"",
        "a.tmpl, line 2: secret \"NOPE\" not found",
    ] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    assert_eq!(out.stderr.matches("error:").count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("value-a"));
    assert!(!crate::support::is_mounted(&mnt));

    // A template that does not parse: every problem, with its line, before anything is read.
    let spec = files_spec(
        &s,
        "[files.\"a.conf\"]\ntemplate = \"bad.tmpl\"\n",
        &[(
            "bad.tmpl",
            "x {{ env \"HOME\" }}\ny {{ secret \"A\" | upper }}\n",
        )],
    );
    let out = refused(&spec);
    assert!(out.stderr.contains("bad.tmpl, line 1"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("bad.tmpl, line 2: {{ secret \"A\" | upper }}: unknown filter")
    );

    // A template is a file inside the spec's directory: not an absolute path, not "..", not a
    // symbolic link out of it (a files spec must not serve /proc/self/environ or a key file).
    std::os::unix::fs::symlink("/proc/self/environ", s.path().join("files/link.tmpl")).unwrap();
    for template in ["/proc/self/environ", "../store.db.key", "link.tmpl"] {
        let spec = files_spec(&s, &format!("[files.x]\ntemplate = {template:?}\n"), &[]);
        let out = refused(&spec);
        assert!(
            out.stderr.contains("the files spec's directory"),
            "{template}: {}",
            out.stderr
        );
    }
    // env = is the launcher's; a mount says so instead of ignoring it.
    let spec = files_spec(
        &s,
        "[files.x]\nbuiltin = \"git-credentials\"\nenv = \"X\"\n",
        &[],
    );
    let out = refused(&spec);
    assert!(
        out.stderr.contains("env = is the launcher's"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_rotation_makes_a_new_inode_and_a_reader_of_the_old_one_keeps_its_rendering() {
    if !fuse_available(
        "a_rotation_makes_a_new_inode_and_a_reader_of_the_old_one_keeps_its_rendering",
    ) {
        return;
    }
    let s = Scratch::new();
    s.ok(&["secret", "create", "PW"], b"first-value");
    s.ok(&["secret", "create", "OTHER"], b"unrelated");
    let spec = files_spec(
        &s,
        "[files.\"app.json\"]\ntemplate = \"app.tmpl\"\n",
        &[("app.tmpl", "{\"pw\": {{ secret \"PW\" | json }}}\n")],
    );
    let mnt = s.path().join("mnt");
    let d = Daemon::start(
        &s,
        &mnt,
        &["--files", spec.to_str().unwrap(), "--refresh", "200ms"],
    );
    let file = mnt.join("app.json");
    let before = std::fs::metadata(&file).unwrap().ino();
    let mut old = std::fs::File::open(&file).unwrap();

    // An unrelated secret's update renders nothing again.
    s.ok(&["secret", "update", "OTHER"], b"unrelated-2");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), before);

    s.ok(&["secret", "update", "PW"], b"second-value");
    assert!(eventually(5, || std::fs::read_to_string(&file)
        .unwrap()
        .contains("second-value")));
    assert_ne!(std::fs::metadata(&file).unwrap().ino(), before);
    let mut held = String::new();
    std::io::Read::read_to_string(&mut old, &mut held).unwrap();
    assert_eq!(held, "{\"pw\": \"first-value\"}\n");

    // The secret deleted: the file keeps its last good rendering, and the log says why.
    s.ok(&["secret", "delete", "PW"], b"");
    assert!(
        eventually(5, || d.log().contains("cannot render the file")),
        "{}",
        d.log()
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"pw\": \"second-value\"}\n"
    );
    assert!(
        d.log()
            .contains("app.tmpl, line 1: secret \"PW\" not found"),
        "{}",
        d.log()
    );
    assert!(!mnt.join("PW").exists());
    // Created again: rendered again.
    s.ok(&["secret", "create", "PW"], b"third-value");
    assert!(eventually(5, || std::fs::read_to_string(&file)
        .unwrap()
        .contains("third-value")));
    assert!(d.log().contains("rendered file built again"), "{}", d.log());

    // A secret created later under the rendered file's name is not served, and the log says so.
    s.ok(
        &["secret", "create", "app.json"],
        b"a secret named like the file",
    );
    assert!(
        eventually(5, || d
            .log()
            .contains("a rendered file has this secret's name")),
        "{}",
        d.log()
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("third-value")
    );
}

#[test]
fn a_secret_deleted_and_created_again_between_two_rounds_is_rendered_anew() {
    if !fuse_available("a_secret_deleted_and_created_again_between_two_rounds_is_rendered_anew") {
        return;
    }
    let s = Scratch::new();
    let (_, first) = keygen(s.path(), "first");
    let (_, second) = keygen(s.path(), "second");
    s.ok(&["secret", "create", "KEY", "-t", "ssh-public-key"], &first);
    s.ok(&["secret", "create", "PW"], b"before");
    let spec = files_spec(
        &s,
        "[files.authorized_keys]\nbuiltin = \"authorized_keys\"\n[files.pw]\ntemplate = \"pw.tmpl\"\n",
        &[("pw.tmpl", "{{ secret \"PW\" }}")],
    );
    let mnt = s.path().join("mnt");
    // Rounds far enough apart that both changes land between two of them: each secret is
    // version 1 again, at another time.
    let _d = Daemon::start(
        &s,
        &mnt,
        &["--files", spec.to_str().unwrap(), "--refresh", "1500ms"],
    );
    let body = |k: &[u8]| {
        String::from_utf8_lossy(k)
            .split(' ')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert!(
        std::fs::read_to_string(mnt.join("authorized_keys"))
            .unwrap()
            .contains(&body(&first))
    );
    for (name, value) in [("KEY", &second[..]), ("PW", &b"after"[..])] {
        s.ok(&["secret", "delete", name], b"");
        let mut args = vec!["secret", "create", name];
        if name == "KEY" {
            args.extend(["-t", "ssh-public-key"]);
        }
        s.ok(&args, value);
    }
    assert!(eventually(5, || std::fs::read_to_string(mnt.join("pw"))
        .unwrap()
        == "after"));
    let keys = std::fs::read_to_string(mnt.join("authorized_keys")).unwrap();
    assert!(
        keys.contains(&body(&second)) && !keys.contains(&body(&first)),
        "{keys}"
    );
}
