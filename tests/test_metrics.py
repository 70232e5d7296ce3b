"""The operator's metrics: what each one records, from what, and that a restart or a second look neither loses
nor doubles a phase's time (the HTTPS endpoint that serves them: tests/test_metrics_http.py; on the real
control plane: tests/cluster/test_metrics.py)."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from test_kube_executor import NOW, NS, api_with_one_cycle

from sigma0.kube import executor, handlers, jobs
from sigma0.kube.metrics import KINDS, OperatorMetrics, phase_ages, phase_change
from sigma0.kube.queue import depths


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def cycle(name: str, release: str = "coder", namespace: str = NS, created: str = "2026-01-01T00:00:00Z",
          **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
            "spec": {"release": release, "baseModel": {"name": "tiny://llama"},
                     "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}},
            "status": status}


# Reconcile duration and errors ---------------------------------------------------------------------------------


def test_every_reconcile_kind_exports_its_error_and_conflict_counts_from_the_start() -> None:
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    for kind in KINDS:  # an alert on rate(...) needs the series before the first error
        assert value(registry, "sigma0_reconcile_errors_total", kind=kind) == 0
        assert value(registry, "sigma0_reconcile_conflicts_total", kind=kind) == 0


class Reconciler:
    """Stands in for the JobExecutor: raises what it is told to."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def reconcile(self, namespace: str, name: str) -> None:
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(("error", "errors", "conflicts"), [
    (None, 0, 0), (RuntimeError("API server down"), 1, 0), (executor.Conflict("written meanwhile"), 0, 1)])
def test_each_cycle_reconcile_is_timed_and_its_error_or_conflict_counted(error: Exception | None, errors: int,
                                                                        conflicts: int) -> None:
    registry = CollectorRegistry()
    runtime = handlers.Runtime(Reconciler(error), None, OperatorMetrics(registry))  # type: ignore[arg-type]
    handlers.install(runtime)
    handlers.reconcile(NS, "c1")
    assert value(registry, "sigma0_reconcile_duration_seconds_count", kind="cycle") == 1
    assert value(registry, "sigma0_reconcile_errors_total", kind="cycle") == errors
    assert value(registry, "sigma0_reconcile_conflicts_total", kind="cycle") == conflicts


def test_a_ledger_reconcile_that_raises_is_timed_and_counted() -> None:
    registry = CollectorRegistry()

    class Broken:
        def pod_deleted(self, namespace: str, pod: Any) -> None:
            raise RuntimeError("ledger ConfigMap unreadable")

        def reconcile(self, namespace: str, name: str) -> None:
            pass

    handlers.install(handlers.Runtime(Broken(), None, OperatorMetrics(registry)))  # type: ignore[arg-type]
    handlers.pod_event(type="DELETED", body={"metadata": {"name": "p"}},  # type: ignore[arg-type]
                       labels={jobs.LABEL_KIND: "gpu", jobs.LABEL_CYCLE: "c1"}, namespace=NS)
    assert value(registry, "sigma0_reconcile_duration_seconds_count", kind="ledger") == 1
    assert value(registry, "sigma0_reconcile_errors_total", kind="ledger") == 1


# Queue depth and the oldest cycle per phase -------------------------------------------------------------------


def test_queue_depth_counts_the_cycles_waiting_per_release_and_a_release_without_cycles_goes() -> None:
    listed = [cycle("active", admitted=True, phase="Training"),
              cycle("second", phase="Queued"), cycle("third"),  # never reconciled yet: it waits too
              cycle("paused", phase="Suspended"), cycle("done", phase="Succeeded", admitted=True),
              cycle("dry", phase="Queued"), cycle("other", release="writer", phase="Queued"),
              cycle("elsewhere", namespace="team-b", phase="Queued")]
    listed[2]["status"] = {}
    listed[3]["spec"]["suspend"] = True
    listed[5]["spec"]["stopAfter"] = "verify"  # a dry run never queues
    assert depths(listed) == {(NS, "coder"): 2, (NS, "writer"): 1, ("team-b", "coder"): 1}
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.cycles_seen(listed, NOW)
    assert value(registry, "sigma0_queue_depth", namespace=NS, release="coder") == 2
    metrics.cycles_seen([listed[0]], NOW)  # the others were deleted
    assert value(registry, "sigma0_queue_depth", namespace=NS, release="coder") == 0
    assert value(registry, "sigma0_queue_depth", namespace=NS, release="writer") is None


