"""Faults injected into a running operator on the real control plane (tests/cluster), as the issue lists them: the
operator SIGKILLed at every phase boundary and inside every stage, its status writes lost, kube-apiserver killed and
restarted mid-cycle, stage pods that fail, hang past the deadline, are deleted, or leave a malformed or oversized
termination message, a stage's Job deleted mid-run, cycles deleted in every phase, spec changes mid-flight, and the
artifacts disk filling up.

For every fault the test asserts what the issue asks: the cycle ends in a terminal phase with a reason a person can
act on, no Job is duplicated (one Job per step and attempt, names ending -1 unless a Job vanished), nothing the
status recorded is lost afterwards, and the AdapterRelease changes only on a legitimate win.

Stage pods misbehave through the pod executor's command hook (tests/cluster/faults.py, stagefault.py): the product
has no test-only hook for any of it. The operator and the namespaces are those of tests/cluster/test_operator.py (a
module-scoped operator of this module's own). Racing promotions: two operators publishing one decision at once are
raced end to end here; two different promotions of one release can only race inside ClusterReleases.publish (a
release admits one cycle at a time), which test_operator.py's
test_two_racing_promotions_exactly_one_wins_and_rollback_works drives into a real 409.

Faults injected, by test: SIGKILL of the operator 22 + its status writes refused 1; kube-apiserver restarts 2 +
suspend mid-stage 1 + immutable patch 1; stage pods 10; a second operator 1 + status writes refused while both
publish 1; deletions 8; full disk 1. 48 in all; every test asserts zero duplicate Jobs, zero status losses and zero
wrongful release changes.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sigma0.kube import releases as kube_releases

from . import test_operator
from .cluster import Cluster
from .faults import FAKE_SUMMARIES, INCUMBENT_DIGEST, STAGEFAULT, StageFaults, hooked
from .test_operator import (
    GROUP,
    MANIFESTS,
    ROOT,
    VERSION,
    Operator,
    Platform,
    apply,
    condition,
    example,
    jobs_of,
    phase_is,
    release,
    status,
    wait_for,
)

platform = test_operator.platform
ns = test_operator.ns

ENDED = ("Succeeded", "Failed")
STEPS = ("harvest", "verify", "dataset", "train", "generate", "score-candidate", "decide")  # a cycle that bootstraps
GROUPS = ("Harvested", "Verified", "Trained", "Evaluated", "Decided")
OPERATOR = "system:serviceaccount:sigma0-system:sigma0-operator"


@pytest.fixture(scope="module")
def faults(cluster: Cluster) -> Iterator[StageFaults]:
    with hooked(cluster) as found:
        yield found


# Reading the world -------------------------------------------------------------------------------------------------


def job(platform: Platform, namespace: str, name: str) -> Any | None:
    try:
        return platform.batch.read_namespaced_job(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def job_ended(found: Any | None) -> bool:
    return found is not None and any(c.type in ("Complete", "Failed") and c.status == "True"
                                     for c in found.status.conditions or [])


def pods_of(platform: Platform, namespace: str, job_name: str) -> list[Any]:
    return platform.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items


def running_pod(platform: Platform, namespace: str, job_name: str) -> Any | None:
    return next((p for p in pods_of(platform, namespace, job_name) if p.status.phase == "Running"), None)


def container_exited(cluster: Cluster, namespace: str, pod: str) -> bool:
    """Whether the pod's stage process has ended, as the node knows it (the API may not know yet)."""
    assert cluster.executor is not None
    worker = cluster.executor.find(namespace, pod)
    run = worker.current.get("stage") if worker is not None else None
    return run is not None and run.exit_code is not None


def job_names(platform: Platform, namespace: str, cycle: str) -> list[str]:
    return sorted(j.metadata.name for j in jobs_of(platform, namespace, cycle))


