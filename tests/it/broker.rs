//! Brokered credentials (`[broker."NAME"]`, `--broker`): the real `openai` and
//! `huggingface_hub` SDKs, git and curl call stand-in HTTPS upstreams (`broker/upstream.py`,
//! with a CA the test makes) through `secretfs run`; the upstream must see the real credential
//! and the workload must never hold it (its environment, its memory read through
//! `/proc/PID/mem`, its output).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    NO_PTRACE, Running, Scratch, bin, eventually, may_inspect, memory_holds, private_ca, python,
    tools_python, unique_canary,
};

/// A stand-in upstream on `host`, recording requests in `log`.
struct Upstream {
    _process: Running,
    port: u16,
    log: PathBuf,
}

impl Upstream {
    fn start(
        s: &Scratch,
        host: &str,
        tls: &(PathBuf, PathBuf, PathBuf),
        env: &[(&str, String)],
    ) -> Upstream {
        let log = s.path().join(format!("upstream-{host}.log"));
        let git_root = s.path().join("git");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/broker/upstream.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .args([host, tls.1.to_str().unwrap(), tls.2.to_str().unwrap()])
            .arg(&log)
            .arg(&git_root)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped());
        let mut process = Running::spawn("the stand-in upstream", &mut cmd);
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(process.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().expect("the stand-in prints its port");
        Upstream {
            _process: process,
            port,
            log,
        }
    }

    /// Every request seen: (method, path, headers).
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

/// A scratch store with `secrets` (name, kind, value), a private CA for 127.0.0.1 and
/// 127.0.0.2, and a stand-in on each (the second is "another host").
fn setup(secrets: &[(&str, &str, &str)]) -> (Scratch, PathBuf, Upstream, Upstream) {
    let s = Scratch::new();
    for (name, kind, value) in secrets {
        s.ok(&["secret", "create", name, "-t", kind], value.as_bytes());
    }
    let tls = private_ca(s.path(), "IP:127.0.0.1,IP:127.0.0.2");
    let other = Upstream::start(&s, "127.0.0.2", &tls, &[]);
    let main = Upstream::start(
        &s,
        "127.0.0.1",
        &tls,
        &[("OTHER_PORT", other.port.to_string())],
    );
    (s, tls.0, main, other)
}

/// `secretfs run ARGS -- COMMAND` in the scratch dir, its output to files; without
/// CAP_SYS_PTRACE (`setpriv NO_PTRACE`), so that what a same-uid process may read of it is what
/// its dumpability says.
fn launch(s: &Scratch, args: &[&str], command: &[&str]) -> Running {
    launch_env(s, &[], args, command)
}

/// [`launch`] with these variables set for the launcher.
fn launch_env(s: &Scratch, env: &[(&str, &str)], args: &[&str], command: &[&str]) -> Running {
    let mut scratch = s.cmd(&["run"]);
    scratch.envs(env.iter().copied());
    let mut cmd = Command::new("setpriv");
    cmd.args(NO_PTRACE)
        .arg(bin())
        .arg("run")
        .env_clear()
        .current_dir(s.path());
    for (k, v) in scratch.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.args(args)
        .arg("--")
        .args(command)
        .stdout(std::fs::File::create(s.path().join("run.out")).unwrap())
        .stderr(std::fs::File::create(s.path().join("run.err")).unwrap());
    Running::spawn("secretfs run with a broker", &mut cmd)
}

fn read(s: &Scratch, name: &str) -> String {
    std::fs::read_to_string(s.path().join(name)).unwrap_or_default()
}

/// `secretfs run --spec job.toml --broker-ca-file CA` with a workload that reports `what` (its
/// variables, expanded by sh) and stays; the launcher and the report.
fn launch_reporting(s: &Scratch, ca: &Path, what: &str) -> (Running, String) {
    let script = format!("echo \"{what}\" > base.tmp && mv base.tmp base; exec sleep 600");
    let run = launch(
        s,
        &[
            "--spec",
            "job.toml",
            "--broker-ca-file",
            ca.to_str().unwrap(),
        ],
        &["sh", "-c", &script],
    );
    wait_for(s, "base", &run);
    let report = read(s, "base").trim().to_owned();
    (run, report)
}

/// A job spec brokering the secret OPENAI to the stand-in's `/v1`.
fn openai_job(s: &Scratch, up: &Upstream) {
    std::fs::write(
        s.path().join("job.toml"),
        format!(
            "[broker.openai]\nsecret = \"OPENAI\"\nupstream = \"{}\"\n",
            up.url("/v1")
        ),
    )
    .unwrap();
}

/// A server with user alice, her private `openai` secret OPENAI holding `key`, and a workload
/// token minted for it: the server, a runtime for the API, the API, alice's token, the mint.
fn server_with_openai(
    s: &Scratch,
    key: &str,
) -> (
    crate::support::Server,
    tokio::runtime::Runtime,
    crate::support::Api,
    String,
    serde_json::Value,
) {
    let server = crate::support::Server::start(s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = crate::support::Api::new(&server);
    let alice = rt.block_on(api.user(&server.admin_token, "alice"));
    let (status, created) = rt.block_on(api.call(
        "POST",
        "/api/v1/workspaces/default/secrets",
        &alice,
        Some(serde_json::json!({"name": "OPENAI", "value": key, "kind": "openai"})),
    ));
    assert_eq!(status, 201, "{created}");
    let (_, minted) = rt.block_on(api.mint(&alice, &["OPENAI"], serde_json::json!({})));
    (server, rt, api, alice, minted)
}

/// Waits for `file` to exist in the scratch dir (the workload says where it is so).
fn wait_for(s: &Scratch, file: &str, run: &Running) {
    assert!(
        eventually(30, || s.path().join(file).exists()),
        "the workload (pid {}) did not write {file}; stderr: {}; stdout: {}",
        run.pid(),
        read(s, "run.err"),
        read(s, "run.out")
    );
}

const SDK_WORKLOAD: &str = r#"
import json, os, sys, time
import anthropic, datadog, openai, huggingface_hub as hub
out = {}
datadog.initialize()
out["datadog"] = datadog.api.Event.create(title="deploy", text="through the broker")["status"]
out["claude"] = anthropic.Anthropic().messages.create(
    model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]).content[0].text
client = openai.OpenAI()
out["chat"] = client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
started = time.monotonic(); first = None; words = []
for event in client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
    first = first if first is not None else time.monotonic() - started
    if event.choices and event.choices[0].delta.content:
        words.append(event.choices[0].delta.content)
out["stream"] = "".join(words)
out["first"] = first
out["total"] = time.monotonic() - started
out["sha"] = hub.model_info("org/model").sha
path = hub.hf_hub_download("org/model", "config.json", cache_dir=os.environ["HF_CACHE"])
out["file"] = open(path).read()
out["pid"] = os.getpid()
print(json.dumps(out), flush=True)
open("phase-a", "w").write(json.dumps(out))
while not os.path.exists("go"):
    time.sleep(0.02)
print("after rotation:", client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "again"}]).choices[0].message.content,
    flush=True)
