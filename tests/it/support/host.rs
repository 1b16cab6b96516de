//! What the host lets one process do to another (read its memory or environment, attach), and
//! the interpreters the tests run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    let mut control = super::Running::spawn(
        "the control process",
        Command::new("setpriv").args(NO_PTRACE).args(["sleep", "5"]),
    );
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

/// Whether the memory of process `pid` holds `needle`: every readable mapping read through
/// `/proc/PID/mem` (as root, or as the process's own user while it may be traced).
pub fn memory_holds(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the process's maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("the process's memory");
    let mut scanned = 0usize;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        scanned += region.len();
        if memchr::memmem::find(&region, needle).is_some() {
            return true;
        }
    }
    assert!(scanned > 0, "no memory of pid {pid} could be read");
    false
}