def test_the_oldest_cycle_per_unfinished_phase_is_read_from_the_status_and_reset_when_none_is_left() -> None:
    listed = [cycle("a", phase="Queued", phaseTransitionTime="2026-01-01T00:00:30Z"),
              cycle("b", phase="Queued", phaseTransitionTime="2026-01-01T00:00:50Z"),
              cycle("c", created="2026-01-01T00:00:45Z"),  # no status: New, since its creation
              cycle("d", phase="Training"),  # written before phaseTransitionTime existed: left out
              cycle("e", phase="Succeeded", phaseTransitionTime="2025-01-01T00:00:00Z")]
    listed[2]["status"] = {}
    assert phase_ages(listed, NOW) == {"Queued": 30.0, "New": 15.0}
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.cycles_seen(listed, NOW)
    assert value(registry, "sigma0_phase_oldest_seconds", phase="Queued") == 30
    assert value(registry, "sigma0_cycles", phase="Queued") == 2 and value(registry, "sigma0_cycles", phase="New") == 1
    metrics.cycles_seen(listed[4:], NOW)
    assert value(registry, "sigma0_phase_oldest_seconds", phase="Queued") == 0
    assert value(registry, "sigma0_cycles", phase="Queued") == 0


# Time in phase: observed once, by the write that ends it ------------------------------------------------------


def test_a_phase_change_is_measured_between_the_two_statuses_transition_times() -> None:
    before = {"phase": "Queued", "phaseTransitionTime": "2026-01-01T00:00:00Z"}
    assert phase_change(before, {"phase": "Pending", "phaseTransitionTime": "2026-01-01T00:02:00Z"}) == \
        ("Queued", 120.0)
    assert phase_change(before, {**before}) is None
    assert phase_change(None, {"phase": "Pending", "phaseTransitionTime": "2026-01-01T00:02:00Z"}) is None
    assert phase_change({"phase": "Queued"}, {"phase": "Pending", "phaseTransitionTime": "x"}) is None


def test_each_phase_a_cycle_leaves_is_observed_once_whoever_looks_again() -> None:
    api, registry = api_with_one_cycle(), CollectorRegistry()
    clients = executor.Clients(api, api, api)

    def operator(seconds: float) -> executor.JobExecutor:  # a fresh one each time: a restart, or another replica
        return executor.JobExecutor(clients, jobs.PodSettings(), metrics=metrics,
                                    clock=lambda: NOW + timedelta(seconds=seconds))

    metrics = OperatorMetrics(registry)
    operator(0).reconcile(NS, "c1")
    assert api.cycles["c1"]["status"]["phase"] == "Harvesting"
    assert api.cycles["c1"]["status"]["phaseTransitionTime"] == "2026-01-01T00:01:00Z"
    operator(10).reconcile(NS, "c1")  # learns the Job's start: a write, the same phase, its time kept
    assert api.cycles["c1"]["status"]["phaseTransitionTime"] == "2026-01-01T00:01:00Z"
    api.finish("c1-harvest-1", {"harvested": 3, "kept": 3, "excluded": 0})
    operator(75).reconcile(NS, "c1")
    assert api.cycles["c1"]["status"]["phase"] == "Verifying"
    assert value(registry, "sigma0_phase_duration_seconds_count", phase="Harvesting") == 1
    assert value(registry, "sigma0_phase_duration_seconds_sum", phase="Harvesting") == 75
    for seconds in (80, 90):  # seen again, by this operator and by a restarted one
        operator(seconds).reconcile(NS, "c1")
    assert value(registry, "sigma0_phase_duration_seconds_count", phase="Harvesting") == 1


def test_a_phase_change_whose_write_loses_is_not_observed() -> None:
    api, registry = api_with_one_cycle(), CollectorRegistry()
    clients = executor.Clients(api, api, api)
    metrics = OperatorMetrics(registry)
    executor.JobExecutor(clients, jobs.PodSettings(), metrics=metrics, clock=lambda: NOW).reconcile(NS, "c1")
    api.finish("c1-harvest-1", {"harvested": 3, "kept": 3, "excluded": 0})
    original = api.replace_namespaced_custom_object_status
    stale = copy.deepcopy(api.cycles["c1"])

    def racing(*args: Any, **kwargs: Any) -> Any:
        api._bump(api.cycles["c1"])  # another replica wrote first
        return original(*args, **kwargs)

    api.replace_namespaced_custom_object_status = racing  # type: ignore[method-assign]
    with pytest.raises(executor.Conflict):
        executor.JobExecutor(clients, jobs.PodSettings(), metrics=metrics,
                             clock=lambda: NOW + timedelta(seconds=30)).reconcile(NS, "c1")
    assert value(registry, "sigma0_phase_duration_seconds_count", phase="Harvesting") is None
    assert stale["status"]["phase"] == "Harvesting"