"#;

/// The Authorization headers the upstream saw on requests whose path contains `part`.
fn auth_seen(up: &Upstream, part: &str) -> Vec<String> {
    up.requests()
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains(part))
        .map(|r| {
            r["headers"]["authorization"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[test]
fn the_sdks_call_through_the_broker_and_the_workload_never_holds_the_key() {
    let Some(tools) = tools_python("broker SDKs", "openai, anthropic, datadog") else {
        return;
    };
    let openai_key = format!("sk-{}", unique_canary("broker-openai"));
    let hf_key = format!("hf_{}", unique_canary("broker-hf"));
    let claude_key = format!("sk-ant-{}", unique_canary("broker-claude"));
    let dd_key = format!("dd{}", unique_canary("broker-datadog"));
    let (s, ca, up, _other) = setup(&[
        ("OPENAI", "openai", &openai_key),
        ("HF", "huggingface", &hf_key),
        ("CLAUDE", "custom", &claude_key),
        ("DD", "datadog", &dd_key),
    ]);
    // Anthropic's SDK reads ANTHROPIC_BASE_URL: a custom broker with its header.
    std::fs::write(
        s.path().join("job.toml"),
        format!(
            "[broker.openai]\nsecret = \"OPENAI\"\nupstream = \"{}\"\n\n\
             [broker.hub]\nsecret = \"HF\"\nupstream = \"{}\"\n\n\
             [broker.claude]\nsecret = \"CLAUDE\"\nupstream = \"{}\"\n\
             header = \"x-api-key: {{}}\"\nurl_env = \"ANTHROPIC_BASE_URL\"\n\
             key_env = \"ANTHROPIC_API_KEY\"\n\n\
             [broker.dd]\nsecret = \"DD\"\nupstream = \"{}\"\n",
            up.url("/v1"),
            up.url(""),
            up.url(""),
            up.url("")
        ),
    )
    .unwrap();
    std::fs::write(s.path().join("w.py"), SDK_WORKLOAD).unwrap();
    // The launcher's own environment has the real key: the workload must get the placeholder.
    let mut cmd_env = s.cmd(&["run"]);
    let mut run = {
        cmd_env
            .args(["--spec", "job.toml", "--broker-ca-file"])
            .arg(&ca)
            .env("OPENAI_API_KEY", &openai_key)
            .env("HF_CACHE", s.path().join("hf-cache"))
            .arg("--")
            .args([tools.to_str().unwrap(), "w.py"])
            .stdout(std::fs::File::create(s.path().join("run.out")).unwrap())
            .stderr(std::fs::File::create(s.path().join("run.err")).unwrap());
        Running::spawn("secretfs run with brokers", &mut cmd_env)
    };
    wait_for(&s, "phase-a", &run);
    let out: serde_json::Value = serde_json::from_str(&read(&s, "phase-a")).unwrap();
    assert_eq!(out["chat"], "stand-in reply");
    assert_eq!(out["claude"], "stand-in reply");
    assert_eq!(out["datadog"], "ok");
    let events: Vec<serde_json::Value> = up
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/api/v1/events"))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["headers"]["dd-api-key"], dd_key.as_str());
    let messages: Vec<serde_json::Value> = up
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/v1/messages")
        .collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["headers"]["x-api-key"], claude_key.as_str());
    assert_eq!(out["stream"], "stand-in says hi");
    assert_eq!(out["sha"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(out["file"], "{\"model_type\": \"stand-in\"}\n");
    // Streamed: the first event came before the stand-in's 0.3 s pause after it.
    let (first, total) = (
        out["first"].as_f64().unwrap(),
        out["total"].as_f64().unwrap(),
    );
    assert!(
        first + 0.25 < total,
        "first event at {first}s of {total}s: not streamed"
    );

    // The upstream saw the real credential on every call, the placeholder never.
    let bearer = format!("Bearer {openai_key}");
    let chats = auth_seen(&up, "/chat/completions");
    assert_eq!(chats, vec![bearer.clone(), bearer.clone()]);
    let hub_calls = auth_seen(&up, "/org/model");
    assert!(hub_calls.len() >= 3, "{hub_calls:?}");
    assert!(
        hub_calls.iter().all(|a| a == &format!("Bearer {hf_key}")),
        "{hub_calls:?}"
    );
    assert!(
        !std::fs::read_to_string(&up.log)
            .unwrap()
            .contains("secretfs-broker-placeholder"),
        "the placeholder reached the upstream"
    );

    // The workload holds neither value: environment, memory, output.
    let pid = out["pid"].as_u64().unwrap() as u32;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for key in [&openai_key, &hf_key, &claude_key, &dd_key] {
        assert!(memchr::memmem::find(&environ, key.as_bytes()).is_none());
        assert!(
            !memory_holds(pid, key.as_bytes()),
            "the workload's memory holds a value"
        );
    }
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("OPENAI_API_KEY=secretfs-broker-placeholder-"),
        "{environ}"
    );
    assert!(environ.contains("OPENAI_BASE_URL=http://127.0.0.1:"));
    assert!(environ.contains("HF_ENDPOINT=http://127.0.0.1:"));
    assert!(environ.contains("HF_TOKEN=secretfs-broker-placeholder-"));
    assert!(environ.contains("NO_PROXY=127.0.0.1,localhost"));

    // A rotation is used by the next request, with no restart: the test (the same user as
    // the workload) calls the broker until the upstream sees the new value.
    let rotated = format!("sk-{}", unique_canary("broker-rotated"));
    s.ok(&["secret", "update", "OPENAI"], rotated.as_bytes());
    let base = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("OPENAI_BASE_URL="))
        .unwrap()
        .to_owned();
    let since = Instant::now();
    let new_bearer = format!("Bearer {rotated}");
    assert!(
        eventually(10, || {
            curl(&[&format!("{base}/models")]);
            auth_seen(&up, "/v1/models").last() == Some(&new_bearer)
        }),
        "the broker did not take the rotated value; stderr: {}",
        read(&s, "run.err")
    );
    eprintln!("rotation used after {:?}", since.elapsed());
    std::fs::write(s.path().join("go"), "").unwrap();
    let status = run.wait_within(Duration::from_secs(30));
    assert!(status.success(), "stderr: {}", read(&s, "run.err"));
    assert_eq!(
        auth_seen(&up, "/chat/completions").last(),
        Some(&new_bearer)
    );
    let output = read(&s, "run.out") + &read(&s, "run.err");
    assert!(
        output.contains("after rotation: stand-in reply"),
        "{output}"
    );
    for key in [&openai_key, &hf_key, &claude_key, &dd_key, &rotated] {
        assert!(!output.contains(key.as_str()), "a value reached the output");
    }

    // One audit record per forwarded call, in the store's log: the secret, the upstream, the
    // method, the path without its query, the status, the caller's pid and uid; no value.
    let audit = local_brokered(&s);
    let calls_with = |keys: &[&str]| {
        up.requests()
            .iter()
            .filter(|r| {
                let a = r["headers"]["authorization"].as_str().unwrap_or("");
                keys.iter().any(|k| a.ends_with(k))
            })
            .count()
    };
    let of = |name: &str| audit.iter().filter(|a| a.target == name).count();
    assert_eq!(
        of("OPENAI"),
        calls_with(&[&openai_key, &rotated]),
        "{audit:#?}"
    );
    assert_eq!(of("HF"), calls_with(&[&hf_key]), "{audit:#?}");
    let chat = format!(
        "upstream={} method=POST path=/v1/chat/completions status=200 pid={pid} uid=0",
        up.url("/v1")
    );
    assert_eq!(
        audit.iter().filter(|a| a.detail == chat).count(),
        3,
        "{audit:#?}"
    );
    for a in &audit {
        for forbidden in [&openai_key, &hf_key, &rotated, &"placeholder".to_owned()] {
            assert!(!a.detail.contains(forbidden.as_str()), "{a:?}");
        }
    }
}

/// The local store's brokered-call records, oldest first.
fn local_brokered(s: &Scratch) -> Vec<secretfs::service::AuditRecord> {
    s.local_audit()
        .into_iter()
        .filter(|a| a.action == secretfs::service::AuditAction::Brokered)
        .collect()
}

/// `curl ARGS`: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    curl_as(None, args)
}

fn curl_as(uid: Option<u32>, args: &[&str]) -> (u16, String) {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
            ]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn only_the_workload_may_use_the_broker_and_a_deleted_secret_is_refused_with_the_reason() {
    let key = format!("sk-{}", unique_canary("broker-refusals"));
    let (s, ca, up, other) = setup(&[("OPENAI", "openai", &key)]);
    // --broker takes the kind's defaults: its real API (which this host cannot reach; the
    // dry run shows it) and the variables its SDK reads.
    let dry = s.ok(
        &["run", "--broker", "OPENAI", "--dry-run", "--", "true"],
        b"",
    );
    assert!(
        dry.contains(
            "broker OPENAI: secret OPENAI forwarded to https://api.openai.com/v1 with \
                      authorization: Bearer {}"
        ),
        "{dry}"
    );
    assert!(
        dry.contains("OPENAI_BASE_URL=<broker OPENAI: http://127.0.0.1:PORT/PREFIX>"),
        "{dry}"
    );
    assert!(
        dry.contains("OPENAI_API_KEY=<placeholder of broker OPENAI>"),
        "{dry}"
    );
    assert!(!dry.contains(&key), "{dry}");
    // The same with the stand-in as the upstream, from the spec.
    openai_job(&s, &up);
    let (mut run, base) = launch_reporting(&s, &ca, "$OPENAI_BASE_URL");
    let (code, _) = curl(&[&format!("{base}/models")]);
    assert_eq!(code, 200);
    let port_and_prefix = base.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, _prefix) = port_and_prefix.split_once('/').unwrap();

    // Another user on this host is refused, with the reason.
    let (code, body) = curl_as(Some(65534), &[&format!("{base}/models")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("uid 65534"), "{body}");
    // A path outside the per-run prefix, another Host, a proxy-style request, CONNECT.
    let (code, body) = curl(&[&format!("http://127.0.0.1:{port}/models")]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not a path of this broker"), "{body}");
    let (code, body) = curl(&["-H", "Host: evil.example", &format!("{base}/models")]);
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    let (code, body) = curl(&[
        "--proxy",
        &format!("http://127.0.0.1:{port}"),
        "--noproxy",
        "",
        "http://example.com/",
    ]);
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("not a proxy"), "{body}");
    // Only under the upstream's base path: dot segments, plain or escaped, are resolved first
    // and a path that leaves it is refused; TRACE (an echo) and odd methods are not sent.
    for path in ["/../../x", "/%2e%2e/%2e%2e/admin", "/.%2e/secret"] {
        let (code, body) = curl(&["--path-as-is", &format!("{base}{path}")]);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains("leaves the upstream's base path"), "{body}");
    }
    let (code, body) = curl(&["-X", "TRACE", &format!("{base}/t")]);
    assert_eq!(code, 405, "{body}");
    let (code, body) = curl(&["-X", "get", &format!("{base}/t")]);
    assert_eq!(code, 400, "{body}");
    let (code, _) = curl(&[&format!("{base}/{}", "a".repeat(3000))]);
    assert_eq!(code, 414);
    // A client on a dual-stack IPv6 socket (Java's default) is told apart like any other.
    let port_number: u16 = port.parse().unwrap();
    let prefix_path = base
        .strip_prefix(&format!("http://127.0.0.1:{port}"))
        .unwrap();
    let dual = Command::new(python())
        .args([
            "-c",
            &format!(
                "import socket; s = socket.socket(socket.AF_INET6); \
                 s.connect(('::ffff:127.0.0.1', {port_number})); \
                 s.sendall(b'GET {prefix_path}/models HTTP/1.1\\r\\nHost: 127.0.0.1:{port_number}\\r\\nConnection: close\\r\\n\\r\\n'); \
                 print(s.recv(100).split(b'\\r\\n')[0].decode())"
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&dual.stdout).trim(),
        "HTTP/1.1 200 OK",
        "{}",
        String::from_utf8_lossy(&dual.stderr)
    );
    // A call the client gives up on is still audited (status 0): the upstream may have had it.
    let (code, _) = curl(&["--max-time", "0.5", &format!("{base}/hang")]);
    assert_eq!(code, 0);
    assert!(
        eventually(10, || local_brokered(&s)
            .iter()
            .any(|a| a.detail.contains("path=/v1/hang status=0 "))),
        "{:#?}",
        local_brokered(&s)
    );
    let before = up.requests().len();

    // A redirect to another host is followed by the client without the credential; one to
    // the upstream itself comes back through the broker.
    let (code, body) = curl(&[
        "-L",
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{base}/away"),
    ]);
    assert_eq!((code, body.as_str()), (200, "{\"landed\": true}"));
    let landed = other.requests();
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert!(
        landed[0]["headers"].get("authorization").is_none(),
        "{landed:?}"
    );
    assert!(!std::fs::read_to_string(&other.log).unwrap().contains(&key));
    let (code, body) = curl(&["-L", &format!("{base}/home")]);
    assert_eq!((code, body.as_str()), (200, "{\"landed\": true}"));
    let home = up.requests();
    let last = home.last().unwrap();
    assert_eq!(last["path"], "/v1/landed?from=home");
    assert_eq!(last["headers"]["authorization"], format!("Bearer {key}"));
    assert_eq!(home.len(), before + 3, "away, home, landed: {home:?}");

    // Deleted: refused with the reason, the workload keeps running; back: used again.
    s.ok(&["secret", "delete", "OPENAI"], b"");
    let mut last = (0, String::new());
    assert!(
        eventually(10, || {
            last = curl(&[&format!("{base}/models")]);
            last.0 == 403
        }),
        "{last:?}"
    );
    assert!(last.1.contains("secret \"OPENAI\" was deleted"), "{last:?}");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the workload must keep running"
    );
    let again = format!("sk-{}", unique_canary("broker-back"));
    s.ok(
        &["secret", "create", "OPENAI", "-t", "openai"],
        again.as_bytes(),
    );
    assert!(eventually(10, || curl(&[&format!("{base}/models")]).0 == 200));
    assert_eq!(
        auth_seen(&up, "/v1/models").last().unwrap(),
        &format!("Bearer {again}")
    );
    let err = read(&s, "run.err");
    // The store is readable by the workload (same user): said at start.
    assert!(
        err.contains("warning: the workload runs as this user and can read the store"),
        "{err}"
    );
    for value in [&key, &again] {
        assert!(
            !err.contains(value.as_str()),
            "a value reached the launcher's log"
        );
    }

    // The launcher that holds the value: not dumpable, so a process of the same uid without
    // CAP_SYS_PTRACE cannot read its memory, nor can another uid its environment.
    let launcher = run.id();
    for (what, other) in [
        ("mem", false),
        ("mem", true),
        ("environ", true),
        ("attach", false),
    ] {
        assert!(
            !may_inspect(launcher, what, other),
            "{what} of the launcher (other uid: {other})"
        );
    }
    drop(run);

    // An upstream that echoes the credential hands it to the workload: --mask still masks
    // the brokered value in the output.
    let out = s.run(
        &[
            "run",
            "--spec",
            "job.toml",
            "--broker-ca-file",
            ca.to_str().unwrap(),
            "--mask",
            "--",
            "sh",
            "-c",
            "curl -s \"$OPENAI_BASE_URL/echo\"",
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Bearer [secretfs: OPENAI]"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&again),
        "the echoed value was not masked"
    );
}

#[test]
fn git_clones_and_fetches_through_the_broker() {
    let token = format!("ghp_{}", unique_canary("broker-git"));
    let (s, ca, up, _other) = setup(&[("GH", "github", &token)]);
    // A repository the stand-in serves at /git/acme/tools.git.
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let work = s.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hello\n").unwrap();
    git(&work, &["add", "README"]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-qm",
            "one",
        ],
    );
    let bare = s.path().join("git/acme/tools.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        s.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    std::fs::write(
        s.path().join("job.toml"),
        format!(
            "[broker.gh]\nsecret = \"GH\"\nupstream = \"{}\"\nca_file = \"{}\"\n",
            up.url("/git"),
            ca.display()
        ),
    )
    .unwrap();
    let script = "git clone -q https://github.com/acme/tools.git clone && \
                  git -C clone fetch -q origin && cat clone/README && \
                  git config --get-regexp 'url\\..*' && echo \"$GH_TOKEN\" | cut -c1-27";
    let mut run = launch(
        &s,
        &["--spec", "job.toml"],
        &[
            "env",
            "GIT_CONFIG_GLOBAL=/dev/null",
            "GIT_TERMINAL_PROMPT=0",
            "sh",
            "-c",
            script,
        ],
    );
    let status = run.wait_within(Duration::from_secs(60));
    let out = read(&s, "run.out");
    assert!(
        status.success(),
        "stdout: {out}; stderr: {}",
        read(&s, "run.err")
    );
    assert!(out.starts_with("hello\n"), "{out}");
    assert!(out.contains(".insteadof https://github.com/"), "{out}");
    assert!(out.contains("secretfs-broker-placeholder"), "{out}");
    // git's calls (the clone's two and the fetch's) carried the token as GitHub takes it.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
    );
    let seen = auth_seen(&up, "/git/acme/tools.git");
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|a| a == &basic), "{seen:?}");
    assert!(!out.contains(&token) && !read(&s, "run.err").contains(&token));
}

