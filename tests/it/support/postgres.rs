//! PostgreSQL for the tests: the shared test server (`TEST_DATABASE_URL`), a database of a test's
//! own on it, or a whole server of a test's own that it may stop and start.

use std::path::Path;
use std::process::Command;

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