def events(platform: Platform, namespace: str, name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in platform.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items:
        found.setdefault(event.reason, []).append(event.message)
    return found


def losses(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What `after` no longer says that `before` had recorded for good: a stage that had ended, the admission, the
    resolved incumbent, the counts (drop counts only grow: verify adds its own), the figures, the decision, the
    publication."""
    lost = []
    for name, stage in (before.get("stages") or {}).items():
        if stage.get("state") != "running" and (after.get("stages") or {}).get(name) != stage:
            lost.append(f"stages.{name}")
    for key in ("admitted", "incumbentResolved", "resolvedIncumbent", "published", "failure", "startTime",
                "candidate", "decision", "releaseRevision", "counts"):
        lost += _kept(before.get(key), after.get(key), key)
    return lost


def _kept(old: Any, new: Any, path: str) -> list[str]:
    """The parts of `old` that `new` does not keep (a mapping may gain keys; a drop count may grow)."""
    if old in (None, False):
        return []
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [path]
        return [p for k, v in old.items() for p in _kept(v, new.get(k), f"{path}.{k}")]
    if path.startswith("counts.dropped.") and isinstance(new, int):
        return [] if new >= old else [path]
    return [] if old == new else [path]


class StatusWatch:
    """Every status a test reads of one cycle, checked against the one before: `lost` must stay empty."""

    def __init__(self, platform: Platform, namespace: str, name: str) -> None:
        self.platform, self.namespace, self.name = platform, namespace, name
        self.last: dict[str, Any] = {}
        self.lost: list[str] = []
        self.reads = 0

    def now(self) -> dict[str, Any]:
        found = status(self.platform, self.namespace, self.name)
        self.lost += [f"{field} (read {self.reads})" for field in losses(self.last, found)]
        self.last, self.reads = found, self.reads + 1
        return found

    def phase(self, *phases: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            found = self.now()
            return found if found.get("phase") in phases else None
        return check


def assert_complete(found: dict[str, Any], name: str, steps: tuple[str, ...], attempts: dict[str, int] | None = None,
                    ) -> None:
    """A Succeeded cycle's status says everything: each step's Job, times and summary, the counts, both figures,
    the decision, every condition."""
    attempts = attempts or {}
    assert found["phase"] == "Succeeded", found.get("message")
    assert sorted(found["stages"]) == sorted(steps)
    for step in steps:
        stage = found["stages"][step]
        attempt = attempts.get(step, 1)
        assert (stage["job"], stage["attempt"], stage["state"]) == (f"{name}-{step}-{attempt}", attempt, "succeeded")
        assert stage["startTime"] and stage["completionTime"] and stage["summary"], (step, stage)
    assert found["admitted"] and found["incumbentResolved"] and found["startTime"] and found["completionTime"]
    counts = found["counts"]
    assert counts["harvested"] > 0 and counts["verified"] > 0
    assert counts["verifiedOfHarvested"] == f"{counts['verified']}/{counts['harvested']}"
    assert found["candidate"]["digest"].startswith("sha256:") and found["candidate"]["total"] == 3
    assert found["decision"]["outcome"] and found["decision"]["reason"]
    assert "gvisor" in found["stages"]["verify"]["isolation"]
    assert "gvisor" in found["stages"]["score-candidate"]["isolation"]
    for kind in GROUPS:
        assert condition(found, kind)["status"] == "True", condition(found, kind)
    assert condition(found, "Ready")["status"] == "True" and condition(found, "Failed")["status"] == "False"


def publish_incumbent(platform: Platform, namespace: str, name: str) -> dict[str, Any]:
    """An AdapterRelease that already has an adapter (so a test can see it left alone), as it is now."""
    decision = {"outcome": "Bootstrapped", "reason": "set up by the test", "candidate_pass_at_1": 1 / 3,
                "candidate_passed": 1, "candidate_total": 3}
    kube_releases.ClusterReleases(platform.custom, namespace).publish(
        name, cycle="before", decision=decision, candidate_uri="/artifacts/nowhere",
        candidate_digest=INCUMBENT_DIGEST, incumbent=None, evidence={})
    found = release(platform, namespace, name)
    assert found is not None
    return found


def failed_with(found: dict[str, Any], reason: str, *words: str) -> None:
    assert found["phase"] == "Failed", found.get("message")
    failed = condition(found, "Failed")
    assert failed["status"] == "True" and failed["reason"] == reason, failed
    for word in words:
        assert word in failed["message"], (word, failed["message"])
    assert found["completionTime"] and found["message"] == failed["message"]


class LogMark:
    """The operator's log from now on: a test whose faults the operator must take in its stride asserts that it
    logged no error about the test's namespace (a conflict is no error: it is retried on the next event)."""

    def __init__(self, platform: Platform, namespace: str) -> None:
        self.path, self.namespace = platform.operator.log, namespace
        self.offset = self.path.stat().st_size

    def errors(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        return [line for line in text.splitlines() if " ERROR sigma0." in line and f" {self.namespace}/" in line]


# Faults the tests inject ---------------------------------------------------------------------------------------


@contextmanager
def status_writes_refused(platform: Platform) -> Iterator[None]:
    """The operator's ClusterRole loses update and patch on trainingcycles/status, so every status write it
    makes is refused: what it did meanwhile (a Job created) is never recorded, as if it were killed right before
    each write. On leaving, manifests/10-rbac.yaml is applied again."""
    cluster = platform.cluster
    role = json.loads(cluster.kubectl("get", "clusterrole", "sigma0-operator", "-o", "json").stdout)
    for rule in role["rules"]:
        if rule.get("resources") == ["trainingcycles/status"]:
            rule["verbs"] = ["get"]
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))

    def may_write() -> bool:
        answer = cluster.kubectl("auth", "can-i", "update", "trainingcycles.sigma0.dev", "--subresource=status",
                                 "--all-namespaces", "--as", OPERATOR, check=False)
        return answer.stdout.strip() == "yes"

    _until(lambda: not may_write(), "the status permission to be revoked")
    try:
        yield
    finally:
        cluster.kubectl("apply", "-f", str(MANIFESTS / "10-rbac.yaml"))
        _until(may_write, "the status permission to be restored")


SMALL = {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}
# Pods of faked stages ask for next to nothing and no GPU, so that cycles held in every phase fit the one node.
LIGHT = {"train": {"gpus": 0, **SMALL}, "eval": {"gpus": 0, **SMALL}, "sandbox": SMALL}
WITH_INCUMBENT = ("harvest", "verify", "dataset", "train", "generate", "score-candidate", "score-incumbent", "decide")


def fake_until(faults: StageFaults, cycle: str, step: str | None) -> None:
    """Every step of `cycle` before `step` succeeds at once (a faked summary); `step` itself hangs (None: none)."""
    for earlier in WITH_INCUMBENT[: WITH_INCUMBENT.index(step) if step else None]:
        faults.fake(cycle, earlier, FAKE_SUMMARIES[earlier.split("-")[0]])
    if step:
        faults.hang(cycle, step)


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.2)


