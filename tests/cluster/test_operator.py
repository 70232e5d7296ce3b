"""The operator end to end, on the real control plane (tests/cluster): `sigma0 operator` as a subprocess, under a
ServiceAccount bound only to manifests/10-rbac.yaml, driving real Jobs whose pods the test pod executor runs
(sandbox pods under gVisor), with the tiny CPU model.

Every wait is bounded and, on timeout, fails with the cycle's status, its Jobs and pods, the failed pods' logs
and the operator's log.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from browser import chromium
from kubernetes import client, config
from selenium.webdriver.common.by import By

from sigma0.dashboard.board import short_digest
from sigma0.kube import releases as kube_releases
from sigma0.plan import Incumbent

from .cluster import Cluster
from .controlplane import free_port as _free_port
from .controlplane import kill_group
from .podexecutor import stage_pod_user

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cycle.yaml"
MANIFESTS = ROOT / "manifests"
GROUP, VERSION = "sigma0.dev", "v1alpha1"
T = TypeVar("T")


# The platform: CRDs, RBAC, RuntimeClass, an artifacts folder, the operator ------------------------------------------


class Operator:
    """`python -m sigma0 operator` with the ServiceAccount's kubeconfig; killable and restartable."""

    def __init__(self, kubeconfig: Path, log: Path, run_as_user: int, extra: tuple[str, ...] = ()) -> None:
        self.kubeconfig, self.log, self.run_as_user, self.extra = kubeconfig, log, run_as_user, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = self.liveness_port = self.dashboard_port = 0
        self.starts = 0

    def start(self) -> None:
        self.metrics_port, self.liveness_port, self.dashboard_port = _free_port(), _free_port(), _free_port()
        command = [sys.executable, "-m", "sigma0", "operator", "--kubeconfig", str(self.kubeconfig),
                   "--all-namespaces", "--run-as-user", str(self.run_as_user), "--resync-seconds", "3",
                   "--watch-timeout", "20", "--metrics-port", str(self.metrics_port),
                   "--liveness-port", str(self.liveness_port), "--dashboard-port", str(self.dashboard_port),
                   "--job-ttl", "3600", *self.extra]
        with open(self.log, "ab") as out:
            out.write(f"\n==== start {self.starts + 1}: {' '.join(command)}\n".encode())
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=ROOT)
        self.starts += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the operator exited with {self.proc.returncode}:\n{self.tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"the operator's liveness endpoint did not answer in 90 s:\n{self.tail()}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        kill_group(self.proc.pid, grace_s=20)
        self.proc.wait(timeout=10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Platform:
    cluster: Cluster
    operator: Operator
    artifacts: Path
    kubeconfig: Path  # the operator's ServiceAccount
    custom: Any  # CustomObjectsApi as cluster-admin (the test's own reads and writes)
    batch: Any
    core: Any
    sa_custom: Any  # CustomObjectsApi as the operator's ServiceAccount


def _kubeconfig(cluster: Cluster, token: str, path: Path) -> Path:
    assert cluster.control_plane is not None
    document = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": {"server": cluster.server,
                                                  "certificate-authority": str(cluster.control_plane.ca)}}],
        "users": [{"name": "sigma0-operator", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sigma0-operator"}}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


PLAIN_RUNTIME_CLASS = "runc"  # a RuntimeClass that is not gVisor: the pod executor runs its pods as host processes


@contextlib.contextmanager
def process_sandbox_allowed(cluster: Cluster) -> Iterator[str]:
    """For a module whose cycles run their sandbox steps without gVisor (`sandbox: process` in plain pods): the
    operator that module starts is told to allow it (SIGMA0_ALLOW_PROCESS_SANDBOX, read when it starts), and a
    RuntimeClass that is not gVisor exists for the cycles to name (runtimeClassName cannot be empty). Yields its
    name. Enter it before the module's `platform` fixture starts the operator."""
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": PLAIN_RUNTIME_CLASS},
        "handler": PLAIN_RUNTIME_CLASS}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIGMA0_ALLOW_PROCESS_SANDBOX", "true")
        yield PLAIN_RUNTIME_CLASS


@pytest.fixture(scope="module")
def platform(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with started_platform(cluster, tmp_path_factory) as found:
        yield found


@contextlib.contextmanager
def started_platform(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory,
                     extra: tuple[str, ...] = ()) -> Iterator[Platform]:
    """The CRDs, the operator's RBAC, the shared artifacts folder, and one operator (with `extra` flags)."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    for name in ("00-namespace.yaml", "10-rbac.yaml", "20-runtimeclass.yaml"):
        cluster.kubectl("apply", "-f", str(MANIFESTS / name))
    cluster.kubectl("wait", "--for=condition=established", "--timeout=60s",
                    f"crd/trainingcycles.{GROUP}", f"crd/adapterreleases.{GROUP}")
    work = tmp_path_factory.mktemp("operator")
    token = cluster.service_account_token("sigma0-system", "sigma0-operator", seconds=4 * 3600)
    kubeconfig = _kubeconfig(cluster, token, work / "sa.kubeconfig")
    artifacts = work / "artifacts"
    shutil.copytree(ROOT / "examples" / "corpus", artifacts / "corpus")
    for folder in (artifacts, *artifacts.rglob("*")):
        folder.chmod(0o777 if folder.is_dir() else 0o666)
    # the dashboard reads the evidence where the artifacts volume's PersistentVolumes point (hostPath)
    operator = Operator(kubeconfig, work / "operator.log", stage_pod_user(),
                        extra=("--dashboard-artifacts", str(artifacts), *extra))
    operator.start()
    admin = cluster.api_client()
    try:
        yield Platform(cluster, operator, artifacts, kubeconfig, client.CustomObjectsApi(admin),
                       client.BatchV1Api(admin), client.CoreV1Api(admin),
                       client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig))))
    finally:
        operator.stop()


@pytest.fixture
def ns(platform: Platform, namespace: str) -> Iterator[str]:
    """A fresh namespace with the default artifacts claim, bound to the shared artifacts folder."""
    pv = f"artifacts-{namespace}"
    platform.core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(platform.artifacts)}}})
    platform.core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "sigma0-artifacts"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}})
    try:
        yield namespace
    finally:
        platform.core.delete_persistent_volume(pv)


# Helpers -----------------------------------------------------------------------------------------------------------


def example(name: str | None = None, **spec: Any) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    if name:
        document["metadata"]["name"] = name
    document["spec"].update(copy.deepcopy(spec))
    return document


def apply(platform: Platform, namespace: str, document: dict[str, Any] | Path) -> subprocess.CompletedProcess:
    """`kubectl apply -f` (a file as it is, or a document through stdin)."""
    if isinstance(document, Path):
        return platform.cluster.kubectl("apply", "-n", namespace, "-f", str(document), check=False)
    return platform.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document),
                                    check=False)


def cycle(platform: Platform, namespace: str, name: str) -> dict[str, Any]:
    return platform.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingcycles", name)


def status(platform: Platform, namespace: str, name: str) -> dict[str, Any]:
    return cycle(platform, namespace, name).get("status") or {}


def jobs_of(platform: Platform, namespace: str, name: str) -> list[Any]:
    return platform.batch.list_namespaced_job(namespace, label_selector=f"sigma0.dev/cycle={name}").items


def release(platform: Platform, namespace: str, name: str) -> dict[str, Any] | None:
    return kube_releases.ClusterReleases(platform.custom, namespace).get(name)


def diagnostics(platform: Platform, namespace: str) -> str:
    parts = []
    for what in ("tc", "ar", "jobs", "pods"):
        parts.append(platform.cluster.kubectl("get", what, "-n", namespace, "-o", "wide", check=False).stdout)
    for item in platform.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingcycles")["items"]:
        found = item.get("status") or {}
        stages = {k: (v.get("state"), v.get("message", "")[:300]) for k, v in (found.get("stages") or {}).items()}
        parts.append(f"{item['metadata']['name']}: phase={found.get('phase')} message={found.get('message')!r}\n"
                     f"  stages={stages}")
    for pod in platform.core.list_namespaced_pod(namespace).items:
        if pod.status.phase == "Failed" or pod.status.phase == "Pending":
            parts.append(f"--- pod {pod.metadata.name} ({pod.status.phase}):\n"
                         + platform.cluster.pod_log(namespace, pod.metadata.name)[-2000:])
    parts.append("--- operator log:\n" + platform.operator.tail())
    return "\n".join(parts)


def wait_for(platform: Platform, namespace: str, what: str, check: Callable[[], T | None],
             timeout: float = 120, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics(platform, namespace)}",
                pytrace=False)


def phase_is(platform: Platform, namespace: str, name: str, *phases: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        found = status(platform, namespace, name)
        return found if found.get("phase") in phases else None
    return check


def condition(found: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in found["conditions"] if c["type"] == kind)


def table(text: str) -> list[dict[str, str]]:
    """kubectl's table output as rows, cut at the header's column starts (cells may hold spaces)."""
    header, *rows = text.rstrip("\n").splitlines()
    names = header.split()
    starts = [header.index(n) for n in names]
    ends = [*starts[1:], None]
    return [{n: row[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)} for row in rows]


# Tests -------------------------------------------------------------------------------------------------------------


def test_invalid_manifests_are_rejected_by_the_api_server_with_the_field(platform: Platform, ns: str) -> None:
    answer = apply(platform, ns, example("bad", train={"steps": 0, "quantization": "int3"}))
    assert answer.returncode != 0
    assert "spec.train.steps" in answer.stderr and "greater than or equal to 1" in answer.stderr
    assert "spec.train.quantization" in answer.stderr
    # CEL rules run once the schema holds
    answer = apply(platform, ns, example("bad", artifacts={"path": "/srv/a", "pvc": {"claimName": "x"}}))
    assert answer.returncode != 0
    assert "spec.artifacts" in answer.stderr
    assert "set at most one of artifacts.path, artifacts.pvc, artifacts.uri" in answer.stderr
    unknown = example("bad2")
    unknown["spec"]["trian"] = {"steps": 3}
    answer = apply(platform, ns, unknown)
    assert answer.returncode != 0 and "trian" in answer.stderr
    # immutable once created; suspend is not
    good = example("frozen", suspend=True)
    assert apply(platform, ns, good).returncode == 0, "a valid manifest must be accepted"
    patch = platform.cluster.kubectl("patch", "tc", "frozen", "-n", ns, "--type=merge",
                                     "-p", '{"spec": {"train": {"steps": 5}}}', check=False)
    assert patch.returncode != 0 and "train is immutable" in patch.stderr
    patch = platform.cluster.kubectl("patch", "tc", "frozen", "-n", ns, "--type=merge",
                                     "-p", '{"spec": {"release": "other"}}', check=False)
    assert patch.returncode != 0 and "release is immutable" in patch.stderr
    assert platform.cluster.kubectl("patch", "tc", "frozen", "-n", ns, "--type=merge",
                                    "-p", '{"spec": {"suspend": false, "deadlineSeconds": 120}}').returncode == 0
    platform.cluster.kubectl("delete", "tc", "frozen", "-n", ns, "--wait=false")


A, B, C = ("sha256:" + x * 64 for x in "abc")


def _decision(outcome: str, passed: int) -> dict[str, Any]:
    return {"outcome": outcome, "reason": f"{outcome} in a test", "candidate_pass_at_1": passed / 3,
            "candidate_passed": passed, "candidate_total": 3}


class _ReadTogether:
    """CustomObjectsApi that makes two threads read the release before either writes: a real race to 409."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.barrier = threading.Barrier(2, timeout=30)
        self.conflicts = 0
        self.local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        found = self.api.get_namespaced_custom_object(*args, **kwargs)
        if not getattr(self.local, "met", False):
            self.local.met = True
            self.barrier.wait()
        return found

    def replace_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.api.replace_namespaced_custom_object(*args, **kwargs)
        except client.ApiException as error:
            self.conflicts += error.status == 409
            raise


def test_two_racing_promotions_exactly_one_wins_and_rollback_works(platform: Platform, ns: str) -> None:
    as_operator = kube_releases.ClusterReleases(platform.sa_custom, ns)
    first = as_operator.publish("raced", cycle="c0", decision=_decision("Bootstrapped", 1), candidate_uri="/a/0",
                                candidate_digest=A, incumbent=None, evidence={"suite": "humaneval"})
    assert (first["outcome"], first["revision"]) == ("Bootstrapped", 1)
    incumbent = as_operator.incumbent("raced")
    assert incumbent == Incumbent(A, "/a/0", 1 / 3, 1)

    racing = _ReadTogether(platform.sa_custom)
    contenders = kube_releases.ClusterReleases(racing, ns)
    results: dict[str, dict[str, Any]] = {}

    def promote(cycle_name: str, digest: str) -> None:
        results[cycle_name] = contenders.publish(
            "raced", cycle=cycle_name, decision=_decision("Promoted", 2), candidate_uri=f"/a/{cycle_name}",
            candidate_digest=digest, incumbent=incumbent, evidence={"suite": "humaneval"})

    threads = [threading.Thread(target=promote, args=args) for args in (("c1", B), ("c2", C))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outcomes = sorted(r["outcome"] for r in results.values())
    assert outcomes == ["Promoted", "Stale"], results
    assert racing.conflicts == 1  # the loser hit the resourceVersion precondition, re-read, and decided again
    winner = next(name for name, r in results.items() if r["outcome"] == "Promoted")
    current = release(platform, ns, "raced")
    assert current is not None
    assert current["spec"]["revision"] == 2 and current["spec"]["current"]["cycle"] == winner
    assert [p["digest"] for p in current["spec"]["history"]] == [A]
    loser = next(r for r in results.values() if r["outcome"] == "Stale")
    assert "changed since the incumbent was evaluated" in loser["reason"]

    # a rejection writes nothing
    rejected = as_operator.publish("raced", cycle="c3", decision=_decision("Rejected", 0), candidate_uri="/a/3",
                                   candidate_digest=C, incumbent=as_operator.incumbent("raced"), evidence={})
    assert rejected["outcome"] == "Rejected"
    assert release(platform, ns, "raced")["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]

    # `sigma0 release rollback NAME --cluster` works against the cluster as it does locally
    command = [sys.executable, "-m", "sigma0", "release", "rollback", "raced", "--cluster", "--namespace", ns,
               "--kubeconfig", str(platform.kubeconfig), "--reason", "test"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"now points at {A} (revision 3)" in " ".join(done.stdout.split())  # rich wraps long lines
    rolled = release(platform, ns, "raced")
    assert rolled["spec"]["current"]["digest"] == A and rolled["spec"]["revision"] == 3
    assert rolled["spec"]["history"][0]["rolledBack"] is True
    history = [sys.executable, "-m", "sigma0", "release", "history", "raced", "--cluster", "--namespace", ns,
               "--kubeconfig", str(platform.kubeconfig)]
    shown = subprocess.run(history, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0 and "rev 3" in shown.stdout and winner in " ".join(shown.stdout.split())
    table_out = platform.cluster.kubectl("get", "adapterreleases", "-n", ns).stdout
    (row,) = table(table_out)
    assert list(row) == ["NAME", "ADAPTER", "PASS@1", "CYCLE", "REVISION", "AGE"]  # DIGEST is at -o wide
    assert (row["NAME"], row["ADAPTER"], row["CYCLE"], row["REVISION"]) == ("raced", A[:19], "c0", "3")
    (wide,) = table(platform.cluster.kubectl("get", "adapterreleases", "-n", ns, "-o", "wide").stdout)
    assert wide["DIGEST"] == A


def test_a_failing_stage_fails_the_cycle_with_its_reason_and_leaves_the_release_alone(platform: Platform,
                                                                                        ns: str) -> None:
    before = kube_releases.ClusterReleases(platform.custom, ns).publish(
        "kept", cycle="c0", decision=_decision("Bootstrapped", 1), candidate_uri="/a/0", candidate_digest=A,
        incumbent=None, evidence={})
    assert before["outcome"] == "Bootstrapped"
    untouched = release(platform, ns, "kept")
    broken = example("broken", release="kept", harvest={"sources": [{"path": "corpus/missing.json"}]})
    assert apply(platform, ns, broken).returncode == 0
    found = wait_for(platform, ns, "the broken cycle to fail", phase_is(platform, ns, "broken", "Failed", "Succeeded"))
    assert found["phase"] == "Failed"
    failed = condition(found, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert failed["message"].startswith("harvest failed: PodFailurePolicy: exit code 2:")
    assert "missing.json" in failed["message"]
    assert condition(found, "Harvested")["status"] == "False"
    assert condition(found, "Ready")["status"] == "False"
    (job,) = jobs_of(platform, ns, "broken")
    pods = platform.core.list_namespaced_pod(ns, label_selector=f"job-name={job.metadata.name}").items
    assert len(pods) == 1, "bad input (exit 2) must not be retried"
    assert release(platform, ns, "kept") == untouched
    events = platform.core.list_namespaced_event(ns, field_selector="involvedObject.name=broken").items
    assert {"Admitted", "StageStarted", "StageFailed", "PhaseFailed"} <= {e.reason for e in events}


def test_host_paths_and_sandboxes_without_gvisor_are_refused_and_an_empty_runtime_class_cannot_be_applied(
        platform: Platform, ns: str) -> None:
    """This module's operator runs without --allow-host-path and --allow-process-sandbox: such cycles fail on
    their first reconcile, saying why, and nothing is created for them."""
    refused = {
        "on-node": ({"artifacts": {"path": str(platform.artifacts)}}, "HostPathNotAllowed", "--allow-host-path"),
        "in-process": ({"verify": {"sandbox": "process"}}, "ProcessSandboxNotAllowed", "--allow-process-sandbox"),
        "under-runc": ({"placement": {"sandbox": {"runtimeClassName": PLAIN_RUNTIME_CLASS}}},
                       "ProcessSandboxNotAllowed", "is not a gVisor RuntimeClass"),
    }
    for name, (spec, _, _) in refused.items():
        assert apply(platform, ns, example(name, release=name, **spec)).returncode == 0
    for name, (_, reason, says) in refused.items():
        found = wait_for(platform, ns, f"{name} to fail", phase_is(platform, ns, name, "Failed", "Succeeded"))
        failed = condition(found, "Failed")
        assert (found["phase"], failed["reason"], found["failure"]["reason"]) == ("Failed", reason, reason)
        assert says in failed["message"], failed["message"]
        assert not found.get("admitted") and not found.get("stages")
        assert jobs_of(platform, ns, name) == [] and release(platform, ns, name) is None
    # an empty runtime class (no gVisor) is refused by the API server itself
    answer = apply(platform, ns, example("no-runtime", placement={"sandbox": {"runtimeClassName": ""}}))
    assert answer.returncode != 0 and "spec.placement.sandbox.runtimeClassName" in answer.stderr


# The verify candidate below runs this at import, in its child inside the verify pod (gVisor), then fails its
# assert saying what each write did. It goes for every cycle folder on the artifacts volume, its own included, and
# plants what later steps would take on trust if they found it: completions that generate resumes, results that
# score resumes (their digests match the planted completions), a decision, training rows, verified rows.
PLANTER = r"""
import errno as _errno
import hashlib as _hashlib
import json as _json
import os as _os

_MARK = "planted" + "-by-" + "a-candidate"


def _digest(text):
    return "sha256:" + _hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plants():
    completion = "    return True  # " + _MARK + "\n"
    tasks = ["HumanEval/%d" % number for number in range(3)]
    completions = "".join(_json.dumps({"task_id": t, "completion": completion}) + "\n" for t in tasks)
    results = "".join(_json.dumps({"task_id": t, "passed": True, "reason": "passed", "detail": _MARK,
                                   "completion_digest": _digest(completion)}) + "\n" for t in tasks)
    decision = _json.dumps({"outcome": "Promoted", "reason": _MARK, "candidate_pass_at_1": 1.0})
    row = _json.dumps({"prompt": _MARK, "completion": _MARK}) + "\n"
    return {"completions": ("eval/completions/candidate/gate/completions.jsonl", completions),
            "results": ("eval/results/candidate-gate/results.jsonl", results),
            "decision": ("decide/decision.json", decision),
            "dataset": ("dataset/train.jsonl", row),
            "verified": ("verify/verified.jsonl", row)}


def _plant():
    said = {}
    root = "/artifacts/cycles"
    try:
        cycles = [_os.path.join(root, ns, name) for ns in sorted(_os.listdir(root))
                  for name in sorted(_os.listdir(_os.path.join(root, ns)))]
    except OSError as error:
        return "cycles:" + _errno.errorcode.get(error.errno, str(error.errno))
    for folder in cycles:
        for key, (rel, text) in _plants().items():
            path = _os.path.join(folder, rel)
            try:
                _os.makedirs(_os.path.dirname(path), exist_ok=True)
                with open(path, "w") as handle:
                    handle.write(text)
                outcome = "written"
            except OSError as error:
                outcome = _errno.errorcode.get(error.errno, str(error.errno))
            said.setdefault(key, set()).add(outcome)
    return " ".join(key + ":" + ",".join(sorted(outcomes)) for key, outcomes in sorted(said.items()))


_SAID = _plant()


def plant_everywhere(a, b):
    raise RuntimeError("plant " + _SAID)
"""
MARK = "planted-by-a-candidate"


@pytest.mark.slow
def test_a_verify_candidate_cannot_plant_files_that_later_steps_read_and_the_decision_stands(platform: Platform,
                                                                                            ns: str) -> None:
    row = {"fn": "plant_everywhere", "instruction": "Add two numbers.", "code": PLANTER,
           "asserts": ["assert plant_everywhere(1, 2) == 3"]}
    source = platform.artifacts / "corpus" / "planting.jsonl"
    source.write_text(json.dumps(row) + "\n")
    source.chmod(0o666)
    base = example()["spec"]
    sources = [*base["harvest"]["sources"], {"path": "corpus/planting.jsonl"}]
    assert apply(platform, ns, example("planted", release="planted", harvest={"sources": sources})).returncode == 0
    found = wait_for(platform, ns, "the planted cycle to end", phase_is(platform, ns, "planted", "Succeeded", "Failed"),
                     timeout=400, interval=1)
    assert found["phase"] == "Succeeded", diagnostics(platform, ns)
    assert "gvisor" in found["stages"]["verify"]["isolation"]
    folder = next((platform.artifacts / "cycles" / ns).glob("planted-*"))

    # the candidate ran, in its verify pod, and every write outside its step's own folder failed: read-only
    report = json.loads((folder / "verify" / "report.json").read_text())
    (verdict,) = [v for v in report["verdicts"] if v["fn"] == "plant_everywhere"]
    assert verdict["passed"] is False and "RuntimeError: plant " in verdict["detail"], verdict
    said = dict(part.split(":", 1) for part in verdict["detail"].split("RuntimeError: plant ", 1)[1].split())
    assert set(said) == {"completions", "results", "decision", "dataset", "verified"}, said
    for key in ("completions", "results", "decision", "dataset"):
        assert said[key] == "EROFS", (key, said)
    # its own cycle's verify folder is the one place it may write (here, where the pod executor gives a gVisor pod
    # no per-candidate users, it can): only the judge writes there after it, replacing verified.jsonl whole
    assert set(said["verified"].split(",")) <= {"written", "EROFS"}, said

    # nothing it planted is anywhere on the volume (the code holds the mark only in pieces)
    planted = [str(p) for p in platform.artifacts.rglob("*") if p.is_file() and MARK.encode() in p.read_bytes()]
    assert planted == []

    # the decision is the one the cycle's own results make: the genuine score, not the planted 3 of 3
    results = [json.loads(line) for line in
               (folder / "eval" / "results" / "candidate-gate" / "results.jsonl").read_text().splitlines() if line]
    passed = sum(bool(r["passed"]) for r in results)
    assert (found["candidate"]["passed"], found["candidate"]["total"]) == (passed, len(results)) and len(results) == 3
    decision = json.loads((folder / "decide" / "decision.json").read_text())
    assert found["decision"]["outcome"] == decision["outcome"] == "Bootstrapped"
    assert decision["candidate_passed"] == passed and decision["candidate_total"] == 3
    published = release(platform, ns, "planted")
    assert published is not None and published["spec"]["current"]["digest"] == found["candidate"]["digest"]
    assert published["spec"]["current"]["passed"] == passed


NOWHERE = {"sandbox": {"nodeSelector": {"sigma0.dev/pool": "nowhere"}}}  # no node has it: pods stay Pending


def test_suspend_pauses_before_the_next_stage_and_delete_removes_the_jobs(platform: Platform, ns: str) -> None:
    assert apply(platform, ns, example("paused", release="paused", suspend=True, placement=NOWHERE)).returncode == 0
    wait_for(platform, ns, "Suspended", phase_is(platform, ns, "paused", "Suspended"))
    time.sleep(4)  # more than a resync: still nothing may start
    assert jobs_of(platform, ns, "paused") == []
    platform.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "paused",
                                                   {"spec": {"suspend": False}})
    wait_for(platform, ns, "the harvest Job", lambda: jobs_of(platform, ns, "paused"))
    assert [j.metadata.name for j in jobs_of(platform, ns, "paused")] == ["paused-harvest-1"]
    platform.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "paused")
    wait_for(platform, ns, "the deleted cycle's Jobs to be removed", lambda: not jobs_of(platform, ns, "paused"),
             timeout=60)
    assert release(platform, ns, "paused") is None


def test_suspending_a_running_stage_suspends_its_job_and_the_job_controller_stops_its_pod(platform: Platform,
                                                                                          ns: str) -> None:
    """spec.suspend on a cycle whose stage runs: the operator suspends that Job, the real Job controller deletes its
    pod (on a GPU node: the GPU is free) and, on resume, starts a new one. The pod here is Pending (no node matches
    NOWHERE), which is what the Job controller stops the same way as a running one."""
    labels = {"kueue.x-k8s.io/queue-name": "team-a"}
    body = example("held", release="held", placement=NOWHERE)
    body["metadata"]["labels"] = labels
    assert apply(platform, ns, body).returncode == 0

    def pods() -> list[Any]:
        found = platform.core.list_namespaced_pod(ns, label_selector="sigma0.dev/cycle=held").items
        return [p for p in found if not p.metadata.deletion_timestamp]
    first = wait_for(platform, ns, "the harvest pod", pods)
    (job,) = jobs_of(platform, ns, "held")
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"  # a queue can admit it like any Job
    platform.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "held",
                                                   {"spec": {"suspend": True}})
    found = wait_for(platform, ns, "Suspended", phase_is(platform, ns, "held", "Suspended"))
    assert "during harvest" in found["message"]
    assert condition(found, "Suspended")["status"] == "True" and condition(found, "Complete")["status"] == "False"
    wait_for(platform, ns, "the Job controller to remove the pod", lambda: not pods(), timeout=60)

    def suspended_condition() -> bool:
        (job,) = jobs_of(platform, ns, "held")
        return any(c.type == "Suspended" and c.status == "True" for c in job.status.conditions or [])
    wait_for(platform, ns, "the Job's Suspended condition", suspended_condition)
    platform.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "held",
                                                   {"spec": {"suspend": False}})
    second = wait_for(platform, ns, "a new pod after the resume", pods, timeout=60)
    assert {p.metadata.name for p in second}.isdisjoint({p.metadata.name for p in first})
    assert [j.metadata.name for j in jobs_of(platform, ns, "held")] == ["held-harvest-1"]  # the same Job
    resumed = status(platform, ns, "held")
    assert resumed["phase"] == "Harvesting"
    assert condition(resumed, "Suspended")["status"] == "False"


@pytest.mark.slow
def test_a_waiting_cycle_says_why_and_fails_at_its_deadline(platform: Platform, ns: str) -> None:
    assert apply(platform, ns, example("late", release="late", deadlineSeconds=60, placement=NOWHERE)).returncode == 0

    def unschedulable() -> dict[str, Any] | None:
        found = status(platform, ns, "late")
        waiting = found.get("conditions") and condition(found, "Harvested")["reason"] == "Unschedulable"
        return found if waiting else None
    found = wait_for(platform, ns, "the harvest pod to be reported Unschedulable", unschedulable)
    assert found["phase"] == "Harvesting"
    harvested = condition(found, "Harvested")
    assert "is Pending" in harvested["message"] and "node" in harvested["message"]  # the scheduler's own words
    assert condition(found, "Ready")["reason"] == "Unschedulable"
    assert found["message"] == harvested["message"]
    found = wait_for(platform, ns, "the deadline", phase_is(platform, ns, "late", "Failed"), timeout=90)
    failed = condition(found, "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "deadlineSeconds=60" in failed["message"]
    assert found["stages"]["harvest"]["state"] == "failed"

    def stopped() -> bool:  # deleted by the operator, or failed by its own activeDeadlineSeconds: no pod left running
        pods = platform.core.list_namespaced_pod(ns, label_selector="sigma0.dev/cycle=late").items
        return all(j.status.failed or j.status.conditions for j in jobs_of(platform, ns, "late")) and all(
            p.status.phase in ("Failed", "Succeeded") or p.metadata.deletion_timestamp for p in pods)
    wait_for(platform, ns, "the stage to be stopped", stopped, timeout=60)


@pytest.mark.slow
def test_two_cycles_of_one_release_through_restarts(platform: Platform, ns: str) -> None:
    """The example bootstraps the release while a second cycle waits Queued; the operator is killed during
    verify and during train and resumes with no duplicate Job; the second cycle is evaluated against the first
    one's adapter and decided; `kubectl get` shows it all."""
    operator = platform.operator
    assert apply(platform, ns, EXAMPLE).returncode == 0
    second = example("sample-coder-2", train={**example()["spec"]["train"], "seed": 1})
    assert apply(platform, ns, second).returncode == 0
    queued = wait_for(platform, ns, "the second cycle to be Queued", phase_is(platform, ns, "sample-coder-2", "Queued"))
    assert "sample-coder-1" in queued["message"]

    def running(job: str) -> Callable[[], bool]:
        def check() -> bool:
            found = [j for j in jobs_of(platform, ns, "sample-coder-1") if j.metadata.name == job]
            return bool(found) and not (found[0].status.succeeded or found[0].status.failed)
        return check

    for job in ("sample-coder-1-verify-1", "sample-coder-1-train-1"):
        wait_for(platform, ns, f"{job} to run", running(job), timeout=180, interval=0.1)
        operator.kill()
        time.sleep(1.5)
        operator.start()

    first = wait_for(platform, ns, "the first cycle to end",
                     phase_is(platform, ns, "sample-coder-1", "Succeeded", "Failed"), timeout=400)
    assert first["phase"] == "Succeeded", diagnostics(platform, ns)
    assert first["decision"]["outcome"] == "Bootstrapped"
    assert first["counts"]["verified"] > 0, "the sandbox verified nothing: " + json.dumps(first["stages"]["verify"])
    assert first["candidate"]["total"] == 3
    assert "gvisor" in first["stages"]["verify"]["isolation"]
    published = release(platform, ns, "sample-coder")
    assert published is not None and published["spec"]["revision"] == 1 == first["releaseRevision"]
    assert published["spec"]["current"]["cycle"] == "sample-coder-1"
    assert published["spec"]["current"]["digest"] == first["candidate"]["digest"]

    final = wait_for(platform, ns, "the second cycle to end",
                     phase_is(platform, ns, "sample-coder-2", "Succeeded", "Failed"), timeout=400)
    assert final["phase"] == "Succeeded", diagnostics(platform, ns)
    assert final["startTime"] >= first["completionTime"], "the second cycle started before the first one ended"
    assert final["resolvedIncumbent"]["digest"] == first["candidate"]["digest"]
    assert final["incumbent"]["total"] == 3 and final["candidate"]["total"] == 3
    outcome = final["decision"]["outcome"]
    assert outcome in ("Promoted", "Rejected")
    after = release(platform, ns, "sample-coder")
    assert after["spec"]["revision"] == (2 if outcome == "Promoted" else 1)

    # one Job per step, never a second attempt, through two SIGKILLs
    expected = {"harvest", "verify", "dataset", "train", "generate", "score-candidate", "decide"}
    for name, steps in (("sample-coder-1", expected), ("sample-coder-2", expected | {"score-incumbent"})):
        names = sorted(j.metadata.name for j in jobs_of(platform, ns, name))
        assert names == sorted(f"{name}-{step}-1" for step in steps), names

    # kubectl get tc, column by column
    rows = {row["NAME"]: row for row in table(platform.cluster.kubectl("get", "trainingcycles", "-n", ns).stdout)}
    assert list(rows["sample-coder-1"]) == ["NAME", "RELEASE", "PHASE", "REASON", "VERIFIED", "CANDIDATE",
                                            "INCUMBENT", "DECISION", "AGE"]
    counts = first["counts"]
    assert rows["sample-coder-1"] | {"AGE": ""} == {
        "NAME": "sample-coder-1", "RELEASE": "sample-coder", "PHASE": "Succeeded", "REASON": "Bootstrapped",
        "VERIFIED": f"{counts['verified']}/{counts['harvested']}", "CANDIDATE": first["candidate"]["passAt1Display"],
        "INCUMBENT": "none", "DECISION": "Bootstrapped", "AGE": ""}
    assert rows["sample-coder-2"]["INCUMBENT"] == final["incumbent"]["passAt1Display"]
    assert rows["sample-coder-2"]["CANDIDATE"] == final["candidate"]["passAt1Display"]
    assert rows["sample-coder-2"]["DECISION"] == outcome and rows["sample-coder-2"]["AGE"]
    ar = table(platform.cluster.kubectl("get", "ar", "-n", ns).stdout)[0]
    assert (ar["NAME"], ar["CYCLE"], ar["REVISION"]) == ("sample-coder", after["spec"]["current"]["cycle"],
                                                         str(after["spec"]["revision"]))

    # the operator was last restarted during the first cycle's train: it saw both decisions
    metrics = operator.metrics()
    assert 'sigma0_decisions_total{outcome="Bootstrapped",release="sample-coder"} 1.0' in metrics
    assert f'sigma0_decisions_total{{outcome="{outcome}",release="sample-coder"}} 1.0' in metrics
    assert 'sigma0_stage_duration_seconds_count{state="succeeded",step="decide"} 2.0' in metrics
    wait_for(platform, ns, "the phase gauge", lambda: 'sigma0_cycles{phase="Succeeded"}' in operator.metrics())

    # deleting a cycle removes its Jobs and never touches the release
    platform.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "sample-coder-2")
    wait_for(platform, ns, "the second cycle's Jobs to go", lambda: not jobs_of(platform, ns, "sample-coder-2"),
             timeout=60)
    assert release(platform, ns, "sample-coder")["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


# Two more ways in: an adapter trained elsewhere (spec.candidate) and a dry run (spec.stopAfter) --------------------


def _imported(name: str, adapter: str, digest: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingCycle", "metadata": {"name": name},
            "spec": {"release": "imported", "baseModel": {"name": "tiny://llama"},
                     "candidate": {"uri": f"imports/{adapter}", "digest": digest},
                     "eval": {"suite": "imports/answer.jsonl", "maxNewTokens": 1, "batchSize": 1},
                     "deadlineSeconds": 1800}}


@pytest.mark.slow
def test_imported_adapters_are_gated_a_win_is_promoted_a_tie_rejected_and_a_wrong_digest_fails_before_any_gpu(
        platform: Platform, ns: str) -> None:
    from crafted import crafted_adapter, write_suite

    from sigma0.io import tree_digest

    imports = platform.artifacts / "imports"
    imports.mkdir(exist_ok=True)
    write_suite(imports / "answer.jsonl")
    for adapter, char, strength in (("wrong", "8", 1000.0), ("right", "7", 1000.0), ("right-too", "7", 2000.0)):
        if not (imports / adapter).exists():
            crafted_adapter("tiny://llama", char, imports / adapter, strength=strength)
    for path in (imports, *imports.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    digests = {name: tree_digest(imports / name) for name in ("wrong", "right", "right-too")}
    cycles = {"imp-1-first": ("wrong", digests["wrong"]), "imp-2-winner": ("right", digests["right"]),
              "imp-3-tie": ("right-too", digests["right-too"]),
              "imp-4-mismatch": ("right", digests["wrong"])}  # the right folder, named with another's digest
    for name, (adapter, digest) in cycles.items():  # one at a time for the release, in creation order
        assert apply(platform, ns, _imported(name, adapter, digest)).returncode == 0
    ended = {name: wait_for(platform, ns, f"{name} to end", phase_is(platform, ns, name, "Succeeded", "Failed"),
                            timeout=400) for name in cycles}

    outcomes = {name: (found["phase"], (found.get("decision") or {}).get("outcome")) for name, found in ended.items()}
    assert outcomes == {"imp-1-first": ("Succeeded", "Bootstrapped"), "imp-2-winner": ("Succeeded", "Promoted"),
                        "imp-3-tie": ("Succeeded", "Rejected"), "imp-4-mismatch": ("Failed", None)}, \
        diagnostics(platform, ns)
    winner, tie = ended["imp-2-winner"], ended["imp-3-tie"]
    assert winner["candidate"]["digest"] == digests["right"] and winner["candidate"]["passAt1"] == 1.0
    assert winner["incumbent"]["digest"] == digests["wrong"] and winner["incumbent"]["passAt1"] == 0.0
    assert tie["candidate"]["passAt1"] == tie["incumbent"]["passAt1"] == 1.0
    for found in (winner, tie):  # the skipped stages say so, and why
        for kind in ("Harvested", "Verified", "Trained"):
            said = condition(found, kind)
            assert (said["status"], said["reason"]) == ("False", "Skipped") and "trained elsewhere" in said["message"]
    for name in ("imp-1-first", "imp-2-winner", "imp-3-tie"):
        steps = {j.metadata.labels["sigma0.dev/step"] for j in jobs_of(platform, ns, name)}
        assert {"import", "generate", "score-candidate", "decide"} <= steps
        assert not steps & {"harvest", "verify", "dataset", "train"}

    # the wrong digest: the import Job failed, and nothing else ran (no GPU pod was ever asked for)
    mismatch = ended["imp-4-mismatch"]
    assert condition(mismatch, "Failed")["reason"] == "DigestMismatch"
    assert "is not the adapter the manifest names" in condition(mismatch, "Failed")["message"]
    assert [j.metadata.labels["sigma0.dev/step"] for j in jobs_of(platform, ns, "imp-4-mismatch")] == ["import"]

    # the release points at the winner's copy in its cycle's folder, by digest; the tie changed nothing
    current = release(platform, ns, "imported")
    assert current is not None and current["spec"]["revision"] == 2
    assert current["spec"]["current"]["digest"] == digests["right"]
    assert current["spec"]["current"]["cycle"] == "imp-2-winner"
    uri = current["spec"]["current"]["uri"]
    assert uri.startswith("/artifacts/cycles/") and uri.endswith("/import/adapter")
    assert tree_digest(platform.artifacts / uri.removeprefix("/artifacts/")) == digests["right"]
    assert [p["digest"] for p in current["spec"]["history"]] == [digests["wrong"]]

    rows = {row["NAME"]: row for row in table(platform.cluster.kubectl("get", "tc", "-n", ns).stdout)}
    assert {name: rows[name]["DECISION"] for name in cycles} == {
        "imp-1-first": "Bootstrapped", "imp-2-winner": "Promoted", "imp-3-tie": "Rejected", "imp-4-mismatch": ""}
    assert rows["imp-4-mismatch"]["PHASE"] == "Failed"


@pytest.mark.slow
def test_a_dry_run_reports_what_would_train_runs_no_job_beyond_dataset_and_never_queues(platform: Platform,
                                                                                        ns: str) -> None:
    """A dry run and a real cycle of the same release, applied together: neither waits for the other (the dry
    run never enters the release's queue), and the dry run stops after dataset with its report."""
    dry = example("dry-run", release="shared", stopAfter="dataset")
    real = example("real-one", release="shared", harvest={"sources": [{"path": "corpus/missing.json"}]})
    assert apply(platform, ns, dry).returncode == 0 and apply(platform, ns, real).returncode == 0
    found = wait_for(platform, ns, "the dry run to end", phase_is(platform, ns, "dry-run", "Succeeded", "Failed"),
                     timeout=300)
    failed_real = wait_for(platform, ns, "the real cycle to fail at harvest",
                           phase_is(platform, ns, "real-one", "Failed", "Succeeded"), timeout=120)
    assert found["phase"] == "Succeeded", diagnostics(platform, ns)
    assert failed_real["phase"] == "Failed" and failed_real["startTime"] <= found["completionTime"], \
        "the real cycle waited for the dry run"
    assert found["decision"]["outcome"] == "DryRun"
    assert not found.get("incumbentResolved") and release(platform, ns, "shared") is None

    steps = sorted(j.metadata.labels["sigma0.dev/step"] for j in jobs_of(platform, ns, "dry-run"))
    assert steps == ["dataset", "harvest", "verify"]
    kinds = {j.metadata.labels["sigma0.dev/kind"] for j in jobs_of(platform, ns, "dry-run")}
    assert "gpu" not in kinds

    report = found["dryRun"]
    dataset = found["stages"]["dataset"]["summary"]
    assert report["stoppedAfter"] == "dataset"
    assert report["dataset"]["digest"] == dataset["dataset_digest"] and report["dataset"]["rows"] == dataset["rows"]
    assert report["verified"] == found["counts"]["verified"] > 0
    assert set(report["bySource"]) == {"/artifacts/corpus/agent_corpus.json", "/artifacts/corpus/tasks.jsonl"}
    assert report["dropped"] == found["counts"].get("dropped", {})
    for kind in ("Trained", "Evaluated"):
        said = condition(found, kind)
        assert (said["status"], said["reason"]) == ("False", "Skipped") and "a dry run" in said["message"]
    assert condition(found, "Ready")["reason"] == "DryRun"
    assert "would train on" in condition(found, "Ready")["message"]
    assert (condition(found, "Complete")["status"], condition(found, "Complete")["reason"]) == ("True", "DryRun")
    waited = platform.cluster.kubectl("wait", "--for=condition=Complete", "tc/dry-run", "-n", ns, "--timeout=10s")
    assert waited.returncode == 0, waited.stderr  # as for a Job
    rows = {row["NAME"]: row for row in table(platform.cluster.kubectl("get", "tc", "-n", ns).stdout)}
    assert (rows["dry-run"]["PHASE"], rows["dry-run"]["DECISION"]) == ("Succeeded", "DryRun")


@pytest.mark.slow
def test_the_operators_dashboard_shows_a_real_cycle_from_the_api_server(platform: Platform, ns: str) -> None:
    """`sigma0 operator --dashboard-port`: the page, in a real browser, after a cycle on the control plane: the
    AdapterRelease, the curve's point, the decision, and the per-problem evidence read from the artifacts volume;
    the operator's token nowhere on it."""
    assert apply(platform, ns, example("dash-1", release="dash")).returncode == 0
    found = wait_for(platform, ns, "the cycle to end", phase_is(platform, ns, "dash-1", "Succeeded", "Failed"),
                     timeout=400)
    assert found["phase"] == "Succeeded", diagnostics(platform, ns)
    published = release(platform, ns, "dash")
    assert published is not None
    token = yaml.safe_load(platform.kubeconfig.read_text())["users"][0]["user"]["token"]
    with chromium() as browser:
        browser.get(f"http://127.0.0.1:{platform.operator.dashboard_port}/")
        row = browser.find_element(By.CSS_SELECTOR, f'tr.release[data-release="{ns}/dash"]')
        assert row.find_element(By.CSS_SELECTOR, ".digest").text == short_digest(published["spec"]["current"]["digest"])
        assert row.find_element(By.CSS_SELECTOR, ".revision").text == "1"
        curve = browser.find_element(By.CSS_SELECTOR, f'section.curve[data-release="{ns}/dash"]')
        point = f"{found['candidate']['passAt1']:.3f}"
        for series in (0, 2):  # the candidate, and the promotion (it bootstrapped the release)
            (dot,) = curve.find_elements(By.CSS_SELECTOR, f"g.plot.overlay g.serie-{series} g.dots")
            assert dot.find_element(By.CSS_SELECTOR, "desc.value").get_attribute("textContent") == point
            assert dot.find_element(By.CSS_SELECTOR, "desc.x_label").get_attribute("textContent") == "dash-1"
        cycle = browser.find_element(By.CSS_SELECTOR, f'tr.cycle[data-cycle="{ns}/dash-1"]')
        assert cycle.get_attribute("data-phase") == "Succeeded"
        assert cycle.find_element(By.CSS_SELECTOR, ".decision .badge").text == found["decision"]["outcome"]
        assert cycle.find_element(By.CSS_SELECTOR, ".verified").text == found["counts"]["verifiedOfHarvested"]
        assert cycle.find_element(By.CSS_SELECTOR, ".candidate").text == found["candidate"]["passAt1Display"]
        assert token not in browser.page_source

        cycle.find_element(By.CSS_SELECTOR, ".name a").click()
        outputs = found["stages"]["score-candidate"]["outputs"]
        (results,) = [path for path in outputs if path.endswith("/results.jsonl")]
        rows = [json.loads(line) for line in
                (platform.artifacts / results.removeprefix("/artifacts/")).read_text().splitlines()]
        shown = {r.get_attribute("data-task"): r.find_element(By.CSS_SELECTOR, ".candidate").text
                 for r in browser.find_elements(By.CSS_SELECTOR, "tr.problem")}
        assert shown == {r["task_id"]: "pass" if r["passed"] else "fail" for r in rows} and len(shown) == 3
        assert browser.find_element(By.CSS_SELECTOR, 'tr.file[data-label="candidate"]').text.endswith("matches")
        assert token not in browser.page_source
