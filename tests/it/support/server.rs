//! `secretfs serve` processes: on a scratch SQLite file, with custom arguments, or on
//! PostgreSQL; restarted on the same port, killed with a chosen signal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Scratch, bin};

/// A running `secretfs serve` on 127.0.0.1 (a free port), initialised with an admin, stopped
/// with SIGTERM when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    pub db: PathBuf,
    pub admin_token: String,
    pub log_path: PathBuf,
    /// The first line it printed (where it serves, and its metrics address if asked).
    pub ready_line: String,
    /// The private CA its TLS certificate comes from (`start_tls`).
    pub ca: Option<PathBuf>,
    args: Vec<String>,
}

impl Server {
    pub fn start(scratch: &Scratch) -> Server {
        Self::start_with(scratch, &[])
    }

    pub fn start_with(scratch: &Scratch, extra: &[&str]) -> Server {
        Self::start_env(scratch, extra, &[])
    }

    /// Like `start_with`, serving TLS with a certificate for 127.0.0.1 from a private CA made in
    /// `scratch` (its path in `ca`; clients trust it with `--ca-file`).
    pub fn start_tls(scratch: &Scratch, extra: &[&str]) -> Server {
        let (ca, cert, key) = super::private_ca(scratch.path(), "IP:127.0.0.1,DNS:localhost");
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut server = Self::start_with(scratch, &args);
        server.ca = Some(ca);
        server
    }

    /// Like `start_with`, with environment variables `env` set for the server.
    pub fn start_env(scratch: &Scratch, extra: &[&str], env: &[(&str, &str)]) -> Server {
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
        let mut s = Self::spawn_env(scratch, &db, args, None, env);
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
            ready_line: line,
            ca: None,
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

    /// Where its `/metrics` is served (started with `--metrics-listen`): from its ready line.
    pub fn metrics_url(&self) -> String {
        self.ready_line
            .split_whitespace()
            .find(|w| w.ends_with("/metrics"))
            .unwrap_or_else(|| panic!("no metrics address in {:?}", self.ready_line))
            .to_owned()
    }

    /// A sample of its `/metrics` without labels (`name` without the `secretfs_` prefix); 0 when
    /// absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.metrics_url())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("secretfs_{name} "))?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Starts the same server again (same database, same port) after it was stopped.
    pub fn restart(&mut self, scratch: &Scratch) {
        self.restart_with(scratch, &[]);
    }

    /// Like `restart`, with further arguments.
    pub fn restart_with(&mut self, scratch: &Scratch, extra: &[&str]) {
        let port = self.url.rsplit(':').next().unwrap().to_owned();
        let mut args = self.args.clone();
        args.retain(|a| a != "--init");
        args.extend(extra.iter().map(|a| a.to_string()));
        let admin = std::mem::take(&mut self.admin_token);
        let mut next = Self::spawn(
            scratch,
            &self.db.clone(),
            args,
            Some(&format!("127.0.0.1:{port}")),
        );
        next.admin_token = admin;
        next.ca = self.ca.take();
        std::mem::swap(self, &mut next);
        // `next` is the old, stopped server: forget its child.
        std::mem::forget(next);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends `sig` and reaps the server (SIGKILL after a grace period if `sig` did not end it).
    pub fn kill(&mut self, sig: nix::sys::signal::Signal) {
        super::process::end_with(&mut self.child, sig);
    }

    /// A server on PostgreSQL `db_url` with the key file `key` (shared by replicas); `init`
    /// creates the admin, whose token goes to `scratch/admin.tok`.
    pub fn start_pg(scratch: &Scratch, db_url: &str, key: &Path, init: bool) -> Server {
        Self::start_pg_with(scratch, db_url, key, init, &[])
    }

    /// Like `start_pg`, with extra arguments.
    pub fn start_pg_with(
        scratch: &Scratch,
        db_url: &str,
        key: &Path,
        init: bool,
        extra: &[&str],
    ) -> Server {
        Self::start_pg_inner(scratch, db_url, key, init, extra, &[])
    }

    /// An initialised server on PostgreSQL with extra arguments and environment.
    pub fn start_pg_env(
        scratch: &Scratch,
        db_url: &str,
        key: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Self::start_pg_inner(scratch, db_url, key, true, extra, env)
    }

    fn start_pg_inner(
        scratch: &Scratch,
        db_url: &str,
        key: &Path,
        init: bool,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
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
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Self::spawn_env(scratch, key, args, None, env);
        s.admin_token = std::fs::read_to_string(&token_file)
            .unwrap_or_default()
            .trim()
            .to_owned();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill(nix::sys::signal::Signal::SIGTERM);
        }
    }
}
