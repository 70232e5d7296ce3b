"""The operator's Prometheus figures, served on their own port (`sigma0 operator --metrics-port`; how, and who may
read them: sigma0.kube.metrics_http).

    sigma0_reconcile_duration_seconds{kind}        how long each reconcile took; kind: cycle (one TrainingCycle),
                                                   resync (one periodic pass over every cycle), ledger (closing a
                                                   deleted GPU pod's hours)
    sigma0_reconcile_errors_total{kind}            reconciles that raised, by the same kinds (every kind is exported
                                                   from the start, at 0, so that an alert on its rate has a series)
    sigma0_reconcile_conflicts_total{kind}         reconciles that lost a write to someone else: harmless (the watch
                                                   brings the next event), so not counted as errors
    sigma0_cycles{phase}                           TrainingCycles by phase (New: no status yet), on every resync
    sigma0_queue_depth{namespace,release}          cycles waiting in their release's queue (phase Queued: not
                                                   admitted, not suspended, not a dry run), on every resync
    sigma0_phase_duration_seconds{phase}           time a cycle spent in a phase, observed once, when the operator's
                                                   status write moves it out (from status.phaseTransitionTime)
    sigma0_phase_oldest_seconds{phase}             per unfinished phase, how long the cycle longest in it has been
                                                   there (New: since its creation), on every resync; 0 when none is
    sigma0_stage_duration_seconds{step,state}      how long each finished stage Job ran; state: succeeded or failed
    sigma0_decisions_total{release,outcome}        Promoted, Bootstrapped, Rejected, Stale
    sigma0_promotions_total{release}               AdapterRelease writes made by a cycle
    sigma0_gpu_hours_used{namespace,placement}     GPU-hours a placement's pods used in the trailing 7 days
    sigma0_gpu_hours_left{namespace,placement}     its weekly budget minus that (placements with a budget only)
    sigma0_placement_skips_total{step,placement,reason}
                                                   placements passed over: BudgetSpent, NoBudget, Unschedulable
                                                   (a pod deleted after waiting too long: a fallback)

Time in phase is read from the cycle's status, not from this process's memory, so a restarted operator loses
nothing: the gauge is recomputed from the listed cycles, and a phase's duration is observed by the one status
write that ends it (guarded by the cycle's resourceVersion, so two replicas, or a retried pass, cannot both make
it). A write that succeeds just before the process dies is the one observation that can be lost; none is doubled.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sigma0.kube import queue
from sigma0.plan import TERMINAL_PHASES

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
PHASE_BUCKETS = (1, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800)
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PROMOTING = ("Promoted", "Bootstrapped")
KINDS = ("cycle", "resync", "ledger")  # what a reconcile is of (the kind label)
STAGE_STATES = ("succeeded", "failed")  # the state label of sigma0_stage_duration_seconds
NEW = "New"  # the phase of a cycle the operator has not written a status to yet


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconcile_seconds = Histogram("sigma0_reconcile_duration_seconds", "Time taken by one reconcile",
                                           ["kind"], buckets=RECONCILE_BUCKETS, registry=self.registry)
        self.errors = Counter("sigma0_reconcile_errors", "Reconciles that raised", ["kind"], registry=self.registry)
        self.conflicts = Counter("sigma0_reconcile_conflicts", "Reconciles whose write lost to another writer "
                                 "(harmless: retried on the next event)", ["kind"], registry=self.registry)
        self.cycles = Gauge("sigma0_cycles", "TrainingCycles by phase", ["phase"], registry=self.registry)
        self.queue_depth = Gauge("sigma0_queue_depth", "Cycles waiting in their AdapterRelease's queue",
                                 ["namespace", "release"], registry=self.registry)
        self.phase_seconds = Histogram("sigma0_phase_duration_seconds", "Time a cycle spent in a phase, observed "
                                       "when it left it", ["phase"], buckets=PHASE_BUCKETS, registry=self.registry)
        self.phase_oldest = Gauge("sigma0_phase_oldest_seconds", "Time in its phase of the cycle longest in it, "
                                  "per unfinished phase", ["phase"], registry=self.registry)
        self.stage_seconds = Histogram("sigma0_stage_duration_seconds", "Run time of finished stage Jobs",
                                       ["step", "state"], buckets=BUCKETS, registry=self.registry)
        self.decisions = Counter("sigma0_decisions", "Promotion decisions applied", ["release", "outcome"],
                                 registry=self.registry)
        self.promotions = Counter("sigma0_promotions", "AdapterRelease writes by a cycle", ["release"],
                                  registry=self.registry)
        self.gpu_used = Gauge("sigma0_gpu_hours_used", "GPU-hours used per placement in the trailing 7 days",
                              ["namespace", "placement"], registry=self.registry)
        self.gpu_left = Gauge("sigma0_gpu_hours_left", "Weekly GPU-hour budget left per placement",
                              ["namespace", "placement"], registry=self.registry)
        self.skips = Counter("sigma0_placement_skips", "GPU placements passed over, by reason",
                             ["step", "placement", "reason"], registry=self.registry)
        for kind in KINDS:
            self.errors.labels(kind)
            self.conflicts.labels(kind)
        self._phases: set[str] = set()
        self._unfinished_phases: set[str] = set()
        self._queues: set[tuple[str, str]] = set()

    @contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Time one reconcile of `kind` (one of KINDS), whether it returns or raises."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.reconcile_seconds.labels(kind).observe(time.monotonic() - started)

    def failed(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def conflicted(self, kind: str) -> None:
        self.conflicts.labels(kind).inc()

    def stage_finished(self, stage: str, state: str, seconds: float | None) -> None:
        if seconds is not None:
            self.stage_seconds.labels(stage, state).observe(max(0.0, seconds))

    def phase_left(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase).observe(max(0.0, seconds))

    def decided(self, release: str, outcome: str) -> None:
        self.decisions.labels(release, outcome).inc()
        if outcome in PROMOTING:
            self.promotions.labels(release).inc()

    def gpu_hours(self, namespace: str, report: Mapping[str, Mapping[str, float]]) -> None:
        """Used and left GPU-hours per placement (sigma0.placement.usage_report) of one namespace."""
        for name, figures in report.items():
            self.gpu_used.labels(namespace, name).set(figures["used"])
            if "left" in figures:
                self.gpu_left.labels(namespace, name).set(figures["left"])

    def placement_skipped(self, step: str, placement: str, reason: str) -> None:
        self.skips.labels(step, placement, reason).inc()

    def cycles_seen(self, cycles: list[Mapping[str, Any]], now: datetime) -> None:
        """The gauges read from every listed TrainingCycle (the resync calls this): cycles by phase, queue depth
        per release, and the oldest cycle's time in each unfinished phase."""
        self.set_phases(Tally(phase_of(c) for c in cycles))
        depths = queue.depths(cycles)
        for gone in self._queues - set(depths):  # a release with no cycle left: its series goes too
            self.queue_depth.remove(*gone)
        self._queues = set(depths)
        for (namespace, release), depth in depths.items():
            self.queue_depth.labels(namespace, release).set(depth)
        oldest = phase_ages(cycles, now)
        self._unfinished_phases |= set(oldest)
        for phase in self._unfinished_phases:
            self.phase_oldest.labels(phase).set(oldest.get(phase, 0.0))

    def set_phases(self, counts: Mapping[str, int]) -> None:
        """Cycles by phase; a phase seen before and now empty reads 0 rather than disappearing."""
        self._phases |= set(counts)
        for phase in self._phases:
            self.cycles.labels(phase).set(counts.get(phase, 0))


