//! `secretfs run --watch` from a directory source: real processes, a workload that records its
//! PID and the value it was started with, rotations written the way a secretfs mount and a
//! Kubernetes volume make them (a new file renamed over the old, a `..data` symlink swap).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{FS_LIMIT, Running, Scratch, bin, eventually, python, unique_canary};

/// A shell workload that appends "PID VALUE" to `log` when it starts, "hup PID" on SIGHUP and
/// "term PID" on SIGTERM (then exits 3). The traps come first: a test that signals it as soon
/// as it sees the start line finds them set.
fn workload(log: &Path) -> Vec<String> {
    let script = format!(
        "trap 'echo \"hup $$\" >> {log}' HUP; \
         trap 'echo \"term $$\" >> {log}; exit 3' TERM; \
         echo \"$$ $A\" >> {log}; \
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

/// A supervisor, stopped (with its workload) however the test ends.
struct Run {
    child: Running,
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
        let mut args = vec!["--dir", dir.to_str().unwrap(), "-s", "A"];
        args.extend(flags);
        Self::start_from(s, &args, log, command)
    }

    /// `secretfs run --watch ARGS -- COMMAND`, once the workload has logged its start.
    fn start_from(s: &Scratch, args: &[&str], log: &Path, command: Vec<String>) -> Run {
        let err = s.path().join(format!("run-{}.err", std::process::id()));
        let child = Running::spawn(
            "secretfs run --watch",
            Command::new(bin())
                .args(["run", "--watch"])
                .args(args)
                .arg("--")
                .args(command)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err).unwrap()),
        );
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
        self.child.signal_and_wait(Signal::SIGTERM, FS_LIMIT).code()
    }
}

/// Continues a stopped process when dropped.
struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, Signal::SIGCONT);
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
    let status = run.child.wait_within(FS_LIMIT);
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
    // From the store or a server, a signal has nothing new to make the workload read: refused,
    // with what to do.
    let store = s.store();
    let source = ["--store", store.to_str().unwrap()];
    let out = s.run(
        &[
            &["run", "--watch", "--on-change", "signal:HUP"],
            &source[..],
            &["-s", "A", "--", "true"],
        ]
        .concat(),
        b"",
    );
    assert_eq!(out.code, 125);
    assert!(
        out.stderr.contains("use --on-change restart or exit"),
        "{}",
        out.stderr
    );
    // (The token file is read when the source opens, which a dry run never does.)
    let server = ["--url", "http://127.0.0.1:1", "--token-file", "job.token"];
    let out = s.run(
        &[
            &["run", "--dry-run", "--watch"],
            &server[..],
            &["-s", "A", "--", "true"],
        ]
        .concat(),
        b"",
    );
    assert!(
        out.stdout.contains("; the server's long-poll"),
        "{}",
        out.stdout
    );
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
        eventually(5, || gone(&helper)),
        "the old workload's helper {helper} outlived the restart"
    );
    // The supervisor's own stop takes the group too: the new workload's helper ignores the
    // stop signal, and goes with its leader.
    assert!(eventually(5, || lines(&log)
        .iter()
        .filter(|l| l.starts_with("bg "))
        .count()
        == 2));
    run.stop();
    for helper in lines(&log).iter().filter_map(|l| l.strip_prefix("bg ")) {
        assert!(
            eventually(5, || gone(helper)),
            "the workload's helper {helper} outlived the supervisor's stop"
        );
    }
}

/// Whether process `pid` has ended (it is gone, or a zombie its parent has not reaped yet).
fn gone(pid: &str) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| st.contains(") Z "))
}

/// A workload that logs "PID $A" at its start and, to `files`, "PID PATH CONTENT" of its
/// memory file `$K_FILE`.
fn workload_with_file(log: &Path, files: &Path) -> Vec<String> {
    let script = format!(
        "trap 'exit 3' TERM; echo \"$$ $K_FILE $(cat \"$K_FILE\")\" >> {files}; \
         echo \"$$ $A\" >> {log}; while true; do sleep 0.05; done",
        log = log.display(),
        files = files.display()
    );
    vec!["sh".into(), "-c".into(), script]
}

