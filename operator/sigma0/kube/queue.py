"""One active cycle per AdapterRelease; the others wait as Queued, in creation order.

Pure. The executor calls `admission` with every TrainingCycle of the release (one list call) while holding the
operator's admission lock, and records `admitted: true` in the cycle's status before it starts anything, so
the decision survives restarts and a cycle once admitted keeps its place until it ends. An admitted cycle that
is suspended still holds the release; a suspended cycle that was never admitted does not block the ones after it.

A dry run (spec.stopAfter) does not compete for its release (sigma0.plan.holds_release): it reads and writes no
release and asks for no GPU. So it never enters the queue: it is admitted at once, and never counts as a cycle
ahead of another; a real cycle never waits for a dry run, nor a dry run for a real cycle.

`movable` picks the cycles worth a reconcile when a release frees up and on the periodic resync: the heads of the
queues, not every cycle behind them (each of which would list its release only to learn that it still waits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from sigma0.plan import TERMINAL_PHASES, holds_release
from sigma0.spec import CycleSpec


@dataclass(frozen=True)
class Entry:
    name: str
    created: str  # metadata.creationTimestamp (RFC 3339, UTC: sorts as text)
    admitted: bool
    finished: bool
    suspended: bool
    deleting: bool = False
    queues: bool = True  # False: a dry run, which never queues for its release

    @classmethod
    def of(cls, cycle: Mapping[str, Any]) -> Entry:
        status = cycle.get("status") or {}
        metadata = cycle["metadata"]
        spec = cycle.get("spec") or {}
        return cls(name=metadata["name"], created=metadata.get("creationTimestamp") or "",
                   admitted=bool(status.get("admitted")), finished=status.get("phase") in TERMINAL_PHASES,
                   suspended=bool(spec.get("suspend")), deleting=bool(metadata.get("deletionTimestamp")),
                   queues=_holds_release(spec))

    @property
    def place(self) -> tuple[str, str]:
        """Its place in the queue: creation order, the name breaking ties."""
        return self.created, self.name

    @property
    def waiting(self) -> bool:
        """In the queue: not finished, not being deleted, not admitted and not suspended (and not a dry run)."""
        return self.queues and not (self.finished or self.deleting or self.admitted or self.suspended)


@dataclass(frozen=True)
class Admission:
    admit: bool
    ahead: tuple[str, ...] = ()  # the cycles this one waits for, the active one first
    holds_release: bool = True  # False: admitted without taking the release's turn (a dry run)

    def message(self, release: str) -> str:
        if self.admit:
            return ""
        names = ", ".join(self.ahead[:5]) + (" …" if len(self.ahead) > 5 else "")
        return f"waiting for AdapterRelease {release}: one cycle at a time, ahead in the queue: {names}"


def admission(name: str, entries: Iterable[Entry]) -> Admission:
    """Whether cycle `name` may start now, given every cycle of the same release (itself included)."""
    everyone = list(entries)
    me = next((e for e in everyone if e.name == name), None)
    if me is not None and not me.queues:
        return Admission(True, holds_release=False)
    if me is not None and me.admitted:
        return Admission(True)
    live = [e for e in everyone if e.queues and not e.finished and not e.deleting and e.name != name]
    active = sorted((e for e in live if e.admitted), key=lambda e: e.place)
    if me is None:  # not listed yet (a cache behind the API server): never admit what cannot be ordered
        return Admission(False, tuple(e.name for e in active) or ("(this cycle is not listed yet)",))
    ahead = sorted((e for e in live if e.waiting and e.place < me.place), key=lambda e: e.place)
    if active or ahead:
        return Admission(False, tuple(e.name for e in active + ahead))
    return Admission(True)


def movable(unfinished: Iterable[Mapping[str, Any]], now: datetime) -> list[Mapping[str, Any]]:
    """Of unfinished TrainingCycles, those a reconcile can move, oldest first: every admitted one, per release the
    first one waiting in its queue, and any past its deadline or being deleted. A reconcile of any other would only
    list its release to learn that it still waits; its Queued message is brought up to date when it moves up."""
    chosen: list[Mapping[str, Any]] = []
    fronts: set[tuple[str, str]] = set()
    for entry, cycle in sorted(((Entry.of(c), c) for c in unfinished), key=lambda pair: pair[0].place):
        queue_key = (cycle["metadata"].get("namespace") or "", str((cycle.get("spec") or {}).get("release", "")))
        head = entry.waiting and queue_key not in fronts
        if entry.waiting:
            fronts.add(queue_key)
        if head or entry.admitted or not entry.queues or entry.deleting or _past_deadline(cycle, now):
            chosen.append(cycle)
    return chosen


def depths(cycles: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Per (namespace, release) that has any cycle, how many are waiting in its queue (`Entry.waiting`)."""
    found: dict[tuple[str, str], int] = {}
    for cycle in cycles:
        key = (cycle["metadata"].get("namespace") or "", str((cycle.get("spec") or {}).get("release", "")))
        found[key] = found.get(key, 0) + Entry.of(cycle).waiting
    return found


def _holds_release(spec: Mapping[str, Any]) -> bool:
    """sigma0.plan.holds_release, on the spec as listed (no need to validate every cycle of a release)."""
    try:
        return holds_release(CycleSpec.model_validate(spec))
    except ValidationError:  # an unreadable spec fails on its own reconcile; until then it queues like any other
        return True


def _past_deadline(cycle: Mapping[str, Any], now: datetime) -> bool:
    seconds = (cycle.get("spec") or {}).get("deadlineSeconds")
    created = cycle["metadata"].get("creationTimestamp")
    if seconds is None or not created:
        return True  # cannot tell: let the reconcile look
    return datetime.fromisoformat(str(created).replace("Z", "+00:00")) + timedelta(seconds=float(seconds)) <= now
