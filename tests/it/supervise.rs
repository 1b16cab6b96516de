//! `secretfs run --watch` from a directory source: real processes, a workload that records its
//! PID and the value it was started with, rotations written the way a secretfs mount and a
//! Kubernetes volume make them (a new file renamed over the old, a `..data` symlink swap).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{Scratch, bin, eventually, unique_canary};

/// A shell workload that appends "PID VALUE" to `log` when it starts, "hup PID" on SIGHUP and
/// "term PID" on SIGTERM (then exits 3).
fn workload(log: &Path) -> Vec<String> {
    let script = format!(
        "echo \"$$ $A\" >> {log}; \
         trap 'echo \"hup $$\" >> {log}' HUP; \
         trap 'echo \"term $$\" >> {log}; exit 3' TERM; \
         while true; do sleep 0.05; done",
        log = log.display()
    );
    vec!["sh".into(), "-c".into(), script]
}

/// Writes `value` to `dir/name` atomically, as a secretfs rotation appears: a new inode.
fn rotate(dir: &Path, name: &str, value: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The "PID VALUE" lines: one per start of the workload.
fn starts(log: &Path) -> Vec<(String, String)> {
    lines(log)
        .into_iter()
        .filter(|l| !l.starts_with("hup ") && !l.starts_with("term "))
        .filter_map(|l| l.split_once(' ').map(|(p, v)| (p.to_owned(), v.to_owned())))
        .collect()
}

struct Run {
    child: Child,
    err: PathBuf,
}

impl Run {
    fn start(s: &Scratch, dir: &Path, log: &Path, flags: &[&str]) -> Run {
        Self::start_command(s, dir, log, flags, workload(log))
    }

    fn start_command(
        s: &Scratch,
        dir: &Path,
        log: &Path,
        flags: &[&str],
        command: Vec<String>,
    ) -> Run {
        let err = s.path().join(format!("run-{}.err", std::process::id()));
        let child = Command::new(bin())
            .args(["run", "--watch", "--dir", dir.to_str().unwrap(), "-s", "A"])
            .args(flags)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        assert!(
            eventually(10, || !starts(log).is_empty()),
            "the workload did not start"
        );
        Run { child, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// SIGTERM to the supervisor; its exit status.
    fn stop(mut self) -> Option<i32> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap().code()
    }
}

fn setup(values: &[(&str, &str)]) -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new();
    let dir = s.path().join("secrets");
    std::fs::create_dir(&dir).unwrap();
    for (n, v) in values {
        std::fs::write(dir.join(n), v).unwrap();
    }
    let log = s.path().join("workload.log");
    (s, dir, log)
}

#[test]
fn a_rotation_restarts_once_a_burst_is_one_restart_and_an_unused_secret_changes_nothing() {
    let (s, dir, log) = setup(&[("A", "v1"), ("B", "unused")]);
    let run = Run::start(&s, &dir, &log, &["--debounce", "300ms"]);
    rotate(&dir, "A", "v2");
    assert!(
        eventually(5, || starts(&log).len() == 2),
        "{:?}",
        lines(&log)
    );
    assert_eq!(starts(&log)[1].1, "v2");
    // The old workload was stopped with its stop signal before the new one started.
    assert!(lines(&log).contains(&format!("term {}", starts(&log)[0].0)));

    // A secret the plan does not use.
    rotate(&dir, "B", "changed");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(starts(&log).len(), 2, "{:?}", lines(&log));

    // Five updates inside the debounce: one restart, with the last value.
    for i in 0..5 {
        rotate(&dir, "A", &format!("burst{i}"));
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(
        eventually(5, || starts(&log).len() == 3),
        "{:?}",
        lines(&log)
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(starts(&log).len(), 3, "{:?}", lines(&log));
    assert_eq!(starts(&log)[2].1, "burst4");
    let stderr = run.stderr();
    // SIGTERM to the supervisor reaches the workload; its status comes back.
    assert_eq!(run.stop(), Some(3));
    assert!(lines(&log).contains(&format!("term {}", starts(&log)[2].0)));
    assert_eq!(
        stderr.matches("restarted the workload").count(),
        2,
        "{stderr}"
    );
}

#[test]
fn a_kubernetes_style_data_swap_is_a_change() {
    // kubelet's layout: NAME -> ..data/NAME, ..data -> ..TIMESTAMP, swapped by a rename.
    let s = Scratch::new();
    let dir = s.path().join("vol");
    let first = dir.join("..2026_12_01_one");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("A"), "k1").unwrap();
    std::os::unix::fs::symlink("..2026_12_01_one", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/A", dir.join("A")).unwrap();
    let log = s.path().join("workload.log");
    let run = Run::start(&s, &dir, &log, &["--debounce", "0s"]);
    let second = dir.join("..2026_12_01_two");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("A"), "k2").unwrap();
    std::os::unix::fs::symlink("..2026_12_01_two", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    assert!(
        eventually(5, || starts(&log).len() == 2),
        "{:?}",
        lines(&log)
    );
    assert_eq!(starts(&log)[1].1, "k2");
    run.stop();
}

#[test]
fn signal_hup_reaches_the_same_workload() {
    let (s, dir, log) = setup(&[("A", "v1")]);
    let run = Run::start(
        &s,
        &dir,
        &log,
        &["--on-change", "signal:HUP", "--debounce", "0s"],
    );
    let pid = starts(&log)[0].0.clone();
    rotate(&dir, "A", "v2");
    assert!(
        eventually(5, || lines(&log).contains(&format!("hup {pid}"))),
        "{:?}",
        lines(&log)
    );
    assert_eq!(starts(&log).len(), 1);
    run.stop();
}

#[test]
fn a_failed_re_resolve_keeps_the_old_workload_until_the_secret_is_back() {
    let (s, dir, log) = setup(&[("A", "v1")]);
    let run = Run::start(&s, &dir, &log, &["--debounce", "0s"]);
    std::fs::remove_file(dir.join("A")).unwrap();
    assert!(eventually(5, || run
        .stderr()
        .contains("keeps running on its old values")));
    assert!(run.stderr().contains("\"A\""), "{}", run.stderr());
    assert_eq!(starts(&log).len(), 1);
    rotate(&dir, "A", "back");
    assert!(
        eventually(5, || starts(&log).len() == 2),
        "{}",
        run.stderr()
    );
    assert_eq!(starts(&log)[1].1, "back");
    run.stop();
}

#[test]
fn the_restart_budget_holds_and_the_workload_keeps_running() {
    let (s, dir, log) = setup(&[("A", "v1")]);
    let run = Run::start(
        &s,
        &dir,
        &log,
        &["--debounce", "0s", "--max-restarts", "2/1m"],
    );
    for i in 2..=5 {
        rotate(&dir, "A", &format!("v{i}"));
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(eventually(5, || run
        .stderr()
        .contains("restarted 2 times in the last 1m")));
    assert_eq!(starts(&log).len(), 3, "{:?}", lines(&log));
    // The last workload still runs: it answers a signal through the supervisor.
    assert_eq!(run.stop(), Some(3));
}

#[test]
fn exit_on_change_stops_the_workload_and_ends_with_the_code() {
    let (s, dir, log) = setup(&[("A", "v1")]);
    let mut run = Run::start(&s, &dir, &log, &["--on-change", "exit", "--debounce", "0s"]);
    rotate(&dir, "A", "v2");
    let status = run.child.wait().unwrap();
    assert_eq!(status.code(), Some(75), "{}", run.stderr());
    assert!(lines(&log).contains(&format!("term {}", starts(&log)[0].0)));
    assert_eq!(starts(&log).len(), 1);
}

#[test]
fn the_status_is_the_workloads_and_128_plus_n_after_a_signal() {
    let (s, dir, _) = setup(&[("A", "v1")]);
    let status = |script: &str| {
        Command::new(bin())
            .args([
                "run",
                "--watch",
                "--dir",
                dir.to_str().unwrap(),
                "-s",
                "A",
                "--",
            ])
            .args(["sh", "-c", script])
            .current_dir(s.path())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(status("exit 7"), Some(7));
    assert_eq!(status("kill -KILL $$"), Some(128 + 9));
    // A real-time signal, which nix's wait statuses cannot name: still 128+N, no hang.
    let rt = "exec python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGRTMIN + 3)'";
    assert_eq!(status(rt), Some(128 + libc::SIGRTMIN() + 3));
    // Not started: the launcher's own codes, as without --watch.
    assert_eq!(status_of_missing(&s, &dir), Some(125));
}

fn status_of_missing(s: &Scratch, dir: &Path) -> Option<i32> {
    Command::new(bin())
        .args([
            "run",
            "--watch",
            "--dir",
            dir.to_str().unwrap(),
            "-s",
            "MISSING",
            "--",
            "true",
        ])
        .current_dir(s.path())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
}

#[test]
fn as_pid_1_it_reaps_an_orphaned_grandchild() {
    let (s, dir, _) = setup(&[("A", "v1")]);
    let report = s.path().join("zombies");
    // The workload leaves an orphan that ends at once, then counts zombies in its namespace.
    let script = format!(
        "sh -c 'sleep 0.1 &' ; sleep 1; ps -eo stat= | grep -c '^Z' > {}; exit 0",
        report.display()
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", bin(), "run", "--watch"])
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "-s",
            "A",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap().trim(), "0");
}

#[test]
fn dry_run_shows_the_policy_and_watch_options_need_watch() {
    let (s, dir, _) = setup(&[("A", "v1")]);
    let out = Command::new(bin())
        .args([
            "run",
            "--dry-run",
            "--watch",
            "--on-change",
            "signal:USR1",
            "--dir",
        ])
        .arg(&dir)
        .args(["-s", "A", "--", "true"])
        .current_dir(s.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("watch: on change signal:USR1; stop with TERM then SIGKILL after 10s; debounce 2s; at most 5 restarts per 10m"),
        "{text}"
    );
    let out = Command::new(bin())
        .args(["run", "--debounce", "1s", "--dir"])
        .arg(&dir)
        .args(["-s", "A", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--debounce applies only with --watch"));
    // A source other than a directory is refused, with what to do.
    let out = Command::new(bin())
        .args([
            "run",
            "--watch",
            "--store",
            s.store().to_str().unwrap(),
            "-s",
            "A",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --dir with the mount"));
}

#[test]
fn the_supervisors_log_never_holds_a_value() {
    let canary = unique_canary("supervise");
    let (s, dir, log) = setup(&[("A", &canary)]);
    let run = Run::start(&s, &dir, &log, &["--debounce", "0s", "-vv"]);
    rotate(&dir, "A", &format!("{canary}-2"));
    assert!(eventually(5, || starts(&log).len() == 2));
    std::fs::remove_file(dir.join("A")).unwrap();
    assert!(eventually(5, || run.stderr().contains("keeps running")));
    let stderr = run.stderr();
    run.stop();
    assert!(!stderr.contains(&canary), "{stderr}");
}

#[test]
fn with_a_process_group_a_restart_takes_the_whole_group() {
    let (s, dir, log) = setup(&[("A", "v1")]);
    // The workload leaves a helper in its group that ignores the stop signal and would outlive
    // it.
    let script = format!(
        "echo \"$$ $A\" >> {log}; (trap '' TERM; exec sleep 1000) & echo \"bg $!\" >> {log}; \
         trap 'exit 3' TERM; while true; do sleep 0.05; done",
        log = log.display()
    );
    let run = Run::start_command(
        &s,
        &dir,
        &log,
        &["--process-group", "--debounce", "0s"],
        vec!["sh".into(), "-c".into(), script],
    );
    assert!(eventually(5, || lines(&log)
        .iter()
        .any(|l| l.starts_with("bg "))));
    let helper = lines(&log)
        .iter()
        .find_map(|l| l.strip_prefix("bg ").map(str::to_owned))
        .unwrap();
    rotate(&dir, "A", "v2");
    assert!(eventually(5, || starts(&log)
        .iter()
        .filter(|(p, _)| p != "bg")
        .count()
        == 2));
    assert!(
        eventually(5, || !Path::new(&format!("/proc/{helper}")).exists()
            || std::fs::read_to_string(format!("/proc/{helper}/stat"))
                .is_ok_and(|st| st.contains(") Z "))),
        "the old workload's helper {helper} outlived the restart"
    );
    run.stop();
}
