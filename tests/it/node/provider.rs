//! The node agent as a Secrets Store CSI driver provider, driven by an independent stand-in of
//! the driver (`driver.py`, stubs from the same `proto/service.proto`), which also applies the
//! driver's file rules to every answer.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::publish::Node;
use crate::support::{assert_no_canary, unique_canary};

/// A SecretProviderClass's parameters, as the driver merges them with the pod's info and token
/// (the kubelet's attributes, and the driver's own).
fn attributes(n: &Node, pod: &str, token: &str, params: &[(&str, &str)]) -> Value {
    let mut a = n.context(pod, token, params);
    a["secretProviderClass"] = json!("ml-secrets");
    a["csi.storage.k8s.io/serviceAccount.name"] = json!("trainer");
    a
}

/// Runs `calls` through the driver stand-in.
fn driver(n: &Node, calls: Vec<Value>) -> Vec<Value> {
    let mut child = Command::new(&n.python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/node/driver.py"))
        .arg(n.w.s.path().join("providers/secretfs.sock"))
        .arg(&n.stubs)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        Value::Array(calls).to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mount(n: &Node, pod: &str, attrs: Value, current: &Value) -> Value {
    json!({
        "attributes": attrs,
        "target_path": n.kubelet.join("pods").join(pod).join("volumes/kubernetes.io~csi/secrets-store-inline/mount"),
        "permission": "420",
        "current_object_version": current,
    })
}

const FILES: &str = r#"[files."hf.json"]
text = """{"token": {{ secret "HF_TOKEN" | json }}}"""
"#;

#[test]
fn the_secrets_store_driver_gets_its_files_from_the_identitys_cache() {
    let Some(n) = Node::start("the_secrets_store_driver_gets_its_files_from_the_identitys_cache")
    else {
        return;
    };
    let socket = n.w.s.path().join("providers/secretfs.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "root-only");
    n.bind("trainers", "ml", "trainer", &["HF_TOKEN", "SHARED"]);
    let token = n.pod_token("ml", "trainer", "pod-p");
    let params = [("secrets", "HF_TOKEN,SHARED"), ("files", FILES)];
    // One driver poll of pod p's volume, saying which versions it holds.
    let poll = |current: &Value| {
        driver(
            &n,
            vec![mount(
                &n,
                "pod-p",
                attributes(&n, "pod-p", &token, &params),
                current,
            )],
        )
        .remove(0)
    };
    let first = poll(&json!([]));
    assert_eq!(first["code"], "OK", "{first}\n{}", n.logs());
    assert_eq!(first["version"]["runtime_name"], "secretfs");
    assert_eq!(first["rules_broken"], json!([]), "{first}");
    let files = &first["files"];
    assert_eq!(files["HF_TOKEN"]["contents"], "hf_identity_value");
    assert_eq!(files["SHARED"]["contents"], "shared-value");
    assert_eq!(
        files["hf.json"]["contents"],
        "{\"token\": \"hf_identity_value\"}"
    );
    // The driver's permission (0644) with its read bits only.
    assert_eq!(files["HF_TOKEN"]["mode"], 0o444);
    assert_eq!(files.as_object().unwrap().len(), 3);
    let versions = first["object_version"].clone();
    assert_eq!(versions.as_array().unwrap().len(), 2, "{versions}");
    assert!(
        versions[0][0].as_str().unwrap().ends_with("/HF_TOKEN"),
        "{versions}"
    );
    let served = n.metric("workload_secrets_total{result=\"served\"}");
    let exchanged = n.exchanges();

    // The driver's rotation poll with the versions it holds: answered from the identity's
    // cache, no exchange (same token) and nothing read from the server.
    let again = poll(&versions);
    assert_eq!(again["code"], "OK", "{again}");
    assert_eq!(again["object_version"], versions);
    assert_eq!(
        n.metric("workload_secrets_total{result=\"served\"}"),
        served
    );
    assert_eq!(n.exchanges(), exchanged);

    // A rotation: the cache's long-poll brings it (one value read), and the next poll answers
    // the new version.
    let rotated = unique_canary("provider-rotated");
    n.set_value("HF_TOKEN", &rotated);
    assert!(
        crate::support::eventually(5, || n.metric("workload_secrets_total{result=\"served\"}")
            == served + 1.0),
        "the rotation was not read once"
    );
    let after = poll(&versions);
    assert_eq!(after["files"]["HF_TOKEN"]["contents"], rotated.as_str());
    assert_ne!(after["object_version"][0], versions[0]);
    assert_eq!(
        after["object_version"][1], versions[1],
        "SHARED did not change"
    );

    // Refusals name the problem: a secret the binding does not grant, another pod's token,
    // parameters that are not strings, a template read from the node.
    let other = n.pod_token("ml", "trainer", "pod-q");
    let results = driver(
        &n,
        vec![
            mount(
                &n,
                "pod-p",
                attributes(&n, "pod-p", &token, &[("secrets", "OPENAI_API_KEY")]),
                &json!([]),
            ),
            mount(
                &n,
                "pod-p",
                attributes(&n, "pod-p", &other, &params),
                &json!([]),
            ),
            mount(&n, "pod-p", json!({"secrets": ["HF_TOKEN"]}), &json!([])),
            mount(
                &n,
                "pod-p",
                attributes(
                    &n,
                    "pod-p",
                    &token,
                    &[
                        ("secrets", "HF_TOKEN"),
                        ("files", "[files.x]\ntemplate = \"/etc/shadow\"\n"),
                    ],
                ),
                &json!([]),
            ),
        ],
    );
    let expect = [
        ("FAILED_PRECONDITION", "not granted"),
        ("INVALID_ARGUMENT", "its own pod's volumes"),
        ("INVALID_ARGUMENT", "JSON object of strings"),
        ("INVALID_ARGUMENT", "given inline"),
    ];
    for (r, (code, words)) in results.iter().zip(expect) {
        assert_eq!(r["code"], code, "{r}");
        assert!(r["message"].as_str().unwrap().contains(words), "{r}");
    }
    let printed = n.logs();
    for secret in [token.as_str(), &other, &rotated, "hf_identity_value"] {
        assert!(
            !printed.contains(secret),
            "a secret reached the agent's log"
        );
    }
    assert_no_canary("the agent's log", printed.as_bytes());
}