# Tests -------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_every_phase_boundary_and_inside_every_stage(platform: Platform, ns: str,
                                                                 faults: StageFaults) -> None:
    """One cycle; each step's pod is held Running until the test lets it go. The operator is SIGKILLed when each
    step's Job exists, while its pod runs (the stage ends while the operator is down), and once the Job has ended
    (the boundary to the next step or phase). Once, the status write after a Job's creation is refused and the
    operator killed before it could record that Job: the restarted one must adopt it, not make a second."""
    name = "killed"
    operator = platform.operator
    gates = {step: faults.gate(name, step, platform.artifacts) for step in STEPS}
    watch = StatusWatch(platform, ns, name)
    kills: list[tuple[str, str]] = []

    def kill(step: str, at: str, meanwhile: Callable[[], None] = lambda: None) -> None:
        operator.kill()
        meanwhile()
        operator.start()
        kills.append((step, at))
        watch.now()

    def created(job_name: str) -> Callable[[], Any]:
        return lambda: job(platform, ns, job_name)

    def running(job_name: str) -> Callable[[], Any]:
        return lambda: running_pod(platform, ns, job_name)

    def ended(job_name: str) -> Callable[[], bool]:
        return lambda: job_ended(job(platform, ns, job_name))

    def adopted(job_name: str) -> Callable[[], bool]:
        return lambda: any(job_name in message for message in events(platform, ns, name).get("JobAdopted") or [])

    assert apply(platform, ns, example(name, release=name)).returncode == 0
    for step in STEPS:
        job_name = f"{name}-{step}-1"
        wait_for(platform, ns, f"Job {job_name}", created(job_name), timeout=180)
        kill(step, "Job created")
        wait_for(platform, ns, f"{job_name}'s pod to run", running(job_name), timeout=120)
        if step == "harvest":
            with status_writes_refused(platform):
                kill(step, "stage running; it ends while the operator is down", gates[step].open)
                verify = f"{name}-verify-1"
                wait_for(platform, ns, f"{verify}, created but not recorded", created(verify), timeout=120)
                assert "verify" not in (watch.now().get("stages") or {}), "the status write was not refused"
                kill(step, "next Job created, its status write lost")

            # Events are posted after the status write, so the next kill must wait for this one: a kill between the
            # write and the post loses the event (events are best-effort), though the adoption itself is recorded.
            wait_for(platform, ns, f"{verify} to be adopted", adopted(verify), timeout=120)
            assert (watch.now().get("stages") or {}).get("verify", {}).get("job") == verify
        else:
            kill(step, "stage running; it ends while the operator is down", gates[step].open)
        wait_for(platform, ns, f"{job_name} to end", ended(job_name), timeout=300)
        kill(step, "Job ended: the boundary to the next step")

    found = wait_for(platform, ns, "the cycle to end", watch.phase(*ENDED), timeout=300)
    assert len(kills) == 3 * len(STEPS) + 1 and operator.starts >= len(kills) + 1
    assert_complete(found, name, STEPS)
    assert found["decision"]["outcome"] == "Bootstrapped" and found["releaseRevision"] == 1
    assert watch.lost == [], watch.lost
    assert job_names(platform, ns, name) == sorted(f"{name}-{step}-1" for step in STEPS)
    for step in STEPS:
        assert len(pods_of(platform, ns, f"{name}-{step}-1")) == 1, step
    published = release(platform, ns, name)
    assert published is not None and published["spec"]["revision"] == 1
    assert published["spec"]["current"]["cycle"] == name
    assert published["spec"]["current"]["digest"] == found["candidate"]["digest"]
    assert published["spec"]["history"] == []


