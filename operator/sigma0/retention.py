"""Which finished cycles go, and which of their files must stay: the one retention rule, for both executors.

Pure. Given the cycles of one release, the release's limits (AdapterRelease spec.successfulCyclesHistoryLimit and
spec.failedCyclesHistoryLimit, or `sigma0 run`'s flags of the same names), every adapter the release points at (its
current pointer and its whole history) and the time now, `doomed` says which cycles to delete and, for each, the
paths in its artifact folder that must be kept because the release still points at them:

- only finished cycles (phase Succeeded or Failed) ever go: a running, queued, suspended or waiting cycle never;
- history limits, per release, as a CronJob's successfulJobsHistoryLimit / failedJobsHistoryLimit: the newest N
  Succeeded cycles (a dry run is a Succeeded cycle) and the newest M Failed ones stay; newest by finish time, then
  creation time, then name, so that ties always resolve the same way. No limit (None, the default) keeps them
  all; 0 keeps none;
- a cycle's own spec.ttlSecondsAfterFinished: it goes once that many seconds have passed since it finished. A finish
  time in the future (the clock of whoever wrote it runs ahead) has not passed: a cycle never goes early. A cycle
  with no recorded finish time is never deleted by its TTL (the history limits still count it, as the oldest);
- a doomed cycle's adapter that the release still points at, now or anywhere in its history (where a rollback may
  return to), is kept: the cleaner deletes everything in the cycle's folder but those paths. The pointer is never
  left dangling.

`kept_under` and `removal` are what `sigma0 clean` runs on the folder: the first finds which pointers lie inside the
folder (by path, normalised, never by string prefix), the second which of the folder's entries to delete.

Why a janitor and not a finalizer (sigma0.kube.janitor): a finalizer on every TrainingCycle would make `kubectl
delete` and namespace deletion hang whenever the operator is down or cannot clean; the janitor runs on the
operator's resync, deletes a cycle only once its files are gone, and leaves no object stuck if it never runs.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

SUCCEEDED, FAILED = "Succeeded", "Failed"


class RetentionError(ValueError):
    """A retention setting or a clean request that cannot be right; the message says which and why."""


@dataclass(frozen=True)
class Limits:
    """How many finished cycles of a release to keep, by phase; None keeps every one."""

    successful: int | None = None
    failed: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("successful", self.successful), ("failed", self.failed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise RetentionError(f"{name} cycles history limit must be a whole number >= 0, got {value!r}")

    def of(self, phase: str) -> int | None:
        return self.successful if phase == SUCCEEDED else self.failed


@dataclass(frozen=True)
class Cycle:
    """What retention needs to know of one cycle."""

    name: str
    release: str
    phase: str | None  # None or any other phase: not finished
    created: datetime
    finished: datetime | None = None
    ttl_seconds: int | None = None
    artifacts: str = ""  # the cycle's folder (path or fsspec URI) as the cleaner sees it; "": none to clean

    @property
    def done(self) -> bool:
        return self.phase in (SUCCEEDED, FAILED)

    @property
    def age_key(self) -> tuple[datetime, datetime, str]:
        """Newest sorts last: by finish time (creation time when none is recorded), then creation, then name."""
        return (self.finished or self.created, self.created, self.name)


Why = Literal["history", "ttl"]


@dataclass(frozen=True)
class Doomed:
    cycle: Cycle
    why: Why
    message: str
    keep: tuple[str, ...]  # paths (or URIs) inside cycle.artifacts that the release still points at


def doomed(cycles: Iterable[Cycle], release: str, limits: Limits, pointers: Iterable[str],
           now: datetime) -> list[Doomed]:
    """The finished cycles of `release` to delete now, oldest first; cycles of other releases are not looked at.
    `pointers`: the URIs of the release's current adapter and of every one in its history."""
    uris = tuple(pointers)
    finished = sorted((c for c in cycles if c.release == release and c.done), key=lambda c: c.age_key)
    found: dict[str, Doomed] = {}
    for phase in (SUCCEEDED, FAILED):
        limit = limits.of(phase)
        if limit is None:
            continue
        of_phase = [c for c in finished if c.phase == phase]
        extra = of_phase[: max(0, len(of_phase) - limit)]
        for cycle in extra:
            found[cycle.name] = Doomed(cycle, "history", f"one of more than {limit} {phase} cycles of release "
                                       f"{release} (its cycles history limit); the newest {limit} stay",
                                       kept_under(cycle.artifacts, uris))
    for cycle in finished:
        if cycle.name in found or cycle.ttl_seconds is None or cycle.finished is None:
            continue
        if now >= cycle.finished + timedelta(seconds=cycle.ttl_seconds):
            found[cycle.name] = Doomed(cycle, "ttl", f"finished at {cycle.finished.isoformat()}, more than its "
                                       f"ttlSecondsAfterFinished={cycle.ttl_seconds} ago",
                                       kept_under(cycle.artifacts, uris))
    return [found[c.name] for c in finished if c.name in found]


def _split(uri: str) -> tuple[str, str]:
    """(scheme, normalised absolute path): `s3://b/x/../y/` → ('s3', '/b/y'); a plain path has scheme ''."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    return scheme, posixpath.normpath("/" + rest.lstrip("/") if sep else rest)


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it, as paths (same scheme; `..` resolved), never as text: a cycle
    folder `c-1` does not hold `c-10/adapter`."""
    (scheme, found), (root_scheme, root) = _split(path), _split(folder)
    return scheme == root_scheme and (found == root or found.startswith(root.rstrip("/") + "/"))


def kept_under(folder: str, pointers: Iterable[str]) -> tuple[str, ...]:
    """The pointers that lie in `folder` (so deleting the folder would leave them dangling), sorted, each once."""
    if not folder:
        return ()
    return tuple(sorted({p for p in pointers if p and inside(p, folder)}))


def check_folder(folder: str) -> None:
    """A folder `sigma0 clean` may empty: a cycle's own, under a `cycles` folder (`<workdir>/cycles/NAME` locally,
    `/artifacts/cycles/NS/NAME-UID` on a cluster), never a root or the artifacts volume itself."""
    path = _split(folder)[1]
    parts = [p for p in path.split("/") if p]
    if "cycles" not in parts[:-1]:
        raise RetentionError(f"{folder}: not a cycle's folder (it must lie under a 'cycles' folder, as every "
                             "cycle's does); refusing to delete anything there")


def removal(folder: str, entries: Sequence[str], keep: Iterable[str]) -> tuple[list[str], list[str]]:
    """Of a folder's direct `entries` (full paths), which to delete whole, and which to descend into because a kept
    path lies under them. Raises RetentionError for a kept path outside the folder: a caller that passes one has
    the wrong folder."""
    kept = list(keep)
    outside = [k for k in kept if not inside(k, folder)]
    if outside:
        raise RetentionError(f"--keep {', '.join(outside)}: not inside {folder}")
    delete, descend = [], []
    for entry in entries:
        if any(inside(entry, k) for k in kept):  # the kept path itself, or something inside it
            continue
        if any(inside(k, entry) for k in kept):
            descend.append(entry)
        else:
            delete.append(entry)
    return delete, descend
