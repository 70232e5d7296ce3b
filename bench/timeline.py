"""When things happened to TrainingCycles, their Jobs and their pods, by the benchmark's own clock.

Object timestamps (creationTimestamp, a condition's lastTransitionTime) have a resolution of one second, too
coarse for the latencies measured here. So `Timeline` watches TrainingCycles, stage Jobs and stage pods (one
list + watch per kind, reconnecting from the last resourceVersion, relisting on 410) and stamps every change it
sees with time.monotonic() on arrival. The watch delivers an event a few milliseconds after the API server
stored the change; the figures carry that small delay, on both ends of every interval alike.

Per cycle: when it was first seen, each phase it reached, when it was decided (Succeeded or Failed) and how.
Per Job: its cycle and step, when it was created, when it became Complete or Failed; per Job's pod, when it ended
(Succeeded or Failed). Pod end → Job Complete is the Job controller's part, Job Complete → next Job the
operator's.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

CYCLES_PATH = "/apis/sigma0.dev/v1alpha1/trainingcycles"
JOBS_PATH = "/apis/batch/v1/jobs"
PODS_PATH = "/api/v1/pods"
MANAGED = "app.kubernetes.io/managed-by=sigma0-operator"
TERMINAL = ("Succeeded", "Failed")


@dataclass
class CycleTimes:
    namespace: str
    name: str
    release: str
    seen: float
    phases: dict[str, float] = field(default_factory=dict)  # phase → first time seen
    decided: float | None = None
    phase: str = ""
    outcome: str | None = None


@dataclass
class JobTimes:
    namespace: str
    name: str
    cycle: str
    step: str
    created: float
    finished: float | None = None  # Complete or Failed condition first seen
    state: str = ""


@dataclass
class Transition:
    """From one step's Job to the next one of the same cycle."""

    cycle: str
    after: str
    to: str
    pod_to_job_done: float | None  # the Job controller: pod ended → Job Complete
    job_done_to_next: float | None  # the operator: Job Complete → next Job created
    pod_to_next: float | None  # both: pod ended → next Job created


