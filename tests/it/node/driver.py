"""A Secrets Store CSI driver stand-in for tests/it/node/provider.rs: calls a provider's socket
the way the driver does (Version, then Mount with the SecretProviderClass's parameters, the
pod's info and tokens as a JSON string), through stubs grpcio-tools generated from the same
proto/service.proto the agent is built from, and applies the driver's own file rules to the
answer (pkg/util/fileutil: relative, clean, no '..', mode within 0..511).

    driver.py SOCKET STUBS < calls.json > results.json

calls.json: [{"attributes": {...}, "target_path": ..., "permission": "420",
"current_object_version": [[id, version], ...]}, ...]. Each result: {"code": "OK", "version":
..., "object_version": [[id, version], ...], "files": {path: {"mode": m, "contents": text}},
"rules_broken": [...]} or {"code": NAME, "message": ...}."""

import json
import os
import sys

import grpc

sys.path.insert(0, sys.argv[2])
import service_pb2  # noqa: E402
import service_pb2_grpc  # noqa: E402


def rules_broken(files):
    broken = []
    for f in files:
        p = f.path
        if not p or os.path.isabs(p) or os.path.normpath(p) != p:
            broken.append(f"path {p!r} is not relative and clean")
        if ".." in p.split("/") or (p.split("/")[0].startswith("..") and len(p.split("/")[0]) > 2):
            broken.append(f"path {p!r} has '..'")
        if not 0 <= f.mode <= 0o777:
            broken.append(f"mode {f.mode} of {p!r} out of range")
    return broken


options = [("grpc.default_authority", "localhost")]
results = []
with grpc.insecure_channel(f"unix://{sys.argv[1]}", options=options) as channel:
    provider = service_pb2_grpc.CSIDriverProviderStub(channel)
    version = provider.Version(service_pb2.VersionRequest(version="v1.6.0"), timeout=10)
    for c in json.load(sys.stdin):
        try:
            answer = provider.Mount(service_pb2.MountRequest(
                attributes=c["attributes"] if isinstance(c["attributes"], str)
                else json.dumps(c["attributes"]),
                secrets="{}",
                target_path=c["target_path"],
                permission=c.get("permission", "420"),
                current_object_version=[
                    service_pb2.ObjectVersion(id=i, version=v)
                    for i, v in c.get("current_object_version", [])
                ],
            ), timeout=30)
            results.append({
                "code": "OK",
                "version": {"runtime_name": version.runtime_name,
                            "runtime_version": version.runtime_version},
                "object_version": [[o.id, o.version] for o in answer.object_version],
                "files": {f.path: {"mode": f.mode, "contents": f.contents.decode()}
                          for f in answer.files},
                "rules_broken": rules_broken(answer.files),
            })
        except grpc.RpcError as e:
            results.append({"code": e.code().name, "message": e.details()})
print(json.dumps(results))