@pytest.mark.slow
def test_apiserver_restarts_and_suspend_mid_flight(platform: Platform, ns: str, faults: StageFaults) -> None:
    """kube-apiserver is SIGKILLed while dataset runs, the stage ends with no API server to hear it, and it comes
    back; during train the cycle is suspended (train's Job is suspended, its pod deleted) and an immutable field is
    patched (refused); kube-apiserver restarts again (SIGTERM) while it is suspended; resumed, the cycle completes,
    with one Job and one pod per step left.

    After a restart kube-controller-manager's watches come back with client-go's back-off (seconds after a short
    outage, up to a minute after a long one or several): the outages here are kept short for that."""
    name = "restarted"
    control_plane = platform.cluster.control_plane
    assert control_plane is not None
    gates = {step: faults.gate(name, step, platform.artifacts) for step in ("dataset", "train")}
    watch = StatusWatch(platform, ns, name)
    assert apply(platform, ns, example(name, release=name)).returncode == 0

    dataset = f"{name}-dataset-1"
    pod = wait_for(platform, ns, f"{dataset}'s pod to run", lambda: running_pod(platform, ns, dataset), timeout=180)
    watch.now()
    control_plane.stop_apiserver()
    try:
        gates["dataset"].open()
        _until(lambda: container_exited(platform.cluster, ns, pod.metadata.name), "dataset to end", timeout=120)
    finally:
        control_plane.start_apiserver()

    train = f"{name}-train-1"
    wait_for(platform, ns, f"{train}'s pod to run", lambda: running_pod(platform, ns, train), timeout=180)
    assert platform.cluster.kubectl("patch", "tc", name, "-n", ns, "--type=merge",
                                    "-p", '{"spec": {"suspend": true}}').returncode == 0
    refused = platform.cluster.kubectl("patch", "tc", name, "-n", ns, "--type=merge",
                                       "-p", '{"spec": {"train": {"steps": 5}}}', check=False)
    assert refused.returncode != 0 and "train is immutable" in refused.stderr
    # suspended while train runs: its Job is suspended, and the Job controller stops its pod (the GPU is freed)
    suspended = wait_for(platform, ns, "the cycle to be Suspended during train", watch.phase("Suspended"), timeout=180)
    assert suspended["stages"]["train"]["state"] == "running"
    assert suspended["message"].startswith("suspended during train"), suspended["message"]
    _until(lambda: running_pod(platform, ns, train) is None, "the Job controller to stop train's pod", timeout=120)
    control_plane.restart_apiserver(down_s=1, kill=False)
    time.sleep(6)  # two resyncs: nothing may start while suspended
    assert watch.now()["phase"] == "Suspended"
    assert f"{name}-generate-1" not in job_names(platform, ns, name)
    assert running_pod(platform, ns, train) is None

    gates["train"].open()
    assert platform.cluster.kubectl("patch", "tc", name, "-n", ns, "--type=merge",
                                    "-p", '{"spec": {"suspend": false}}').returncode == 0
    found = wait_for(platform, ns, "the cycle to end", watch.phase(*ENDED), timeout=300)
    assert_complete(found, name, STEPS)
    assert found["decision"]["outcome"] == "Bootstrapped"
    assert found["stages"]["train"]["summary"]["steps"] == 4  # the refused patch changed nothing
    assert watch.lost == [], watch.lost
    assert job_names(platform, ns, name) == sorted(f"{name}-{step}-1" for step in STEPS)  # resumed, not recreated
    for step in STEPS:  # train's first pod was deleted by the suspension; its second ran after the resume
        assert len(pods_of(platform, ns, f"{name}-{step}-1")) == 1, step
    assert release(platform, ns, name)["spec"]["revision"] == 1
    assert {"PhaseSuspended", "Bootstrapped"} <= set(events(platform, ns, name))


