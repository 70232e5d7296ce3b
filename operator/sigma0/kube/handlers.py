"""The kopf handlers: thin. Every one of them ends in `JobExecutor.reconcile(namespace, name)`.

Only event handlers (`@kopf.on.event`) are used, on purpose: they store no progress and add no finalizer, so
kopf writes nothing into a TrainingCycle (its status belongs to the executor: a dropped kopf status write cannot
stall anything) and deleting a cycle never waits for the operator. Timers and daemons would add a finalizer,
so the periodic resync (deadlines, queue hand-over, waiting pods) is a plain thread instead.

    TrainingCycle events     reconcile it, unless the event is the echo of the operator's own status write; on
                             DELETED, hand its release to the next cycle in the queue
    Job and pod events       reconcile the cycle they belong to (label sigma0.dev/cycle), so a finished Job or
                             an Unschedulable pod shows up in the status at once; a deleted GPU pod's hours
                             are closed in the namespace's GPU ledger
    resync thread            every --resync-seconds: every unfinished cycle that can move (`queue.movable`: the
                             active ones, the head of each queue, any past its deadline), the gauges read from the
                             listed cycles (`OperatorMetrics.cycles_seen`: phases, queue depths), the GPU ledgers
                             and GPU-hour gauges of the namespaces with cycles, and the janitor (sigma0.kube.janitor:
                             finished cycles past their release's limits or their TTL go, files first); with
                             --peering, only while this replica is the one kopf lets handle events

With peering, kopf pauses its handlers in every replica but the live one with the highest priority; the resync
thread is not kopf's, so it reads the same peering object and applies the same rule (`peering_active`).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from sigma0.kube import CYCLES, GROUP, VERSION, heap, jobs, queue
from sigma0.kube.executor import Clients, Conflict, JobExecutor
from sigma0.kube.janitor import Janitor
from sigma0.kube.metrics import OperatorMetrics
from sigma0.plan import TERMINAL_PHASES

log = logging.getLogger("sigma0.operator")


@dataclass(frozen=True)
class Peering:
    """This replica's place in a kopf peering (None in Runtime: standalone)."""

    name: str
    identity: str
    priority: int
    namespace: str | None = None  # None: the cluster-wide ClusterKopfPeering
    lifetime: int = 60  # seconds a replica counts as alive after its last heartbeat (kopf's settings.peering)

    def active(self, custom: Any, timeout: tuple[float, float]) -> bool:
        if self.namespace is None:
            found = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", self.name,
                                                     _request_timeout=timeout)
        else:
            found = custom.get_namespaced_custom_object("kopf.dev", "v1", self.namespace, "kopfpeerings", self.name,
                                                        _request_timeout=timeout)
        return peering_active(found.get("status") or {}, self.identity, self.priority, datetime.now(UTC))


def peering_active(peers: Mapping[str, Any], identity: str, priority: int, now: datetime) -> bool:
    """kopf's rule: a replica works only if it has announced itself and every other live peer has a lower
    priority (equal priorities pause both)."""
    if identity not in peers:
        return False
    for other, peer in peers.items():
        if other == identity or not isinstance(peer, Mapping):
            continue
        seen = datetime.fromisoformat(str(peer.get("lastseen")))
        alive = seen + timedelta(seconds=int(peer.get("lifetime", 60))) > now
        if alive and int(peer.get("priority", 0)) >= priority:
            return False
    return True


@dataclass
class Runtime:
    executor: JobExecutor
    clients: Clients
    metrics: OperatorMetrics
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    resync_seconds: float = 30.0
    watch_timeout: int = 60
    peering: Peering | None = None
    janitor: Janitor | None = None
    stop: threading.Event = field(default_factory=threading.Event)


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def _rt() -> Runtime:
    if _runtime is None:
        raise RuntimeError("sigma0.kube.handlers.install() was not called before kopf started")
    return _runtime


def reconcile(namespace: str, name: str) -> None:
    """Reconcile one cycle; when it has just ended, give its release to the next one in the queue."""
    runtime = _rt()
    try:
        with runtime.metrics.reconciling("cycle"):
            result = runtime.executor.reconcile(namespace, name)
    except Conflict as error:  # someone wrote the cycle meanwhile; the watch brings the next event
        runtime.metrics.conflicted("cycle")
        log.debug("%s", error)
        return
    except Exception:
        runtime.metrics.failed("cycle")
        log.exception("reconciling TrainingCycle %s/%s failed; it is retried on the next event or resync",
                      namespace, name)
        return
    if result is not None and result.finished_now:
        hand_over(namespace, result.release)


