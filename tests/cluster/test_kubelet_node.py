"""The real kubelet node (Cluster(runtime="kubelet")): upstream kubelet on containerd, with runc for plain pods and
gVisor for RuntimeClass gvisor, images imported from archives and never pulled.

Each test attacks one claim of tests/cluster/README.md's "The kubelet node" section. One cluster for the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import kubeletnode
from .cluster import GVISOR_RUNTIME_CLASS, K8S_VERSION, Cluster
from .controlplane import ClusterError
from .fixtures import fresh_namespace, running
from .kubeletnode import (
    RUN_DIR,
    SHIM_SOCKET_DIR,
    Footprint,
    NodeNetwork,
    cgroup_hierarchies,
    mount_points,
    node_dir,
    run,
    sweep_stale,
)
from .node import DEFAULT_LABELS

BUSYBOX = "docker.io/library/busybox:1.36"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kc() -> Iterator[Cluster]:
    with running(Cluster(runtime="kubelet"), "kubelet cluster") as c:
        yield c


@pytest.fixture
def ns(kc: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(kc, request.node.name) as name:
        yield name


def pod(name: str, command: str, *, runtime_class: str | None = None, image: str = BUSYBOX, **spec) -> dict:
    container = {"name": "c", "image": image, "command": ["sh", "-c", command], **spec.pop("container", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **({"runtimeClassName": runtime_class} if runtime_class else {}),
            **spec,
        },
    }


def create(kc: Cluster, ns: str, body: dict) -> None:
    kc.admin.create(f"/api/v1/namespaces/{ns}/pods", body)


def finished(kc: Cluster, ns: str, body: dict, timeout_s: float = 90) -> dict:
    create(kc, ns, body)
    return kc.wait_for_pod_phase(ns, body["metadata"]["name"], timeout_s=timeout_s)


def terminated(p: dict) -> dict:
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


def waiting_reason(kc: Cluster, ns: str, name: str, reasons: tuple[str, ...], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        p = kc.admin.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        for s in p["status"].get("containerStatuses") or []:
            seen = (s["state"].get("waiting") or {}).get("reason")
            if seen in reasons:
                return seen
        time.sleep(0.3)
    raise AssertionError(f"pod {ns}/{name} never waited with {reasons}; last {seen}")


# -- the node ---------------------------------------------------------------------------------------------------------
def test_node_is_a_real_kubelet_on_containerd_with_the_gpu_and_pool_labels(kc: Cluster) -> None:
    node = kc.admin.get(f"/api/v1/nodes/{kc.node_name}")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == K8S_VERSION
    assert info["containerRuntimeVersion"] == "containerd://2.4.2"
    for key, value in DEFAULT_LABELS.items():
        assert node["metadata"]["labels"][key] == value
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert not node["spec"].get("taints")  # the only node: pods need no toleration to land on it


def test_gpu_request_is_scheduled_against_the_advertised_capacity(kc: Cluster, ns: str) -> None:
    one = pod("gpu1", "sleep 30", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    create(kc, ns, one)
    kc.wait_for_pod_phase(ns, "gpu1", ("Running",))
    two = pod("gpu2", "true", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    create(kc, ns, two)
    time.sleep(3)
    p = kc.admin.get(f"/api/v1/namespaces/{ns}/pods/gpu2")
    assert p["status"]["phase"] == "Pending"
    assert any("nvidia.com/gpu" in (c.get("message") or "") for c in p["status"].get("conditions") or [])


# -- runc and gVisor --------------------------------------------------------------------------------------------------
def test_runc_pod_succeeds_with_logs_and_a_termination_message(kc: Cluster, ns: str) -> None:
    p = finished(kc, ns, pod("plain", "echo hello from runc; echo done >/dev/termination-log; cat /proc/version"))
    assert p["status"]["phase"] == "Succeeded"
    t = terminated(p)
    assert (t["exitCode"], t["message"]) == (0, "done\n")
    log = kc.pod_log(ns, "plain")
    assert log.startswith("hello from runc\n")
    assert "gVisor" not in log and Path("/proc/version").read_text().strip() in log  # the host's kernel
    assert kc.container_runtime(p["status"]["containerStatuses"][0]["containerID"]) == "io.containerd.runc.v2"


def test_gvisor_pod_runs_in_the_gvisor_sandbox(kc: Cluster, ns: str) -> None:
    p = finished(kc, ns, pod("sandboxed", "dmesg; cat /proc/version; exit 3", runtime_class=GVISOR_RUNTIME_CLASS))
    assert p["status"]["phase"] == "Failed" and terminated(p)["exitCode"] == 3
    log = kc.pod_log(ns, "sandboxed")
    assert "gVisor" in log  # runsc's kernel says so in dmesg
    assert Path("/proc/version").read_text().strip() not in log
    assert kc.container_runtime(p["status"]["containerStatuses"][0]["containerID"]) == "io.containerd.runsc.v1"


def test_pod_networking_adds_no_nat_rules(kc: Cluster, ns: str) -> None:
    # the CNI bridge runs with ipMasq false: after a runc pod and a gVisor pod with sandbox networking, the only nat
    # rules naming the node's network are the two Service DNATs this node added
    before = run("iptables", "-t", "nat", "-S").stdout
    for name, runtime_class in (("netrunc", None), ("netgvisor", GVISOR_RUNTIME_CLASS)):
        p = finished(kc, ns, pod(name, "ip -4 addr show eth0 | grep -q 10.213.", runtime_class=runtime_class))
        assert p["status"]["phase"] == "Succeeded", kc.pod_log(ns, name)
    after = run("iptables", "-t", "nat", "-S").stdout
    subnet = kc.network.address.rsplit(".", 1)[0] + "."
    ours = [line for line in after.splitlines() if subnet in line or kc.network.bridge in line]
    assert len(ours) == 2 and all(kc.kubelet_node.fp.rule_comment in line for line in ours), ours
    assert after.count("MASQUERADE") == before.count("MASQUERADE")


@pytest.mark.parametrize("runtime_class", [None, GVISOR_RUNTIME_CLASS])
def test_exec_and_volumes(kc: Cluster, ns: str, tmp_path: Path, runtime_class: str | None) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    body = pod(
        "vol",
        "echo from-pod >/host/out; echo shared >/scratch/x; sleep 600",
        runtime_class=runtime_class,
        container={
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "host", "mountPath": "/host"}]
        },
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": str(host_dir), "type": "Directory"}},
        ],
    )
    create(kc, ns, body)
    kc.wait_for_pod_phase(ns, "vol", ("Running",))
    deadline = time.monotonic() + 30
    while not (host_dir / "out").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (host_dir / "out").read_text() == "from-pod\n"  # hostPath: the pod wrote a file on this machine
    r = kc.kubectl("exec", "-n", ns, "vol", "--", "sh", "-c", "cat /scratch/x; hostname")
    assert r.stdout == "shared\nvol\n"
    r = kc.kubectl("exec", "-n", ns, "vol", "--", "sh", "-c", "exit 7", check=False)
    assert r.returncode == 7
    (tmp_path / "local").write_text("copied\n")
    kc.kubectl("cp", str(tmp_path / "local"), f"{ns}/vol:/scratch/copied")  # through busybox's tar applet
    assert kc.kubectl("exec", "-n", ns, "vol", "--", "cat", "/scratch/copied").stdout == "copied\n"


def test_memory_limit_is_enforced(kc: Cluster, ns: str) -> None:
    # dd's 200 MiB block buffer is touched as it reads: far over the 32 MiB limit of the container's memory cgroup;
    # dd is the container's main process (exec), so its death is the container's
    body = pod(
        "oom",
        "echo starting; exec dd if=/dev/zero of=/dev/null bs=200M count=1",
        container={"resources": {"limits": {"memory": "32Mi"}}},
    )
    p = finished(kc, ns, body)
    assert p["status"]["phase"] == "Failed"
    assert (terminated(p)["reason"], terminated(p)["exitCode"]) == ("OOMKilled", 137)
    assert kc.pod_log(ns, "oom") == "starting\n"


# -- the API server through the kubernetes Service --------------------------------------------------------------------
def test_pod_reaches_the_api_server_through_the_service_with_its_token(kc: Cluster, ns: str) -> None:
    # kubeclient (kubeclient/main.go) dials $KUBERNETES_SERVICE_HOST (10.0.0.1), verifies the server against the
    # mounted CA and authenticates with the mounted token, as client-go's in-cluster config does
    body = pod("whoami", "", image="localhost/sigma0/kubeclient:1")
    del body["spec"]["containers"][0]["command"]  # the image's entrypoint
    p = finished(kc, ns, body)
    log = kc.pod_log(ns, "whoami")
    assert p["status"]["phase"] == "Succeeded", log
    assert json.loads(log)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:default"


# -- images -----------------------------------------------------------------------------------------------------------
def test_images_are_never_pulled(kc: Cluster, ns: str) -> None:
    never = pod("never", "true", image="docker.io/library/busybox:not-imported", container={"imagePullPolicy": "Never"})
    create(kc, ns, never)
    waiting_reason(kc, ns, "never", ("ErrImageNeverPull",))
    create(kc, ns, pod("pull", "true", image="docker.io/library/busybox:not-imported"))
    waiting_reason(kc, ns, "pull", ("ErrImagePull", "ImagePullBackOff"))  # no registry is reachable from here


def test_an_imported_archive_runs_under_its_ref(kc: Cluster, ns: str) -> None:
    archive = node_dir() / "images" / "busybox.tar"
    kc.import_image(archive, "localhost/sigma0/test-import:1")
    body = pod("imported", "echo imported", image="localhost/sigma0/test-import:1")
    body["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    p = finished(kc, ns, body)
    assert p["status"]["phase"] == "Succeeded"
    assert kc.pod_log(ns, "imported") == "imported\n"
    with pytest.raises(ClusterError, match="no tag"):
        kc.import_image(archive, "localhost/sigma0/untagged")
    with pytest.raises(ClusterError, match="not an OCI archive"):
        kc.import_image(archive.with_name("missing.tar"), "localhost/sigma0/missing:1")
    # every image the node started with is still there, the pause image (the sandbox of every pod) above all
    listed = kc.kubelet_node.ctr("images", "list", "--quiet").stdout.split()
    for image in json.loads((node_dir() / "images" / "images.json").read_text()):
        assert image["ref"] in listed


# -- a killed run's leftovers -----------------------------------------------------------------------------------------
def assert_gone(fp: Footprint, shim_sockets: list[Path]) -> None:
    """Nothing of node `fp` is left on this machine."""
    assert not fp._pids()
    assert not [m for m in mount_points() if m.startswith((fp.workdir + "/", str(fp.state_dir) + "/"))]
    assert fp.bridge not in run("ip", "-br", "link").stdout
    assert fp.rule_comment not in run("iptables", "-t", "nat", "-S").stdout
    assert not [h for h in cgroup_hierarchies() if (h / fp.cgroup).exists()]
    assert not fp.file.exists() and not fp.state_dir.exists()
    assert not (Path(fp.workdir) / "node").exists()
    assert not [s for s in shim_sockets if s.exists()]  # the gVisor shim's, outside our folders


def running_pods(c: Cluster) -> None:
    """A runc pod and a gVisor pod, Running."""
    ns = c.create_namespace("left")
    for name, runtime_class in (("runc", None), ("gvisor", GVISOR_RUNTIME_CLASS)):
        c.admin.create(f"/api/v1/namespaces/{ns}/pods", pod(name, "sleep 600", runtime_class=runtime_class))
    for name in ("runc", "gvisor"):
        c.wait_for_pod_phase(ns, name, ("Running",))


def test_stop_leaves_nothing_behind(kc: Cluster) -> None:
    c = Cluster(runtime="kubelet").start()
    try:
        running_pods(c)
        fp = c.kubelet_node.fp
        shim_sockets = [Path(a.read_text().strip().removeprefix("unix://")) for a in fp.state_dir.rglob("address")]
        assert shim_sockets and fp._pids()
    finally:
        c.stop()
    assert_gone(fp, shim_sockets)
    assert not Path(fp.workdir).exists()
    kc.check_alive()  # the other cluster on this machine is untouched


CHILD = """
import time
from tests.cluster.cluster import Cluster
from tests.cluster.test_kubelet_node import running_pods
c = Cluster(runtime="kubelet").start()
running_pods(c)
print(c.kubelet_node.fp.tag, c.workdir, flush=True)
time.sleep(600)
"""


def test_a_killed_runs_leftovers_are_swept_by_the_next_start(kc: Cluster) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "tests"), str(REPO)])},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tag, workdir = child.stdout.readline().split()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    fp = Footprint(**json.loads((RUN_DIR / f"{tag}.json").read_text()))
    assert fp.workdir == workdir
    left = fp._pids()
    assert left, "SIGKILL of the test process should leave the shims and pods running"
    assert any(m.startswith(workdir) or m.startswith(str(fp.state_dir)) for m in mount_points())

    shim_sockets = [Path(a.read_text().strip().removeprefix("unix://")) for a in fp.state_dir.rglob("address")]
    assert any(s.parent == SHIM_SOCKET_DIR and s.exists() for s in shim_sockets)  # the gVisor pod's shim

    assert tag in sweep_stale()  # what the next KubeletNode start runs first

    assert_gone(fp, shim_sockets)
    assert fp.own_workdir and not Path(workdir).exists()  # the killed cluster's temporary folder
    # the live cluster's footprint is left alone: its owner (this process) is alive
    assert kc.kubelet_node.fp.file.exists()
    kc.check_alive()


def test_a_new_node_network_never_takes_a_live_ones_subnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = NodeNetwork.create(tmp_path / "a")
    try:
        live = first.fp.subnet_octet
        # the adversary's pick: the live network's octet whenever it is offered
        monkeypatch.setattr(kubeletnode.random, "choice", lambda options: live if live in options else options[0])
        second = NodeNetwork.create(tmp_path / "b")
        try:
            assert second.fp.subnet_octet != live and second.bridge != first.bridge
            assert f"{second.address}/24" in run("ip", "-br", "addr", "show", second.bridge).stdout
        finally:
            second.fp.remove()
    finally:
        first.fp.remove()
    assert first.bridge not in run("ip", "-br", "link").stdout
