"""The whole test cluster: the upstream control plane and one node, of either kind:

    Cluster(runtime="kubelet")      the real node: upstream kubelet, containerd, runc and gVisor (kubeletnode.py)
    Cluster()                       the fallback the operator-logic tests run on: a stand-in Node object
                                    (node.py) and the pod executor (podexecutor.py), no container runtime

    from tests.cluster.cluster import Cluster
    with Cluster() as c:            # or c = Cluster(); c.start(); ...; c.stop()
        api = c.api_client()        # kubernetes.client.ApiClient as cluster-admin
        c.kubectl("get", "nodes")   # the kubectl built with the control plane
        c.pod_log("ns", "pod")      # what a container printed

Start and stop it by hand with `python -m tests.cluster up` (see README.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .controlplane import ClusterError, ControlPlane, bin_dir
from .kube import ApiError, Kube
from .kubeletnode import RUNSC_HANDLER, KubeletNode, NodeNetwork, node_dir
from .node import DEFAULT_LABELS, GPU_POOL_LABEL, GVISOR_POOL_LABEL, LogServer, Node
from .podexecutor import PodExecutor, can_run_as

K8S_VERSION = "v1.36.3"  # keep in step with build.sh

RUNTIMES = ("podexecutor", "kubelet")
GVISOR_RUNTIME_CLASS = "gvisor"  # the RuntimeClass a kubelet cluster has, handler runsc

__all__ = ["DEFAULT_LABELS", "GPU_POOL_LABEL", "GVISOR_POOL_LABEL", "Cluster", "ClusterError", "can_run_as"]


class Cluster:
    """See the module doc. Attributes once started:

    kubeconfig   Path of the admin kubeconfig (user kubernetes-admin, group system:masters)
    runtime      "kubelet" (the real node) or "podexecutor" (the stand-in)
    server       https://127.0.0.1:<port>, or https://<bridge address>:<port> for the kubelet node
    bin_dir      folder with etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
    kubectl_path bin_dir / "kubectl"
    node_name    the one Node, with capacity cpu, memory, nvidia.com/gpu (= gpus) and the pool labels
    node_labels  its labels
    workdir      everything the run writes: pki/, etcd/, logs/, pods/
    env          os.environ plus KUBECONFIG and bin_dir first on PATH, for subprocesses
    executor     the PodExecutor (kubelet stand-in), None for the kubelet node
    kubelet_node the KubeletNode, None for the stand-in
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        node_name: str = "sigma0-node",
        gpus: int = 1,
        cpu: str | None = None,
        memory: str | None = None,
        node_labels: dict[str, str] | None = None,
        die_with_parent: bool = True,
        runtime: str = "podexecutor",
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        if runtime == "kubelet" and (cpu or memory):
            raise ValueError("the kubelet node reports this machine's cpu and memory: cpu=, memory= are stand-in only")
        self.runtime = runtime
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sigma0-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_name = node_name
        self._node_args = {"gpus": gpus, "cpu": cpu, "memory": memory, "labels": node_labels}
        self._die_with_parent = die_with_parent
        self.control_plane: ControlPlane | None = None
        self.node: Node | None = None
        self.log_server: LogServer | None = None
        self.executor: PodExecutor | None = None
        self.kubelet_node: KubeletNode | None = None
        self.network: NodeNetwork | None = None
        self.start_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> Cluster:
        t0 = time.monotonic()
        self.bin_dir = bin_dir()
        self.kubectl_path = self.bin_dir / "kubectl"
        node_bins = node_dir() if self.runtime == "kubelet" else None  # fail before anything starts
        try:
            host = "127.0.0.1"
            if self.runtime == "kubelet":
                self.network = NodeNetwork.create(self.workdir, own_workdir=self._own_workdir)
                host = self.network.address
            cp = self.control_plane = ControlPlane(
                self.workdir, self.bin_dir, node_name=self.node_name, die_with_parent=self._die_with_parent, host=host
            )
            cp.start()
            self.server = cp.server
            self.kubeconfig = cp.kubeconfig
            self.env = {
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            self.admin = Kube(host, cp.api_port, cp.ca, *cp.admin_cert)
            if self.runtime == "kubelet":
                self._start_kubelet_node(node_bins)
                self.start_seconds = time.monotonic() - t0
                return self
            node_kube = Kube(host, cp.api_port, cp.ca, *cp.node_cert)
            self.executor = PodExecutor(node_kube, self.node_name, self.workdir, cp.api_port)
            self.log_server = LogServer(self._resolve_log, cp.ca, *cp.kubelet_serving)
            self.log_server.start()
            self.node = Node(
                node_kube, self.node_name, kubelet_version=K8S_VERSION, log_port=self.log_server.port, **self._node_args
            )
            self.node.start()
            self.node_labels = dict(self.node.labels)
            self.executor.node_capacity = dict(self.node.capacity)
            self.executor.start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_kubelet_node(self, node_bins: Path) -> None:
        cp, net = self.control_plane, self.network
        net.route_service(cp.api_port)
        labels = self._node_args["labels"]
        self.kubelet_node = KubeletNode(
            self.workdir, cp, net, bins=self.bin_dir, node_bins=node_bins / "bin", images=node_bins / "images",
            name=self.node_name, labels=labels, gpus=self._node_args["gpus"], die_with_parent=self._die_with_parent,
        )
        self.kubelet_node.start()
        node = self.admin.get(f"/api/v1/nodes/{self.node_name}")
        self.node_labels = dict(node["metadata"]["labels"])
        self.admin.create("/apis/node.k8s.io/v1/runtimeclasses", {
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": GVISOR_RUNTIME_CLASS}, "handler": RUNSC_HANDLER,
        })

    def import_image(self, archive: str | Path, ref: str) -> None:
        """Import an OCI archive into the kubelet node's containerd as `ref` (pods then run it; nothing is pulled)."""
        if self.kubelet_node is None:
            raise ClusterError("import_image needs the kubelet node: Cluster(runtime='kubelet')")
        self.kubelet_node.import_image(Path(archive), ref)

    def container_runtime(self, container_id: str) -> str:
        """The containerd runtime that ran a container (a pod's containerStatuses[].containerID, with or without
        its containerd:// prefix): io.containerd.runc.v2 or io.containerd.runsc.v1."""
        if self.kubelet_node is None:
            raise ClusterError("container_runtime needs the kubelet node: Cluster(runtime='kubelet')")
        return self.kubelet_node.runtime_handler(container_id.removeprefix("containerd://"))

    def stop(self, *, keep_workdir: bool | None = None) -> None:
        """End everything (pods, node, control plane); no process is left behind."""
        for part in (self.executor, self.node, self.log_server, self.kubelet_node, self.control_plane):
            if part is not None:
                with contextlib.suppress(Exception):  # keep tearing down the rest
                    part.stop()
        if self.network is not None and self.kubelet_node is None:  # failed before the node took the footprint over
            with contextlib.suppress(Exception):
                self.network.fp.remove()
        self.executor = self.node = self.log_server = self.kubelet_node = self.network = None
        if keep_workdir is None:
            keep_workdir = not self._own_workdir or bool(os.environ.get("SIGMA0_KEEP_CLUSTER"))
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise ClusterError with the log tail if a control-plane process (or kubelet, containerd) died."""
        assert self.control_plane is not None
        self.control_plane.check_alive()
        if self.kubelet_node is not None:
            self.kubelet_node.check_alive()

    # -- clients ------------------------------------------------------------------
    def api_client(self):
        """A new kubernetes.client.ApiClient authenticated as cluster-admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def token_api_client(self, token: str):
        """A new kubernetes.client.ApiClient that authenticates with a bearer token."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.control_plane.ca)
        # The whole header value: kubernetes 36 looks the prefix up under another name (kubernetes-client/python#2592)
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token for ServiceAccount namespace/name from the TokenRequest API."""
        r = self.admin.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}},
        )
        return r["status"]["token"]

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run the built kubectl against this cluster; text output."""
        return subprocess.run(
            [
                str(self.kubectl_path),
                "--kubeconfig",
                str(self.kubeconfig),
                "--cache-dir",
                str(self.workdir / "kubectl-cache"),
                *args,
            ],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=timeout,
        )

    # -- namespaces ------------------------------------------------------------------
    def create_namespace(self, hint: str = "t", timeout_s: float = 30) -> str:
        """Create a fresh namespace and wait until pods can be created in it
        (its default ServiceAccount and kube-root-ca.crt exist)."""
        base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
        name = f"{base}-{secrets.token_hex(3)}"
        self.admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        deadline = time.monotonic() + timeout_s
        for path in (
            f"/api/v1/namespaces/{name}/serviceaccounts/default",
            f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt",
        ):
            while True:
                try:
                    self.admin.get(path)
                    break
                except ApiError as e:
                    if e.status != 404 or time.monotonic() > deadline:
                        raise ClusterError(f"namespace {name} not ready: {path}: {e}") from e
                    time.sleep(0.1)
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            self.admin.delete(f"/api/v1/namespaces/{name}")
        except ApiError as e:
            if e.status != 404:
                raise

    # -- pods ---------------------------------------------------------------------------
    def pod_log_path(
        self, namespace: str, pod: str, container: str | None = None, previous: bool = False
    ) -> Path | None:
        """The file holding a container's output (its latest run, or the one before with previous=True)."""
        found = self.executor.log_file(namespace, pod, container, previous) if self.executor else None
        return found[0] if found else None

    def pod_log(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """What a container printed (stdout and stderr together); '' if it has not started."""
        if self.kubelet_node is not None:  # through the API, from kubelet
            args = ["logs", "-n", namespace, pod, *(["-c", container] if container else []), f"--previous={previous}"]
            r = self.kubectl(*args, check=False)
            return r.stdout if r.returncode == 0 else ""
        p = self.pod_log_path(namespace, pod, container, previous)
        return p.read_text(errors="replace") if p and p.exists() else ""

    def _resolve_log(self, namespace: str, pod: str, container: str, previous: bool):
        return self.executor.log_file(namespace, pod, container, previous) if self.executor else None

    def wait_for_pod_phase(
        self, namespace: str, pod: str, phases: tuple[str, ...] = ("Succeeded", "Failed"), timeout_s: float = 60
    ) -> dict:
        """Poll until the pod's phase is one of `phases`; return the pod (a dict)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = self.admin.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
            if (last.get("status") or {}).get("phase") in phases:
                return last
            time.sleep(0.2)
        raise TimeoutError(f"pod {namespace}/{pod} not in {phases} after {timeout_s}s: {(last or {}).get('status')}")
