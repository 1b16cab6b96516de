"""Checks the container examples against the binary and the images they run.

usage: check_examples.py SECRETFS_BINARY      (run from the repository root)

For every container in examples/docker-compose.yml and examples/kubernetes/*.yaml: the argv it
runs (image entrypoint and command, as Compose or Kubernetes combine them) must start with the
secretfs binary where the image puts it; its subcommand must exist and every flag must appear in
that subcommand's --help; every path it reads (token files, secret directories, job specs, the
workload script) must be in the image layout (from the Dockerfiles) or under one of the
container's mounts; a FUSE mount must be made under a volume that propagates out of the sidecar,
and the app must receive it with propagation into its namespace. Exits 1 with every problem.
"""
import glob
import json
import shlex
import subprocess
import sys
import tomllib

import yaml

BIN = sys.argv[1]
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def help_text(*sub):
    out = subprocess.run([BIN, *sub, "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return out.stdout


# ---- images, from their Dockerfiles ----------------------------------------------------------


def dockerfile_stages(path):
    """The stages of a Dockerfile: a list of (from, [(instruction, text)])."""
    stages = []
    lines = open(path).read().replace("\\\n", " ").splitlines()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append((rest.split()[0], []))
        else:
            stages[-1][1].append((instr, rest.strip()))
    return stages


def layout(path, base=None):
    """What the last stage of a Dockerfile provides: files and directories, entrypoint, cmd."""
    stages = dockerfile_stages(path)
    image = {"paths": set(base["paths"]) if base else set(), "entrypoint": [], "cmd": [],
             "workdir": "/", "env": {}}
    for instr, rest in stages[-1][1]:
        if instr == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            dest = words[-1]
            sources = words[:-1]
            if dest.endswith("/"):
                for s in sources:
                    image["paths"].add(dest + s.rstrip("/").split("/")[-1])
            else:
                image["paths"].add(dest)
        elif instr == "WORKDIR":
            image["workdir"] = rest
            image["paths"].add(rest)
        elif instr == "RUN":
            words = shlex.split(rest)
            for i, w in enumerate(words):
                if w == "install" and "-d" in words[i:i + 8]:
                    # `install -d [-o U -g G -m M] DIR`: the directory is the first non-option
                    # word after the options.
                    j = i + 1
                    while j < len(words) and words[j].startswith("-"):
                        j += 2 if words[j] in ("-o", "-g", "-m") else 1
                    if j < len(words):
                        image["paths"].add(words[j])
        elif instr == "ENTRYPOINT":
            image["entrypoint"] = json.loads(rest)
            image["cmd"] = []
        elif instr == "CMD":
            image["cmd"] = json.loads(rest)
        elif instr == "ENV":
            k, _, v = rest.partition("=")
            image["env"][k] = v
    return image


base = layout("Dockerfile")
app = layout("examples/app.Dockerfile")
IMAGES = {"secretfs:0.1.0": base, "secretfs-app:0.1.0": app}
for name, image in IMAGES.items():
    if "/usr/local/bin/secretfs" not in image["paths"]:
        problem(name, "the image has no /usr/local/bin/secretfs")


def in_image(image, path):
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in image["paths"])


# ---- containers, from the examples ---------------------------------------------------------


NODE_DRIVERS = ("secrets.secretfs.dev", "secrets-store.csi.k8s.io")


def containers():
    """(where, image, argv, env, mounts) for every container; mounts: {target: propagation}."""
    compose = yaml.safe_load(open("examples/docker-compose.yml"))
    for name, svc in compose["services"].items():
        image = svc["image"]
        img = IMAGES.get(image)
        entry = svc.get("entrypoint", img["entrypoint"] if img else [])
        cmd = svc.get("command", img["cmd"] if "entrypoint" not in svc and img else [])
        mounts = {}
        for v in svc.get("volumes", []):
            if isinstance(v, str):
                parts = v.split(":")
                mounts[parts[1]] = ("volume", parts[0], None)
            else:
                prop = (v.get("bind") or {}).get("propagation")
                mounts[v["target"]] = (v["type"], v["source"], prop)
        yield f"compose {name}", image, list(entry) + list(cmd), {}, mounts, svc
    for path in sorted(glob.glob("examples/kubernetes/*.yaml")):
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
        for doc in docs:
            if doc["kind"] == "Pod":
                spec = doc["spec"]
            elif doc["kind"] == "DaemonSet":
                spec = doc["spec"]["template"]["spec"]
            else:
                continue
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                img = IMAGES.get(c["image"])
                if img is None and doc["kind"] == "DaemonSet":
                    continue  # a third party's (the node-driver-registrar): not ours to check
                entry = c.get("command", img["entrypoint"] if img else [])
                args = c.get("args", img["cmd"] if "command" not in c and img else [])
                env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
                mounts = {}
                files = {}
                for m in c.get("volumeMounts", []):
                    vol = volumes[m["volumeName"] if "volumeName" in m else m["name"]]
                    # A csi: volume of a node's driver: the kubelet mounts it before the
                    # container starts, filled by the node agent (or the Secrets Store driver).
                    kind = "node" if vol.get("csi", {}).get("driver") in NODE_DRIVERS else "k8s"
                    mounts[m["mountPath"]] = (kind, m["name"], m.get("mountPropagation"))
                    if "configMap" in vol:
                        # A ConfigMap made elsewhere (the server's CA) holds no file checked here.
                        for key, text in configmaps.get(vol["configMap"]["name"], {}).items():
                            files[f'{m["mountPath"]}/{key}'] = text
                yield (f"{path} {doc['metadata']['name']}/{c['name']}", c["image"],
                       list(entry) + list(args), env, mounts, files)


def under_mount(mounts, path):
    for target, info in mounts.items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return target, info
    return None, None


checked = 0
sidecar_volumes = {}
app_volumes = {}
node_volumes = {}
for where, image_name, argv, env, mounts, extra in containers():
    checked += 1
    image = IMAGES.get(image_name)
    if image is None:
        problem(where, f"image {image_name} is built by no Dockerfile here")
        continue
    if not argv or argv[0] != "secretfs":
        problem(where, f"runs {argv[:1]}, not secretfs")
        continue
    if not in_image(image, "/usr/local/bin/secretfs"):
        problem(where, "secretfs is not in the image")
    sub = argv[1] if len(argv) > 1 else None
    top = help_text()
    if sub is None or top is None or f"  {sub} " not in top:
        problem(where, f"secretfs has no subcommand {sub!r}")
        continue
    text = help_text(sub) if sub != "run" else subprocess.run(
        [BIN, "run", "--help"], capture_output=True, text=True).stdout
    rest = argv[2:]
    workload = []
    if "--" in rest:
        i = rest.index("--")
        rest, workload = rest[:i], rest[i + 1:]
    flags = {}
    positional = []
    i = 0
    while i < len(rest):
        w = rest[i]
        if w.startswith("-"):
            if w not in text:
                problem(where, f"secretfs {sub} has no option {w}")
            value = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("-") else None
            flags[w] = value
            i += 2 if value is not None else 1
        else:
            positional.append(w)
            i += 1

    def readable(path, what):
        if in_image(image, path):
            return
        target, _ = under_mount(mounts, path)
        if target is None and not (isinstance(extra, dict) and path in extra):
            problem(where, f"{what} {path} is neither in the image nor under a mount")

    if "--token-file" in flags:
        readable(flags["--token-file"], "token file")
    if "--spec" in flags:
        readable(flags["--spec"], "job spec")
    spec_path = flags.get("--spec") or env.get("SECRETFS_SPEC")
    if sub == "run" and spec_path is None:
        default = image["workdir"].rstrip("/") + "/secretfs.toml"
        if in_image(image, default):
            spec_path = default
    if spec_path and "SECRETFS_SPEC" in env:
        readable(spec_path, "SECRETFS_SPEC")
    spec = None
    if spec_path:
        if isinstance(extra, dict) and spec_path in extra and isinstance(extra[spec_path], str):
            spec = tomllib.loads(extra[spec_path])
        elif spec_path == "/app/secretfs.toml":
            spec = tomllib.load(open("examples/container-job.toml", "rb"))
    if spec and "--url" not in flags and "--dir" not in flags:
        src = spec.get("source", {})
        if "token_file" in src:
            readable(src["token_file"], "spec token_file")
    if sub == "run":
        program = workload or (spec or {}).get("command", [])
        if not program:
            problem(where, "the launcher has no command (neither after -- nor in a spec)")
        elif program[0] == "python3" and len(program) > 1:
            readable(program[1], "workload script")
        # The directory source: --dir, else the spec's, else /run/secrets; none when the
        # secrets come from a server or a store.
        src = (spec or {}).get("source", {})
        remote = "--url" in flags or "--store" in flags or (
            "--dir" not in flags and ("url" in src or "store" in src))
        if not remote:
            sdir = flags.get("--dir") or src.get("dir") or "/run/secrets"
            target, info = under_mount(mounts, sdir)
            if target is None:
                problem(where, f"the secrets directory {sdir} is not a mount the sidecar fills")
            elif info[0] == "node":
                node_volumes[where] = (info[1], target)
            else:
                if info[2] not in ("rslave", "HostToContainer", "rshared", "Bidirectional"):
                    problem(where, f"{target} does not receive mounts made by a sidecar")
                app_volumes[where] = (info[1], target)
    if sub == "mount":
        if not positional:
            problem(where, "secretfs mount without a directory")
            continue
        target, info = under_mount(mounts, positional[0])
        if target is None:
            problem(where, f"mount point {positional[0]} is not under a volume")
        elif info[2] not in ("rshared", "Bidirectional"):
            problem(where, f"the mount under {target} would not propagate out of the sidecar")
        else:
            sidecar_volumes[where.rsplit("/", 1)[0] if where.endswith(
                "secrets-mount") else where] = (info[1], target)

# Every app reading a sidecar's files shares that sidecar's volume.
for where, (source, _target) in app_volumes.items():
    if not any(source == s for s, _ in sidecar_volumes.values()):
        problem(where, f"reads {source}, which no mount sidecar shares")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"check_examples: checked {checked} containers; {len(sidecar_volumes)} sidecars, "
      f"{len(app_volumes)} apps reading their files, {len(node_volumes)} reading a node's volume")