#[test]
fn from_the_local_store_a_rotation_restarts_once_with_fresh_memory_files_for_each_child() {
    let s = Scratch::new();
    for (name, value) in [("A", "v1"), ("K", "key1"), ("UNUSED", "u1")] {
        s.ok(&["secret", "create", name], value.as_bytes());
    }
    let log = s.path().join("workload.log");
    let files = s.path().join("files.log");
    let store = s.store();
    let args = [
        "--store",
        store.to_str().unwrap(),
        "-s",
        "A",
        "--secret-file",
        "K_FILE=K",
        "--debounce",
        "0s",
    ];
    let run = Run::start_from(&s, &args, &log, workload_with_file(&log, &files));
    let file_lines = || lines(&files);
    // Each start's memory file is named by that child's own PID, and holds the value it
    // started with.
    let check_file = |start: usize, value: &str| {
        let (pid, _) = starts(&log)[start].clone();
        let line = file_lines()[start].clone();
        let mut parts = line.splitn(3, ' ');
        assert_eq!(parts.next(), Some(pid.as_str()), "{line}");
        let path = parts.next().unwrap();
        assert!(path.starts_with(&format!("/proc/{pid}/fd/")), "{line}");
        assert_eq!(parts.next(), Some(value), "{line}");
    };
    assert_eq!(starts(&log)[0].1, "v1");
    check_file(0, "key1");

    s.ok(&["secret", "update", "A"], b"v2");
    assert!(
        eventually(5, || starts(&log).len() == 2),
        "{}",
        run.stderr()
    );
    assert_eq!(starts(&log)[1].1, "v2");
    check_file(1, "key1");
    assert_ne!(starts(&log)[0].0, starts(&log)[1].0);

    // An update of a secret the plan does not use changes nothing.
    s.ok(&["secret", "update", "UNUSED"], b"u2");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(starts(&log).len(), 2, "{}", run.stderr());

    // The secret behind the memory file counts as used.
    s.ok(&["secret", "update", "K"], b"key2");
    assert!(
        eventually(5, || starts(&log).len() == 3),
        "{}",
        run.stderr()
    );
    check_file(2, "key2");

    // Deleted: the workload keeps its old values and the supervisor says why, by name; the
    // same name created again is a change that starts it with the new value.
    s.ok(&["secret", "delete", "A"], b"");
    assert!(
        eventually(5, || run
            .stderr()
            .contains("keeps running on its old values")),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("secret \"A\" not found"),
        "{}",
        run.stderr()
    );
    assert_eq!(starts(&log).len(), 3);
    s.ok(&["secret", "create", "A"], b"v3");
    assert!(
        eventually(5, || starts(&log).len() == 4),
        "{}",
        run.stderr()
    );
    assert_eq!(starts(&log)[3].1, "v3");
    assert_eq!(run.stop(), Some(3));
}

/// A server with alice's private `secrets`, and a workload token for all of them in `w.tok`.
struct WithServer {
    server: crate::support::Server,
    rt: tokio::runtime::Runtime,
    api: crate::support::Api,
    alice: String,
    /// The mint's answer (its `id` revokes it).
    minted: serde_json::Value,
    token: PathBuf,
}

impl WithServer {
    fn start(s: &Scratch, secrets: &[(&str, &str)]) -> WithServer {
        let server = crate::support::Server::start(s);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let api = crate::support::Api::new(&server);
        let alice = rt.block_on(api.user(&server.admin_token, "alice"));
        for (name, value) in secrets {
            rt.block_on(api.create(&alice, name, value, "private"));
        }
        let names: Vec<&str> = secrets.iter().map(|(n, _)| *n).collect();
        let (_, minted) = rt.block_on(api.mint(&alice, &names, serde_json::json!({})));
        let token = s.path().join("w.tok");
        std::fs::write(&token, minted["token"].as_str().unwrap()).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        WithServer {
            server,
            rt,
            api,
            alice,
            minted,
            token,
        }
    }

    /// The launcher's flags: this server, the token, the plan `-s A`, no debounce.
    fn args(&self) -> Vec<&str> {
        vec![
            "--url",
            self.server.url.as_str(),
            "--token-file",
            self.token.to_str().unwrap(),
            "-s",
            "A",
            "--debounce",
            "0s",
        ]
    }
}

