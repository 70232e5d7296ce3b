"""The JobExecutor's reconcile against an in-memory API (the real one runs in tests/cluster/test_operator.py):
the restart cases that a SIGKILL only hits by luck, made to happen on purpose."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from sigma0.kube import executor, jobs

NS = "team"
NOW = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


class Response:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data).encode()


def _answer(data: Any, kwargs: dict[str, Any]) -> Any:
    return Response(data) if kwargs.get("_preload_content") is False else copy.deepcopy(data)


def _selects(selector: str, obj: dict[str, Any]) -> bool:
    wanted = dict(part.split("=", 1) for part in selector.split(","))
    return wanted.items() <= (obj["metadata"].get("labels") or {}).items()


class FakeApi:
    """Just the calls the executor makes, with resourceVersions and 404 / 409 like the API server."""

    def __init__(self) -> None:
        self.cycles: dict[str, dict[str, Any]] = {}
        self.releases: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.version = 0
        self.fail_status_writes = 0
        self.selectable_fields = True  # False: an API server before Kubernetes 1.31
        self.calls: list[str] = []

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    # custom objects
    def _store(self, plural: str) -> dict[str, dict[str, Any]]:
        return self.cycles if plural == "trainingcycles" else self.releases

    def get_namespaced_custom_object(self, group, version, ns, plural, name, **kwargs):
        if name not in self._store(plural):
            raise ApiException(status=404)
        return _answer(self._store(plural)[name], kwargs)

    def list_namespaced_custom_object(self, group, version, ns, plural, field_selector=None, **kwargs):
        self.calls.append(f"list {plural}" + (f" {field_selector}" if field_selector else ""))
        items = list(self._store(plural).values())
        if field_selector:
            if not self.selectable_fields:
                raise ApiException(status=400, reason='field label not supported: "spec.release"')
            field, value = field_selector.split("=", 1)
            assert field == "spec.release", field_selector
            items = [item for item in items if item["spec"].get("release") == value]
        return _answer({"items": items}, kwargs)

    def replace_namespaced_custom_object_status(self, group, version, ns, plural, name, body, **kwargs):
        if self.fail_status_writes:
            self.fail_status_writes -= 1
            raise RuntimeError("the operator died before it wrote the status")
        stored = self.cycles[name]
        if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        stored["status"] = copy.deepcopy(body["status"])
        return copy.deepcopy(self._bump(stored))

    def create_namespaced_custom_object(self, group, version, ns, plural, body, **kwargs):
        if body["metadata"]["name"] in self.releases:
            raise ApiException(status=409)
        self.releases[body["metadata"]["name"]] = self._bump(copy.deepcopy(body))

    def replace_namespaced_custom_object(self, group, version, ns, plural, name, body, **kwargs):
        if body["metadata"]["resourceVersion"] != self.releases[name]["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self.releases[name] = self._bump(copy.deepcopy(body))

    # jobs, pods, events
    def list_namespaced_job(self, ns, label_selector, **kwargs):
        self.calls.append("list jobs")
        return _answer({"items": [j for j in self.jobs.values() if _selects(label_selector, j)]}, kwargs)

    def create_namespaced_job(self, ns, body, **kwargs):
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409)
        job = copy.deepcopy(body)
        job["metadata"]["uid"] = f"uid-{name}"
        job["status"] = {"startTime": "2026-01-01T00:00:30Z"}
        self.jobs[name] = job
        return _answer(job, kwargs)

    def read_namespaced_job(self, name, ns, **kwargs):
        return _answer(self.jobs[name], kwargs)

    def delete_namespaced_job(self, name, ns, **kwargs):
        self.jobs.pop(name)

    def patch_namespaced_job(self, name, ns, body, **kwargs):  # a JSON merge patch: None removes a key
        self.calls.append(f"patch job {name}")

        def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
            for key, value in patch.items():
                if value is None:
                    into.pop(key, None)
                elif isinstance(value, dict):
                    merge(into.setdefault(key, {}), value)
                else:
                    into[key] = value
        merge(self.jobs[name], body)

    def list_namespaced_pod(self, ns, label_selector, **kwargs):
        self.calls.append("list pods")
        return _answer({"items": [p for p in self.pods if _selects(label_selector, p)]}, kwargs)

    def create_namespaced_event(self, ns, body, **kwargs):
        self.events.append(body)

    # what the Job controller and kubelet would do
    def finish(self, name: str, summary: dict[str, Any]) -> None:
        job = self.jobs[name]
        job["status"] |= {"conditions": [{"type": "Complete", "status": "True"}],
                          "completionTime": "2026-01-01T00:00:50Z"}
        self.pods.append({"metadata": {"name": f"{name}-x", "creationTimestamp": "2026-01-01T00:00:31Z",
                                       "labels": job["metadata"]["labels"],
                                       "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                          "status": {"phase": "Succeeded", "containerStatuses": [
                              {"name": "stage", "state": {"terminated": {"exitCode": 0,
                                                                        "message": json.dumps(summary)}}}]}})


@pytest.fixture
def api() -> FakeApi:
    return api_with_one_cycle()


def api_with_one_cycle() -> FakeApi:
    """A fake API server holding one new TrainingCycle, c1 (also tests/test_metrics.py's)."""
    fake = FakeApi()
    fake.cycles["c1"] = fake._bump({
        "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle",
        "metadata": {"name": "c1", "namespace": NS, "uid": "cycle-uid-1", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                 "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}, "deadlineSeconds": 3600}})
    return fake


def run(api: FakeApi, now: datetime = NOW, settings: jobs.PodSettings | None = None) -> executor.Result | None:
    clients = executor.Clients(api, api, api)
    return executor.JobExecutor(clients, settings or jobs.PodSettings(), clock=lambda: now).reconcile(NS, "c1")


def stages(api: FakeApi) -> dict[str, Any]:
    return api.cycles["c1"]["status"]["stages"]


def test_a_first_reconcile_admits_resolves_and_starts_harvest(api: FakeApi) -> None:
    result = run(api)
    assert result is not None and result.phase == "Harvesting"
    assert list(api.jobs) == ["c1-harvest-1"]
    harvest = dict(stages(api)["harvest"])
    key = harvest.pop("resumeKey")
    assert harvest == {"job": "c1-harvest-1", "attempt": 1, "state": "running", "summary": {}}
    assert len(key) == 64 and key == jobs.resume_key_of(api.jobs["c1-harvest-1"])
    status = api.cycles["c1"]["status"]
    assert status["admitted"] and status["incumbentResolved"] and "resolvedIncumbent" not in status
    assert {e["reason"] for e in api.events} >= {"Admitted", "IncumbentResolved", "StageStarted", "PhaseHarvesting"}
    run(api)  # learns the Job's startTime
    assert stages(api)["harvest"]["startTime"] == "2026-01-01T00:00:30Z"
    version = api.cycles["c1"]["metadata"]["resourceVersion"]
    run(api)  # nothing new: nothing written, no second Job
    assert api.cycles["c1"]["metadata"]["resourceVersion"] == version and list(api.jobs) == ["c1-harvest-1"]


def test_a_job_created_by_an_operator_killed_before_its_status_write_is_adopted(api: FakeApi) -> None:
    run(api)
    api.finish("c1-harvest-1", {"harvested": 3, "kept": 3, "excluded": 0})
    api.fail_status_writes = 1  # verify's Job is created, then the operator dies
    with pytest.raises(RuntimeError):
        run(api)
    assert "c1-verify-1" in api.jobs and "verify" not in stages(api)
    run(api)
    assert stages(api)["verify"]["job"] == "c1-verify-1" and stages(api)["harvest"]["state"] == "succeeded"
    assert stages(api)["verify"]["resumeKey"] == jobs.resume_key_of(api.jobs["c1-verify-1"]) is not None
    assert sorted(api.jobs) == ["c1-harvest-1", "c1-verify-1"]
    assert any(e["reason"] == "JobAdopted" for e in api.events)


def test_a_finished_job_moves_the_cycle_on(api: FakeApi) -> None:
    run(api)
    api.finish("c1-harvest-1", {"harvested": 3, "kept": 3, "excluded": 0})
    result = run(api)
    assert result is not None and result.phase == "Verifying"
    assert stages(api)["harvest"]["summary"] == {"harvested": 3, "kept": 3, "excluded": 0}
    assert stages(api)["harvest"]["completionTime"] == "2026-01-01T00:00:50Z"
    assert "c1-verify-1" in api.jobs


def test_a_job_that_vanished_before_it_finished_gets_another_attempt(api: FakeApi) -> None:
    run(api)
    del api.jobs["c1-harvest-1"]
    run(api)
    assert list(api.jobs) == ["c1-harvest-2"] and stages(api)["harvest"]["attempt"] == 2
    assert any(e["reason"] == "JobLost" for e in api.events)


def test_every_attempt_of_a_step_resumes_under_the_key_its_first_attempt_got(api: FakeApi) -> None:
    run(api)
    first = jobs.resume_key_of(api.jobs["c1-harvest-1"])
    del api.jobs["c1-harvest-1"]
    run(api)
    assert jobs.resume_key_of(api.jobs["c1-harvest-2"]) == first == stages(api)["harvest"]["resumeKey"]
    api.finish("c1-harvest-2", {"harvested": 3, "kept": 3, "excluded": 0})
    run(api)
    assert jobs.resume_key_of(api.jobs["c1-verify-1"]) not in (None, first), "each step has its own key"


def digest(char: str) -> str:
    return "sha256:" + char * 64


def argv_of(api: FakeApi, job: str) -> list[str]:
    return api.jobs[job]["spec"]["template"]["spec"]["containers"][0]["command"]


def test_the_digests_a_stage_reports_are_recorded_and_the_next_step_is_held_to_them(api: FakeApi) -> None:
    run(api)
    folder = "/artifacts/cycles/team/c1-cycle-ui/harvest"
    outputs = {"root": folder, "digests": {"candidates.jsonl": digest("1"), "report.json": digest("2")}}
    api.finish("c1-harvest-1", {"harvested": 3, "kept": 3, "excluded": 0, "outputs": outputs})
    run(api)
    harvest = stages(api)["harvest"]
    assert harvest["summary"] == {"harvested": 3, "kept": 3, "excluded": 0}
    assert harvest["outputs"] == {f"{folder}/candidates.jsonl": digest("1"), f"{folder}/report.json": digest("2")}
    argv = argv_of(api, "c1-verify-1")
    assert argv[argv.index("--expect") + 1] == f"{digest('1')}={folder}/candidates.jsonl"


def test_a_stage_that_finds_its_input_tampered_with_fails_the_cycle(api: FakeApi) -> None:
    run(api)
    api.finish("c1-harvest-1", {"harvested": 3, "kept": 3, "excluded": 0})  # an older image: no digests
    run(api)
    argv = argv_of(api, "c1-verify-1")
    assert argv[argv.index("--expect") + 1] == "unrecorded=/artifacts/cycles/team/c1-cycle-ui/harvest/candidates.jsonl"
    message = ("evidence_missing: no digest was recorded for /artifacts/cycles/team/c1-cycle-ui/harvest/candidates."
               "jsonl when the stage that wrote it ended, so nothing shows it is that stage's output")
    job = api.jobs["c1-verify-1"]
    job["status"] |= {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                      "lastTransitionTime": "2026-01-01T00:00:55Z"}]}
    said = json.dumps({"stage": "verify", "kind": "evidence_missing", "error": message})
    api.pods.append({"metadata": {"name": "c1-verify-1-x", "creationTimestamp": "2026-01-01T00:00:31Z",
                                  "labels": job["metadata"]["labels"],
                                  "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                     "status": {"phase": "Failed", "containerStatuses": [
                         {"name": "stage", "state": {"terminated": {"exitCode": 2, "message": said}}}]}})
    result = run(api)
    assert result is not None and result.phase == "Failed"
    status = api.cycles["c1"]["status"]
    assert "verify failed" in status["message"] and "evidence_missing" in status["message"]
    assert "outputs" not in stages(api)["verify"]
    assert api.releases == {}, "the release is untouched"


def test_a_job_left_by_a_deleted_cycle_of_the_same_name_is_not_adopted(api: FakeApi) -> None:
    old_labels = {jobs.LABEL_CYCLE: "c1", jobs.LABEL_CYCLE_UID: "an-older-cycle", jobs.LABEL_STEP: "harvest"}
    api.jobs["c1-harvest-1"] = {"metadata": {"name": "c1-harvest-1", "uid": "old", "labels": old_labels,
                                             "ownerReferences": [{"uid": "an-older-cycle"}]}, "status": {}}
    run(api)
    status = api.cycles["c1"]["status"]
    assert "harvest" not in status["stages"]
    assert "earlier cycle of the same name" in status["message"]


def test_the_deadline_fails_the_cycle_and_stops_its_job(api: FakeApi) -> None:
    run(api)
    result = run(api, now=datetime(2026, 1, 1, 2, 0, tzinfo=UTC))
    assert result is not None and result.phase == "Failed" and result.finished_now
    assert api.jobs == {} and stages(api)["harvest"]["state"] == "failed"
    assert api.cycles["c1"]["status"]["failure"]["reason"] == "DeadlineExceeded"
    assert run(api) == executor.Result("Failed", "coder")  # terminal: left alone


def test_a_status_written_meanwhile_is_a_conflict_not_an_overwrite(api: FakeApi) -> None:
    original = api.replace_namespaced_custom_object_status

    def racing(*args: Any, **kwargs: Any) -> Any:
        api._bump(api.cycles["c1"])  # someone else wrote first
        return original(*args, **kwargs)

    api.replace_namespaced_custom_object_status = racing  # type: ignore[method-assign]
    with pytest.raises(executor.Conflict):
        run(api)


def _another(api: FakeApi, name: str, release: str, created: str, **status: Any) -> None:
    api.cycles[name] = api._bump({**copy.deepcopy(api.cycles["c1"]), "status": status})
    api.cycles[name]["metadata"] |= {"name": name, "uid": f"uid-{name}", "creationTimestamp": created}
    api.cycles[name]["spec"] = {**api.cycles[name]["spec"], "release": release}


def test_a_queued_cycle_waits_for_the_active_one(api: FakeApi) -> None:
    run(api)
    _another(api, "c0", "coder", "2025-12-31T23:59:59Z")
    # c1 was admitted first: the older c0 waits behind it
    clients = executor.Clients(api, api, api)
    executor.JobExecutor(clients, jobs.PodSettings(), clock=lambda: NOW).reconcile(NS, "c0")
    assert api.cycles["c0"]["status"]["phase"] == "Queued" and "c1" in api.cycles["c0"]["status"]["message"]


@pytest.mark.parametrize("selectable", [True, False], ids=["selectable-fields", "before-kubernetes-1.31"])
def test_a_queued_cycle_reads_only_its_release_and_no_jobs(api: FakeApi, selectable: bool) -> None:
    api.selectable_fields = selectable
    _another(api, "c0", "coder", "2025-12-31T23:59:59Z", admitted=True, phase="Training")
    for number in range(5):  # another release's cycles: not the queue's business
        _another(api, f"other{number}", "writer", "2025-12-31T00:00:00Z")
    operator = executor.JobExecutor(executor.Clients(api, api, api), jobs.PodSettings(), clock=lambda: NOW)
    operator.reconcile(NS, "c1")
    assert api.cycles["c1"]["status"]["phase"] == "Queued" and "c0" in api.cycles["c1"]["status"]["message"]
    by_release = "list trainingcycles spec.release=coder"
    # No Jobs or pods are listed: a cycle has them only once it is admitted. An old API server refuses the field
    # selector once; from then on the operator lists the namespace and filters it itself.
    assert api.calls == ([by_release] if selectable else [by_release, "list trainingcycles"])
    api.calls.clear()
    operator.reconcile(NS, "c1")
    assert api.calls == [by_release if selectable else "list trainingcycles"]


def test_only_the_heads_of_the_queues_are_worth_a_reconcile() -> None:
    from sigma0.kube.queue import movable

    def cycle(name: str, release: str, minute: int, deadline: int = 3600, **status: Any) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": NS, "creationTimestamp": f"2026-01-01T00:{minute:02d}:00Z"},
                "spec": {"release": release, "deadlineSeconds": deadline,
                         "suspend": bool(status.pop("suspend", False))}, "status": status}

    unfinished = [
        cycle("a3", "a", 3), cycle("a1", "a", 1, admitted=True), cycle("a2", "a", 2),  # a2 heads a's queue
        cycle("b1", "b", 1, suspend=True), cycle("b2", "b", 2), cycle("b3", "b", 3),  # b1 suspended: b2 heads b's
        cycle("c1", "c", 0, deadline=30),  # past its deadline (NOW is 00:01): it must fail, not wait
        cycle("c2", "c", 2),
    ]
    assert [c["metadata"]["name"] for c in movable(unfinished, NOW)] == ["c1", "a1", "a2", "b2"]


