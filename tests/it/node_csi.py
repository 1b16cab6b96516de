"""A kubelet stand-in for tests/it/node.rs: calls the node agent's CSI socket the way the
kubelet does at plugin registration and on a pod's start, through stubs that grpcio-tools
generated from the same proto/csi.proto the agent is built from. Prints one JSON object."""

import json
import sys

import grpc

sys.path.insert(0, sys.argv[2])
import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

socket = sys.argv[1]
out = {}
# The kubelet (Go's grpc) names the authority "localhost" on a unix socket; grpc-python would
# send the socket's path, which is not a valid HTTP/2 authority and which the agent's HTTP/2
# server (hyper) refuses.
options = [("grpc.default_authority", "localhost")]
with grpc.insecure_channel(f"unix://{socket}", options=options) as channel:
    identity = csi_pb2_grpc.IdentityStub(channel)
    node = csi_pb2_grpc.NodeStub(channel)
    info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
    out["name"] = info.name
    out["vendor_version"] = info.vendor_version
    caps = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), timeout=5)
    out["plugin_capabilities"] = len(caps.capabilities)
    probe = identity.Probe(csi_pb2.ProbeRequest(), timeout=5)
    out["ready"] = probe.ready.value
    out["node_id"] = node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=5).node_id
    node_caps = node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=5)
    out["node_capabilities"] = len(node_caps.capabilities)
    kubelet = sys.argv[3]
    target = f"{kubelet}/pods/9f1c/volumes/kubernetes.io~csi/secrets/mount"
    pod = {
        "csi.storage.k8s.io/pod.name": "trainer-0",
        "csi.storage.k8s.io/pod.namespace": "ml",
        "csi.storage.k8s.io/ephemeral": "true",
        "csi.storage.k8s.io/serviceAccount.tokens": json.dumps(
            {sys.argv[4]: {"token": sys.argv[5], "expirationTimestamp": "2026-12-07T12:00:00Z"}}
        ),
    }

    def call(method, request):
        try:
            method(request, timeout=5)
            return {"code": "OK"}
        except grpc.RpcError as e:
            return {"code": e.code().name, "message": e.details()}

    out["publish"] = call(node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(
        volume_id="csi-0123", target_path=target, readonly=True,
        volume_context={**pod, "secrets": "HF_TOKEN,OPENAI_API_KEY", "uid": "1000", "mode": "0440"},
    ))
    out["bad_publish"] = call(node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(
        volume_id="csi-0124", target_path="/etc/cron.d", readonly=True,
        volume_context={**pod, "secrets": "9bad", "mode": "0666"},
    ))
    out["unpublish"] = call(node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="csi-0123", target_path=target,
    ))
    out["bad_unpublish"] = call(node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="csi-0123", target_path=f"{kubelet}/../../etc",
    ))
print(json.dumps(out))
