"""What the dashboard shows, as plain data: pure, from what a source read (sigma0.dashboard.sources).

A source gives TrainingCycle statuses as the operator writes them (sigma0.kube.status.render, the one view of a
cycle: a local cycle's is rendered by the same function), each release's current pointer, and GPU-hour usage.
`build` turns them into a `Board`: the releases, one curve per release (candidate and incumbent pass@1 per cycle,
report-only suites, promotions), the latest cycles, GPU-hours per placement. Nothing here reads a file or the
API server, and nothing decides anything: every figure is one a stage recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sigma0.gate import Outcome
from sigma0.placement import parse_time
from sigma0.release_rules import short_digest
from sigma0.spec import CycleSpec

PROMOTING = (str(Outcome.BOOTSTRAPPED), str(Outcome.PROMOTED))
LATEST = 50  # cycles in the table; the curves use every cycle


@dataclass(frozen=True)
class CycleInput:
    """One cycle as a source read it: its spec and its status (sigma0.kube.status.render's shape)."""

    namespace: str  # "" for a local workdir
    name: str
    spec: CycleSpec
    status: Mapping[str, Any]
    created: str  # RFC 3339; orders cycles that have not started


@dataclass(frozen=True)
class ReleaseInput:
    """A release's current pointer (sigma0.release_rules.Pointer: the local store's or the AdapterRelease's)."""

    namespace: str
    name: str
    digest: str | None = None
    pass_at_1: float | None = None
    revision: int = 0
    cycle: str = ""
    since: str = ""


@dataclass(frozen=True)
class GpuInput:
    """GPU-hours of one placement in the trailing 7 days (sigma0.placement.usage_report) and its budget."""

    namespace: str
    placement: str
    used: float
    budget: float | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    state: str
    start: str | None
    end: str | None
    seconds: float | None
    placement: str | None = None


@dataclass(frozen=True)
class Suite:
    """A report-only suite's candidate pass@1 (never part of the decision)."""

    suite: str
    pass_at_1: float | None
    display: str

    @property
    def label(self) -> str:
        """A built-in suite's name, or a problems file's name without its folder."""
        return PurePosixPath(self.suite).name


@dataclass(frozen=True)
class Cycle:
    namespace: str
    name: str
    release: str
    phase: str
    message: str
    started: str
    verified: str
    dropped: dict[str, int]
    candidate: float | None
    candidate_display: str
    incumbent: float | None
    incumbent_display: str
    suites: tuple[Suite, ...]
    outcome: str | None
    reason: str
    p_value: float | None
    promoted: bool
    stages: tuple[Stage, ...]
    has_evidence: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Release:
    namespace: str
    name: str
    digest: str | None
    short_digest: str
    pass_at_1: float | None
    revision: int
    cycle: str
    since: str
    cycles: tuple[Cycle, ...]  # every cycle of the release with a candidate figure, oldest first: the curve

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Board:
    source: str
    releases: tuple[Release, ...]
    cycles: tuple[Cycle, ...]  # the latest first
    gpu: tuple[GpuInput, ...]
    errors: tuple[str, ...] = field(default_factory=tuple)

    def version(self) -> str:
        """A digest of everything shown: the page swaps its content only when this changes."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return max(0.0, (parse_time(end) - parse_time(start)).total_seconds())


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def cycle_of(found: CycleInput) -> Cycle:
    status = found.status
    counts = status.get("counts") or {}
    decision = status.get("decision") or {}
    stages_status = status.get("stages") or {}
    candidate = status.get("candidate") or {}
    incumbent = status.get("incumbent") or {}
    suites = []
    for index, suite in enumerate(found.spec.eval.report_suites):
        stage = stages_status.get(f"score-candidate-report{index}") or {}
        summary = (stage.get("summary") or {}) if stage.get("state") == "succeeded" else {}
        figure = _float(summary.get("pass_at_1"))
        shown = f"{figure:.3f} ({summary.get('passed')}/{summary.get('total')})" if figure is not None else "-"
        suites.append(Suite(suite, figure, shown))
    stages = tuple(
        Stage(
            name,
            str(data.get("state")),
            data.get("startTime"),
            data.get("completionTime"),
            _seconds(data.get("startTime"), data.get("completionTime")),
            data.get("placement"),
        )
        for name, data in sorted(stages_status.items(), key=lambda item: item[1].get("startTime") or "~")
    )
    outcome = decision.get("outcome")
    evidence = any(
        stages_status.get(name, {}).get("state") == "succeeded" for name in ("score-candidate", "score-incumbent")
    )
    return Cycle(
        namespace=found.namespace,
        name=found.name,
        release=found.spec.release,
        phase=str(status.get("phase") or "New"),
        message=str(status.get("message") or ""),
        started=str(status.get("startTime") or found.created),
        verified=str(counts.get("verifiedOfHarvested") or "-"),
        dropped={str(k): int(v) for k, v in (counts.get("dropped") or {}).items()},
        candidate=_float(candidate.get("passAt1")),
        candidate_display=str(candidate.get("passAt1Display") or "-"),
        incumbent=_float(incumbent.get("passAt1")),
        incumbent_display=str(incumbent.get("passAt1Display") or "-"),
        suites=tuple(suites),
        outcome=str(outcome) if outcome else None,
        reason=str(decision.get("reason") or ""),
        p_value=_float(decision.get("pValue")),
        promoted=str(outcome) in PROMOTING and status.get("releaseRevision") is not None,
        stages=stages,
        has_evidence=evidence,
    )


def _order(cycle: Cycle) -> tuple[datetime, str]:
    return parse_time(cycle.started), cycle.name


def build(
    source: str,
    cycles: Iterable[CycleInput],
    releases: Iterable[ReleaseInput],
    gpu: Sequence[GpuInput] = (),
    errors: Sequence[str] = (),
) -> Board:
    shown = sorted((cycle_of(found) for found in cycles), key=_order)
    known = {(r.namespace, r.name): r for r in releases}
    for cycle in shown:  # a release that no pointer names yet (its first cycle runs) still gets its curve
        known.setdefault((cycle.namespace, cycle.release), ReleaseInput(cycle.namespace, cycle.release))
    boards = []
    for (namespace, name), found in sorted(known.items()):
        curve = tuple(c for c in shown if (c.namespace, c.release) == (namespace, name) and c.candidate is not None)
        boards.append(
            Release(
                namespace,
                name,
                found.digest,
                short_digest(found.digest) if found.digest else "-",
                found.pass_at_1,
                found.revision,
                found.cycle,
                found.since,
                curve,
            )
        )
    latest = tuple(reversed(shown))[:LATEST]
    return Board(source, tuple(boards), latest, tuple(gpu), tuple(errors))
