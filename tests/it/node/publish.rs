//! The node agent publishing volumes for pods: a real `secretfs serve`, the PyJWT issuer of the
//! identity tests minting projected-style pod tokens, the agent on its socket, and the kubelet
//! stand-in (`kubelet.py`, stubs from the same `proto/csi.proto`) calling it. A pod's container
//! is a non-root process in a mount namespace of its own reading the target path as its uid.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{Running, assert_no_canary, bin, eventually, fuse_available, unique_canary};
use crate::workload_identity::{World, add, identity, world, world_tls};

/// The agent, its kubelet stand-in and the world it serves.
pub(super) struct Node {
    pub(super) w: World,
    pub(super) python: PathBuf,
    pub(super) stubs: PathBuf,
    socket: PathBuf,
    pub(super) kubelet: PathBuf,
    pub(super) agent: Running,
    log: PathBuf,
}

impl Node {
    pub(super) fn start(test: &str) -> Option<Node> {
        Self::start_on(test, false)
    }

    /// With `tls`, the server serves TLS with a certificate of a private CA, which the agent
    /// trusts with `--ca-file`.
    pub(super) fn start_on(test: &str, tls: bool) -> Option<Node> {
        if !fuse_available(test) {
            return None;
        }
        let args = ["--metrics-listen", "127.0.0.1:0"];
        let w = if tls {
            world_tls(test, &args)?
        } else {
            world(test, &args)?
        };
        let python = crate::support::tools_python(test, "grpc_tools")?;
        let stubs = super::stubs(&python, w.s.path());
        let kubelet = w.s.path().join("kubelet");
        std::fs::create_dir_all(kubelet.join("pods")).unwrap();
        // A node's kubelet directory is a shared mount (what lets a volume mounted there reach
        // the containers that see it with HostToContainer propagation).
        use nix::mount::{MsFlags, mount};
        mount(
            Some(&kubelet),
            &kubelet,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        mount(
            None::<&str>,
            &kubelet,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        let socket = kubelet.join("plugins/secrets.secretfs.dev/csi.sock");
        let log = w.s.path().join("node.log");
        let agent = spawn_agent(&w, &kubelet, &socket, &log, true);
        Some(Node {
            w,
            python,
            stubs,
            socket,
            kubelet,
            agent,
            log,
        })
    }

    /// The agent started again, as a DaemonSet restarts it (same socket, same state directory).
    pub(super) fn restart(&mut self) {
        self.agent = spawn_agent(&self.w, &self.kubelet, &self.socket, &self.log, true);
    }

    pub(super) fn state_file(&self) -> PathBuf {
        self.w.s.path().join("state/volumes.json")
    }

    /// Binds pods of service account `sa` in namespace `ns` to alice's `secrets`.
    pub(super) fn bind(&self, name: &str, ns: &str, sa: &str, secrets: &[&str]) {
        let subject = format!("system:serviceaccount:{ns}:{sa}");
        let mut rest = vec!["--user", "alice"];
        for s in secrets {
            rest.extend(["-s", s]);
        }
        let out = add(
            &self.w.s,
            &self.w.server,
            name,
            &self.w.issuer.url,
            &self.w.server.url,
            &subject,
            &rest,
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }

    /// A projected service-account token of pod `uid`, for the agent's audience (the server URL).
    pub(super) fn pod_token(&self, ns: &str, sa: &str, uid: &str) -> String {
        self.mint_pod_token(ns, sa, uid, 0)
    }

    /// The same, issued `ago` seconds ago for ten minutes (past 600: expired).
    pub(super) fn mint_pod_token(&self, ns: &str, sa: &str, uid: &str, ago: i64) -> String {
        self.w.issuer.mint(json!({
            "ttl": 600,
            "iat_offset": -ago,
            "claims": {
                "sub": format!("system:serviceaccount:{ns}:{sa}"),
                "aud": [self.w.server.url],
                "kubernetes.io": {
                    "namespace": ns,
                    "pod": {"name": format!("pod-{uid}"), "uid": uid},
                    "serviceaccount": {"name": sa, "uid": "5a1f0c3e-0000-4000-8000-000000000002"},
                },
            },
        }))
    }

    /// Gives alice's secret `name` a new value, through the API.
    pub(super) fn set_value(&self, name: &str, value: &str) {
        let (status, v) = self.w.rt.block_on(self.w.api.call(
            "PATCH",
            &format!("/api/v1/workspaces/default/secrets/{name}"),
            &self.w.alice,
            Some(json!({ "value": value })),
        ));
        assert_eq!(status, 200, "{v}");
    }

    pub(super) fn target(&self, pod: &str) -> PathBuf {
        self.kubelet
            .join("pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi/secrets/mount")
    }

    /// The volume attributes the kubelet sends for pod `uid` with `token`.
    pub(super) fn context(&self, uid: &str, token: &str, attrs: &[(&str, &str)]) -> Value {
        let mut c = json!({
            "csi.storage.k8s.io/pod.name": format!("pod-{uid}"),
            "csi.storage.k8s.io/pod.namespace": "ml",
            "csi.storage.k8s.io/pod.uid": uid,
            "csi.storage.k8s.io/ephemeral": "true",
            "csi.storage.k8s.io/serviceAccount.tokens":
                json!({ &self.w.server.url: {"token": token, "expirationTimestamp": "2026-12-07T13:00:00Z"} }).to_string(),
        });
        for (k, v) in attrs {
            c[*k] = json!(v);
        }
        c
    }

    pub(super) fn publish(&self, volume: &str, target: &Path, context: Value) -> Value {
        json!({"op": "publish", "volume_id": volume, "target_path": target, "volume_context": context})
    }

    pub(super) fn unpublish(&self, volume: &str, target: &Path) -> Value {
        json!({"op": "unpublish", "volume_id": volume, "target_path": target})
    }

    /// Starts the kubelet stand-in on `calls`; [`results`] reads its answers.
    pub(super) fn kubelet_start(&self, concurrent: bool, calls: Vec<Value>) -> std::process::Child {
        let mut child = Command::new(&self.python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/node/kubelet.py"))
            .arg(&self.socket)
            .arg(&self.stubs)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = json!({"concurrent": concurrent, "calls": calls}).to_string();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        child
    }

    /// Runs `calls` through the kubelet stand-in; one result per call.
    pub(super) fn kubelet(&self, concurrent: bool, calls: Vec<Value>) -> Vec<Value> {
        results(self.kubelet_start(concurrent, calls))
    }

    /// What the agent printed.
    pub(super) fn logs(&self) -> String {
        let mut printed = std::fs::read_to_string(&self.log).unwrap();
        printed.push_str(&std::fs::read_to_string(self.w.s.path().join("node.err")).unwrap());
        printed
    }

    pub(super) fn one(&self, call: Value) -> Value {
        self.kubelet(false, vec![call]).remove(0)
    }

    /// The agent's `/metrics`, read by prometheus_client: `secretfs_node_NAME` with `labels`.
    pub(super) fn agent_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let logs = self.logs();
        let ready = logs
            .lines()
            .rfind(|l| l.contains("serving CSI on"))
            .unwrap();
        let url = ready
            .split_whitespace()
            .find(|w| w.ends_with("/metrics"))
            .unwrap_or_else(|| panic!("no metrics address in {ready:?}"));
        let text = self
            .w
            .rt
            .block_on(async { reqwest::get(url).await?.text().await })
            .unwrap();
        let parsed = crate::operators::parse_metrics(&self.python, &text);
        crate::operators::sample(&parsed, &format!("secretfs_node_{name}"), labels)
    }

    /// A sample of the server's `/metrics` (`secretfs_NAME`, with its labels as written).
    pub(super) fn metric(&self, name: &str) -> f64 {
        self.w.rt.block_on(self.w.server.metric(name))
    }

    pub(super) fn exchanges(&self) -> usize {
        self.w
            .audit()
            .iter()
            .filter(|a| a["action"] == "identity-exchange")
            .count()
    }
}

impl Drop for Node {
    /// The kubelet directory's mounts go with the test (the shared bind and every volume under
    /// it, live or dead).
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.kubelet, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A pod's container: a process in a mount namespace of its own (its mounts slaves of the
/// node's, as HostToContainer makes them) that sees the volume at `/ctr` as a bind mount made
/// when it started, as the container runtime makes it; stopped when dropped.
pub(super) struct Container {
    process: Running,
    pub(super) at: PathBuf,
}

impl Container {
    pub(super) fn start(target: &Path, at: &Path) -> Container {
        std::fs::create_dir_all(at).unwrap();
        let ready = at.with_extension("ready");
        let process = Running::spawn(
            "a container",
            Command::new("unshare")
                .args(["--mount", "--propagation", "slave", "sh", "-c"])
                .arg(r#"mount --bind "$1" "$2" && touch "$3" && exec sleep 600"#)
                .args(["sh"])
                .args([target, at, &ready])
                .stdin(Stdio::null()),
        );
        assert!(
            eventually(10, || ready.exists()),
            "the container did not start"
        );
        Container {
            process,
            at: at.to_owned(),
        }
    }

    /// `cat` of `name` in the container's view, as uid 1000, within five seconds.
    pub(super) fn read(&self, name: &str) -> Result<String, String> {
        let out = Command::new("timeout")
            .args(["5", "nsenter", "-t"])
            .arg(self.process.pid().to_string())
            .args([
                "-m",
                "setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "cat",
            ])
            .arg(self.at.join(name))
            .output()
            .unwrap();
        if out.status.code() == Some(124) {
            return Err("hung".into());
        }
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// `secretfs node` for `w`'s server, its output in `log` (and `node.err` beside it), appended
/// to across restarts; ready once it says so.
/// The agent on `socket`; `trusting`: given `--ca-file` when the server has a private CA.
fn spawn_agent(w: &World, kubelet: &Path, socket: &Path, log: &Path, trusting: bool) -> Running {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    let before = std::fs::read_to_string(log).map_or(0, |l| l.matches("serving CSI on").count());
    let agent = Running::spawn(
        "secretfs node",
        Command::new(bin())
            .args(["node", "--node-id", "node-1", "--url", &w.server.url])
            .arg("--kubelet-dir")
            .arg(kubelet)
            .arg("--csi-socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(w.s.path().join("state"))
            .arg("--providers-dir")
            .arg(w.s.path().join("providers"))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(
                w.server
                    .ca
                    .iter()
                    .filter(|_| trusting)
                    .flat_map(|ca| [Path::new("--ca-file"), ca]),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(open(log))
            .stderr(open(&w.s.path().join("node.err"))),
    );
    assert!(
        eventually(20, || std::fs::read_to_string(log)
            .is_ok_and(|l| l.matches("serving CSI on").count() > before)),
        "the agent did not start"
    );
    agent
}

/// The kubelet stand-in's answers, one per call.
pub(super) fn results(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// What a pod's container sees: `cmd` run as `uid` in a mount namespace of its own.
pub(super) fn as_pod(uid: u32, cmd: &[&str]) -> Result<String, String> {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(cmd)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub(super) fn listing(uid: u32, dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = as_pod(uid, &["ls", "-A", dir.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// The id of the mount at `dir` (mountinfo's first field), if one is there.
pub(super) fn mount_id(dir: &Path) -> Option<String> {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir))
        .map(|l| l.split(' ').next().unwrap().to_owned())
}

pub(super) fn ok(r: &Value) {
    assert_eq!(r["code"], "OK", "{r}");
}

pub(super) fn refused(r: &Value, code: &str, words: &[&str]) {
    assert_eq!(r["code"], code, "{r}");
    let message = r["message"].as_str().unwrap();
    for w in words {
        assert!(message.contains(w), "{w:?} not in {message:?}");
    }
}

/// A volume's `files` attribute: a `[files]` table, its template inline.
const FILES: &str = r#"[files."hf.json"]
text = """{"token": {{ secret "HF_TOKEN" | json }}}
"""
"#;

#[test]
fn pods_of_two_identities_read_only_their_own_secrets_through_one_watch_each() {
    let Some(mut n) =
        Node::start("pods_of_two_identities_read_only_their_own_secrets_through_one_watch_each")
    else {
        return;
    };
    n.bind("trainers", "ml", "trainer", &["HF_TOKEN", "SHARED"]);
    n.bind("frontends", "web", "frontend", &["OPENAI_API_KEY"]);
    let (a, b, c) = (n.target("pod-a"), n.target("pod-b"), n.target("pod-c"));
    let token_a = n.pod_token("ml", "trainer", "pod-a");
    let token_b = n.pod_token("web", "frontend", "pod-b");
    let token_c = n.pod_token("ml", "trainer", "pod-c");
    let publish_a = |token: &str| {
        n.publish(
            "vol-a",
            &a,
            n.context(
                "pod-a",
                token,
                &[
                    ("secrets", "HF_TOKEN,SHARED"),
                    ("uid", "1000"),
                    ("mode", "0400"),
                ],
            ),
        )
    };
    let results = n.kubelet(
        true,
        vec![
            publish_a(&token_a),
            n.publish(
                "vol-b",
                &b,
                n.context(
                    "pod-b",
                    &token_b,
                    &[
                        ("secrets", "OPENAI_API_KEY"),
                        ("uid", "1001"),
                        ("mode", "0400"),
                    ],
                ),
            ),
            n.publish(
                "vol-c",
                &c,
                n.context(
                    "pod-c",
                    &token_c,
                    &[
                        ("secrets", "HF_TOKEN"),
                        ("uid", "1002"),
                        ("gid", "1002"),
                        ("mode", "0440"),
                        ("files", FILES),
                    ],
                ),
            ),
        ],
    );
    results.iter().for_each(ok);

    // One watch and one read of each value per identity, not per pod: pods a and c share
    // theirs (HF_TOKEN read once for both).
    assert!(
        eventually(5, || n.metric("long_polls_held") == 2.0),
        "{} long-polls held for 2 identities",
        n.metric("long_polls_held")
    );
    assert_eq!(n.metric("workload_secrets_total{result=\"served\"}"), 3.0);
    // The agent says the same of itself.
    assert_eq!(n.agent_metric("volumes", &[]), 3.0);
    assert_eq!(n.agent_metric("identities", &[]), 2.0);
    assert_eq!(n.agent_metric("publishes_total", &[("code", "OK")]), 3.0);
    assert_eq!(n.agent_metric("publish_seconds_count", &[]), 3.0);

    // Each pod sees exactly its volume's secrets, as its own uid; another uid is kept out by the
    // kernel (owner and mode).
    assert_eq!(listing(1000, &a), ["HF_TOKEN", "SHARED"]);
    assert_eq!(
        as_pod(1000, &["cat", a.join("HF_TOKEN").to_str().unwrap()]).unwrap(),
        "hf_identity_value"
    );
    assert_eq!(listing(1001, &b), ["OPENAI_API_KEY"]);
    // Pod c's volume renders a file from its secrets too, as `mount --files` does.
    assert_eq!(listing(1002, &c), ["HF_TOKEN", "hf.json"]);
    assert_eq!(
        as_pod(1002, &["cat", c.join("hf.json").to_str().unwrap()]).unwrap(),
        "{\"token\": \"hf_identity_value\"}\n"
    );
    let other = as_pod(1001, &["cat", a.join("HF_TOKEN").to_str().unwrap()]).unwrap_err();
    assert!(other.contains("Permission denied"), "{other}");
    let write = as_pod(
        1000,
        &["sh", "-c", &format!("echo x > {}/NEW", a.display())],
    )
    .unwrap_err();
    assert!(
        write.contains("Read-only file system") || write.contains("Permission denied"),
        "{write}"
    );

    // Refusals, each named for `kubectl describe pod`, and nothing mounted for any.
    let d = n.target("pod-d");
    let token_d = n.pod_token("web", "frontend", "pod-d");
    let stranger = n.pod_token("other", "nobody", "pod-e");
    let outside =
        n.w.s
            .path()
            .join("elsewhere/pods/pod-a/volumes/kubernetes.io~csi/s/mount");
    let results = n.kubelet(
        false,
        vec![
            // Not granted to the pod's binding.
            n.publish(
                "vol-d",
                &d,
                n.context("pod-d", &token_d, &[("secrets", "HF_TOKEN")]),
            ),
            // Pod A's token for pod B's volume.
            n.publish(
                "vol-x",
                &n.target("pod-b2"),
                n.context("pod-b2", &token_a, &[("secrets", "HF_TOKEN")]),
            ),
            // A token no binding admits.
            n.publish(
                "vol-e",
                &n.target("pod-e"),
                n.context("pod-e", &stranger, &[("secrets", "HF_TOKEN")]),
            ),
            // A target outside the kubelet's directory.
            n.publish(
                "vol-o",
                &outside,
                n.context("pod-a", &token_a, &[("secrets", "HF_TOKEN")]),
            ),
        ],
    );
    refused(
        &results[0],
        "FAILED_PRECONDITION",
        &["\"HF_TOKEN\"", "not granted", "frontends"],
    );
    refused(&results[1], "INVALID_ARGUMENT", &["its own pod's volumes"]);
    refused(
        &results[2],
        "PERMISSION_DENIED",
        &["refused the pod's token"],
    );
    refused(
        &results[3],
        "INVALID_ARGUMENT",
        &["not under the kubelet directory"],
    );
    for t in [&d, &n.target("pod-b2"), &n.target("pod-e"), &outside] {
        assert!(mount_id(t).is_none(), "{} was mounted", t.display());
    }

    // A rotation reaches both volumes of the identity.
    let rotated = unique_canary("node-rotated");
    n.set_value("HF_TOKEN", &rotated);
    let hf_json = c.join("hf.json");
    assert!(
        eventually(5, || as_pod(1002, &["cat", hf_json.to_str().unwrap()])
            .is_ok_and(|t| t.contains(&rotated))),
        "the rendered file did not follow the rotation"
    );
    for (uid, dir) in [(1000, &a), (1002, &c)] {
        let file = dir.join("HF_TOKEN");
        assert!(
            eventually(5, || as_pod(uid, &["cat", file.to_str().unwrap()])
                .as_deref()
                == Ok(rotated.as_str())),
            "{} did not rotate",
            file.display()
        );
    }

    // A republish with the same token exchanges nothing; with a fresh one it exchanges again
    // and keeps the same mount.
    let exchanged = n.exchanges();
    let mount_a = mount_id(&a).unwrap();
    ok(&n.one(publish_a(&token_a)));
    assert_eq!(
        n.exchanges(),
        exchanged,
        "a republish with the same token exchanged"
    );
    let fresh_a = n.pod_token("ml", "trainer", "pod-a");
    ok(&n.one(publish_a(&fresh_a)));
    assert_eq!(n.exchanges(), exchanged + 1);
    assert_eq!(mount_id(&a).as_deref(), Some(mount_a.as_str()), "remounted");
    // The same target asked for other secrets is refused, not silently changed.
    refused(
        &n.one(n.publish(
            "vol-a",
            &a,
            n.context("pod-a", &fresh_a, &[("secrets", "SHARED")]),
        )),
        "ALREADY_EXISTS",
        &["other attributes"],
    );

    // Pod c refused (its token expired) while pod a of the same identity is admitted: c leaves
    // the identity's cache and serves nothing, and a rotation the cache brings reaches a only.
    let expired_c = n.mint_pod_token("ml", "trainer", "pod-c", 3600);
    refused(
        &n.one(n.publish(
            "vol-c",
            &c,
            n.context(
                "pod-c",
                &expired_c,
                &[
                    ("secrets", "HF_TOKEN"),
                    ("uid", "1002"),
                    ("gid", "1002"),
                    ("mode", "0440"),
                    ("files", FILES),
                ],
            ),
        )),
        "PERMISSION_DENIED",
        &["refused the pod's token"],
    );
    assert!(listing(1002, &c).is_empty(), "{:?}", listing(1002, &c));
    let again = unique_canary("node-after-leave");
    n.set_value("HF_TOKEN", &again);
    let file_a = a.join("HF_TOKEN");
    assert!(
        eventually(5, || as_pod(1000, &["cat", file_a.to_str().unwrap()])
            .as_deref()
            == Ok(again.as_str())),
        "pod a stopped following"
    );
    assert!(
        listing(1002, &c).is_empty(),
        "a refused pod's volume was refilled"
    );

    // The binding removed: its volumes stop serving within a second or two through the
    // long-poll (its tokens are revoked), the other identity's keep serving, and the next
    // republish is refused.
    let out = identity(&n.w.s, &n.w.server, &["remove", "trainers"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        eventually(3, || listing(1000, &a).is_empty()
            && listing(1002, &c).is_empty()),
        "the removed binding's volumes still serve: {:?}",
        listing(1000, &a)
    );
    assert_eq!(listing(1001, &b), ["OPENAI_API_KEY"]);

    // The binding added again under the same name while pod a's volume still belongs to the
    // refused cache: a new pod of it is served at once (with what the server holds now), and
    // so is pod a again.
    n.bind("trainers", "ml", "trainer", &["HF_TOKEN", "SHARED"]);
    let f = n.target("pod-f");
    let token_f = n.pod_token("ml", "trainer", "pod-f");
    ok(&n.one(n.publish(
        "vol-f",
        &f,
        n.context(
            "pod-f",
            &token_f,
            &[("secrets", "HF_TOKEN"), ("uid", "1000")],
        ),
    )));
    assert_eq!(
        as_pod(1000, &["cat", f.join("HF_TOKEN").to_str().unwrap()]).as_deref(),
        Ok(again.as_str())
    );
    assert_eq!(listing(1000, &a), ["HF_TOKEN", "SHARED"]);

    // Removed again: the next republish is refused; added back, the one after serves.
    let out = identity(&n.w.s, &n.w.server, &["remove", "trainers"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(eventually(3, || listing(1000, &a).is_empty()));
    refused(
        &n.one(publish_a(&fresh_a)),
        "PERMISSION_DENIED",
        &["refused the pod's token"],
    );
    n.bind("trainers", "ml", "trainer", &["HF_TOKEN", "SHARED"]);
    ok(&n.one(publish_a(&n.pod_token("ml", "trainer", "pod-a"))));
    assert_eq!(listing(1000, &a), ["HF_TOKEN", "SHARED"]);

    // Unpublish: unmounted and the directory gone; again: still OK.
    let results = n.kubelet(
        false,
        vec![
            n.unpublish("vol-a", &a),
            n.unpublish("vol-b", &b),
            n.unpublish("vol-c", &c),
            n.unpublish("vol-f", &f),
            n.unpublish("vol-a", &a),
        ],
    );
    for r in &results {
        assert_eq!(r["code"], "OK", "{r}\n{}", n.logs());
    }
    assert_eq!(n.agent_metric("volumes", &[]), 0.0);
    assert_eq!(n.agent_metric("identities", &[]), 0.0);
    assert!(n.agent_metric("publishes_total", &[("code", "PermissionDenied")]) >= 2.0);
    for t in [&a, &b, &c, &f] {
        assert!(mount_id(t).is_none(), "{} still mounted", t.display());
        assert!(!t.exists(), "{} left behind", t.display());
    }

    let status = n
        .agent
        .signal_and_wait(Signal::SIGTERM, std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // Neither a value nor a pod token reached the agent's output.
    let mut printed = std::fs::read(&n.log).unwrap();
    printed.extend(std::fs::read(n.w.s.path().join("node.err")).unwrap());
    assert!(String::from_utf8_lossy(&printed).contains("volume published"));
    for secret in [
        rotated.as_str(),
        again.as_str(),
        &expired_c,
        &token_f,
        "hf_identity_value",
        "sk-identity-value",
        &token_a,
        &fresh_a,
        &token_b,
    ] {
        assert!(
            !String::from_utf8_lossy(&printed).contains(secret),
            "a secret reached the agent's log"
        );
    }
    assert_no_canary("the agent's log", &printed);
}

/// The production shape: the server on TLS with a certificate of a private CA. The agent given
/// `--ca-file` exchanges, reads and holds its long-poll over TLS (a rotation arrives); an agent
/// without it is stopped by the certificate check, and the kubelet is told why.
#[test]
fn an_agent_reaches_a_tls_server_through_its_private_ca() {
    let Some(mut n) = Node::start_on("an_agent_reaches_a_tls_server_through_its_private_ca", true)
    else {
        return;
    };
    assert!(n.w.server.url.starts_with("https://"), "{}", n.w.server.url);
    n.bind("trainers", "ml", "trainer", &["HF_TOKEN"]);
    let a = n.target("pod-a");
    let token_a = n.pod_token("ml", "trainer", "pod-a");
    let attrs = [("secrets", "HF_TOKEN"), ("uid", "1000"), ("mode", "0400")];
    ok(&n.one(n.publish("vol-a", &a, n.context("pod-a", &token_a, &attrs))));
    let file = a.join("HF_TOKEN");
    assert_eq!(
        as_pod(1000, &["cat", file.to_str().unwrap()]).as_deref(),
        Ok("hf_identity_value")
    );
    n.set_value("HF_TOKEN", "hf_rotated_over_tls");
    assert!(
        eventually(5, || as_pod(1000, &["cat", file.to_str().unwrap()])
            .is_ok_and(|t| t == "hf_rotated_over_tls")),
        "the rotation did not arrive over TLS"
    );

    // The same node's agent, restarted without the CA: the pod's token is never sent.
    let status = n
        .agent
        .signal_and_wait(Signal::SIGTERM, std::time::Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    n.agent = spawn_agent(&n.w, &n.kubelet, &n.socket, &n.log, false);
    let b = n.target("pod-b");
    let token_b = n.pod_token("ml", "trainer", "pod-b");
    let answer = n.one(n.publish("vol-b", &b, n.context("pod-b", &token_b, &attrs)));
    refused(&answer, "UNAVAILABLE", &["certificate"]);
    assert_eq!(n.exchanges(), 1, "an exchange got through without the CA");
    ok(&n.one(n.unpublish("vol-a", &a)));
}
