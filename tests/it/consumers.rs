//! One source for every consumer: `secretfs mount`, `secretfs run` and `secretfs-run` choose
//! the same credential (or refuse the same ambiguity, in the same words) for every combination
//! of a token, a token file and an identity token file, given as flags or in the environment,
//! valid or not; and the same source when the environment names one or two.

use std::path::Path;
use std::process::Command;

use crate::support::{Daemon, FS_LIMIT, Scratch, Server, fuse_available, run_with, within};

/// One way of giving the server a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Given {
    /// `SECRETFS_TOKEN`, valid or not.
    EnvToken(bool),
    /// `SECRETFS_TOKEN_FILE`.
    EnvFile(bool),
    /// `SECRETFS_IDENTITY_TOKEN_FILE` (no binding trusts its issuer: refused).
    EnvIdentity,
    /// `--token-file`.
    FlagFile(bool),
    /// `--identity-token-file`.
    FlagIdentity,
}

impl Given {
    fn is_flag(self) -> bool {
        matches!(self, Given::FlagFile(_) | Given::FlagIdentity)
    }

    fn by(self) -> &'static str {
        match self {
            Given::EnvToken(_) => "SECRETFS_TOKEN",
            Given::EnvFile(_) => "SECRETFS_TOKEN_FILE",
            Given::EnvIdentity => "SECRETFS_IDENTITY_TOKEN_FILE",
            Given::FlagFile(_) => "--token-file",
            Given::FlagIdentity => "--identity-token-file",
        }
    }
}

/// What a consumer does with a set of credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// It read the secret.
    Read,
    /// The server refused the workload token.
    TokenRefused,
    /// The server refused the identity token.
    IdentityRefused,
    /// It refused to choose, with this sentence.
    Ambiguous(String),
}

/// The rule, as the README states it: flags before the environment; two at one level refused,
/// naming both.
fn expected(given: &[Given]) -> Outcome {
    let flags: Vec<Given> = given.iter().copied().filter(|g| g.is_flag()).collect();
    let env: Vec<Given> = given.iter().copied().filter(|g| !g.is_flag()).collect();
    let level = if flags.is_empty() { env } else { flags };
    match level.as_slice() {
        [one] => match one {
            Given::EnvToken(true) | Given::EnvFile(true) | Given::FlagFile(true) => Outcome::Read,
            Given::EnvIdentity | Given::FlagIdentity => Outcome::IdentityRefused,
            _ => Outcome::TokenRefused,
        },
        [a, b] => Outcome::Ambiguous(format!(
            "{} and {} are two credentials for the server",
            a.by(),
            b.by()
        )),
        _ => unreachable!("one or two credentials per case"),
    }
}

fn outcome(code: i32, stderr: &str) -> Outcome {
    if code == 0 {
        return Outcome::Read;
    }
    if let Some(i) = stderr.find(" are two credentials for the server") {
        let start = stderr[..i].rfind("error: ").map_or(0, |s| s + 7);
        let sentence = &stderr[start..i + " are two credentials for the server".len()];
        // The mount says "mount failed: " before it.
        let sentence = sentence.rsplit(": ").next().unwrap_or(sentence);
        return Outcome::Ambiguous(sentence.to_owned());
    }
    if stderr.contains("refused the identity token") {
        return Outcome::IdentityRefused;
    }
    assert!(
        stderr.contains("the server refused the token: it is unknown, expired or revoked"),
        "an unexpected failure: {stderr}"
    );
    assert!(
        !stderr.contains("secret list"),
        "a hint about names after a refused token: {stderr}"
    );
    Outcome::TokenRefused
}

struct Setup {
    s: Scratch,
    server: Server,
    valid: String,
    files: std::path::PathBuf,
}

impl Setup {
    /// The environment and flags of `given`.
    fn apply(&self, given: &[Given], cmd: &mut Command) -> Vec<String> {
        let file = |valid: bool| {
            self.files
                .join(if valid {
                    "valid.token"
                } else {
                    "invalid.token"
                })
                .display()
                .to_string()
        };
        let identity = self.files.join("sa.jwt").display().to_string();
        cmd.env_remove("SECRETFS_STORE")
            .env("SECRETFS_URL", &self.server.url);
        let mut flags = Vec::new();
        for g in given {
            match *g {
                Given::EnvToken(v) => {
                    cmd.env(
                        "SECRETFS_TOKEN",
                        if v { self.valid.as_str() } else { INVALID },
                    );
                }
                Given::EnvFile(v) => {
                    cmd.env("SECRETFS_TOKEN_FILE", file(v));
                }
                Given::EnvIdentity => {
                    cmd.env("SECRETFS_IDENTITY_TOKEN_FILE", &identity);
                }
                Given::FlagFile(v) => flags.extend(["--token-file".into(), file(v)]),
                Given::FlagIdentity => {
                    flags.extend(["--identity-token-file".into(), identity.clone()]);
                }
            }
        }
        flags
    }