def test_only_the_highest_priority_live_replica_resyncs() -> None:
    from sigma0.kube.handlers import peering_active

    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    fresh, stale = "2026-01-01T00:09:50+00:00", "2026-01-01T00:00:00+00:00"
    peers = {"me": {"priority": 1, "lifetime": 60, "lastseen": fresh},
             "other": {"priority": 2, "lifetime": 60, "lastseen": fresh}}
    assert not peering_active(peers, "me", 1, now)
    assert peering_active(peers, "other", 2, now)
    peers["other"]["lastseen"] = stale  # the higher one died: the lower one takes over
    assert peering_active(peers, "me", 1, now)
    peers["other"] = {"priority": 1, "lifetime": 60, "lastseen": fresh}  # equal priorities: both pause, as kopf does
    assert not peering_active(peers, "me", 1, now)
    assert not peering_active({}, "me", 5, now)  # not announced yet


def test_the_echo_of_its_own_status_write_is_known_and_nothing_else_is(api: FakeApi) -> None:
    operator = executor.JobExecutor(executor.Clients(api, api, api), jobs.PodSettings(), clock=lambda: NOW)
    operator.reconcile(NS, "c1")
    written = api.cycles["c1"]["metadata"]["resourceVersion"]
    assert operator.left_as_written(NS, "c1", written)
    api._bump(api.cycles["c1"])  # a spec edit, or another writer
    assert not operator.left_as_written(NS, "c1", api.cycles["c1"]["metadata"]["resourceVersion"])
    assert not operator.left_as_written(NS, "c1", None) and not operator.left_as_written(NS, "other", written)
    operator.forget(NS, "c1")
    assert not operator.left_as_written(NS, "c1", written)


