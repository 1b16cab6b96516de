//! Real readers of rendered files: huggingface_hub, sshd and git.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{files_spec, keygen, run};
use crate::support::{Daemon, Running, Scratch, eventually, fuse_available, open_up, tools_python};

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