#[test]
fn from_a_server_the_long_poll_restarts_the_workload_and_an_outage_keeps_it() {
    use serde_json::json;
    let s = Scratch::new();
    let canary = unique_canary("supervise-server");
    let mut w = WithServer::start(&s, &[("A", &canary), ("UNUSED", "u1")]);
    let (rt, api, alice) = (&w.rt, &w.api, &w.alice);
    let log = s.path().join("workload.log");
    let run = Run::start_from(&s, &w.args(), &log, workload(&log));
    assert_eq!(starts(&log)[0].1, canary);
    let update = |name: &str, value: &str| {
        let (status, _) = rt.block_on(api.call(
            "PATCH",
            &format!("/api/v1/workspaces/default/secrets/{name}"),
            alice,
            Some(json!({ "value": value })),
        ));
        assert_eq!(status, 200);
    };
    for i in 2..=3 {
        update("A", &format!("{canary}-{i}"));
        assert!(
            eventually(5, || starts(&log).len() == i),
            "{}",
            run.stderr()
        );
        assert_eq!(starts(&log)[i - 1].1, format!("{canary}-{i}"));
    }
    // In the token's set but not used by the plan: no restart.
    update("UNUSED", "u2");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(starts(&log).len(), 3, "{}", run.stderr());

    // The server goes away: the workload keeps running, the supervisor says so once; back, a
    // rotation reaches the workload again.
    w.server.kill(Signal::SIGKILL);
    assert!(
        eventually(10, || run.stderr().contains("trying again")),
        "{}",
        run.stderr()
    );
    assert_eq!(starts(&log).len(), 3);
    w.server.restart(&s);
    assert!(
        eventually(10, || run.stderr().contains("answers again")),
        "{}",
        run.stderr()
    );
    update("A", "after-outage");
    assert!(
        eventually(5, || starts(&log).len() == 4),
        "{}",
        run.stderr()
    );
    assert_eq!(starts(&log)[3].1, "after-outage");
    let stderr = run.stderr();
    assert_eq!(run.stop(), Some(3));
    assert!(!stderr.contains(&canary), "{stderr}");
}