#[test]
fn from_a_server_each_call_is_audited_there_under_the_workload_token() {
    let key = format!("sk-{}", unique_canary("broker-server"));
    let (s, ca, up, _other) = setup(&[]);
    let (mut server, rt, api, alice, minted) = server_with_openai(&s, &key);
    openai_job(&s, &up);
    // The token in SECRETFS_TOKEN: the launcher reads it, the workload does not inherit it,
    // and no file holds it: nothing of the source is the workload's to read.
    let workload_token = minted["token"].as_str().unwrap().to_owned();
    let mut run = launch_env(
        &s,
        &[("SECRETFS_TOKEN", &workload_token)],
        &[
            "--spec",
            "job.toml",
            "--broker-ca-file",
            ca.to_str().unwrap(),
            "--url",
            &server.url,
        ],
        &[
            "sh",
            "-c",
            "[ -z \"$SECRETFS_TOKEN\" ] || exit 9; \
             call() { curl -sf \"$OPENAI_BASE_URL/models?page=$1\" >/dev/null || exit $1; }; \
             wait_for() { while [ ! -f \"$1\" ]; do sleep 0.05; done; }; \
             call 1; call 2; call 3; touch phase1; wait_for go; \
             call 4; call 5; touch phase2; wait_for go2",
        ],
    );
    // The server goes away: the broker keeps the value it has, and the calls keep going.
    wait_for(&s, "phase1", &run);
    server.kill(nix::sys::signal::Signal::SIGKILL);
    std::fs::write(s.path().join("go"), "").unwrap();
    wait_for(&s, "phase2", &run);
    // Back: the calls made meanwhile reach its audit log too (sent again until taken).
    server.restart(&s);
    std::fs::write(s.path().join("go2"), "").unwrap();
    let status = run.wait_within(Duration::from_secs(30));
    let err = read(&s, "run.err");
    assert!(status.success(), "stderr: {err}");
    assert!(
        !err.contains("warning: the workload runs as this user"),
        "{err}"
    );
    assert_eq!(
        auth_seen(&up, "/v1/models"),
        vec![format!("Bearer {key}"); 5]
    );
    // Sent before the launcher ended (the last batch at its end); the server writes its
    // batch within its audit interval.
    let brokered = || -> Vec<serde_json::Value> {
        let (status, audit) =
            rt.block_on(api.call("GET", "/api/v1/audit?limit=1000", &server.admin_token, None));
        assert_eq!(status, 200, "{audit}");
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "brokered")
            .cloned()
            .collect()
    };
    assert!(
        eventually(10, || brokered().len() >= 5),
        "{}",
        read(&s, "run.err")
    );
    let brokered = brokered();
    assert_eq!(brokered.len(), 5, "{brokered:#?}");
    for a in &brokered {
        assert_eq!(a["target"], "OPENAI");
        assert_eq!(
            a["actor"],
            format!("workload:{}", minted["id"].as_str().unwrap())
        );
        let detail = a["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!(
                "upstream={} method=GET path=/v1/models status=200 pid=",
                up.url("/v1")
            )),
            "{detail}"
        );
        assert!(
            !detail.contains("page=") && !detail.contains(&key),
            "{detail}"
        );
    }
    // A user token may not write such records, and a workload token only for its secrets.
    let call = serde_json::json!({"calls": [{"secret": "OPENAI", "upstream": "https://x.example",
        "method": "GET", "path": "/", "status": 200, "pid": 1, "uid": 0}]});
    let (status, _) =
        rt.block_on(api.call("POST", "/api/v1/workload/brokered", &alice, Some(call)));
    assert_eq!(status, 403);
    let other = serde_json::json!({"calls": [{"secret": "NOT_MINE", "upstream": "https://x.example",
        "method": "GET", "path": "/", "status": 200, "pid": 1, "uid": 0}]});
    let workload = minted["token"].as_str().unwrap();
    let (status, _) =
        rt.block_on(api.call("POST", "/api/v1/workload/brokered", workload, Some(other)));
    assert_eq!(status, 404);
    let bad = serde_json::json!({"calls": [{"secret": "OPENAI", "upstream": "https://x.example",
        "method": "GET", "path": "/a?b", "status": 200, "pid": 1, "uid": 0}]});
    let (status, answer) =
        rt.block_on(api.call("POST", "/api/v1/workload/brokered", workload, Some(bad)));
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("without ? or #"),
        "{answer}"
    );
}

