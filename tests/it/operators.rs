//! What service managers and monitoring meet: the sd_notify protocol against a real `AF_UNIX`
//! datagram socket bound here (what systemd does), the example units through
//! `systemd-analyze verify`, and `/metrics` through `prometheus_client`'s own parsers.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{
    Daemon, FS_LIMIT, Http, NotifySocket, Running, Scratch, Server, assert_no_canary, bin,
    fuse_available, tools_python, unique_canary,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// SIGTERM: the process says STOPPING=1, then exits 0.
fn stopped_and_said_so(mut child: Running, notify: &NotifySocket) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.pid()), Signal::SIGTERM).unwrap();
    notify.until("STOPPING=1", 10);
    assert!(child.wait_within(FS_LIMIT).success());
}

fn get_text(url: &str) -> (u16, String, String) {
    secretfs::client::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ctype, r.text().await.unwrap())
    })
}

/// `metrics on http://ADDR/metrics` in a ready line.
fn metrics_url(ready_line: &str) -> String {
    ready_line
        .split_whitespace()
        .find(|w| w.ends_with("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {ready_line:?}"))
        .to_owned()
}

/// The exposition parsed by prometheus_client, both its Prometheus text parser and its
/// OpenMetrics one: `{sample name: [[labels, value], ...]}`.
pub(crate) fn parse_metrics(python: &Path, text: &str) -> Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
text = sys.stdin.read()
out = {}
for family in om(text):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
# The Prometheus text parser must read it too, to the same samples.
plain = {}
for family in prom(text):
    for s in family.samples:
        plain.setdefault(s.name, []).append([s.labels, s.value])
missing = [n for n in out if n not in plain and not n.endswith("_created")]
if missing:
    sys.exit("the Prometheus text parser lacks " + ", ".join(missing))
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of `name` whose labels include every pair of `labels` (0 if none does).
pub(crate) fn sample(parsed: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    parsed[name]
        .as_array()
        .map(|samples| {
            samples
                .iter()
                .filter(|s| labels.iter().all(|(k, v)| s[0][*k].as_str() == Some(*v)))
                .map(|s| s[1].as_f64().unwrap())
                .sum()
        })
        .unwrap_or(0.0)
}

#[test]
fn the_server_is_ready_only_when_it_answers_and_says_stopping_on_sigterm() {
    let s = Scratch::new();
    let notify = NotifySocket::at_path(&s.path().join("notify"));
    let db = s.path().join("svc.db");
    let child = Running::spawn(
        "secretfs serve",
        Command::new(bin())
            .args(["serve", "--init", "--listen", "127.0.0.1:0", "--database"])
            .arg(format!("sqlite://{}", db.display()))
            .env("NOTIFY_SOCKET", &notify.address)
            // Half of it is the ping interval: 0.2 s.
            .env("WATCHDOG_USEC", "400000")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(s.path().join("serve.log")).unwrap()),
    );
    let ready = notify.next(20).expect("READY=1 from the server");
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving the workspace API on http://127.0.0.1:"),
        "{ready}"
    );
    // Ready means answering: /readyz at once, with no retry.
    let url = ready
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let (status, _, body) = get_text(&format!("{url}/readyz"));
    assert_eq!(status, 200, "{body}");
    let pings = notify.until("WATCHDOG=1", 5);
    assert!(pings.iter().all(|m| !m.contains("READY=1")), "{pings:?}");

    stopped_and_said_so(child, &notify);
}

#[test]
fn the_mount_is_ready_once_every_secret_reads_and_its_status_follows_the_rounds() {
    if !fuse_available(
        "the_mount_is_ready_once_every_secret_reads_and_its_status_follows_the_rounds",
    ) {
        return;
    }
    let s = Scratch::new();
    let canary = unique_canary("notify");
    let names = [
        format!("{canary}_A"),
        format!("{canary}_B"),
        format!("{canary}_C"),
    ];
    for n in &names {
        s.ok(
            &["secret", "create", n],
            format!("{canary}-value-of-{n}").as_bytes(),
        );
    }
    let name = format!("secretfs-it-notify-{}", std::process::id());
    let notify = NotifySocket::abstract_named(&name);
    let dir = s.path().join("mnt");
    let mut d = Daemon::start_with(&s, &dir, &["--refresh", "1s"], |c| {
        c.env("NOTIFY_SOCKET", &notify.address)
            .env("WATCHDOG_USEC", "400000");
    });
    let ready = notify.next(20).expect("READY=1 from the mount");
    // Every secret reads the moment READY=1 arrives.
    for n in &names {
        assert_eq!(
            std::fs::read_to_string(dir.join(n)).unwrap(),
            format!("{canary}-value-of-{n}")
        );
    }
    assert!(
        ready.starts_with(&format!(
            "READY=1\nSTATUS=3 secrets mounted at {} from local store",
            dir.display()
        )),
        "{ready}"
    );
    let mut seen = vec![ready];
    seen.extend(notify.until("WATCHDOG=1", 5));
    // A round after a rotation says when it ran.
    s.ok(&["secret", "update", &names[0]], b"rotated");
    seen.extend(notify.until("last refresh", 10));
    d.stop(Signal::SIGTERM);
    seen.extend(notify.until("STOPPING=1", 10));
    // No status line names a secret or holds a value.
    assert_no_canary_in(&canary, &seen.join("\n"));
}

