//! Shared helpers for the integration tests: a scratch environment per test, running the real
//! binary, and the canary checks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A value no real secret contains; every leak check searches for it.
pub const CANARY: &str = "canary-7f3a9e-SECRETFS-LEAK-CHECK";

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

/// Whether this machine can run FUSE tests (root and /dev/fuse). Without it a FUSE test prints
/// why and returns, except under `CI=true`, where it fails: CI must never pass by skipping.
pub fn fuse_available(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if root && dev {
        return true;
    }
    let why = format!("{test}: cannot mount FUSE here (root: {root}, /dev/fuse usable: {dev})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true requires FUSE tests to run");
    }
    eprintln!("skipping {why}");
    false
}

/// A running `secretfs mount` daemon, stopped (SIGTERM, then a lazy unmount as a fallback) when
/// dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub dir: PathBuf,
    pub ready_line: String,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `secretfs mount DIR ARGS` for `scratch`'s store and waits for its ready line.
    pub fn start(scratch: &Scratch, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_with(scratch, dir, args, |_| {})
    }

    pub fn start_with(
        scratch: &Scratch,
        dir: &Path,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        Self::start_wrapped(scratch, dir, args, &[], adjust)
    }

    /// Like `start_with`, run through `wrapper` (e.g. `setpriv ...`), whose last step execs
    /// secretfs, so the pid is still the daemon's.
    pub fn start_wrapped(
        scratch: &Scratch,
        dir: &Path,
        args: &[&str],
        wrapper: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        // A stale mount point cannot be stat'ed; it exists, and the daemon must cope with it.
        let _ = std::fs::create_dir_all(dir);
        let stderr_path = scratch.path().join(format!(
            "daemon-{}.log",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let mut cmd = scratch.cmd(&["mount", dir.to_str().unwrap()]);
        if let Some((program, rest)) = wrapper.split_first() {
            let inner = cmd;
            cmd = Command::new(program);
            cmd.args(rest)
                .arg(inner.get_program())
                .args(inner.get_args());
            cmd.env_clear().current_dir(scratch.path());
            for (k, v) in inner.get_envs() {
                if let Some(v) = v {
                    cmd.env(k, v);
                }
            }
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn secretfs mount");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready_line = match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if !line.is_empty() => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "secretfs mount did not become ready: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        Daemon {
            child,
            dir: dir.to_owned(),
            ready_line,
            stderr_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `sig` and waits for the daemon to exit, returning its exit code.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> Option<i32> {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not exit after {sig}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop(nix::sys::signal::Signal::SIGTERM);
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether anything is mounted at `dir` (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = dir.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|p| p.replace("\\040", " ") == wanted)
    })
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// Makes `dir` and its ancestors up to `/tmp` searchable by every uid (a 0700 temp dir refuses
/// other uids before the mount is even asked).
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == Path::new("/") || p == std::env::temp_dir() {
            break;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        d = p.parent();
    }
}

/// The real Python interpreter (not a version manager's shim, which would add its own variables
/// to the environment a test inspects).
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the tests");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// A running `secretfs serve` on 127.0.0.1 (a free port), initialised with an admin, stopped
/// with SIGTERM when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    pub db: PathBuf,
    pub admin_token: String,
    pub log_path: PathBuf,
    args: Vec<String>,
}

impl Server {
    pub fn start(scratch: &Scratch) -> Server {
        Self::start_with(scratch, &[])
    }

    pub fn start_with(scratch: &Scratch, extra: &[&str]) -> Server {
        let db = scratch.path().join("server.db");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--init".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--database".into(),
            format!("sqlite://{}", db.display()),
            "--audit-interval".into(),
            "100ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Self::spawn(scratch, &db, args, None);
        s.admin_token = std::fs::read_to_string(scratch.path().join("server.db.admin-token"))
            .expect("admin token file")
            .trim()
            .to_owned();
        s
    }

    fn spawn(scratch: &Scratch, db: &Path, args: Vec<String>, listen: Option<&str>) -> Server {
        Self::spawn_env(scratch, db, args, listen, &[])
    }

    fn spawn_env(
        scratch: &Scratch,
        db: &Path,
        args: Vec<String>,
        listen: Option<&str>,
        env: &[(&str, &str)],
    ) -> Server {
        static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = scratch.path().join(format!("server-{n}.log"));
        let mut args = args;
        if let Some(l) = listen {
            let i = args.iter().position(|a| a == "--listen").unwrap();
            args[i + 1] = l.to_owned();
        }
        let mut cmd = Command::new(bin());
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", scratch.path())
            .env("RUST_LOG", "info,secretfs=debug")
            .envs(env.iter().copied())
            .current_dir(scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .unwrap(),
            );
        let mut child = cmd.spawn().expect("spawn secretfs serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_default();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "secretfs serve did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            })
            .to_owned();
        Server {
            child,
            url,
            db: db.to_owned(),
            admin_token: String::new(),
            log_path,
            args,
        }
    }

    /// A server with `--init` and the given extra arguments (its own `--database` and
    /// `--admin-token-file`); the admin token is left to the caller.
    pub fn start_custom(scratch: &Scratch, extra: &[&str]) -> Server {
        Self::start_custom_env(scratch, extra, &[])
    }

    /// Like `start_custom`, with extra environment (e.g. `RUST_LOG=trace`).
    pub fn start_custom_env(scratch: &Scratch, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args: Vec<String> = [
            "serve",
            "--init",
            "--listen",
            "127.0.0.1:0",
            "--audit-interval",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_env(scratch, &scratch.path().join("custom.db"), args, None, env)
    }

    /// Starts the same server again (same database, same port) after it was stopped.
    pub fn restart(&mut self, scratch: &Scratch) {
        let port = self.url.rsplit(':').next().unwrap().to_owned();
        let mut args = self.args.clone();
        args.retain(|a| a != "--init");
        let admin = std::mem::take(&mut self.admin_token);
        let mut next = Self::spawn(
            scratch,
            &self.db.clone(),
            args,
            Some(&format!("127.0.0.1:{port}")),
        );
        next.admin_token = admin;
        std::mem::swap(self, &mut next);
        // `next` is the old, stopped server: forget its child.
        std::mem::forget(next);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill(&mut self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill(nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// The PostgreSQL server the tests may use (`TEST_DATABASE_URL`, which `scripts/test` sets up).
/// Without it a test says why and returns, except under `CI=true`, where it fails.
pub fn postgres_url(test: &str) -> Option<String> {
    if let Some(url) = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Some(url);
    }
    let why = format!("{test}: TEST_DATABASE_URL is not set (scripts/test starts a PostgreSQL)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true requires the PostgreSQL tests to run");
    }
    eprintln!("skipping {why}");
    None
}

/// A database of its own on the test PostgreSQL server, dropped afterwards.
pub struct TempDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-Atqc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl TempDatabase {
    pub fn new(admin_url: &str) -> TempDatabase {
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).unwrap();
        let name = format!(
            "sfs_test_{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        psql(admin_url, &format!("CREATE DATABASE {name}"));
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
        TempDatabase {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Runs SQL against this database and returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-Atqc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A PostgreSQL server of the test's own (so it can be stopped and started), through
/// `scripts/postgres`. Needs root and the PostgreSQL binaries.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    pub url: String,
}

impl OwnPostgres {
    pub fn start(test: &str) -> Option<OwnPostgres> {
        let root = nix::unistd::geteuid().is_root();
        let binaries = std::fs::read_dir("/usr/lib/postgresql").is_ok();
        if !root || !binaries {
            let why = format!("{test}: needs root and PostgreSQL server binaries");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}; CI=true requires it");
            }
            eprintln!("skipping {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // The server runs as the postgres user, which must be able to reach its directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let url = Self::script("start", dir.path());
        Some(OwnPostgres { dir, url })
    }

    fn script(cmd: &str, dir: &Path) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
        let out = Command::new(script)
            .arg(cmd)
            .arg(dir.join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/postgres {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn stop(&self) {
        Self::script("stop", self.dir.path());
    }

    pub fn resume(&self) {
        Self::script("resume", self.dir.path());
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        Self::script("stop", self.dir.path());
    }
}

impl Server {
    /// A server on PostgreSQL `db_url` with the key file `key` (shared by replicas); `init`
    /// creates the admin, whose token goes to `scratch/admin.tok`.
    pub fn start_pg(scratch: &Scratch, db_url: &str, key: &Path, init: bool) -> Server {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--database".into(),
            db_url.into(),
            "--key-file".into(),
            key.display().to_string(),
            "--audit-interval".into(),
            "100ms".into(),
        ];
        let token_file = scratch.path().join("admin.tok");
        if init {
            args.push("--init".into());
            args.push("--admin-token-file".into());
            args.push(token_file.display().to_string());
        }
        let mut s = Self::spawn(scratch, key, args, None);
        s.admin_token = std::fs::read_to_string(&token_file)
            .unwrap_or_default()
            .trim()
            .to_owned();
        s
    }
}

/// `setpriv` arguments that drop `CAP_SYS_PTRACE`: a process started with them, and an
/// inspector with the same uid and the same arguments, pass every ptrace check but dumpability.
pub const NO_PTRACE: [&str; 2] = ["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"];

/// Whether a process may inspect process `pid`: read `/proc/PID/<what>`, or, when `what` is
/// `"attach"`, `PTRACE_ATTACH` to it. The inspector runs without `CAP_SYS_PTRACE`, as the same
/// uid, or (`other_uid`) as `nobody`.
pub fn may_inspect(pid: u32, what: &str, other_uid: bool) -> bool {
    let mut cmd = Command::new("setpriv");
    if other_uid {
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    }
    cmd.args(NO_PTRACE);
    let code = if what == "attach" {
        format!(
            "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); \
             sys.exit(0 if libc.ptrace(16, {pid}, None, None) == 0 else 1)"
        )
    } else {
        // The permission check is made at open (for mem and environ alike).
        format!("open('/proc/{pid}/{what}', 'rb')")
    };
    cmd.args(["python3", "-c", &code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("setpriv and python3 are needed by the tests")
        .success()
}

/// Asserts that `pid` (the process `name`, started under `setpriv NO_PTRACE`) is hardened: not
/// dumpable, so a same-uid reader cannot read its memory or attach while a control process
/// started the same way can; another uid can read neither its memory nor its environment nor
/// attach; no core files.
pub fn assert_hardened(pid: u32, name: &str) {
    let mut control = Command::new("setpriv")
        .args(NO_PTRACE)
        .args(["sleep", "5"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        may_inspect(control.id(), "mem", false),
        "the control should be readable"
    );
    assert!(
        may_inspect(control.id(), "attach", false),
        "the control should be traceable"
    );
    let _ = control.kill();
    let _ = control.wait();
    assert!(!may_inspect(pid, "mem", false), "the {name} is dumpable");
    assert!(
        !may_inspect(pid, "attach", false),
        "the {name} can be traced"
    );
    for what in ["environ", "mem", "attach"] {
        assert!(
            !may_inspect(pid, what, true),
            "another uid may {what} the {name}"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
}

/// Creates user `name` through the server at `url` with the admin token `admin`; returns the
/// new user's token.
pub async fn add_user(url: &str, admin: &str, name: &str) -> String {
    secretfs::client::install_crypto_provider();
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v1/users"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("POST /api/v1/users");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// The Python of `target/tools-venv` (scripts/test installs the PyPI tools the tests use there)
/// if it has `module`; `None` (with the reason printed) when it is missing, except under
/// `CI=true`, where a missing tool fails the test instead of skipping it.
pub fn tools_python(test: &str, module: &str) -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools-venv/bin/python");
    let has = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Some(python);
    }
    let why = format!("{test}: needs {module} in target/tools-venv (scripts/test installs it)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("skipping {why}");
    None
}

/// A blocking HTTP client for one server: JSON in, (status, JSON) out. Its calls may be made from
/// several threads at once (a long-poll held on one while another revokes its token).
pub struct Http {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    pub url: String,
}

impl Http {
    pub fn new(server: &Server) -> Http {
        Self::at(&server.url)
    }

    pub fn at(url: &str) -> Http {
        secretfs::client::install_crypto_provider();
        Http {
            rt: tokio::runtime::Runtime::new().unwrap(),
            http: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.try_call(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like `call`, with a failure below HTTP (the server went away) as an error.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.rt.block_on(async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
            ))
        })
    }

    /// A new user's first token.
    pub fn user(&self, admin: &str, name: &str) -> String {
        let (status, v) = self.call(
            "POST",
            "/api/v1/users",
            admin,
            Some(serde_json::json!({ "name": name })),
        );
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }
}