#[test]
fn a_socket_broker_serves_clients_that_take_a_unix_socket_and_the_kernel_names_the_caller() {
    let key = format!("sk-{}", unique_canary("broker-socket"));
    let (s, ca, up, _other) = setup(&[("K", "custom", &key)]);
    std::fs::write(
        s.path().join("job.toml"),
        format!(
            "[broker.api]\nsecret = \"K\"\nupstream = \"{}\"\nurl_env = \"API_URL\"\n\
             header = \"x-api-key: {{}}\"\nsocket = true\n",
            up.url("/v1")
        ),
    )
    .unwrap();
    let dry = s.ok(
        &["run", "--spec", "job.toml", "--dry-run", "--", "true"],
        b"",
    );
    assert!(
        dry.contains("API_SOCKET=<the Unix socket of broker api>"),
        "{dry}"
    );
    let (mut run, line) = launch_reporting(&s, &ca, "$API_SOCKET $API_URL");
    let (socket, base) = line.trim().split_once(' ').unwrap();
    let socket = socket.to_owned();
    assert!(base.starts_with("http://localhost/"), "{base}");
    // Only its user may enter the socket's directory.
    let dir = Path::new(&socket).parent().unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    let (code, body) = curl(&["--unix-socket", &socket, &format!("{base}/models")]);
    assert_eq!((code, body.as_str()), (200, "{\"ok\": true}"));
    let seen = up.requests();
    let last = seen.last().unwrap();
    assert_eq!(last["path"], "/v1/models");
    assert_eq!(last["headers"]["x-api-key"], key.as_str());
    // Another uid cannot reach the socket at all.
    let (code, _) = curl_as(
        Some(65534),
        &["--unix-socket", &socket, &format!("{base}/models")],
    );
    assert_eq!(code, 0, "uid 65534 reached the broker's socket");
    // A path outside the prefix is refused on the socket too.
    let (code, _) = curl(&["--unix-socket", &socket, "http://localhost/models"]);
    assert_eq!(code, 404);
    // Stopped, the launcher takes its socket directory with it; the kernel named the caller,
    // whose pid is in the audit record.
    run.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    assert!(!dir.exists(), "{} outlived the launcher", dir.display());
    let audit = local_brokered(&s);
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert!(
        audit[0].detail.contains("path=/v1/models status=200 pid=")
            && !audit[0].detail.contains("pid=0 "),
        "{audit:#?}"
    );
}

