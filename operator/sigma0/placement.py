"""GPU placements and their weekly budgets: which placement a GPU step runs on, and the ledger of hours spent.

A GPU step (train, generate) has an ordered list of placements (spec.placement.train / spec.placement.eval; see
`options_for`). Each may have a weekly GPU-hour budget: the GPU-hours that pods of that placement may have used in
the trailing 7 days. Pure policy, no I/O except the two small local-ledger functions at the end:

    choose(options, ledger, now, exclude=...)   the first placement, in order, that is not excluded (it stayed
                                                Unschedulable), whose budget is not zero and not spent; or none,
                                                with every skip's reason and the earliest time a budget frees
    gpu_hours(ledger, name, now)                GPU-hours a placement used in the window ending at `now`
    frees_at(ledger, name, budget, now)         the earliest time, from `now` on, that the placement's usage is
                                                below its budget (None: never, the budget is zero)

The ledger is a list of `Usage` rows, one per GPU pod (the operator keeps it in a ConfigMap per namespace, built
from the pods' real container start and end times; `sigma0 run` keeps it in <workdir>/gpu-ledger.jsonl with
placement "local"). A row without an end is a pod still running: it counts until `now`, and it keeps counting,
so a budget cannot free while one of its pods runs.

A budget is checked when a step starts (as the rotation this replaces did): a stage that starts with budget
left runs to its end, so a placement can pass its budget by at most the stages that started before it was spent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sigma0.io import append_jsonl
from sigma0.spec import CycleSpec, GpuPlacement

WINDOW = timedelta(days=7)
RETAIN = WINDOW + timedelta(days=1)  # rows that ended longer ago than this can never count again
LOCAL = "local"  # the placement `sigma0 run` records: this machine
GPU_STAGES = {"train": "train", "generate": "eval"}  # a GPU step's stage → its spec.placement field

SkipReason = Literal["Unschedulable", "BudgetSpent", "NoBudget"]


# Times ------------------------------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_hours(hours: float) -> str:
    return f"{hours:.4g}"


# Placements of a step -----------------------------------------------------------------------------------------------


def options_for(spec: CycleSpec, stage: str) -> tuple[GpuPlacement, ...]:
    """The ordered placements of a GPU stage: the `placements` list, or the one inline placement, or one
    placement named `default` with the operator's defaults when the manifest says nothing."""
    field = GPU_STAGES.get(stage)
    if field is None:
        raise ValueError(f"stage {stage!r} is not a GPU stage (those are {', '.join(GPU_STAGES)})")
    setting = getattr(spec.placement, field)
    return setting.ordered() if setting is not None else (GpuPlacement(),)


# Budgets ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budgets:
    """The weekly GPU-hour budgets the operator's administrator sets (`sigma0 operator --gpu-budget`, the chart's
    gpuBudgets), per placement name: for one namespace, or for every namespace that has no entry of its own. A
    tenant cannot change them: they are the operator's flags, not the cycle's spec."""

    per_placement: Mapping[str, float] = field(default_factory=dict)
    per_namespace: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (namespace, placement)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Budgets:
        """From `PLACEMENT=HOURS` and `NAMESPACE/PLACEMENT=HOURS` entries (ValueError names a bad one)."""
        per_placement: dict[str, float] = {}
        per_namespace: dict[tuple[str, str], float] = {}
        for entry in entries:
            where, sep, amount = entry.partition("=")
            namespace, slash, name = where.rpartition("/")
            try:
                hours = float(amount)
            except ValueError:
                hours = -1.0
            if not sep or not name or (slash and not namespace) or not 0 <= hours < float("inf"):
                raise ValueError(f"--gpu-budget {entry!r}: expected PLACEMENT=HOURS or NAMESPACE/PLACEMENT=HOURS, "
                                 "HOURS a number from 0 up")
            if slash:
                per_namespace[(namespace, name)] = hours
            else:
                per_placement[name] = hours
        return cls(per_placement, per_namespace)

    def of(self, namespace: str, name: str) -> float | None:
        """The administrator's budget of placement `name` in `namespace` (None: none set)."""
        found = self.per_namespace.get((namespace, name))
        return found if found is not None else self.per_placement.get(name)


NO_BUDGETS = Budgets()


def with_budgets(options: Iterable[GpuPlacement], budgets: Budgets, namespace: str) -> tuple[GpuPlacement, ...]:
    """`options` with the budget each really has: the administrator's, lowered but never raised by the cycle's own
    weeklyGPUHours (a tenant may hold itself to less, never give itself more); none where neither is set."""
    found = []
    for option in options:
        limits = [b for b in (budgets.of(namespace, option.name), option.weekly_gpu_hours) if b is not None]
        found.append(option.model_copy(update={"weekly_gpu_hours": min(limits) if limits else None}))
    return tuple(found)


