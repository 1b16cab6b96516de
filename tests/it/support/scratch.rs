//! A scratch environment per test, running the real binary in it, and the canary checks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A value no real secret contains; every leak check searches for it.
pub const CANARY: &str = "canary-7f3a9e-SECRETFS-LEAK-CHECK";

/// A canary of this run only (`canary-SUITE-` and 16 random hex digits): no other test's files
/// can hold it, so a scan of shared places (the temp dir) sees only what this test wrote.
pub fn unique_canary(suite: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("canary-{suite}-{hex}")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_secretfs")
}

/// A scratch directory with a store path, and a clean environment for the binary.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store.db")
    }

    pub fn key(&self) -> PathBuf {
        self.path().join("store.db.key")
    }

    /// `secretfs ARGS` with the store in this scratch dir and nothing inherited but PATH.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("SECRETFS_STORE", self.store())
            .current_dir(self.path());
        c
    }

    /// Runs `secretfs ARGS`, feeding `stdin`, and returns its output.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Out {
        run_with(self.cmd(args), stdin)
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert_eq!(out.code, 0, "secretfs {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// The audit log of this scratch dir's local store, oldest first (opened as the CLI opens
    /// it, while anything else may have it open too).
    pub fn local_audit(&self) -> Vec<secretfs::service::AuditRecord> {
        use secretfs::service::{LocalPaths, OpenMode, Service};
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let paths = LocalPaths::resolve(Some(self.store()), None).unwrap();
            let service = Service::open_local(&paths, OpenMode::Existing, 1)
                .await
                .unwrap();
            let caller = service.local_caller(false).await.unwrap();
            service
                .audit_log(&caller, secretfs::secret::Timestamp::from_nanos(0), 1000)
                .await
                .unwrap()
        })
    }

    /// Bytes of every file in the scratch dir whose name starts with `prefix`.
    pub fn files_starting_with(&self, prefix: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
        out
    }
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_with(mut cmd: Command, stdin: &[u8]) -> Out {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn secretfs");
    {
        let mut input = child.stdin.take().unwrap();
        // A child that exits early (bad input) closes its stdin; that is not a test failure.
        let _ = input.write_all(stdin);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Asserts that `haystack` does not contain the canary, naming `what` was searched.
pub fn assert_no_canary(what: &str, haystack: &[u8]) {
    let needle = CANARY.as_bytes();
    assert!(
        !haystack.windows(needle.len()).any(|w| w == needle),
        "the canary value leaked into {what}"
    );
}
