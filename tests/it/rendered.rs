//! Rendered files (`secretfs mount --files`): checked with the programs that read them: sshd,
//! git, huggingface_hub, Python's json, PyYAML and sh.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{
    Daemon, FS_LIMIT, Running, Scratch, eventually, fuse_available, open_up, tools_python,
    unique_canary,
};

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

#[test]
fn huggingface_hub_reads_the_rendered_token_through_hf_token_path() {
    if !fuse_available("huggingface_hub_reads_the_rendered_token_through_hf_token_path") {
        return;
    }
    let Some(tools) = tools_python(
        "huggingface_hub_reads_the_rendered_token_through_hf_token_path",
        "huggingface_hub",
    ) else {
        return;
    };
    let s = Scratch::new();
    s.ok(
        &["secret", "create", "HF_TOKEN", "-t", "huggingface"],
        b"hf_rendered0123456789\n",
    );
    let spec = files_spec(
        &s,
        "[files.\"hf-token\"]\nbuiltin = \"huggingface-token\"\n",
        &[],
    );
    let mnt = s.path().join("mnt");
    let d = Daemon::start(
        &s,
        &mnt,
        &["--files", spec.to_str().unwrap(), "--refresh", "200ms"],
    );
    let get_token = || {
        run(Command::new(&tools)
            .args([
                "-c",
                "import huggingface_hub; print(huggingface_hub.get_token())",
            ])
            .env_clear()
            .env("HF_TOKEN_PATH", mnt.join("hf-token"))
            .env("HF_HOME", s.path().join("hf-home"))
            .env("HF_HUB_OFFLINE", "1"))
    };
    let (code, out, err) = get_token();
    assert_eq!((code, out.trim()), (0, "hf_rendered0123456789"), "{err}");
    // A second token of the kind appearing later does not stop the first one's rotations: the
    // file keeps the secret it was made from.
    s.ok(
        &["secret", "create", "OTHER_HF", "-t", "huggingface"],
        b"hf_other",
    );
    s.ok(&["secret", "update", "HF_TOKEN"], b"hf_rotated0123456789");
    assert!(
        eventually(5, || std::fs::read_to_string(mnt.join("hf-token")).unwrap()
            == "hf_rotated0123456789"),
        "{}",
        d.log()
    );
    let (code, out, err) = get_token();
    assert_eq!((code, out.trim()), (0, "hf_rotated0123456789"), "{err}");
}

/// A login user for sshd and git: created once on this machine (tests run as root), with a
/// shell and an unlocked account, and no home directory.
fn login_user() -> (String, u32) {
    const NAME: &str = "secretfs-login";
    if nix::unistd::User::from_name(NAME).unwrap().is_none() {
        let (code, _, err) = run(Command::new("useradd").args([
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/bin/sh",
            "--user-group",
            NAME,
        ]));
        assert!(code == 0 || code == 9, "useradd: {err}");
    }
    // `*`: no password, but not locked (sshd refuses a locked account even with a key).
    let (code, _, err) = run(Command::new("usermod").args(["-p", "*", NAME]));
    assert_eq!(code, 0, "usermod: {err}");
    let uid = nix::unistd::User::from_name(NAME)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    (NAME.to_owned(), uid)
}

