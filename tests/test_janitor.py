"""The janitor (sigma0.kube.janitor) against the in-memory API of test_kube_executor: files first, then the cycle;
a failed cleanup keeps its cycle; a refused cycle needs no cleanup pod; the cleanup pod is as small as it can be.
The real thing runs in tests/cluster/test_cleanup.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from test_kube_executor import FakeApi

from sigma0.kube import executor, jobs
from sigma0.kube.janitor import Janitor, cleanup_job, entry_of
from sigma0.retention import Limits, doomed

NS = "team"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = "sha256:" + "a" * 64


class Api(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, body=None, **kwargs):
        stored = self.cycles.get(name)
        if stored is None:
            raise ApiException(status=404)
        if body is not None and body.preconditions.uid != stored["metadata"]["uid"]:
            raise ApiException(status=409)
        self.deleted.append(name)
        del self.cycles[name]
        for job in [j for j in self.jobs.values() if stored["metadata"]["uid"] in
                    {o["uid"] for o in j["metadata"]["ownerReferences"]}]:  # the garbage collector
            del self.jobs[job["metadata"]["name"]]

    def list_cluster_custom_object(self, group, version, plural, **kwargs):
        found = self.list_namespaced_custom_object(group, version, None, plural, **kwargs)
        self.calls[-1] = f"list all {plural}"
        return found

    def list_job_for_all_namespaces(self, label_selector, **kwargs):
        found = self.list_namespaced_job(None, label_selector, **kwargs)
        self.calls[-1] = "list all jobs"
        return found

    def end(self, job: str, kind: str) -> None:
        self.jobs[job]["status"]["conditions"] = [{"type": kind, "status": "True"}]


def add_cycle(api: Api, name: str, phase: str | None, finished_min: int | None = None, release: str = "coder",
              **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if finished_min is not None:
        status["completionTime"] = (T0 + timedelta(minutes=finished_min)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle",
            "metadata": {"name": name, "namespace": NS, "uid": f"{name}-uid-0123456789",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"release": release, "baseModel": {"name": "tiny://llama"},
                     "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}, **spec},
            "status": status}
    api.cycles[name] = api._bump(body)
    return body


def folder(name: str) -> str:
    return f"/artifacts/cycles/{NS}/{name}-{f'{name}-uid-0123456789'[:8]}"


def add_release(api: Api, **spec: Any) -> None:
    api.releases["coder"] = api._bump({"apiVersion": "sigma0.dev/v1alpha1", "kind": "AdapterRelease",
                                       "metadata": {"name": "coder", "namespace": NS}, "spec": spec})


def janitor(api: Api, now: datetime = T0 + timedelta(days=1), settings: jobs.PodSettings | None = None) -> Janitor:
    return Janitor(executor.Clients(api, api, api), settings or jobs.PodSettings(), clock=lambda: now)


def sweep(api: Api, namespaces: tuple[str, ...] = (), **kwargs: Any) -> list[str]:
    return janitor(api, **kwargs).sweep([copy.deepcopy(c) for c in api.cycles.values()], namespaces)


@pytest.fixture
def api() -> Api:
    fake = Api()
    for index in range(3):
        add_cycle(fake, f"s{index}", "Succeeded", finished_min=index)
    add_cycle(fake, "running", "Training")
    add_cycle(fake, "other-release", "Succeeded", finished_min=0, release="other")
    return fake


def test_nothing_is_deleted_without_limits_or_ttl(api: Api) -> None:
    add_release(api, current={"uri": "/x", "digest": A})
    assert sweep(api) == [] and api.jobs == {} and api.deleted == []


@pytest.mark.parametrize("namespaces", [(), (NS, "elsewhere")], ids=["cluster-wide", "namespaced"])
def test_a_doomed_cycle_goes_only_after_its_cleanup_job_succeeded_and_keeps_the_current_adapter(
        api: Api, namespaces: tuple[str, ...]) -> None:
    adapter = f"{folder('s0')}/train/adapter"
    add_release(api, successfulCyclesHistoryLimit=1, current={"uri": adapter, "digest": A},
                history=[{"uri": "/elsewhere/adapter", "digest": A}])
    api.calls.clear()
    assert sweep(api, namespaces) == []
    # one list of releases and one of cleanup Jobs per pass: cluster-wide, or per watched namespace with cycles
    assert sorted(api.calls) == (["list all adapterreleases", "list all jobs"] if not namespaces else
                                 ["list adapterreleases", "list jobs"])
    assert sorted(api.jobs) == ["s0-clean-1", "s1-clean-1"]  # s2, the newest, stays; so do running and other
    command = api.jobs["s0-clean-1"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["sigma0", "clean", folder("s0"), "--keep", adapter]
    assert api.jobs["s1-clean-1"]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "sigma0", "clean", folder("s1")]
    said = {e["involvedObject"]["name"]: e["message"] for e in api.events if e["reason"] == "CleaningUp"}
    assert sorted(said) == ["s0", "s1"] and f"keeping {adapter} (its release points there)" in said["s0"]
    assert "one of more than 1 Succeeded cycles of release coder" in said["s1"]
    assert sweep(api, namespaces) == [] and api.deleted == []  # running: nothing more to do, no Job made twice
    api.end("s0-clean-1", "Complete")
    api.end("s1-clean-1", "Failed")
    assert sweep(api, namespaces) == [f"{NS}/s0"]
    assert "s0" not in api.cycles and "s0-clean-1" not in api.jobs
    assert "s1" in api.cycles and "s1-clean-1" in api.jobs  # a failed cleanup keeps its cycle, and says so
    del api.jobs["s1-clean-1"]  # a person deletes the failed Job: the janitor tries again
    sweep(api, namespaces)
    assert "s1-clean-1" in api.jobs


def test_a_cleanup_job_of_an_earlier_cycle_of_the_same_name_is_left_alone(api: Api) -> None:
    add_release(api, successfulCyclesHistoryLimit=0)
    sweep(api)
    api.end("s0-clean-1", "Complete")
    api.jobs["s0-clean-1"]["metadata"]["ownerReferences"][0]["uid"] = "a-deleted-cycle"
    sweep(api)
    assert "s0" in api.cycles


def test_ttl_after_finished_and_a_refused_cycle_needs_no_cleanup_pod(api: Api) -> None:
    add_cycle(api, "ttl", "Succeeded", finished_min=0, ttlSecondsAfterFinished=600)
    add_cycle(api, "refused", "Failed", finished_min=0, ttlSecondsAfterFinished=0,
              artifacts={"path": "/srv/host/folder"})
    assert sweep(api, now=T0 + timedelta(seconds=599)) == [f"{NS}/refused"]  # it never ran: nothing to clean
    assert api.jobs == {}
    sweep(api, now=T0 + timedelta(seconds=600))
    assert list(api.jobs) == ["ttl-clean-1"]


def test_the_cleanup_pod_is_root_with_two_capabilities_on_a_volume_and_unprivileged_on_a_uri(api: Api) -> None:
    cycle = add_cycle(api, "c", "Succeeded", finished_min=0, artifacts={"pvc": {"claimName": "team-artifacts",
                                                                                 "subPath": "sigma0"}})
    (found,) = doomed([entry_of(cycle, jobs.PodSettings())], "coder", Limits(successful=0), [], T0)
    job = cleanup_job(cycle, found, jobs.PodSettings())
    assert job["metadata"]["name"] == "c-clean-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == cycle["metadata"]["uid"]
    assert job["metadata"]["labels"][jobs.LABEL_STEP] == "clean"
    assert job["metadata"]["labels"][jobs.LABEL_NETWORK] == "none"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == 0 and not pod["automountServiceAccountToken"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["DAC_OVERRIDE", "FOWNER"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "team-artifacts"}} in pod["volumes"]
    assert {"name": "artifacts", "mountPath": "/artifacts", "subPath": "sigma0"} in container["volumeMounts"]
    assert "ttlSecondsAfterFinished" not in job["spec"]

    remote = add_cycle(api, "r", "Succeeded", finished_min=0, artifacts={"uri": "s3://bucket/sigma0"})
    settings = jobs.PodSettings(artifacts_secret="s3-keys")
    (found,) = doomed([entry_of(remote, settings)], "coder", Limits(successful=0), [], T0)
    job = cleanup_job(remote, found, settings)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["sigma0", "clean", "s3://bucket/sigma0/cycles/team/r-r-uid-01"]
    assert pod["securityContext"]["runAsUser"] == 65532 and container["securityContext"]["capabilities"] == {
        "drop": ["ALL"]}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]


def test_an_unreadable_spec_or_a_cycle_being_deleted_is_never_chosen(api: Api) -> None:
    add_release(api, successfulCyclesHistoryLimit=0, failedCyclesHistoryLimit=0)
    bad = add_cycle(api, "bad", "Failed", finished_min=0)
    bad["spec"]["train"] = {"steps": "many"}
    going = add_cycle(api, "going", "Failed", finished_min=0)
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    sweep(api)
    assert "bad-clean-1" not in api.jobs and "going-clean-1" not in api.jobs
    assert "s0-clean-1" in api.jobs  # the same pass did choose the others
