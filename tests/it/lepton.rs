//! The real `lep` CLI and `leptonai` SDK (PyPI, 0.47.1) against `secretfs serve`.
//!
//! `scripts/test` installs them into `target/lepton-venv`; `SECRETFS_TEST_LEPTON_VENV` points
//! elsewhere. Without them these tests say why and return, except under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::support::{
    CANARY, Daemon, Out, Scratch, Server, assert_no_canary, fuse_available, run_with,
};

pub(crate) fn venv(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SECRETFS_TEST_LEPTON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lepton-venv"));
    if dir.join("bin/lep").is_file() {
        return Some(dir);
    }
    let why = format!(
        "{test}: no lep CLI in {} (scripts/test installs leptonai==0.47.1 there)",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true requires the Lepton tests to run");
    }
    eprintln!("skipping {why}");
    None
}

/// Runs `lep ARGS` with a private HOME and cache, and the given extra environment.
fn lep(venv: &Path, s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(venv.join("bin/lep"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", s.path())
        .env("LEPTON_CACHE_DIR", s.path().join("lepton-cache"))
        // rich wraps its output at the terminal width; wide enough that messages stay whole.
        .env("COLUMNS", "250")
        .current_dir(s.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with(cmd, b"")
}

fn sdk(venv: &Path, s: &Scratch, script: &str, env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-c", script])
        .env_clear()
        .env("HOME", s.path())
        .env("LEPTON_CACHE_DIR", s.path().join("lepton-cache"))
        .current_dir(s.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with(cmd, b"")
}

fn add_user(s: &Scratch, server: &Server, name: &str) -> String {
    let mut cmd = s.cmd(&["user", "add", name]);
    cmd.env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN", &server.admin_token)
        .env_remove("SECRETFS_STORE");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

fn base(server: &Server) -> String {
    format!("{}/api/v2/workspaces/default", server.url)
}

#[test]
fn lep_login_create_list_filter_remove() {
    let s = Scratch::new();
    let Some(venv) = venv("lep_login_create_list_filter_remove") else {
        return;
    };
    let server = Server::start(&s);
    let alice = add_user(&s, &server, "alice");
    let out = lep(
        &venv,
        &s,
        &[
            "login",
            "-c",
            &format!("default:{alice}"),
            "-u",
            &base(&server),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("default"), "{}", out.stdout);

    let out = lep(
        &venv,
        &s,
        &[
            "secret",
            "create",
            "-n",
            "HF_TOKEN",
            "-v",
            CANARY,
            "-n",
            "OPENAI_API_KEY",
            "-v",
            "sk-xyz",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = lep(
        &venv,
        &s,
        &["secret", "create", "-n", "PUB1", "-v", "v1", "--public-key"],
        &[],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    let out = lep(&venv, &s, &["secret", "list"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for name in [
        "HF_TOKEN",
        "OPENAI_API_KEY",
        "PUB1",
        "alice",
        "public",
        "private",
    ] {
        assert!(out.stdout.contains(name), "{name} missing:\n{}", out.stdout);
    }
    let out = lep(&venv, &s, &["secret", "list", "-q", "hf"], &[]);
    assert!(
        out.stdout.contains("HF_TOKEN") && !out.stdout.contains("PUB1"),
        "{}",
        out.stdout
    );
    let out = lep(
        &venv,
        &s,
        &["secret", "list", "--visibility", "public"],
        &[],
    );
    assert!(
        out.stdout.contains("PUB1") && !out.stdout.contains("HF_TOKEN"),
        "{}",
        out.stdout
    );
    let out = lep(&venv, &s, &["secret", "list", "-u", "ali"], &[]);
    assert!(
        out.stdout.contains("PUB1") && out.stdout.contains("HF_TOKEN"),
        "{}",
        out.stdout
    );
    let out = lep(&venv, &s, &["secret", "list", "-u", "bob"], &[]);
    assert!(!out.stdout.contains("PUB1"), "{}", out.stdout);

    let out = lep(&venv, &s, &["secret", "remove", "-n", "HF_TOKEN"], &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = lep(&venv, &s, &["secret", "list"], &[]);
    assert!(
        !out.stdout.contains("HF_TOKEN") && out.stdout.contains("OPENAI_API_KEY"),
        "{}",
        out.stdout
    );

    // Env-only mode: no login, no config file.
    let s2 = Scratch::new();
    let env = [
        ("LEPTON_WORKSPACE_ID", "default"),
        ("LEPTON_WORKSPACE_TOKEN", alice.as_str()),
        ("LEPTON_WORKSPACE_URL", &base(&server)),
    ];
    let out = lep(
        &venv,
        &s2,
        &["secret", "create", "-n", "ENVSEC", "-v", "1"],
        &env,
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = lep(&venv, &s2, &["secret", "list"], &env);
    assert!(out.stdout.contains("ENVSEC"), "{}", out.stdout);
    let out = lep(&venv, &s2, &["secret", "remove", "-n", "ENVSEC"], &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!s2.path().join("lepton-cache/workspace_info.yaml").exists());

    let out = lep(&venv, &s, &["secret", "list"], &[]);
    assert_no_canary("lep stdout", out.stdout.as_bytes());
    assert_no_canary("server log", server.log().as_bytes());
}

#[test]
fn visibility_and_errors_through_the_lepton_routes() {
    let s = Scratch::new();
    let Some(venv) = venv("visibility_and_errors_through_the_lepton_routes") else {
        return;
    };
    let server = Server::start(&s);
    let alice = add_user(&s, &server, "alice");
    let bob = add_user(&s, &server, "bob");
    let url = base(&server);
    let a = [
        ("LEPTON_WORKSPACE_ID", "default"),
        ("LEPTON_WORKSPACE_TOKEN", alice.as_str()),
        ("LEPTON_WORKSPACE_URL", url.as_str()),
    ];
    let b = [
        ("LEPTON_WORKSPACE_ID", "default"),
        ("LEPTON_WORKSPACE_TOKEN", bob.as_str()),
        ("LEPTON_WORKSPACE_URL", url.as_str()),
    ];
    let run = |args: &[&str], env: &[(&str, &str)]| lep(&venv, &s, args, env);
    assert_eq!(
        run(&["secret", "create", "-n", "ALICE_PRIV", "-v", CANARY], &a).code,
        0
    );

    // bob cannot see it, and `lep secret remove` finds nothing to delete.
    let out = run(&["secret", "list"], &b);
    assert!(!out.stdout.contains("ALICE_PRIV"), "{}", out.stdout);
    let out = run(&["secret", "remove", "-n", "ALICE_PRIV"], &b);
    assert_eq!(out.code, 0);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("does not exist"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // A direct DELETE by bob: 404, nothing deleted.
    let rt = tokio::runtime::Runtime::new().unwrap();
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let (status, body) = rt.block_on(async {
        let r = http
            .delete(format!("{}/usersecrets/ALICE_PRIV", base(&server)))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("secret \\\"ALICE_PRIV\\\" not found"),
        "{body}"
    );
    assert!(run(&["secret", "list"], &a).stdout.contains("ALICE_PRIV"));

    // bob creating the name alice holds privately: a clear 409, rendered by lep.
    let out = run(&["secret", "create", "-n", "ALICE_PRIV", "-v", "x"], &b);
    assert_eq!(out.code, 1);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("409") && text.contains("already in use in this workspace"),
        "{text}"
    );

    // All or none: a batch with one taken name creates nothing.
    let (status, body) = rt.block_on(async {
        let r = http
            .post(format!("{}/usersecrets", base(&server)))
            .bearer_auth(&bob)
            .json(&json!([{ "name": "BOB_NEW", "value": "1", "visibility": "private" }, { "name": "ALICE_PRIV", "value": "2", "visibility": "private" }]))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 409, "{body}");
    assert!(!run(&["secret", "list"], &b).stdout.contains("BOB_NEW"));

    // Reserved and invalid names, through the SDK (lep refuses reserved names itself).
    let script = |name: &str| {
        format!(
            "import os\nfrom leptonai.api.v2.client import APIClient\nfrom leptonai.api.v2.types.secret import SecretItem\n\
             c = APIClient(os.environ['WS'], os.environ['TOK'], os.environ['URL'])\n\
             try:\n    c.secret.create([SecretItem(name={name:?}, value='x')])\n    print('CREATED')\n\
             except Exception as e:\n    print('ERROR', e)\n"
        )
    };
    let sdk_env = [
        ("WS", "default"),
        ("TOK", bob.as_str()),
        ("URL", &base(&server)),
    ];
    let out = sdk(&venv, &s, &script("LEPTON_JOB_NAME"), &sdk_env);
    assert!(
        out.stdout.contains("ERROR") && out.stdout.contains("is reserved"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = sdk(&venv, &s, &script("bad/name"), &sdk_env);
    assert!(
        out.stdout.contains("ERROR") && out.stdout.contains("422"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn the_sdk_lists_creates_and_deletes() {
    let s = Scratch::new();
    let Some(venv) = venv("the_sdk_lists_creates_and_deletes") else {
        return;
    };
    let server = Server::start(&s);
    let alice = add_user(&s, &server, "alice");
    let script = "import os\n\
        from leptonai.api.v2.client import APIClient\n\
        from leptonai.api.v2.types.secret import SecretItem\n\
        c = APIClient(os.environ['WS'], os.environ['TOK'], os.environ['URL'])\n\
        c.secret.create([SecretItem(name='SDK_ONE', value=os.environ['V']), SecretItem(name='SDK_TWO', value='2', tags=['t'])])\n\
        print(sorted((s.name, s.owner, str(s.visibility), s.tags) for s in c.secret.list_all()))\n\
        c.secret.delete('SDK_ONE')\n\
        print([s.name for s in c.secret.list_all()])\n";
    let out = sdk(
        &venv,
        &s,
        script,
        &[
            ("WS", "default"),
            ("TOK", &alice),
            ("URL", &base(&server)),
            ("V", CANARY),
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].contains("('SDK_ONE', 'alice'")
            && lines[0].contains("('SDK_TWO', 'alice'")
            && lines[0].contains("['t']"),
        "{}",
        out.stdout
    );
    assert_eq!(lines[1], "['SDK_TWO']");
    assert_no_canary("sdk stdout", out.stdout.as_bytes());
}

#[test]
fn secrets_cross_between_lep_secretfs_a_mount_and_the_launcher() {
    let s = Scratch::new();
    let Some(venv) = venv("secrets_cross_between_lep_secretfs_a_mount_and_the_launcher") else {
        return;
    };
    let server = Server::start(&s);
    let alice = add_user(&s, &server, "alice");
    let env = [
        ("LEPTON_WORKSPACE_ID", "default"),
        ("LEPTON_WORKSPACE_TOKEN", alice.as_str()),
        ("LEPTON_WORKSPACE_URL", &base(&server)),
    ];
    assert_eq!(
        lep(
            &venv,
            &s,
            &[
                "secret",
                "create",
                "-n",
                "HF_TOKEN",
                "-v",
                CANARY,
                "-n",
                "OPENAI_API_KEY",
                "-v",
                "sk-lep"
            ],
            &env
        )
        .code,
        0
    );
    // secretfs secret create -> listed by lep.
    let mut cmd = s.cmd(&["secret", "create", "FROM_SECRETFS"]);
    cmd.env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN", &alice)
        .env_remove("SECRETFS_STORE");
    assert_eq!(run_with(cmd, b"v").code, 0);
    assert!(
        lep(&venv, &s, &["secret", "list"], &env)
            .stdout
            .contains("FROM_SECRETFS")
    );

    // A workload token for the lep-created secrets.
    let mut cmd = s.cmd(&[
        "token",
        "create",
        "--workload",
        "-s",
        "HF_TOKEN",
        "-s",
        "OPENAI_API_KEY",
    ]);
    cmd.env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN", &alice)
        .env_remove("SECRETFS_STORE");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let wfile = s.path().join("w.tok");
    std::fs::write(&wfile, out.stdout.trim()).unwrap();

    // The Lepton job body `lep job create ... -s HF_TOKEN -s MY_KEY=OPENAI_API_KEY -e PLAIN=1` sends.
    let job = json!({ "metadata": { "name": "j" }, "spec": { "envs": [
        { "name": "PLAIN", "value": "1" },
        { "name": "HF_TOKEN", "value_from": { "secret_name_ref": "HF_TOKEN" } },
        { "name": "MY_KEY", "value_from": { "secret_name_ref": "OPENAI_API_KEY" } }
    ] } });
    std::fs::write(s.path().join("job.json"), job.to_string()).unwrap();
    let mut cmd = s.cmd(&["run", "--lepton-job", "job.json", "--url", &server.url, "--token-file", wfile.to_str().unwrap(), "--", "sh", "-c", "test \"$PLAIN\" = 1 && test \"$HF_TOKEN\" = \"$WANT\" && test \"$MY_KEY\" = sk-lep && echo all-three"]);
    cmd.env("WANT", CANARY);
    let out = run_with(cmd, b"");
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "all-three"),
        "{}",
        out.stderr
    );

    if fuse_available("secrets_cross_between_lep_secretfs_a_mount_and_the_launcher (mount part)") {
        let mnt = s.path().join("mnt");
        let url = server.url.clone();
        let _d = Daemon::start_with(&s, &mnt, &["--token-file", wfile.to_str().unwrap()], |c| {
            c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
        });
        assert_eq!(
            std::fs::read(mnt.join("HF_TOKEN")).unwrap(),
            CANARY.as_bytes()
        );
    }
}
