"""The operator's Prometheus figures, served on their own port (`sigma0 operator --metrics-port`).

    sigma0_cycles{phase}                           TrainingCycles by phase (refreshed on every resync)
    sigma0_stage_duration_seconds{step,state}      how long each finished stage Job ran
    sigma0_decisions_total{release,outcome}        Promoted, Bootstrapped, Rejected, Stale
    sigma0_promotions_total{release}               AdapterRelease writes made by a cycle
    sigma0_reconcile_errors_total{kind}            reconciles that raised (Conflict is counted, and harmless)
    sigma0_gpu_hours_used{namespace,placement}     GPU-hours a placement's pods used in the trailing 7 days
    sigma0_gpu_hours_left{namespace,placement}     its weekly budget minus that (placements with a budget only)
    sigma0_placement_skips_total{step,placement,reason}
                                                   placements passed over: BudgetSpent, NoBudget, Unschedulable
                                                   (a pod deleted after waiting too long: a fallback)
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
PROMOTING = ("Promoted", "Bootstrapped")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.cycles = Gauge("sigma0_cycles", "TrainingCycles by phase", ["phase"], registry=self.registry)
        self.stage_seconds = Histogram("sigma0_stage_duration_seconds", "Run time of finished stage Jobs",
                                       ["step", "state"], buckets=BUCKETS, registry=self.registry)
        self.decisions = Counter("sigma0_decisions", "Promotion decisions applied", ["release", "outcome"],
                                 registry=self.registry)
        self.promotions = Counter("sigma0_promotions", "AdapterRelease writes by a cycle", ["release"],
                                  registry=self.registry)
        self.errors = Counter("sigma0_reconcile_errors", "Reconciles that raised", ["kind"], registry=self.registry)
        self.gpu_used = Gauge("sigma0_gpu_hours_used", "GPU-hours used per placement in the trailing 7 days",
                              ["namespace", "placement"], registry=self.registry)
        self.gpu_left = Gauge("sigma0_gpu_hours_left", "Weekly GPU-hour budget left per placement",
                              ["namespace", "placement"], registry=self.registry)
        self.skips = Counter("sigma0_placement_skips", "GPU placements passed over, by reason",
                             ["step", "placement", "reason"], registry=self.registry)
        self._phases: set[str] = set()

    def stage_finished(self, stage: str, state: str, seconds: float | None) -> None:
        if seconds is not None:
            self.stage_seconds.labels(stage, state).observe(max(0.0, seconds))

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

    def set_phases(self, counts: Mapping[str, int]) -> None:
        """Cycles by phase; a phase seen before and now empty reads 0 rather than disappearing."""
        self._phases |= set(counts)
        for phase in self._phases:
            self.cycles.labels(phase).set(counts.get(phase, 0))

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