def test_a_reconcile_asked_for_while_another_waits_is_folded_into_it(api: FakeApi) -> None:
    import threading
    import time

    operator = executor.JobExecutor(executor.Clients(api, api, api), jobs.PodSettings(), clock=lambda: NOW)
    operator.reconcile(NS, "c1")  # admitted, harvest started
    reads: list[str] = []
    original = api.get_namespaced_custom_object

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[4])
        return original(*args, **kwargs)

    api.get_namespaced_custom_object = counting  # type: ignore[method-assign]
    busy = operator._locks[(NS, "c1")]
    busy.acquire()  # a reconcile of c1 is in progress
    waiting = threading.Thread(target=operator.reconcile, args=(NS, "c1"))
    waiting.start()
    deadline = time.monotonic() + 10
    while (NS, "c1") not in operator._waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert operator.reconcile(NS, "c1") is None and reads == []  # folded into the waiting one, at once
    busy.release()
    waiting.join(timeout=10)
    assert reads == ["c1"] and not operator._waiting
    operator.reconcile(NS, "c1")  # nothing waits any more: this one runs
    assert reads == ["c1", "c1"]


@pytest.mark.parametrize("spec, reason, flag", [
    ({"artifacts": {"path": "/srv/sigma0"}}, "HostPathNotAllowed", "allow_host_path"),
    ({"verify": {"sandbox": "process"}}, "ProcessSandboxNotAllowed", "allow_process_sandbox"),
    ({"placement": {"sandbox": {"runtimeClassName": "runc"}}}, "ProcessSandboxNotAllowed", "allow_process_sandbox"),
])
def test_a_cycle_the_operator_refuses_fails_at_once_and_touches_nothing(api: FakeApi, spec: dict[str, Any],
                                                                        reason: str, flag: str) -> None:
    api.cycles["c1"]["spec"].update(spec)
    api.releases["coder"] = {"metadata": {"name": "coder", "resourceVersion": "0"}, "spec": {"revision": 0}}
    before = copy.deepcopy(api.releases)
    result = run(api)
    assert result is not None and result.phase == "Failed" and result.finished_now
    status = api.cycles["c1"]["status"]
    assert status["failure"]["reason"] == reason and "--allow-" in status["failure"]["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == reason
    assert not status.get("admitted") and not status.get("incumbentResolved")
    assert api.jobs == {} and api.releases == before  # no Job, no queue slot, the release not even read
    assert "list jobs" not in api.calls and not any(call.startswith("list trainingcycles") for call in api.calls)
    assert reason in {e["reason"] for e in api.events}
    run(api)  # a failed cycle stays failed, and nothing more happens
    assert api.jobs == {}

    # the same cycle, anew, under an operator started with the flag runs
    api.cycles["c1"].pop("status")
    run(api, settings=jobs.PodSettings(**{flag: True}))
    assert list(api.jobs) == ["c1-harvest-1"]


def test_a_spec_field_from_newer_crds_fails_the_cycle_naming_it_instead_of_running_without_it(api: FakeApi) -> None:
    """CRDs upgraded before the operator: a stored cycle may carry a field this operator does not know (a stricter
    gate, say). Running without it could promote what the field was meant to stop; the cycle fails before any Job,
    naming the field and what to do (docs/install.md, "Upgrade")."""
    api.cycles["c1"]["spec"]["promote"] = {"margin": 0.02, "minGateProblems": 400}
    api.cycles["c1"]["spec"]["newSpecField"] = True
    result = run(api)
    assert result is not None and result.phase == "Failed" and result.finished_now
    failure = api.cycles["c1"]["status"]["failure"]
    assert failure["reason"] == "UnknownSpecFields"
    assert "spec.promote.minGateProblems" in failure["message"] and "spec.newSpecField" in failure["message"]
    assert "finish the upgrade" in failure["message"] and api.jobs == {}
    # a spec that is wrong in another way (a skew the other way round) says so as it is
    api.cycles["c1"] = api._bump({**api.cycles["c1"], "spec": {**api.cycles["c1"]["spec"], "newSpecField": None,
                                                               "promote": {"margin": "lots"}}})
    api.cycles["c1"]["spec"].pop("newSpecField")
    api.cycles["c1"].pop("status")
    run(api)
    assert api.cycles["c1"]["status"]["failure"]["reason"] == "InvalidSpec"


def test_a_stage_pod_that_cannot_start_fails_the_cycle_at_once_and_its_job_goes(api: FakeApi) -> None:
    run(api)
    job = api.jobs["c1-harvest-1"]
    owner = [{"uid": job["metadata"]["uid"]}]
    api.pods.append({"metadata": {"name": "c1-harvest-1-x", "creationTimestamp": "2026-01-01T00:00:31Z",
                                  "labels": job["metadata"]["labels"], "ownerReferences": owner},
                     "status": {"phase": "Pending", "containerStatuses": [{"name": "stage", "state": {"waiting": {
                         "reason": "CreateContainerConfigError", "message": 'secret "s3-credentials" not found'}}}]}})
    result = run(api, now=NOW + timedelta(seconds=5))
    assert result is not None and result.phase == "Failed" and result.finished_now
    assert api.jobs == {}  # deleted: a pod that cannot start holds nothing any longer
    status = api.cycles["c1"]["status"]
    assert status["stages"]["harvest"]["state"] == "failed"
    assert "CreateContainerConfigError" in status["message"] and "s3-credentials" in status["message"]
    assert status["reason"] == "StageFailed"
    assert any(e["reason"] == "StageFailed" for e in api.events)


def test_the_deadline_counts_from_admission_not_from_creation(api: FakeApi) -> None:
    run(api)  # c1 admitted at NOW
    _another(api, "c0", "coder", "2025-12-31T23:59:59Z")  # queued behind c1, created a day before its deadline
    queued = executor.JobExecutor(executor.Clients(api, api, api), jobs.PodSettings(),
                                  clock=lambda: NOW + timedelta(hours=2))
    queued.reconcile(NS, "c0")
    assert api.cycles["c0"]["status"]["phase"] == "Queued"  # waited 2 h > deadlineSeconds, never ran: no timeout
    assert api.cycles["c1"]["status"]["startTime"] == "2026-01-01T00:01:00Z"
    assert run(api, now=NOW + timedelta(seconds=3599)).phase == "Harvesting"
    result = run(api, now=NOW + timedelta(seconds=3600))
    assert result is not None and result.phase == "Failed"
    assert "admitted 2026-01-01T00:01:00Z" in api.cycles["c1"]["status"]["failure"]["message"]


def test_a_stage_timeout_bounds_its_job_and_is_named_when_it_ends_the_stage(api: FakeApi) -> None:
    api.cycles["c1"]["spec"]["stageTimeouts"] = {"harvest": 600}
    run(api)
    job = api.jobs["c1-harvest-1"]
    assert job["spec"]["activeDeadlineSeconds"] == 600  # nearer than the cycle's deadline (3600 s from admission)
    job["status"] |= {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                      "message": "Job was active longer than specified deadline"}]}
    result = run(api, now=NOW + timedelta(seconds=605))
    assert result is not None and result.phase == "Failed"
    message = api.cycles["c1"]["status"]["message"]
    assert "StageTimeout: harvest ran longer than spec.stageTimeouts.harvest=600 s" in message, message


