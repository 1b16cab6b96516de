"""A kubelet stand-in for tests/it/node/: makes the CSI Node calls a kubelet makes for pods'
inline volumes, through stubs grpcio-tools generated from the same proto/csi.proto the agent is
built from.

    kubelet.py SOCKET STUBS < calls.json > results.json

calls.json: {"concurrent": bool, "calls": [{"op": "publish" | "unpublish", "volume_id": ...,
"target_path": ..., "volume_context": {...}}, ...]}. Each result is {"code": "OK"} or
{"code": NAME, "message": ...}, in the calls' order, with "ms" the call's latency; concurrent
calls run at once, a thread each, as a node's kubelet does for pods starting together."""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

sys.path.insert(0, sys.argv[2])
import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

request = json.load(sys.stdin)
# The kubelet (Go's grpc) names the authority "localhost" on a unix socket; grpc-python would send
# the socket's path, which hyper refuses as an HTTP/2 authority.
options = [("grpc.default_authority", "localhost")]
with grpc.insecure_channel(f"unix://{sys.argv[1]}", options=options) as channel:
    node = csi_pb2_grpc.NodeStub(channel)

    def call(c):
        started = time.monotonic()
        try:
            if c["op"] == "publish":
                node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                    volume_id=c["volume_id"], target_path=c["target_path"], readonly=True,
                    volume_capability=csi_pb2.VolumeCapability(
                        mount=csi_pb2.VolumeCapability.MountVolume(),
                        access_mode=csi_pb2.VolumeCapability.AccessMode(
                            mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY)),
                    volume_context=c["volume_context"],
                ), timeout=30)
            elif c["op"] == "unpublish":
                node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
                    volume_id=c["volume_id"], target_path=c["target_path"],
                ), timeout=30)
            else:
                raise ValueError(c["op"])
            out = {"code": "OK"}
        except grpc.RpcError as e:
            out = {"code": e.code().name, "message": e.details()}
        out["ms"] = (time.monotonic() - started) * 1000
        return out

    calls = request["calls"]
    if request.get("concurrent"):
        with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
            results = list(pool.map(call, calls))
    else:
        results = [call(c) for c in calls]
print(json.dumps(results))