def hand_over(namespace: str, release: str) -> None:
    """Reconcile the cycle next in `release`'s queue, so that it starts now (and any other `queue.movable` one)."""
    runtime = _rt()
    unfinished = [c for c in runtime.executor.cycles_of(namespace, release) if not _finished(c)]
    for cycle in queue.movable(unfinished, runtime.executor.clock()):
        reconcile(namespace, cycle["metadata"]["name"])


def _finished(cycle: dict[str, Any]) -> bool:
    return (cycle.get("status") or {}).get("phase") in TERMINAL_PHASES


def _list_cycles(namespace: str | None) -> list[dict[str, Any]]:
    clients = _rt().clients
    if namespace is None:
        found = clients.custom.list_cluster_custom_object(GROUP, VERSION, CYCLES, _request_timeout=clients.timeout)
    else:
        found = clients.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, CYCLES,
                                                             _request_timeout=clients.timeout)
    return list(found.get("items") or [])


def resync_once() -> None:
    runtime = _rt()
    if runtime.peering is not None and not runtime.peering.active(runtime.clients.custom, runtime.clients.timeout):
        log.debug("resync skipped: another replica is the active one")
        return
    cycles: list[dict[str, Any]] = []
    for namespace in runtime.namespaces or (None,):
        cycles += _list_cycles(namespace)
    runtime.metrics.cycles_seen(cycles, runtime.executor.clock())
    for cycle in queue.movable([c for c in cycles if not _finished(c)], runtime.executor.clock()):
        if not runtime.stop.is_set():
            reconcile(cycle["metadata"]["namespace"], cycle["metadata"]["name"])
    runtime.executor.refresh_ledgers(cycles)
    if runtime.janitor is not None and not runtime.stop.is_set():
        try:
            runtime.janitor.sweep(cycles, runtime.namespaces)
        except Exception:  # the ledgers and the cycles above must not wait for it; the next resync tries again
            runtime.metrics.errors.labels("janitor").inc()
            log.exception("the janitor's pass failed; it runs again on the next resync")
    heap.trim()


def _resync_loop() -> None:
    runtime = _rt()
    while not runtime.stop.wait(runtime.resync_seconds):
        try:
            with runtime.metrics.reconciling("resync"):
                resync_once()
        except Exception:
            runtime.metrics.failed("resync")
            log.exception("resync failed; trying again in %s s", runtime.resync_seconds)


# kopf -------------------------------------------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    runtime = _rt()
    # Nothing should be stored, but if a handler ever does, it goes to annotations, never to status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sigma0.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sigma0.dev", key="last-handled-configuration")
    # A watch that the server ends every watch_timeout seconds, and a client that gives up soon after, never
    # goes silent: kopf reconnects (and relists) at least that often.
    settings.watching.server_timeout = runtime.watch_timeout
    settings.watching.client_timeout = runtime.watch_timeout + 15
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.watching.label_selectors["jobs"] = f"{jobs.MANAGED_BY[0]}={jobs.MANAGED_BY[1]}"
    settings.watching.label_selectors["pods"] = f"{jobs.MANAGED_BY[0]}={jobs.MANAGED_BY[1]}"
    settings.posting.enabled = False  # the executor posts its own events, one per transition
    settings.scanning.disabled = True  # no CRD or namespace scanning: fewer permissions
    if runtime.peering is not None:
        settings.peering.lifetime = runtime.peering.lifetime
    threading.Thread(target=_resync_loop, name="sigma0-resync", daemon=True).start()


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    _rt().stop.set()


@kopf.on.event(GROUP, VERSION, CYCLES)
def cycle_event(type: str | None, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":
        _rt().executor.forget(namespace, name)
        hand_over(namespace, str(body.get("spec", {}).get("release", "")))
        return
    if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return
    if _rt().executor.left_as_written(namespace, name, body.get("metadata", {}).get("resourceVersion")):
        return  # the echo of this operator's own status write
    reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={jobs.MANAGED_BY[0]: jobs.MANAGED_BY[1]})
def job_event(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    cycle = labels.get(jobs.LABEL_CYCLE)
    if cycle:
        reconcile(namespace, cycle)


@kopf.on.event("", "v1", "pods", labels={jobs.MANAGED_BY[0]: jobs.MANAGED_BY[1]})
def pod_event(type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str, **_: Any) -> None:
    if type == "DELETED" and labels.get(jobs.LABEL_KIND) == "gpu":
        try:
            with _rt().metrics.reconciling("ledger"):
                _rt().executor.pod_deleted(namespace, copy.deepcopy(dict(body)))
        except Exception:
            _rt().metrics.failed("ledger")
            log.exception("recording the end of GPU pod %s/%s failed; the resync closes it", namespace,
                          body.get("metadata", {}).get("name"))
    cycle = labels.get(jobs.LABEL_CYCLE)
    if cycle:
        reconcile(namespace, cycle)