@pytest.mark.slow
def test_stage_pods_that_fail_hang_vanish_or_lie(platform: Platform, ns: str, faults: StageFaults) -> None:
    """Seven cycles at once, each of its own release. Six end Failed, each saying why: a plain stage that exits 1
    (retried once, per backoffLimit), a sandbox stage that exits 1 (never retried), a stage that leaves a
    termination message that is not JSON, one whose message is too long (kubelet keeps its last 4096 bytes),
    one that hangs past the cycle's deadline, a sandbox pod deleted while it runs. The seventh meets a crash of
    its harvest, dataset and train pods and the deletion of its generate Job, and still succeeds: the crashes
    retried by the Job controller, the lost Job replaced by attempt 2. Releases that existed are untouched; only
    the seventh, a legitimate first win, creates one."""
    log = LogMark(platform, ns)
    broken = ("exits", "sandbox-exits", "garbage", "oversized", "hangs", "pod-deleted")
    before = {name: publish_incumbent(platform, ns, name) for name in broken}
    faults.add("exits", "harvest", "--exit", "1", "--stderr", "injected: harvest crashed")
    faults.add("sandbox-exits", "verify", "--exit", "1", "--stderr", "injected: verify crashed")
    faults.add("garbage", "harvest", "--message", "harvest done (this is not JSON)")
    oversized = json.dumps({**FAKE_SUMMARIES["harvest"], "detail": "x" * 6000})
    faults.add("oversized", "harvest", "--message", oversized)
    faults.hang("hangs", "harvest")
    faults.hang("pod-deleted", "verify")
    faults.add("retried", "harvest", "--exit", "1", "--stderr", "injected: harvest crashed once", times=1)
    faults.hang("retried", "dataset", times=1)
    faults.add("retried", "train", "--exit", "1", "--stderr", "injected: train crashed once", times=1)
    faults.hang("retried", "generate", times=1)
    for name in (*broken, "retried"):
        spec = {"deadlineSeconds": 60} if name == "hangs" else {}
        assert apply(platform, ns, example(name, release=name, **spec)).returncode == 0

    def delete_when_running(job_name: str, what: str) -> None:
        pod = wait_for(platform, ns, f"{job_name}'s pod to run", lambda: running_pod(platform, ns, job_name),
                       timeout=240)
        if what == "pod":
            platform.core.delete_namespaced_pod(pod.metadata.name, ns)
        else:
            platform.batch.delete_namespaced_job(job_name, ns, propagation_policy="Background")

    delete_when_running("pod-deleted-verify-1", "pod")
    delete_when_running("retried-dataset-1", "pod")
    delete_when_running("retried-generate-1", "job")
    ended = {name: wait_for(platform, ns, f"{name} to end", phase_is(platform, ns, name, *ENDED), timeout=300)
             for name in (*broken, "retried")}

    failed_with(ended["exits"], "StageFailed", "harvest failed: BackoffLimitExceeded", "exit code 1",
                "injected: harvest crashed")
    assert len(pods_of(platform, ns, "exits-harvest-1")) == 2  # backoffLimit 1: one retry
    failed_with(ended["sandbox-exits"], "StageFailed", "verify failed: PodFailurePolicy", "exit code 1",
                "injected: verify crashed")
    assert len(pods_of(platform, ns, "sandbox-exits-verify-1")) == 1  # a sandbox verdict is never retried
    for name in ("garbage", "oversized"):
        failed_with(ended[name], "StageFailed", "harvest failed:", "no JSON summary in its termination message")
        assert len(pods_of(platform, ns, f"{name}-harvest-1")) == 1
    failed_with(ended["hangs"], "DeadlineExceeded", "deadlineSeconds=60")
    failed_with(ended["pod-deleted"], "StageFailed", "verify failed:", "exit code 143")
    for name in broken:
        assert all(found.endswith("-1") for found in job_names(platform, ns, name)), job_names(platform, ns, name)
        assert release(platform, ns, name) == before[name], f"{name} changed its release"

    retried = ended["retried"]
    assert_complete(retried, "retried", STEPS, attempts={"generate": 2})
    assert job_names(platform, ns, "retried") == sorted(
        f"retried-{step}-{2 if step == 'generate' else 1}" for step in STEPS)
    for step in ("harvest", "dataset", "train"):  # one pod crashed or was deleted, the Job made another
        counted = job(platform, ns, f"retried-{step}-1").status
        assert (counted.failed, counted.succeeded) == (1, 1), (step, counted)
    lost = events(platform, ns, "retried")["JobLost"]
    assert any("retried-generate-1 is gone before it finished" in message for message in lost), lost
    assert retried["decision"]["outcome"] == "Bootstrapped"
    assert release(platform, ns, "retried")["spec"]["revision"] == 1
    assert log.errors() == []