def every_option(specs: Iterable[CycleSpec], budgets: Budgets, namespace: str) -> list[GpuPlacement]:
    """Every placement of every GPU stage of `specs`, with the budget each really has in `namespace` (with_budgets):
    what the GPU-hour reports (metrics, dashboard) show against the ledger."""
    options = [o for spec in specs for stage in GPU_STAGES for o in options_for(spec, stage)]
    return list(with_budgets(options, budgets, namespace))


# The ledger ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One GPU pod's (or local step's) time on a placement. `key` identifies it (a pod's uid), so recording the
    same pod again replaces its row instead of adding one."""

    key: str
    placement: str
    stage: str
    cycle: str
    start: datetime
    end: datetime | None
    gpus: int

    def seconds(self, since: datetime, until: datetime) -> float:
        """GPU-seconds of this row inside [since, until]; a row still open counts until `until`."""
        end = min(self.end or until, until)
        start = max(min(self.start, end), since)
        return max(0.0, (end - start).total_seconds()) * self.gpus

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "placement": self.placement, "stage": self.stage, "cycle": self.cycle,
                "start": format_time(self.start), "end": format_time(self.end) if self.end else None,
                "gpus": self.gpus}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        try:
            return cls(key=str(data["key"]), placement=str(data["placement"]), stage=str(data.get("stage", "")),
                       cycle=str(data.get("cycle", "")), start=parse_time(str(data["start"])),
                       end=parse_time(str(data["end"])) if data.get("end") else None, gpus=int(data["gpus"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a GPU ledger row: {dict(data)!r} ({error})") from error


def merge(ledger: Iterable[Usage], rows: Iterable[Usage]) -> list[Usage]:
    """The ledger with `rows` recorded: a row replaces the one with its key, except that a closed row is never
    reopened (a late observation of a pod as running cannot undo its end)."""
    found = {row.key: row for row in ledger}
    for row in rows:
        old = found.get(row.key)
        if old is not None and old.end is not None and row.end is None:
            continue
        found[row.key] = row
    return sorted(found.values(), key=lambda r: (r.start, r.key))


def prune(ledger: Iterable[Usage], now: datetime) -> list[Usage]:
    """Drop rows that ended so long ago that no window from `now` on can see them."""
    return [row for row in ledger if row.end is None or row.end > now - RETAIN]


def close_vanished(ledger: Iterable[Usage], alive: set[str], now: datetime) -> list[Usage]:
    """Close open rows whose pod is gone (its cycle deleted, its Job stopped) at `now`: counting a vanished pod
    until it was noticed may count a little too much, never too little."""
    return [row if row.end is not None or row.key in alive else _closed(row, now) for row in ledger]


def _closed(row: Usage, at: datetime) -> Usage:
    return Usage(row.key, row.placement, row.stage, row.cycle, row.start, max(at, row.start), row.gpus)


def _whole_second_from(moment: datetime) -> datetime:
    floor = moment.replace(microsecond=0)
    return floor if floor == moment else floor + timedelta(seconds=1)


def _cut(row: Usage, now: datetime) -> Usage:
    end = min(row.end or now, now)
    return Usage(row.key, row.placement, row.stage, row.cycle, min(row.start, end), end, row.gpus)


def gpu_hours(ledger: Iterable[Usage], placement: str, now: datetime, window: timedelta = WINDOW) -> float:
    """GPU-hours `placement` used in the window (now - window, now]."""
    return sum(row.seconds(now - window, now) for row in ledger if row.placement == placement) / 3600


def frees_at(ledger: Iterable[Usage], placement: str, budget: float, now: datetime,
             window: timedelta = WINDOW) -> datetime | None:
    """The earliest whole second (or the moment a row leaves the window), from `now` on, at which the placement's
    usage in the trailing window is below `budget` (GPU-hours); `now` if it already is; None if it never will
    be (a budget of zero).

    Open rows count as if they ended now: usage then only falls as the window slides past it, piecewise
    linearly, with a corner where each row's start or end leaves the window."""
    if budget <= 0:
        return None
    # nothing past `now` is known: open rows end now, and a row from a clock ahead of ours is cut at now
    rows = [_cut(row, now) for row in ledger if row.placement == placement]

    def used(at: datetime) -> float:  # GPU-hours, computed exactly as budget_skip computes them
        return gpu_hours(rows, placement, at, window)

    if used(now) < budget:
        return now
    corners = sorted({c + window for row in rows for c in (row.start, row.end or now) if c + window > now})
    before, used_before = now, used(now)
    for corner in corners:
        used_there = used(corner)
        if used_there < budget:  # crosses the budget inside (before, corner]: usage is linear there
            slope = (used_before - used_there) / (corner - before).total_seconds()  # GPU-hours per second
            crossing = before + timedelta(seconds=(used_before - budget) / slope)
            second = _whole_second_from(crossing)
            if used(second) >= budget:  # the float arithmetic put the crossing a hair too early
                second += timedelta(seconds=1)
            return max(now, min(corner, second))
        before, used_before = corner, used_there
    raise AssertionError("usage of a closed ledger reaches zero once the window has passed its last row")


