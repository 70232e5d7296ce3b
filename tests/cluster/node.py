"""The test cluster's one Node: registration, Ready heartbeats, and the log endpoint.

This is the node half of the kubelet stand-in (the pod half is podexecutor.py).
It registers a Node object as the node's own identity (system:node:<name>, the
Node authorizer and NodeRestriction apply to it as to a kubelet), keeps it Ready
by renewing its Lease in kube-node-lease every 10 s and refreshing its
conditions every 30 s, and serves the kubelet's /containerLogs endpoint over
TLS so that `kubectl logs` and the API's pods/log work, reading the log files
the pod executor writes.
"""

from __future__ import annotations

import datetime
import http.server
import os
import platform
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

from .kube import ApiError, Kube

GPU_POOL_LABEL = "sigma0.dev/gpu-pool"
GVISOR_POOL_LABEL = "sigma0.dev/gvisor-pool"

DEFAULT_LABELS = {
    GPU_POOL_LABEL: "true",
    GVISOR_POOL_LABEL: "true",
    "nvidia.com/gpu.present": "true",  # what NVIDIA's GPU feature discovery labels GPU nodes with
}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Node:
    def __init__(
        self,
        kube: Kube,
        name: str,
        *,
        kubelet_version: str,
        cpu: str | None = None,
        memory: str | None = None,
        gpus: int = 1,
        pods: int = 110,
        labels: dict[str, str] | None = None,
        log_port: int = 0,
    ) -> None:
        self.kube = kube
        self.name = name
        self.kubelet_version = kubelet_version
        self.capacity = {
            "cpu": cpu or str(os.cpu_count() or 1),
            "memory": memory or f"{_memory_bytes() // 1024}Ki",
            "pods": str(pods),
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": str(gpus),
        }
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(DEFAULT_LABELS if labels is None else labels),
        }
        self.log_port = log_port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- the Node object ---------------------------------------------------
    def _conditions(self) -> list[dict]:
        t = now()

        def cond(type_: str, status: str, reason: str, message: str) -> dict:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": t,
                "lastTransitionTime": self._started,
            }

        return [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "sigma0 test pod executor is posting ready status"),
        ]

    def _status(self) -> dict:
        uname = platform.uname()
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": self._conditions(),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "machineID": self._machine_id,
                "systemUUID": self._machine_id,
                "bootID": self._boot_id,
                "kernelVersion": uname.release,
                "osImage": "sigma0 test node (pod executor stand-in for kubelet)",
                "containerRuntimeVersion": "sigma0-pod-executor://1 (host processes; runsc for RuntimeClass runsc)",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> dict:
        self._started = now()
        self._machine_id = uuid.uuid4().hex
        self._boot_id = str(uuid.uuid4())
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {},
            "status": self._status(),
        }
        try:
            node = self.kube.create("/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
            node = self.kube.merge_patch(f"/api/v1/nodes/{self.name}", {"metadata": {"labels": self.labels}})
        node = self.kube.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": self._status()})
        self.uid = node["metadata"]["uid"]
        self._renew_lease()
        return node

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        try:
            self.kube.merge_patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            self.kube.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}],
                    },
                    "spec": spec,
                },
            )

    # -- heartbeats ----------------------------------------------------------
    def start(self) -> None:
        self.register()
        self._thread = threading.Thread(target=self._loop, name=f"node-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(10):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= 30:
                    self.kube.merge_patch(
                        f"/api/v1/nodes/{self.name}/status", {"status": {"conditions": self._conditions()}}
                    )
                    last_status = time.monotonic()
            except Exception as e:  # the API may be going away at teardown; keep trying until stopped
                self.error = e

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)


# ---------------------------------------------------------------------------
# The kubelet's /containerLogs endpoint, as kube-apiserver calls it for pods/log.

LogResolver = Callable[[str, str, str, bool], "tuple[Path, Callable[[], bool]] | None"]


class LogServer:
    """HTTPS server answering GET /containerLogs/<ns>/<pod>/<container>.

    `resolver(namespace, pod, container, previous)` returns (log file, still_running)
    or None. Only clients with a certificate from the cluster CA are served
    (kube-apiserver's --kubelet-client-certificate).
    """

    def __init__(self, resolver: LogResolver, ca: Path, cert: Path, key: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        resolve = resolver

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                q = urllib.parse.parse_qs(url.query)
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._plain(404, f"the sigma0 test node serves only /containerLogs, not {url.path}\n")
                    return
                previous = q.get("previous", ["false"])[0] == "true"
                found = resolve(parts[1], parts[2], parts[3], previous)
                if found is None:
                    self._plain(404, f"no log for container {parts[3]} in pod {parts[1]}/{parts[2]}\n")
                    return
                path, running = found
                data = path.read_bytes() if path.exists() else b""
                if "tailLines" in q:
                    n = int(q["tailLines"][0])
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-n:]) if n > 0 else b""
                if "limitBytes" in q:
                    data = data[: int(q["limitBytes"][0])]
                follow = q.get("follow", ["false"])[0] == "true"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                if not follow:
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                offset = path.stat().st_size if path.exists() else 0
                self._chunk(data)
                try:
                    while True:
                        alive = running()
                        with open(path, "rb") as f:
                            f.seek(offset)
                            more = f.read()
                        offset += len(more)
                        self._chunk(more)
                        if not alive:
                            break
                        time.sleep(0.2)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _chunk(self, data: bytes) -> None:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()

            def _plain(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="node-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