/// A directory no group or other may write, up to `/` (sshd's StrictModes checks every
/// component of the path to authorized_keys; the temp dir is world-writable).
fn strict_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/run/secretfs-tests/{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [dir.parent().unwrap(), dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
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

#[test]
fn sshd_accepts_the_keys_of_the_mount_and_follows_their_deletion_and_addition() {
    if !fuse_available("sshd_accepts_the_keys_of_the_mount_and_follows_their_deletion_and_addition")
    {
        return;
    }
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "sshd is missing (scripts/test-prereqs installs openssh-server)"
        );
        eprintln!("skipping: no sshd");
        return;
    }
    let (user, uid) = login_user();
    let s = Scratch::new();
    let (key1, pub1) = keygen(s.path(), "first");
    let (key2, pub2) = keygen(s.path(), "second");
    s.ok(
        &[
            "secret",
            "create",
            "ALICE_KEY",
            "-t",
            "ssh-public-key",
            "--trim-newline",
        ],
        &pub1,
    );
    let spec = files_spec(
        &s,
        "[files.authorized_keys]\nbuiltin = \"authorized_keys\"\n",
        &[],
    );
    let base = strict_dir("sshd");
    let mnt = base.join("keys");
    let _d = Daemon::start(
        &s,
        &mnt,
        &[
            "--files",
            spec.to_str().unwrap(),
            "--uid",
            &uid.to_string(),
            "--refresh",
            "200ms",
        ],
    );

    // sshd on loopback, checking modes and owners strictly, reading the keys from the mount.
    let host_key = s.path().join("host_key");
    let (code, _, err) = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key));
    assert_eq!(code, 0, "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = s.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             StrictModes yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nAllowUsers {user}\n",
            host_key.display(),
            mnt.join("authorized_keys").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let log = s.path().join("sshd.log");
    let server = Running::spawn(
        "sshd",
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    assert!(
        eventually(10, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "sshd did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ssh = |key: &Path| {
        run(Command::new("ssh").args(["-i"]).arg(key).args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &port.to_string(),
            &format!("{user}@127.0.0.1"),
            "id -u",
        ]))
    };
    let (code, out, err) = ssh(&key1);
    assert_eq!(
        (code, out.trim()),
        (0, uid.to_string().as_str()),
        "{err}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (code, _, err) = ssh(&key2);
    assert_eq!(code, 255, "the second key is not there yet: {err}");

    // A second key added: accepted, nothing restarted.
    s.ok(
        &[
            "secret",
            "create",
            "BOB_KEY",
            "-t",
            "ssh-public-key",
            "--trim-newline",
        ],
        &pub2,
    );
    let keys = mnt.join("authorized_keys");
    assert!(eventually(5, || std::fs::read_to_string(&keys)
        .unwrap()
        .contains("BOB_KEY")));
    let (code, _, err) = ssh(&key2);
    assert_eq!(code, 0, "{err}");

    // The first key's secret deleted: it no longer logs in; the second still does.
    s.ok(&["secret", "delete", "ALICE_KEY"], b"");
    assert!(eventually(5, || !std::fs::read_to_string(&keys)
        .unwrap()
        .contains("ALICE_KEY")));
    let (code, _, err) = ssh(&key1);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(ssh(&key2).0, 0);
    drop(server);
}

#[test]
fn git_credential_fill_returns_the_github_token_to_the_login_user() {
    if !fuse_available("git_credential_fill_returns_the_github_token_to_the_login_user") {
        return;
    }
    let (_, uid) = login_user();
    let s = Scratch::new();
    let token = "ghp_renderedToken0123456789";
    s.ok(
        &["secret", "create", "GITHUB_TOKEN", "-t", "github"],
        token.as_bytes(),
    );
    let spec = files_spec(
        &s,
        "[files.git-credentials]\nbuiltin = \"git-credentials\"\n",
        &[],
    );
    let mnt = s.path().join("mnt");
    open_up(mnt.parent().unwrap());
    let _d = Daemon::start(
        &s,
        &mnt,
        &["--files", spec.to_str().unwrap(), "--uid", &uid.to_string()],
    );
    let helper = format!("store --file={}", mnt.join("git-credentials").display());
    let (code, out, err) = run(Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .args([
            "git",
            "-c",
            &format!("credential.helper={helper}"),
            "credential",
            "fill",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin({
            let mut f = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut f, b"protocol=https\nhost=github.com\n\n").unwrap();
            std::io::Seek::rewind(&mut f).unwrap();
            f
        }));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("password={token}\n")), "{out}");
    assert!(out.contains("username=x-access-token\n"), "{out}");
    // Another user cannot read it.
    let (code, _, _) = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(mnt.join("git-credentials")));
    assert_ne!(code, 0);
}

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