@pytest.mark.slow
def test_two_operators_at_once_make_one_job_per_step_and_publish_once(platform: Platform, ns: str,
                                                                     faults: StageFaults, tmp_path: Path) -> None:
    """A second operator runs beside the first for a whole cycle: a replica thought dead that still runs (a
    partitioned node), what Recreate cannot prevent. Both create every Job (one wins, the other adopts it on 409)
    and write the status (the resourceVersion lets one through). When decide ends, status writes are refused for
    a while, so both operators publish the same decision again on every pass, racing each other: the release is
    created once and never written again."""
    name = "split-brain"
    gate = faults.gate(name, "decide", platform.artifacts)
    second = Operator(platform.kubeconfig, tmp_path / "second-operator.log", platform.operator.run_as_user)
    second.start()
    try:
        watch = StatusWatch(platform, ns, name)
        assert apply(platform, ns, example(name, release=name)).returncode == 0
        wait_for(platform, ns, "decide to run", lambda: running_pod(platform, ns, f"{name}-decide-1"), timeout=300)
        with status_writes_refused(platform):
            gate.open()
            created = wait_for(platform, ns, "the release", lambda: release(platform, ns, name), timeout=120)
            time.sleep(7)  # both operators, two resyncs each: each pass publishes again, none can record it
            assert "published" not in watch.now(), "the status write was not refused"
            assert release(platform, ns, name) == created, "a publish that was already done wrote again"
        found = wait_for(platform, ns, "the cycle to end", watch.phase(*ENDED), timeout=300)
    finally:
        second.stop()
    assert_complete(found, name, STEPS)
    assert watch.lost == [], watch.lost
    assert job_names(platform, ns, name) == sorted(f"{name}-{step}-1" for step in STEPS)
    for step in STEPS:
        assert len(pods_of(platform, ns, f"{name}-{step}-1")) == 1, step
    assert found["decision"]["outcome"] == "Bootstrapped" and found["releaseRevision"] == 1
    published = release(platform, ns, name)
    assert published == created and published["spec"]["revision"] == 1 and published["spec"]["history"] == []
    assert published["spec"]["current"]["cycle"] == name
    assert len(events(platform, ns, name).get("Bootstrapped") or []) == 1