def test_without_a_stage_timeout_a_job_ends_with_the_cycle(api: FakeApi) -> None:
    run(api)
    assert api.jobs["c1-harvest-1"]["spec"]["activeDeadlineSeconds"] == 3600 + executor.JOB_DEADLINE_SLACK_SECONDS


def test_suspending_a_running_stage_suspends_its_job_and_resuming_resumes_only_what_the_cycle_suspended(
        api: FakeApi) -> None:
    run(api)
    job = api.jobs["c1-harvest-1"]
    api.cycles["c1"]["spec"]["suspend"] = True
    run(api)
    assert job["spec"]["suspend"] is True  # the Job controller then deletes its pods: nothing runs, no GPU is held
    assert job["metadata"]["annotations"] == {jobs.ANNOTATION_SUSPENDED: "true"}
    status = api.cycles["c1"]["status"]
    assert status["phase"] == "Suspended" and status["reason"] == "Suspended" and "during harvest" in status["message"]
    api.calls.clear()
    run(api)
    assert "patch job c1-harvest-1" not in api.calls  # already suspended: nothing to do
    api.cycles["c1"]["spec"]["suspend"] = False
    run(api)
    assert job["spec"]["suspend"] is False and jobs.ANNOTATION_SUSPENDED not in job["metadata"]["annotations"]
    assert api.cycles["c1"]["status"]["phase"] == "Harvesting"
    # a Job a queue suspended (Kueue, until it admits it) is the queue's: the operator leaves it suspended
    job["spec"]["suspend"] = True
    api.calls.clear()
    run(api)
    assert job["spec"]["suspend"] is True and "patch job c1-harvest-1" not in api.calls
    assert api.cycles["c1"]["status"]["reason"] == "JobSuspended"


def test_a_cycles_queue_labels_and_annotations_go_onto_its_jobs(api: FakeApi) -> None:
    api.cycles["c1"]["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a", "team": "a"}
    api.cycles["c1"]["metadata"]["annotations"] = {"kueue.x-k8s.io/priority-class": "low", "note": "x"}
    run(api)
    metadata = api.jobs["c1-harvest-1"]["metadata"]
    assert metadata["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and "team" not in metadata["labels"]
    assert metadata["annotations"] == {"kueue.x-k8s.io/priority-class": "low"}
    # a label the operator sets itself cannot be overridden by the cycle's
    assert metadata["labels"][jobs.LABEL_CYCLE] == "c1"