fn assert_no_canary_in(canary: &str, text: &str) {
    assert!(!text.contains(canary), "a name or value reached: {text}");
}

#[test]
fn the_server_metrics_move_with_requests_and_name_no_private_secret() {
    let Some(python) = tools_python(
        "the_server_metrics_move_with_requests_and_name_no_private_secret",
        "prometheus_client",
    ) else {
        return;
    };
    let s = Scratch::new();
    let server = Server::start_with(&s, &["--metrics-listen", "127.0.0.1:0"]);
    let http = Http::new(&server);
    let metrics = server.metrics_url();
    let canary = unique_canary("metrics");
    let private = format!("{canary}_PRIVATE");
    let value = format!("{canary}-value");
    let alice = http.user(&server.admin_token, "alice");
    let (st, v) = http.call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(json!({ "name": private, "value": value })),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = http.call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        &alice,
        Some(json!({ "secrets": [private] })),
    );
    assert_eq!(st, 201, "{v}");
    let workload = v["token"].as_str().unwrap().to_owned();

    let before = parse_metrics(&python, &get_text(&metrics).2);
    let reads = 3;
    for _ in 0..reads {
        let (st, v) = http.call(
            "POST",
            "/api/v1/workload/read",
            &workload,
            Some(json!({ "names": [private, "NOT_THERE"] })),
        );
        assert_eq!(st, 200, "{v}");
    }
    let (st, _) = http.call("GET", "/api/v1/whoami", "sfs_u_not_a_token", None);
    assert_eq!(st, 401);
    let (st, _) = http.call(
        "GET",
        &format!("/api/v1/workspaces/default/secrets/{private}"),
        &alice,
        None,
    );
    assert_eq!(st, 200);

    // A long-poll held while the metrics are read, then answered by a change.
    let (rev_status, v) = http.call(
        "POST",
        "/api/v1/workload/read",
        &workload,
        Some(json!({ "values": false })),
    );
    assert_eq!(rev_status, 200, "{v}");
    let revision = v["revision"].as_str().unwrap().to_owned();
    let url = server.url.clone();
    let poll_token = workload.clone();
    let poll = std::thread::spawn(move || {
        Http::at(&url).call(
            "POST",
            "/api/v1/workload/read",
            &poll_token,
            Some(json!({ "values": false, "since": revision, "wait_secs": 20 })),
        )
    });
    assert!(crate::support::eventually(10, || {
        let m = parse_metrics(&python, &get_text(&metrics).2);
        sample(&m, "secretfs_long_polls_held", &[]) == 1.0
    }));
    let (st, v) = http.call(
        "PATCH",
        &format!("/api/v1/workspaces/default/secrets/{private}"),
        &alice,
        Some(json!({ "value": format!("{value}-2") })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(poll.join().unwrap().0, 200);

    let (status, ctype, text) = get_text(&metrics);
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let after = parse_metrics(&python, &text);
    let read_route = [
        ("route", "/api/v1/workload/read"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(
        sample(&after, "secretfs_http_requests_total", &read_route)
            - sample(&before, "secretfs_http_requests_total", &read_route),
        (reads + 2) as f64,
        "{text}"
    );
    let secret_route = [("route", "/api/v1/workspaces/{ws}/secrets/{name}")];
    assert!(
        sample(&after, "secretfs_http_requests_total", &secret_route) >= 2.0,
        "{text}"
    );
    assert!(
        sample(
            &after,
            "secretfs_http_request_duration_seconds_count",
            &secret_route
        ) >= 2.0
    );
    for (result, n) in [("served", reads), ("missing", reads)] {
        let moved = sample(
            &after,
            "secretfs_workload_secrets_total",
            &[("result", result)],
        ) - sample(
            &before,
            "secretfs_workload_secrets_total",
            &[("result", result)],
        );
        assert_eq!(moved, n as f64, "{result}: {text}");
    }
    assert!(
        sample(
            &after,
            "secretfs_auth_failures_total",
            &[("reason", "refused")]
        ) >= 1.0
    );
    assert_eq!(sample(&after, "secretfs_long_polls_held", &[]), 0.0);
    assert!(
        sample(&after, "secretfs_change_fanout_seconds_count", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &after,
            "secretfs_store_operation_duration_seconds_count",
            &[("operation", "commit")]
        ) >= 3.0
    );
    assert!(
        sample(&after, "secretfs_audit_read_batch_records_count", &[]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &after,
            "secretfs_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Route templates only: no secret name, no value, no token.
    assert_no_canary_in(&canary, &text);
    assert!(!text.contains(&workload) && !text.contains(&alice));
    assert_no_canary("the metrics", text.as_bytes());
}

#[test]
fn the_mount_metrics_count_rounds_and_name_nothing() {
    if !fuse_available("the_mount_metrics_count_rounds_and_name_nothing") {
        return;
    }
    let Some(python) = tools_python(
        "the_mount_metrics_count_rounds_and_name_nothing",
        "prometheus_client",
    ) else {
        return;
    };
    let s = Scratch::new();
    let canary = unique_canary("mount-metrics");
    for i in 0..3 {
        s.ok(
            &["secret", "create", &format!("{canary}_{i}")],
            canary.as_bytes(),
        );
    }
    let dir = s.path().join("mnt");
    let d = Daemon::start(
        &s,
        &dir,
        &["--refresh", "1s", "--metrics-listen", "127.0.0.1:0"],
    );
    let url = metrics_url(&d.ready_line);
    let first = parse_metrics(&python, &get_text(&url).2);
    assert_eq!(sample(&first, "secretfs_mount_secrets", &[]), 3.0);
    assert!(sample(&first, "secretfs_mount_source_latency_seconds_count", &[]) >= 1.0);
    let rounds = sample(&first, "secretfs_mount_refresh_rounds_total", &[]);
    s.ok(
        &["secret", "create", &format!("{canary}_3")],
        canary.as_bytes(),
    );
    assert!(crate::support::eventually(10, || {
        let m = parse_metrics(&python, &get_text(&url).2);
        sample(&m, "secretfs_mount_secrets", &[]) == 4.0
            && sample(&m, "secretfs_mount_refresh_rounds_total", &[]) > rounds
    }));
    let (_, _, text) = get_text(&url);
    let m = parse_metrics(&python, &text);
    let last = sample(
        &m,
        "secretfs_mount_last_refresh_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 30.0, "{last} vs {now}");
    assert_eq!(
        sample(&m, "secretfs_mount_refresh_failures_total", &[]),
        0.0
    );
    assert_no_canary_in(&canary, &text);
}

/// The units as shipped, with the binaries they name pointed at this build's.
fn units_in(dir: &Path) -> Vec<PathBuf> {
    let python = crate::support::python();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(repo().join("examples/systemd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/usr/local/bin/secretfs", bin())
                .replace("/usr/bin/python3", python);
            let out = dir.join(path.file_name().unwrap());
            std::fs::write(&out, text).unwrap();
            units.push(out);
        }
    }
    units.sort();
    units
}

fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze (scripts/test-prereqs installs systemd): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

#[test]
fn the_example_units_verify_clean_and_a_misspelled_key_does_not() {
    let s = Scratch::new();
    let units = units_in(s.path());
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "secretfs-mount@.service",
            "secretfs-server.service",
            "trainer.service"
        ]
    );
    // The template is verified as the instance the consumer uses.
    let to_check: Vec<PathBuf> = units
        .iter()
        .map(|u| {
            if u.ends_with("secretfs-mount@.service") {
                u.with_file_name("secretfs-mount@trainer.service")
            } else {
                u.clone()
            }
        })
        .collect();
    let (clean, said) = verify(&to_check);
    assert!(clean, "systemd-analyze verify:\n{said}");

    // The check can fail: systemd only warns of an unknown key, and the warning is enough.
    let server = s.path().join("secretfs-server.service");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(&server, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let (clean, said) = verify(std::slice::from_ref(&server));
    assert!(!clean && said.contains("NoNewPrivilege"), "{said}");
}

#[test]
fn the_server_unit_runs_as_written() {
    // ExecStart as the unit has it (the paths under the scratch directory): the flags exist and
    // the server serves, with metrics on their own address, and tells the socket it is ready.
    let s = Scratch::new();
    let unit =
        std::fs::read_to_string(repo().join("examples/systemd/secretfs-server.service")).unwrap();
    let exec = unit
        .split("ExecStart=")
        .nth(1)
        .unwrap()
        .split("\n")
        .scan(true, |go, line| {
            let keep = *go;
            *go = line.trim_end().ends_with('\\');
            keep.then(|| line.trim_end().trim_end_matches('\\').to_owned())
        })
        .collect::<Vec<_>>()
        .join(" ");
    let state = s.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let words: Vec<String> = exec
        .split_whitespace()
        .map(|w| {
            w.replace("/var/lib/secretfs", state.to_str().unwrap())
                .replace("127.0.0.1:8080", "127.0.0.1:0")
                .replace("127.0.0.1:9464", "127.0.0.1:0")
        })
        .collect();
    assert_eq!(words[0], "/usr/local/bin/secretfs");
    let notify = NotifySocket::at_path(&s.path().join("notify"));
    let mut child = Running::spawn(
        "the unit's secretfs serve",
        Command::new(bin())
            .args(&words[1..])
            .env("NOTIFY_SOCKET", &notify.address)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(s.path().join("unit.log")).unwrap()),
    );
    let ready = notify.next(20).unwrap_or_else(|| {
        panic!(
            "{}",
            std::fs::read_to_string(s.path().join("unit.log")).unwrap()
        )
    });
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert!(state.join("admin.token").exists());
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (status, _, _) = get_text(&metrics_url(&line));
    assert_eq!(status, 200, "{line}");
    stopped_and_said_so(child, &notify);
}