@pytest.mark.slow
def test_deleting_a_cycle_in_every_phase_removes_its_jobs_and_leaves_the_release_alone(
        platform: Platform, ns: str, faults: StageFaults) -> None:
    """One cycle in each phase at once, moved there in seconds by faked stages and held by a stage that hangs;
    then all are deleted: their Jobs and pods go, nothing new is started, and no release changes."""
    log = LogMark(platform, ns)
    phases = {"del-queued": "Queued", "del-harvesting": "Harvesting", "del-verifying": "Verifying",
              "del-training": "Training", "del-evaluating": "Evaluating", "del-deciding": "Deciding",
              "del-succeeded": "Succeeded", "del-failed": "Failed"}
    holds = {"del-harvesting": "harvest", "del-verifying": "verify", "del-training": "train",
             "del-evaluating": "generate", "del-deciding": "decide"}
    releases = {name: "del-shared" if name in ("del-queued", "del-harvesting") else name for name in phases}
    before = {r: publish_incumbent(platform, ns, r) for r in set(releases.values())}
    for name, step in holds.items():
        fake_until(faults, name, step)
    fake_until(faults, "del-succeeded", None)
    faults.add("del-failed", "harvest", "--exit", "2", "--stderr", "injected: bad input")
    for name in phases:
        if name != "del-queued":
            assert apply(platform, ns, example(name, release=releases[name], placement=LIGHT)).returncode == 0
    wait_for(platform, ns, "del-harvesting to be admitted", phase_is(platform, ns, "del-harvesting", "Harvesting"))
    assert apply(platform, ns, example("del-queued", release="del-shared", placement=LIGHT)).returncode == 0

    def in_place() -> bool:
        return all(status(platform, ns, name).get("phase") == phase for name, phase in phases.items()) and all(
            running_pod(platform, ns, f"{name}-{step}-1") for name, step in holds.items())
    wait_for(platform, ns, "every cycle in its phase, its stage running", in_place, timeout=240)
    assert status(platform, ns, "del-succeeded")["decision"]["outcome"] == "Rejected"
    held = {name: job_names(platform, ns, name) for name in phases}
    assert held["del-queued"] == [] and all(held[name] for name in holds)

    for name in phases:
        platform.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", name)

    def gone() -> bool:
        selector = "sigma0.dev/cycle in (" + ",".join(phases) + ")"
        return not platform.batch.list_namespaced_job(ns, label_selector=selector).items and \
            not platform.core.list_namespaced_pod(ns, label_selector=selector).items
    wait_for(platform, ns, "the deleted cycles' Jobs and pods to go", gone, timeout=120)
    time.sleep(6)  # two resyncs of the operator: nothing comes back
    assert gone()
    assert platform.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles")["items"] == []
    for name, found in before.items():
        assert release(platform, ns, name) == found, f"AdapterRelease {name} changed"
    assert log.errors() == []


@pytest.fixture
def small_disk(platform: Platform, namespace: str) -> Iterator[tuple[str, Path]]:
    """A namespace whose artifacts claim is bound to a 16 MiB tmpfs of its own, the corpus copied in."""
    disk = Path(tempfile.mkdtemp(prefix="sigma0-small-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0777", "tmpfs", str(disk)], check=True)
    pv = f"artifacts-{namespace}"
    try:
        shutil.copytree(ROOT / "examples" / "corpus", disk / "corpus")
        for path in (disk / "corpus", *(disk / "corpus").rglob("*")):
            path.chmod(0o777 if path.is_dir() else 0o666)
        platform.core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "16Mi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(disk)}}})
        platform.core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "sigma0-artifacts"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "16Mi"}}}})
        yield namespace, disk
    finally:
        try:
            platform.core.delete_persistent_volume(pv)
        except client.ApiException as error:
            if error.status != 404:
                raise
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(disk)], check=False)  # a pod of the namespace still in it
        disk.rmdir()


