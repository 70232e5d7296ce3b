"""One active cycle per AdapterRelease; the others wait as Queued, in creation order.

Pure. The executor calls `admission` with every TrainingCycle of the release (one list call) while holding the
operator's admission lock, and records `admitted: true` in the cycle's status before it starts anything, so
the decision survives restarts and a cycle once admitted keeps its place until it ends. An admitted cycle that
is suspended still holds the release; a suspended cycle that was never admitted does not block the ones after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sigma0.plan import TERMINAL_PHASES


@dataclass(frozen=True)
class Entry:
    name: str
    created: str  # metadata.creationTimestamp (RFC 3339, UTC: sorts as text)
    admitted: bool
    finished: bool
    suspended: bool
    deleting: bool = False

    @classmethod
    def of(cls, cycle: Mapping[str, Any]) -> Entry:
        status = cycle.get("status") or {}
        metadata = cycle["metadata"]
        return cls(name=metadata["name"], created=metadata.get("creationTimestamp") or "",
                   admitted=bool(status.get("admitted")), finished=status.get("phase") in TERMINAL_PHASES,
                   suspended=bool((cycle.get("spec") or {}).get("suspend")),
                   deleting=bool(metadata.get("deletionTimestamp")))


@dataclass(frozen=True)
class Admission:
    admit: bool
    ahead: tuple[str, ...] = ()  # the cycles this one waits for, the active one first

    def message(self, release: str) -> str:
        if self.admit:
            return ""
        names = ", ".join(self.ahead[:5]) + (" …" if len(self.ahead) > 5 else "")
        return f"waiting for AdapterRelease {release}: one cycle at a time, ahead in the queue: {names}"


def admission(name: str, entries: Iterable[Entry]) -> Admission:
    """Whether cycle `name` may start now, given every cycle of the same release (itself included)."""
    everyone = list(entries)
    me = next((e for e in everyone if e.name == name), None)
    if me is not None and me.admitted:
        return Admission(True)
    live = [e for e in everyone if not e.finished and not e.deleting and e.name != name]
    active = sorted((e for e in live if e.admitted), key=lambda e: (e.created, e.name))
    if me is None:  # not listed yet (a cache behind the API server): never admit what cannot be ordered
        return Admission(False, tuple(e.name for e in active) or ("(this cycle is not listed yet)",))
    waiting = sorted((e for e in live if not e.admitted and not e.suspended), key=lambda e: (e.created, e.name))
    ahead = [e for e in waiting if (e.created, e.name) < (me.created, me.name)]
    if active or ahead:
        return Admission(False, tuple(e.name for e in active + ahead))
    return Admission(True)