def phase_of(cycle: Mapping[str, Any]) -> str:
    return str((cycle.get("status") or {}).get("phase") or NEW)


def phase_ages(cycles: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, float]:
    """Per unfinished phase, the seconds since the cycle longest in it entered it (status.phaseTransitionTime; a
    cycle with no status yet counts from its creation). Cycles whose status predates that field are left out."""
    oldest: dict[str, float] = {}
    for cycle in cycles:
        phase = phase_of(cycle)
        if phase in TERMINAL_PHASES:
            continue
        status = cycle.get("status") or {}
        since = status.get("phaseTransitionTime") if status else cycle["metadata"].get("creationTimestamp")
        if not since:
            continue
        age = max(0.0, (now - parse_time(str(since))).total_seconds())
        oldest[phase] = max(age, oldest.get(phase, 0.0))
    return oldest


def phase_change(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> tuple[str, float] | None:
    """The phase that a status write from `before` to `after` ends, and the seconds the cycle spent in it (between
    the two statuses' phaseTransitionTime), or None: the same phase, or a start or end that was not recorded."""
    before = before or {}
    old, since, until = before.get("phase"), before.get("phaseTransitionTime"), after.get("phaseTransitionTime")
    if not old or old == after.get("phase") or not since or not until:
        return None
    return str(old), max(0.0, (parse_time(str(until)) - parse_time(str(since))).total_seconds())


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