def fill(disk: Path) -> int:
    """Write to `disk` until not one more byte fits; the bytes written."""
    written = 0
    with open(disk / "filler", "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    written += out.write(b"\0" * chunk) or 0
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    return written


@pytest.mark.slow
def test_a_full_artifacts_disk_fails_the_cycle_saying_so(platform: Platform, small_disk: tuple[str, Path],
                                                         faults: StageFaults) -> None:
    """The artifacts volume fills up while dataset runs (held until then): the stage cannot write, is retried
    once, and the cycle fails naming the full disk; the release it competed for is untouched."""
    namespace, disk = small_disk
    log = LogMark(platform, namespace)
    name = "full-disk"
    before = publish_incumbent(platform, namespace, name)
    gate = faults.gate(name, "dataset", disk)
    assert apply(platform, namespace, example(name, release=name)).returncode == 0
    wait_for(platform, namespace, "dataset to run", lambda: running_pod(platform, namespace, f"{name}-dataset-1"),
             timeout=180)
    assert fill(disk) > 0
    gate.open()
    found = wait_for(platform, namespace, "the cycle to end", phase_is(platform, namespace, name, *ENDED),
                     timeout=240)
    failed_with(found, "StageFailed", "dataset failed: BackoffLimitExceeded", "No space left on device")
    assert found["stages"]["verify"]["state"] == "succeeded"  # what was recorded before the disk filled stays
    assert job_names(platform, namespace, name) == [f"{name}-{step}-1" for step in ("dataset", "harvest", "verify")]
    assert job(platform, namespace, f"{name}-dataset-1").status.failed == 2  # retried once, per backoffLimit
    assert release(platform, namespace, name) == before

    assert log.errors() == []

# The injectors themselves (no cluster) ----------------------------------------------------------------------------


def test_stage_faults_rewrite_only_the_pods_they_name_and_only_as_often_as_told() -> None:
    faults = StageFaults()
    faults.add("c1", "harvest", "--exit", "1", times=1)
    faults.add("c1", "verify", "--gate", "/artifacts/g", real=True)

    def pod(cycle: str, step: str) -> dict[str, Any]:
        return {"metadata": {"name": f"{cycle}-{step}-x", "labels": {"sigma0.dev/cycle": cycle,
                                                                    "sigma0.dev/step": step}}}
    argv = ["sigma0", "stage", "harvest"]
    first = faults(pod("c1", "harvest"), {}, argv)
    assert first[1:] == [str(STAGEFAULT), "--exit", "1"]
    assert faults(pod("c1", "harvest"), {}, argv) == argv  # times=1: the retry runs the real stage
    assert faults(pod("c2", "harvest"), {}, argv) == argv  # another cycle
    held = faults(pod("c1", "verify"), {}, ["sigma0", "stage", "verify"])
    assert held[1:] == [str(STAGEFAULT), "--gate", "/artifacts/g", "--", "sigma0", "stage", "verify"]
    assert faults.applied == [("c1", "harvest", "c1-harvest-x"), ("c1", "verify", "c1-verify-x")]


def test_stagefault_holds_then_runs_the_stage_or_fails_and_lies_as_told(tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    env = {"PATH": "/usr/bin:/bin", "SIGMA0_TERMINATION_LOG": str(termination)}
    told = subprocess.run([sys.executable, str(STAGEFAULT), "--message", "not JSON", "--stderr", "boom",
                           "--exit", "3", "--", "false"], capture_output=True, text=True, env=env, timeout=60)
    assert (told.returncode, told.stderr, termination.read_text()) == (3, "boom\n", "not JSON")
    gate = tmp_path / "gate"
    held = subprocess.Popen([sys.executable, str(STAGEFAULT), "--gate", str(gate), "--", "echo", "ran"],
                            stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(1)
    assert held.poll() is None, "it did not wait for its gate"
    gate.touch()
    assert held.communicate(timeout=60)[0] == "ran\n" and held.returncode == 0