#[test]
fn a_revoked_token_keeps_the_running_workload_and_the_supervisor_says_why() {
    use serde_json::json;
    let s = Scratch::new();
    let w = WithServer::start(&s, &[("A", "before-revocation")]);
    let (rt, api, alice) = (&w.rt, &w.api, &w.alice);
    let log = s.path().join("workload.log");
    let run = Run::start_from(&s, &w.args(), &log, workload(&log));
    // Revoked while the workload runs: the long-poll is refused; the workload keeps running on
    // what it started with (nothing new can be fetched), and the supervisor says why, once.
    let id = w.minted["id"].as_str().unwrap();
    let (status, _) = rt.block_on(api.call("DELETE", &format!("/api/v1/tokens/{id}"), alice, None));
    assert!(status == 200 || status == 204, "{status}");
    let (status, _) = rt.block_on(api.call(
        "PATCH",
        "/api/v1/workspaces/default/secrets/A",
        alice,
        Some(json!({ "value": "after-revocation" })),
    ));
    assert_eq!(status, 200);
    assert!(
        eventually(10, || run.stderr().contains("revoked")),
        "{}",
        run.stderr()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(starts(&log).len(), 1, "{}", run.stderr());
    assert_eq!(starts(&log)[0].1, "before-revocation");
    assert_eq!(
        run.stderr().matches("cannot follow").count(),
        1,
        "{}",
        run.stderr()
    );
    assert_eq!(run.stop(), Some(3));
}

#[test]
fn a_signal_ignored_by_the_launchers_parent_stays_ignored_in_the_workload() {
    // As `nohup` starts it: SIGHUP ignored. exec would keep it so; a spawned workload too.
    let (s, dir, _) = setup(&[("A", "v1")]);
    let report = s.path().join("sigign");
    let script = format!(
        "trap '' HUP; exec {} run --watch --dir {} -s A -- sh -c 'grep SigIgn /proc/self/status > {}'",
        bin(),
        dir.display(),
        report.display()
    );
    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let line = std::fs::read_to_string(&report).unwrap();
    let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_ne!(mask & 1, 0, "SIGHUP is not ignored in the workload: {line}");
    // SIGPIPE, which the Rust runtime ignores in the launcher, is at its default in a workload,
    // supervised or exec'd (through the hand-over too: a memory file from the store): a
    // shell pipeline ends quietly.
    s.ok(&["secret", "create", "K"], b"key-file-value");
    let store = s.store();
    for args in [
        vec!["run", "--dir", dir.to_str().unwrap(), "-s", "A"],
        vec!["run", "--watch", "--dir", dir.to_str().unwrap(), "-s", "A"],
        vec![
            "run",
            "--watch",
            "--store",
            store.to_str().unwrap(),
            "--secret-file",
            "K_FILE=K",
        ],
    ] {
        let mut all = args.clone();
        all.extend([
            "--",
            "sh",
            "-c",
            "grep SigIgn /proc/self/status; yes | head -1",
        ]);
        let out = s.run(&all, b"");
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let line = out.stdout.lines().next().unwrap_or_default().to_owned();
        let mask =
            u64::from_str_radix(line.trim_start_matches("SigIgn:").trim(), 16).unwrap_or(u64::MAX);
        assert_eq!(mask & (1 << 12), 0, "{args:?}: SIGPIPE ignored: {line}");
        assert!(
            !out.stderr.contains("Broken pipe"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn ctrl_c_on_a_terminal_reaches_the_workload_once() {
    // On a pseudo-terminal (Python's pty.fork: the launcher in the terminal's foreground
    // group), ^C makes the terminal signal the whole group: the workload, in the same group,
    // must not get a second SIGINT from the supervisor.
    let (s, dir, _) = setup(&[("A", "v1")]);
    let ready = s.path().join("ready");
    let count = s.path().join("count");
    let workload = format!(
        "import signal, time\n\
         n = 0\n\
         def h(*a):\n    global n\n    n += 1\n\
         signal.signal(signal.SIGINT, h)\n\
         open({ready:?}, 'w').close()\n\
         while n == 0:\n    time.sleep(0.01)\n\
         time.sleep(0.5)\n\
         open({count:?}, 'w').write(str(n))\n",
        ready = ready.to_str().unwrap(),
        count = count.to_str().unwrap()
    );
    let driver = format!(
        "import os, pty, sys, time\n\
         pid, fd = pty.fork()\n\
         if pid == 0:\n    os.execv({bin:?}, [{bin:?}, 'run', '--watch', '--dir', {dir:?}, '-s', 'A', '--', {py:?}, '-c', {workload:?}])\n\
         for _ in range(500):\n    if os.path.exists({ready:?}):\n        break\n    time.sleep(0.01)\n\
         os.write(fd, b'\\x03')\n\
         while True:\n    try:\n        os.read(fd, 1024)\n    except OSError:\n        break\n\
         _, status = os.waitpid(pid, 0)\n\
         sys.exit(os.waitstatus_to_exitcode(status))\n",
        bin = bin(),
        dir = dir.to_str().unwrap(),
        py = python(),
        workload = workload,
        ready = ready.to_str().unwrap(),
    );
    let status = Command::new(python())
        .args(["-c", &driver])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "1");
}

/// Runs a Python driver (it holds the pseudo-terminal); it must exit 0, else its stderr says why.
fn drive(driver: &str) {
    let out = Command::new(python())
        .args(["-c", driver])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_a_process_group_a_workload_on_a_terminal_reads_it_as_its_foreground() {
    // In a group of its own, a workload reading the terminal would be stopped (SIGTTIN) unless
    // its group is the terminal's foreground; at the end the launcher's group gets it back.
    let (s, dir, _) = setup(&[("A", "v1")]);
    let got = s.path().join("got");
    let driver = format!(
        "import os, pty, sys, time\n\
         pid, fd = pty.fork()\n\
         if pid == 0:\n    os.execv({bin:?}, [{bin:?}, 'run', '--watch', '--process-group', '--dir', {dir:?}, '-s', 'A', '--', 'sh', '-c', 'read line; echo \"$line\" > {got}'])\n\
         os.set_blocking(fd, False)\n\
         time.sleep(0.5)\n\
         os.write(fd, b'typed\\n')\n\
         deadline = time.time() + 10\n\
         while time.time() < deadline:\n    done, status = os.waitpid(pid, os.WNOHANG)\n    if done:\n        sys.exit(os.waitstatus_to_exitcode(status))\n    try:\n        os.read(fd, 1024)\n    except OSError:\n        pass\n    time.sleep(0.05)\n\
         sys.exit('the workload never read its line')\n",
        bin = bin(),
        dir = dir.to_str().unwrap(),
        got = got.display(),
    );
    drive(&driver);
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "typed\n");
}

#[test]
fn with_a_process_group_ctrl_z_stops_the_job_and_fg_continues_it() {
    // ^Z on the terminal stops the workload's group; the supervisor takes the terminal back and
    // stops too (the shell's job is stopped); SIGCONT to its group (what `fg` sends) continues
    // both, the workload with the terminal again.
    let (s, dir, _) = setup(&[("A", "v1")]);
    let ready = s.path().join("ready");
    let driver = format!(
        "import os, pty, signal, sys, time\n\
         def state(p):\n    return open(f'/proc/{{p}}/stat').read().rsplit(')', 1)[1].split()[0]\n\
         def until(f):\n    t = time.time() + 10\n    while time.time() < t:\n        if f():\n            return True\n        time.sleep(0.02)\n    return False\n\
         pid, fd = pty.fork()\n\
         if pid == 0:\n    os.execv({bin:?}, [{bin:?}, 'run', '--watch', '--process-group', '--dir', {dir:?}, '-s', 'A', '--', 'sh', '-c', 'echo $$ > {ready}; while true; do sleep 0.05; done'])\n\
         os.set_blocking(fd, False)\n\
         if not until(lambda: os.path.exists({ready:?}) and open({ready:?}).read().strip()):\n    sys.exit('the workload never started')\n\
         work = int(open({ready:?}).read())\n\
         if not until(lambda: os.tcgetpgrp(fd) == work):\n    sys.exit('the workload never got the terminal')\n\
         os.write(fd, b'\\x1a')\n\
         if not until(lambda: state(pid) == 'T' and state(work) == 'T'):\n    sys.exit(f'not stopped: supervisor {{state(pid)}}, workload {{state(work)}}')\n\
         os.killpg(pid, signal.SIGCONT)\n\
         if not until(lambda: state(pid) != 'T' and state(work) != 'T'):\n    sys.exit(f'not continued: supervisor {{state(pid)}}, workload {{state(work)}}')\n\
         if os.tcgetpgrp(fd) != work:\n    sys.exit('the workload did not get the terminal back')\n\
         os.kill(pid, signal.SIGTERM)\n\
         _, status = os.waitpid(pid, 0)\n\
         sys.exit(0 if os.WIFEXITED(status) or os.WIFSIGNALED(status) else 'odd status')\n",
        bin = bin(),
        dir = dir.to_str().unwrap(),
        ready = ready.to_str().unwrap(),
    );
    drive(&driver);
}

/// A supervisor killed with SIGKILL (it can do nothing about it) takes its workload with it: the
/// workload does not run on, unsupervised, with the values it had. Also in its own process group
/// and behind --mask's relays.
#[test]
fn a_workload_ends_with_its_supervisor_killed_with_sigkill() {
    for flags in [&[][..], &["--process-group"], &["--mask"]] {
        let (s, dir, log) = setup(&[("A", "v1")]);
        let mut run = Run::start(&s, &dir, &log, flags);
        let workload = starts(&log)[0].0.clone();
        run.child.signal_and_wait(Signal::SIGKILL, FS_LIMIT);
        assert!(
            eventually(5, || gone(&workload)),
            "{flags:?}: the workload {workload} outlived its supervisor's SIGKILL"
        );
    }
}

/// A supervised run from a secretfs mount whose daemon hangs (stopped: every request to the
/// mount waits): the changes are looked for on a thread of their own, so the supervisor still
/// hears its signals, stops its workload and ends with its status, while the look at the hung
/// mount waits on.
#[test]
fn a_hung_mount_never_deafens_the_supervisor() {
    if !crate::support::fuse_available("a_hung_mount_never_deafens_the_supervisor") {
        return;
    }
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"from-the-mount");
    let mnt = s.path().join("mnt");
    let mut daemon = crate::support::Daemon::start(&s, &mnt, &[]);
    let log = s.path().join("workload.log");
    let mut run = Run::start(&s, &mnt, &log, &["--poll", "50ms"]);
    assert_eq!(starts(&log)[0].1, "from-the-mount");
    let daemon_pid = nix::unistd::Pid::from_raw(daemon.pid());
    nix::sys::signal::kill(daemon_pid, Signal::SIGSTOP).unwrap();
    // However the test ends, the daemon continues before it is stopped (a stopped daemon
    // never answers the unmount).
    let _resume = Resume(daemon_pid);
    // The kernel keeps a mount's entries for a day: without them (dropped, as memory pressure
    // drops them) a look at the file is a request the stopped daemon never answers.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let hung = crate::support::try_within(Duration::from_millis(500), {
        let file = mnt.join("A");
        move || std::fs::metadata(file).is_ok()
    });
    assert!(hung.is_none(), "a stat of the stopped mount answered");
    // Long enough for the follower's next look to be held too.
    std::thread::sleep(Duration::from_millis(300));
    let supervisor = nix::unistd::Pid::from_raw(run.child.pid());
    nix::sys::signal::kill(supervisor, Signal::SIGTERM).unwrap();
    // The supervisor hears it and tells the workload while the mount still hangs. (It can end
    // only once the daemon answers: a thread held in a request the daemon has read waits for
    // the answer, uninterruptibly, even to die.)
    assert!(
        eventually(10, || lines(&log).iter().any(|l| l.starts_with("term "))),
        "the workload never got the TERM the supervisor was sent: {:?}",
        lines(&log)
    );
    nix::sys::signal::kill(daemon_pid, Signal::SIGCONT).unwrap();
    let status = run.child.wait_within(FS_LIMIT).code();
    assert_eq!(
        status,
        Some(3),
        "the workload's own status after its TERM trap"
    );
    daemon.stop(Signal::SIGTERM);
}
