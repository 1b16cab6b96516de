//! `secretfs node`, the node agent's CSI surface, driven by an independent kubelet stand-in: a
//! Python `grpcio` client whose stubs `grpcio-tools` generates, in the test, from the same
//! `proto/csi.proto` the agent is built from (`node_csi.py`).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::{Running, Scratch, bin, eventually, tools_python, unique_canary};

/// The server URL the agent is given, and so the audience of the pod tokens it takes.
const AUDIENCE: &str = "https://secrets.example.com";

fn agent(s: &Scratch, socket: &Path) -> (Running, std::path::PathBuf) {
    let log = s.path().join("node.log");
    let child = Running::spawn(
        "secretfs node",
        Command::new(bin())
            .args([
                "node",
                "--node-id",
                "node-7",
                "--url",
                AUDIENCE,
                "--kubelet-dir",
            ])
            .arg(s.path().join("kubelet"))
            .arg("--csi-socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(s.path().join("state"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit()),
    );
    // Ready once it says so (a stale socket may be there before it binds its own).
    assert!(
        eventually(10, || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("serving CSI on"))),
        "the agent did not bind {}",
        socket.display()
    );
    (child, log)
}

mod provider;
mod publish;
mod restart;

/// The stubs, generated from the vendored protos (the CSI spec's, the Secrets Store CSI driver's
/// provider service) into `dir/stubs` (its google/protobuf imports are
/// grpcio-tools' own).
pub(crate) fn stubs(python: &Path, dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stubs = dir.join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let out = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args(["csi.proto", "service.proto"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stubs
}

#[test]
fn a_kubelet_stand_in_registers_the_plugin_over_its_root_only_socket() {
    let Some(python) = tools_python(
        "a_kubelet_stand_in_registers_the_plugin_over_its_root_only_socket",
        "grpc_tools",
    ) else {
        return;
    };
    let s = Scratch::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stubs = stubs(&python, s.path());

    let socket = s.path().join("plugins/secrets.secretfs.dev/csi.sock");
    // A stale socket a killed agent left is replaced.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (mut child, log) = agent(&s, &socket);
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "root-only");

    let canary = unique_canary("pod-token");
    let stand_in = Command::new(&python)
        .arg(root.join("tests/it/node_csi.py"))
        .arg(&socket)
        .arg(&stubs)
        .arg(s.path().join("kubelet"))
        .arg(AUDIENCE)
        .arg(&canary)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        stand_in.status.success(),
        "{}",
        String::from_utf8_lossy(&stand_in.stderr)
    );
    let got: Value = serde_json::from_slice(&stand_in.stdout).unwrap();
    assert_eq!(got["name"], "secrets.secretfs.dev");
    assert_eq!(got["vendor_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(got["ready"], true);
    assert_eq!(got["node_id"], "node-7");
    assert_eq!(got["plugin_capabilities"], 0, "a node plugin only");
    assert_eq!(got["node_capabilities"], 0, "no staging for inline volumes");
    // A token that is not a pod's (no pod claim to tie it to the target path) is refused
    // before any exchange.
    assert_eq!(got["publish"]["code"], "INVALID_ARGUMENT", "{got}");
    assert!(
        got["publish"]["message"]
            .as_str()
            .unwrap()
            .contains("names no pod"),
        "{got}"
    );
    // A wrong one is refused with every problem named, for `kubectl describe pod`.
    assert_eq!(got["bad_publish"]["code"], "INVALID_ARGUMENT", "{got}");
    let problems = got["bad_publish"]["message"].as_str().unwrap();
    for word in ["not under the kubelet directory", "9bad", "mode"] {
        assert!(problems.contains(word), "{word}: {problems}");
    }
    // Unpublishing what is not published is OK (idempotent, as the spec has it); a path outside
    // the kubelet's directory is refused.
    assert_eq!(got["unpublish"]["code"], "OK", "{got}");
    assert_eq!(got["bad_unpublish"]["code"], "INVALID_ARGUMENT", "{got}");
    assert!(
        !got.to_string().contains(&canary),
        "the pod's token reached an answer: {got}"
    );

    // Another user of the node cannot reach it (the socket's mode, checked by the kernel).
    let other = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&python)
        .args([
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );

    // A second agent on the same socket is refused while the first serves it.
    let second = Command::new(bin())
        .args(["node", "--url", AUDIENCE, "--csi-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("served by another process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // A path that holds anything but a socket is left alone: the agent runs as root, and a
    // mistyped --csi-socket must not delete a file.
    let file = s.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let refused = Command::new(bin())
        .args(["node", "--url", AUDIENCE, "--csi-socket"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a socket"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // SIGTERM (a DaemonSet rollout): the agent ends and takes its socket with it.
    let status = child.signal_and_wait(Signal::SIGTERM, std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "the socket outlived the agent");
    let printed = std::fs::read_to_string(log).unwrap();
    assert!(printed.contains("serving CSI on"), "{printed}");
    assert!(!printed.contains(&canary), "{printed}");
}
