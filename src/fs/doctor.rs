//! Why FUSE cannot be used here, said precisely: the checks behind `secretfs doctor` and behind
//! a failed mount's error message.

use std::path::Path;

/// One check: what was looked at, whether it passed, and what to do if not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Bit of CAP_SYS_ADMIN in the capability sets of /proc/self/status.
const CAP_SYS_ADMIN: u32 = 21;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Finds `name` in the directories of `PATH`.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs every check; all passing means a mount should work.
pub fn checks() -> Vec<Check> {
    let mut out = Vec::new();
    let dev = Path::new("/dev/fuse");
    out.push(
        match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            Ok(_) => Check {
                what: "/dev/fuse",
                ok: true,
                detail: "present and openable".into(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check {
                what: "/dev/fuse",
                ok: false,
                detail:
                    "missing: load the fuse module (modprobe fuse), or in a container pass the \
                     device (docker run --device /dev/fuse)"
                        .into(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check {
                what: "/dev/fuse",
                ok: false,
                detail: "present but not openable by this user (permission denied): run the mount \
                     as root, or give this user access to /dev/fuse"
                    .into(),
            },
            Err(e) => Check {
                what: "/dev/fuse",
                ok: false,
                detail: format!("cannot be opened: {e}"),
            },
        },
    );
    let root = nix::unistd::geteuid().is_root();
    let admin = effective_caps().is_some_and(|c| c & (1 << CAP_SYS_ADMIN) != 0);
    out.push(Check {
        what: "privilege to mount",
        ok: admin,
        detail: match (root, admin) {
            (_, true) => "CAP_SYS_ADMIN is effective".into(),
            (true, false) => "root but without CAP_SYS_ADMIN (a container?): run it with \
                              --cap-add SYS_ADMIN, or use the launcher's server or store \
                              source, which needs no FUSE"
                .into(),
            (false, false) => "not root: run \"secretfs mount\" as root (mounts on this \
                               machine need CAP_SYS_ADMIN)"
                .into(),
        },
    });
    out.push(match find_in_path("fusermount3") {
        Some(p) => Check {
            what: "fusermount3",
            ok: true,
            detail: format!("found at {}", p.display()),
        },
        None => Check {
            what: "fusermount3",
            ok: false,
            detail: "not found: install the fuse3 package (apt-get install fuse3); without it \
                     a killed daemon leaves a stale mount behind"
                .into(),
        },
    });
    out
}

/// The failing checks as one sentence per problem, for an error message.
pub fn problems() -> Vec<String> {
    checks()
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.what, c.detail))
        .collect()
}