    fn run(&self, program: &str, given: &[Given]) -> Outcome {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.s.path())
            .current_dir(self.s.path());
        let flags = self.apply(given, &mut cmd);
        cmd.args(["run", "-s", "A"])
            .args(&flags)
            .args(["--", "printenv", "A"]);
        if program.ends_with("secretfs-run") {
            // secretfs-run has no subcommand: its arguments are run's.
            let args: Vec<_> = cmd.get_args().skip(1).map(|a| a.to_owned()).collect();
            let mut lean = Command::new(program);
            lean.env_clear();
            for (k, v) in cmd.get_envs() {
                if let Some(v) = v {
                    lean.env(k, v);
                }
            }
            lean.current_dir(self.s.path()).args(args);
            cmd = lean;
        }
        let out = run_with(cmd, b"");
        if out.code == 0 {
            assert_eq!(out.stdout, "a-value\n", "{program} {given:?}");
        }
        outcome(out.code, &out.stderr)
    }

    fn mount(&self, given: &[Given], n: usize) -> Outcome {
        let mnt = self.s.path().join(format!("mnt-{n}"));
        std::fs::create_dir_all(&mnt).unwrap();
        if expected(given) == Outcome::Read {
            // Mounted: the value is there; the daemon is stopped when dropped.
            let d = Daemon::start_with(&self.s, &mnt, &["--start-timeout", "1s"], |c| {
                let flags = self.apply(given, c);
                c.args(flags);
            });
            let path = mnt.join("A");
            let read = within("read the mounted secret", FS_LIMIT, move || {
                std::fs::read(path)
            });
            drop(d);
            return match read {
                Ok(v) if v == b"a-value" => Outcome::Read,
                other => panic!("mount {given:?}: {other:?}"),
            };
        }
        let mut cmd = self
            .s
            .cmd(&["mount", mnt.to_str().unwrap(), "--start-timeout", "1s"]);
        let flags = self.apply(given, &mut cmd);
        cmd.args(&flags);
        let out = run_with(cmd, b"");
        outcome(out.code, &out.stderr)
    }
}

/// A well-formed workload token that no server minted.
const INVALID: &str = "sfs_w_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn setup() -> Setup {
    let s = Scratch::new();
    // Dozens of refusals from one address are the point here, not their slowdown.
    let server = Server::start_with(&s, &["--failure-burst", "1000000"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = crate::support::Api::new(&server);
    let (status, v) = rt.block_on(api.create(&server.admin_token, "A", "a-value", "private"));
    assert_eq!(status, 201, "{v}");
    let (status, v) = rt.block_on(api.mint(&server.admin_token, &["A"], serde_json::json!({})));
    assert_eq!(status, 201, "{v}");
    let valid = v["token"].as_str().unwrap().to_owned();
    let files = s.path().join("credentials");
    std::fs::create_dir(&files).unwrap();
    let write = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = files.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write("valid.token", &valid);
    write("invalid.token", INVALID);
    // A signed-looking JWT of an issuer no binding trusts.
    write(
        "sa.jwt",
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL25vYm9keS5leGFtcGxlIiwic3ViIjoieCJ9.c2ln",
    );
    Setup {
        s,
        server,
        valid,
        files,
    }
}

/// Every credential alone, and every pair of two (one of each kind per case), through the three
/// consumers: the same outcome from each, and the one the README's rule gives.
#[test]
fn mount_run_and_secretfs_run_choose_the_same_credential_or_refuse_alike() {
    if !fuse_available("mount_run_and_secretfs_run_choose_the_same_credential_or_refuse_alike") {
        return;
    }
    let setup = setup();
    let singles = [
        Given::EnvToken(true),
        Given::EnvToken(false),
        Given::EnvFile(true),
        Given::EnvFile(false),
        Given::EnvIdentity,
        Given::FlagFile(true),
        Given::FlagFile(false),
        Given::FlagIdentity,
    ];
    let mut cases: Vec<Vec<Given>> = singles.iter().map(|g| vec![*g]).collect();
    for (i, a) in singles.iter().enumerate() {
        for b in &singles[i + 1..] {
            if a.by() != b.by() {
                cases.push(vec![*a, *b]);
            }
        }
    }
    let secretfs = crate::support::bin();
    let lean = env!("CARGO_BIN_EXE_secretfs-run");
    let mut checked = 0;
    for (n, case) in cases.iter().enumerate() {
        let want = expected(case);
        let got = [
            ("secretfs mount", setup.mount(case, n)),
            ("secretfs run", setup.run(secretfs, case)),
            ("secretfs-run", setup.run(lean, case)),
        ];
        for (who, outcome) in got {
            assert_eq!(outcome, want, "{who} with {case:?}");
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        8 + 28 - 3,
        "every single and every pair of two ways"
    );
}

/// The source, likewise: the environment naming the local store and a server at once is refused
/// by every command alike, naming both; a flag settles it.
#[test]
fn two_sources_in_the_environment_are_refused_by_every_command_alike() {
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"from-the-store");
    let both = |args: &[&str]| {
        let mut cmd = s.cmd(args);
        cmd.env("SECRETFS_URL", "http://127.0.0.1:9");
        run_with(cmd, b"")
    };
    let sentence = "SECRETFS_STORE and SECRETFS_URL each name a source";
    for args in [
        &["secret", "list"][..],
        &["secret", "create", "B"],
        &["token", "create", "--workload", "-s", "A"],
        &["run", "-s", "A", "--", "printenv", "A"],
        &["mount", "mnt-never"],
    ] {
        let out = both(args);
        assert_ne!(out.code, 0, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(sentence), "{args:?}: {}", out.stderr);
    }
    let store = s.store();
    let out = both(&[
        "run",
        "--store",
        store.to_str().unwrap(),
        "-s",
        "A",
        "--",
        "printenv",
        "A",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "from-the-store\n"),
        "{}",
        out.stderr
    );
    let out = both(&["secret", "list", "--store", store.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!Path::new(&s.path().join("mnt-never")).exists());
}