#[test]
fn the_brokers_upstream_calls_honour_https_proxy_and_the_workloads_calls_bypass_it() {
    let key = format!("sk-{}", unique_canary("broker-proxy"));
    let (s, ca, up, _other) = setup(&[("OPENAI", "openai", &key)]);
    let proxy_log = s.path().join("proxy.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/broker/connect_proxy.py");
    let mut proxy = Running::spawn(
        "the stand-in proxy",
        Command::new(python())
            .arg(script)
            .arg(&proxy_log)
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let proxy_url = format!("http://127.0.0.1:{}", line.trim());
    openai_job(&s, &up);
    // The launcher's environment names the proxy (both spellings, as a CI runner's does); the
    // workload inherits it and calls the broker with curl, which honours it too.
    let mut cmd = s.cmd(&["run", "--spec", "job.toml", "--broker-ca-file"]);
    cmd.arg(&ca)
        .env("HTTPS_PROXY", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .args([
            "--",
            "sh",
            "-c",
            "curl -sf \"$OPENAI_BASE_URL/models\" && echo \" no_proxy=$no_proxy\"",
        ]);
    let out = crate::support::run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("{\"ok\": true} no_proxy=127.0.0.1,localhost"),
        "{}",
        out.stdout
    );
    let through = std::fs::read_to_string(&proxy_log).unwrap_or_default();
    assert_eq!(
        through.lines().collect::<Vec<_>>(),
        vec![format!("CONNECT 127.0.0.1:{} HTTP/1.1", up.port)],
        "the broker's upstream connection goes through the proxy, the workload's call to the \
         broker does not"
    );
    assert_eq!(auth_seen(&up, "/v1/models"), vec![format!("Bearer {key}")]);
}

#[test]
fn a_revoked_token_stops_the_broker_at_once_and_the_workload_keeps_running() {
    let key = format!("sk-{}", unique_canary("broker-revoked"));
    let (s, ca, up, _other) = setup(&[]);
    let (server, rt, api, alice, minted) = server_with_openai(&s, &key);
    openai_job(&s, &up);
    let workload_token = minted["token"].as_str().unwrap().to_owned();
    let mut run = launch_env(
        &s,
        &[("SECRETFS_TOKEN", &workload_token)],
        &[
            "--spec",
            "job.toml",
            "--broker-ca-file",
            ca.to_str().unwrap(),
            "--url",
            &server.url,
        ],
        &[
            "sh",
            "-c",
            "echo \"$OPENAI_BASE_URL\" > base.tmp && mv base.tmp base; exec sleep 600",
        ],
    );
    wait_for(&s, "base", &run);
    let base = read(&s, "base").trim().to_owned();
    assert_eq!(curl(&[&format!("{base}/models")]).0, 200);
    // Revoked: the follower's long-poll is refused, and the broker with it, at once.
    let id = minted["id"].as_str().unwrap();
    let (status, _) =
        rt.block_on(api.call("DELETE", &format!("/api/v1/tokens/{id}"), &alice, None));
    assert!((200..300).contains(&status), "{status}");
    let mut last = (0, String::new());
    assert!(
        eventually(10, || {
            last = curl(&[&format!("{base}/models")]);
            last.0 == 401
        }),
        "{last:?}; stderr: {}",
        read(&s, "run.err")
    );
    assert!(
        last.1.contains("refused the launcher's credential"),
        "{last:?}"
    );
    assert!(
        run.try_wait().unwrap().is_none(),
        "the workload must keep running"
    );
}