class Timeline:
    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.cycles: dict[tuple[str, str], CycleTimes] = {}
        self.jobs: dict[tuple[str, str], JobTimes] = {}
        self._pod_done: dict[tuple[str, str], float] = {}  # (namespace, job name) → first pod end
        self.events: Counter[tuple[str, str]] = Counter()  # (namespace, kind) → watch events after the listing
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._follow, args=(CYCLES_PATH, {}, self._cycle), daemon=True),
            threading.Thread(target=self._follow, args=(JOBS_PATH, {"labelSelector": MANAGED}, self._job),
                             daemon=True),
            threading.Thread(target=self._follow, args=(PODS_PATH, {"labelSelector": MANAGED}, self._pod),
                             daemon=True),
        ]  # fmt: skip
        self._listed = threading.Barrier(len(self._threads) + 1)

    def start(self) -> None:
        """Start watching; returns once every kind is listed (what exists now is known, not timed)."""
        for thread in self._threads:
            thread.start()
        self._listed.wait(timeout=60)

    def stop(self) -> None:
        self._stop.set()

    # Waiting ----------------------------------------------------------------------------------------------------

    def wait_until(self, check: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True

    def decided(self, namespace: str, names: list[str]) -> bool:
        return all((c := self.cycles.get((namespace, n))) is not None and c.decided is not None for n in names)

    # Reading ----------------------------------------------------------------------------------------------------

    def jobs_of(self, namespace: str, cycle: str) -> list[JobTimes]:
        with self.changed:
            found = [j for j in self.jobs.values() if j.namespace == namespace and j.cycle == cycle]
        return sorted(found, key=lambda j: j.created)

    def first_job(self, namespace: str, cycle: str) -> float | None:
        found = self.jobs_of(namespace, cycle)
        return found[0].created if found else None

    def events_in(self, namespace: str) -> dict[str, int]:
        """Watch events in `namespace` by kind (what the operator's watches receive too): cycles, jobs, pods."""
        names = {CYCLES_PATH: "cycles", JOBS_PATH: "jobs", PODS_PATH: "pods"}
        with self.changed:
            return {names[path]: count for (ns, path), count in self.events.items() if ns == namespace}

    def transitions(self, namespace: str, cycle: str) -> list[Transition]:
        steps = self.jobs_of(namespace, cycle)
        found = []
        for before, after in itertools.pairwise(steps):
            pod = self._pod_done.get((namespace, before.name))
            found.append(Transition(
                cycle, before.step, after.step,
                before.finished - pod if before.finished is not None and pod is not None else None,
                after.created - before.finished if before.finished is not None else None,
                after.created - pod if pod is not None else None,
            ))  # fmt: skip
        return found

    # Watching ---------------------------------------------------------------------------------------------------

    def _follow(self, path: str, query: dict[str, str], handle: Callable[[str, dict[str, Any], float], None]) -> None:
        version: str | None = None
        listed = False
        while not self._stop.is_set():
            try:
                if version is None:
                    found = self.kube.get(path, **query)
                    for item in found["items"]:
                        handle("LISTED", item, time.monotonic())
                    version = found["metadata"]["resourceVersion"]
                    if not listed:
                        listed = True
                        self._listed.wait(timeout=60)
                for event in self._events(path, version, query):
                    if self._stop.is_set():
                        return
                    if event["type"] == "ERROR":  # 410 Gone: too old; list again
                        version = None
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        handle(event["type"], event["object"], time.monotonic())
                        with self.changed:
                            self.events[(event["object"]["metadata"].get("namespace", ""), path)] += 1
            except Exception as error:  # the API server restarting, a dropped connection: list again
                self.errors.append(f"{path}: {error!r}")
                version = None
                self._stop.wait(0.5)

    def _events(self, path: str, version: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        return self.kube.watch(path, version, timeout_s=60, **query)

    def _cycle(self, kind: str, obj: dict[str, Any], at: float) -> None:
        metadata, status = obj["metadata"], obj.get("status") or {}
        key = (metadata["namespace"], metadata["name"])
        with self.changed:
            found = self.cycles.get(key)
            if found is None:
                if kind == "DELETED":
                    return
                release = str((obj.get("spec") or {}).get("release", ""))
                found = self.cycles[key] = CycleTimes(key[0], key[1], release, at)
                if kind == "LISTED":  # there before the benchmark looked: nothing of it is timed
                    found.decided = at
            phase = status.get("phase") or ""
            if phase and phase not in found.phases:
                found.phases[phase] = at
            found.phase = phase or found.phase
            if phase in TERMINAL and found.decided is None:
                found.decided = at
                found.outcome = ((status.get("decision") or {}).get("outcome")) or phase
            self.changed.notify_all()

    def _job(self, kind: str, obj: dict[str, Any], at: float) -> None:
        metadata = obj["metadata"]
        labels = metadata.get("labels") or {}
        key = (metadata["namespace"], metadata["name"])
        with self.changed:
            found = self.jobs.get(key)
            if found is None:
                if kind == "DELETED":
                    return
                found = self.jobs[key] = JobTimes(key[0], key[1], labels.get("sigma0.dev/cycle", ""),
                                                  labels.get("sigma0.dev/step", ""), at)
            for condition in (obj.get("status") or {}).get("conditions") or []:
                ended = condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True"
                if ended and found.finished is None:
                    found.finished, found.state = at, condition["type"]
            self.changed.notify_all()

    def _pod(self, kind: str, obj: dict[str, Any], at: float) -> None:
        metadata = obj["metadata"]
        job = (metadata.get("labels") or {}).get("job-name")
        phase = (obj.get("status") or {}).get("phase")
        if job and phase in TERMINAL:
            with self.changed:
                self._pod_done.setdefault((metadata["namespace"], job), at)
                self.changed.notify_all()