# Choosing -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """A placement that was not used, and why; `frees_at` when its budget is spent and will free."""

    placement: str
    reason: SkipReason
    message: str
    frees_at: datetime | None = None

    def to_status(self, at: datetime) -> dict[str, Any]:
        data = {"placement": self.placement, "reason": self.reason, "message": self.message,
                "time": format_time(at)}
        if self.frees_at is not None:
            data["freesAt"] = format_time(self.frees_at)
        return data


@dataclass(frozen=True)
class Choice:
    """The placement to use, or None; `skipped` lists, in order, the placements passed over for their budget."""

    placement: GpuPlacement | None
    skipped: tuple[Skip, ...]

    @property
    def frees_at(self) -> datetime | None:
        """When none is usable: the earliest time a skipped placement's budget frees (None: none ever will)."""
        times = [s.frees_at for s in self.skipped if s.frees_at is not None]
        return min(times) if times else None

    def reason(self, stage: str) -> str:
        """Why no placement could be used, in one sentence (only meaningful when `placement` is None)."""
        parts = [f"{s.placement}: {s.message}" for s in self.skipped]
        when = self.frees_at
        until = (f"waiting until {format_time(when)}, when the first budget frees" if when else
                 "no budget will free; the cycle waits until its deadline")
        return f"every placement of {stage} is exhausted ({'; '.join(parts)}): {until}"


def budget_skip(option: GpuPlacement, ledger: Sequence[Usage], now: datetime) -> Skip | None:
    """Why `option`'s budget rules it out now, or None if it has budget left (or no budget at all)."""
    budget = option.weekly_gpu_hours
    if budget is None:
        return None
    if budget <= 0:
        return Skip(option.name, "NoBudget", "its weekly budget is 0 GPU-hours: never used")
    used = gpu_hours(ledger, option.name, now)
    if used < budget:
        return None
    when = frees_at(ledger, option.name, budget, now)
    return Skip(option.name, "BudgetSpent", f"used {format_hours(used)} of {format_hours(budget)} GPU-hours in the "
                f"last 7 days; frees at {format_time(when) if when else 'never'}", when)


def choose(options: Sequence[GpuPlacement], ledger: Sequence[Usage], now: datetime,
           exclude: Iterable[str] = ()) -> Choice:
    """The first placement, in order, that is not in `exclude` and has budget left. Excluded placements (a pod
    stayed Unschedulable there) are passed over silently: the caller has already recorded why."""
    excluded = set(exclude)
    skipped: list[Skip] = []
    for option in options:
        if option.name in excluded:
            continue
        skip = budget_skip(option, ledger, now)
        if skip is None:
            return Choice(option, tuple(skipped))
        skipped.append(skip)
    return Choice(None, tuple(skipped))


def gpu_count(resources: Mapping[str, Any] | None, gpu_resource: str) -> int:
    """The whole GPUs a container's resources ask for (limits, else requests) of `gpu_resource`."""
    resources = resources or {}
    for part in ("limits", "requests"):
        value = (resources.get(part) or {}).get(gpu_resource)
        if value is not None:
            try:
                return int(str(value))
            except ValueError as error:
                raise ValueError(f"{gpu_resource}: {value!r} is not a whole number of GPUs") from error
    return 0


# The local ledger (`sigma0 run`) ------------------------------------------------------------------------------------


def read_ledger(path: Path) -> list[Usage]:
    """A JSONL ledger in which a later row with the same key replaces an earlier one (a step is written once
    when it starts and again when it ends)."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(Usage.from_json(json.loads(line)))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from error
    return merge([], rows)


def record_local(path: Path, usage: Usage) -> None:
    """Append one row to the local ledger (flushed to disk, so a killed run keeps the start of its step)."""
    append_jsonl(path, usage.to_json())


def usage_report(ledger: Sequence[Usage], options: Iterable[GpuPlacement],
                 now: datetime) -> dict[str, dict[str, float]]:
    """Used (and, with a budget, left) GPU-hours per placement in the trailing window: every placement in the
    ledger and every option given."""
    budgets = {o.name: o.weekly_gpu_hours for o in options}
    found: dict[str, dict[str, float]] = {}
    for name in sorted({row.placement for row in ledger} | set(budgets)):
        used = gpu_hours(ledger, name, now)
        found[name] = {"used": used}
        budget = budgets.get(name)
        if budget is not None:
            found[name]["left"] = max(0.0, budget - used)
    return found
