"""The JobExecutor: one reconcile of one TrainingCycle, level-triggered and idempotent.

The twin of sigma0.executors.local: the same plan (`plan.next_action`) decides; here a step is a batch/v1 Job and
the release is an AdapterRelease. Each reconcile reads the world and converges:

    1. read the cycle (its status is the record: sigma0.kube.status) and every Job and pod of it (by label); a
       cycle this operator refuses to run (`jobs.refusal`: a hostPath, or no gVisor) fails here, touching nothing
    2. fold what the Jobs say into the record (a Job whose status write was lost is adopted by its name)
    3. the deadline, the release's queue (one admitted cycle per release), suspend
    4. act until the plan has to wait: resolve the incumbent, create a step's Job (409 AlreadyExists is the
       Job a killed operator created: adopt it), publish the decision, finish
    5. write the status, with the resourceVersion precondition, only if it changed; then post the events

GPU steps (train, generate) go through their ordered placements (sigma0.placement): a placement whose weekly
budget is zero or spent is skipped; a pod that stays Unschedulable past its placement's patience is deleted and
the next placement tried (the last usable one keeps waiting); with no placement left the cycle waits, phase
Waiting, until the earliest time a budget frees. GPU-hours are counted from the GPU pods' real container start
and end into the namespace's ledger ConfigMap (sigma0.kube.ledger), so budgets survive restarts.

Order makes restarts safe: a Job is created before the status names it, and Job names are deterministic, so no
step ever gets two Jobs; the release is written before the status records it, and publishing again is
recognised (sigma0.kube.releases), so a promotion is neither lost nor doubled.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from sigma0 import __version__, evidence, placement, plan
from sigma0.kube import CYCLES, GROUP, VERSION, jobs, queue
from sigma0.kube.ledger import DEFAULT_NAMESPACE as LEDGER_NAMESPACE
from sigma0.kube.ledger import ClusterLedger, LedgerError
from sigma0.kube.metrics import phase_change
from sigma0.kube.releases import ClusterReleases, now_rfc3339
from sigma0.kube.status import (
    CycleRecord,
    PlacementWait,
    Situation,
    StageRecord,
    phase_since,
    read_record,
    render,
    same_status,
)
from sigma0.spec import CycleSpec, GpuPlacement

log = logging.getLogger("sigma0.operator")

MAX_ATTEMPTS = 3  # Jobs of one step that vanished before they finished (deleted by hand, TTL while down)
# A stage Job's activeDeadlineSeconds ends it this long after the cycle's deadline, never before: the Job's deadline
# is the backstop for an operator that is down, and the cycle's own (DeadlineExceeded, naming spec.deadlineSeconds)
# must be the reason a person reads, not a Job that timed out a second early.
JOB_DEADLINE_SLACK_SECONDS = 5


class Conflict(Exception):
    """The cycle changed (or was deleted) while it was being reconciled; the next event reconciles it again."""


class Metrics(Protocol):
    def stage_finished(self, stage: str, state: str, seconds: float | None) -> None: ...

    def decided(self, release: str, outcome: str) -> None: ...

    def gpu_hours(self, namespace: str, report: Mapping[str, Mapping[str, float]]) -> None: ...

    def placement_skipped(self, step: str, placement: str, reason: str) -> None: ...

    def phase_left(self, phase: str, seconds: float) -> None: ...


class NoMetrics:
    def stage_finished(self, stage: str, state: str, seconds: float | None) -> None:
        pass

    def decided(self, release: str, outcome: str) -> None:
        pass

    def gpu_hours(self, namespace: str, report: Mapping[str, Mapping[str, float]]) -> None:
        pass

    def placement_skipped(self, step: str, placement: str, reason: str) -> None:
        pass

    def phase_left(self, phase: str, seconds: float) -> None:
        pass


@dataclass
class Clients:
    """kubernetes.client APIs, with the (connect, read) timeout every call uses."""

    custom: Any
    batch: Any
    core: Any
    timeout: tuple[float, float] = (5.0, 30.0)

    @classmethod
    def of(cls, api_client: Any, timeout: tuple[float, float] = (5.0, 30.0)) -> Clients:
        from kubernetes import client

        return cls(client.CustomObjectsApi(api_client), client.BatchV1Api(api_client),
                   client.CoreV1Api(api_client), timeout)


@dataclass(frozen=True)
class Result:
    phase: str
    release: str
    finished_now: bool = False


@dataclass
class _Pass:
    """What one reconcile has learned so far."""

    record: CycleRecord
    jobs: dict[str, Mapping[str, Any]]
    waiting: tuple[str, str] | None = None
    queued_behind: str | None = None
    placement_wait: PlacementWait | None = None
    unschedulable: dict[str, tuple[str, str]] = field(default_factory=dict)  # step → (pod created, why)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


def _raw(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (_parse_time(end) - _parse_time(start)).total_seconds()


def unreadable_spec(error: ValidationError) -> tuple[str, str]:
    """The failure of a cycle whose stored spec this operator cannot read. Fields it does not know come from CRDs
    newer than the operator: the cycle is not run without them (one may be a stricter gate), and the message says
    to finish the upgrade (docs/install.md, "Upgrade")."""
    unknown = [".".join(str(part) for part in item["loc"])
               for item in error.errors() if item["type"] == "extra_forbidden"]
    if unknown and len(unknown) == error.error_count():
        return ("UnknownSpecFields", f"this operator (sigma0 {__version__}) does not know spec field(s) "
                f"{', '.join('spec.' + name for name in unknown)}: the CRDs are newer than the operator. The cycle "
                "is not run without them; finish the upgrade (helm upgrade, docs/install.md) and apply it again")
    return ("InvalidSpec", f"the operator cannot read this spec: {error}")


class JobExecutor:
    def __init__(self, clients: Clients, settings: jobs.PodSettings, *, metrics: Metrics | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), component: str = "sigma0-operator",
                 budgets: placement.Budgets = placement.NO_BUDGETS, ledger_namespace: str = LEDGER_NAMESPACE) -> None:
        self.clients = clients
        self.settings = settings
        self.budgets = budgets  # the administrator's GPU-hour budgets (--gpu-budget)
        self.ledger_namespace = ledger_namespace  # where the ledgers live: the operator's namespace
        self.metrics = metrics or NoMetrics()
        self.clock = clock
        self.component = component
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._waiting: set[tuple[str, str]] = set()  # cycles with a reconcile waiting for the lock
        self._locks_guard = threading.Lock()
        self._admission = threading.Lock()
        self._recorded: dict[tuple[str, str], placement.Usage] = {}  # (namespace, key) → row the ledger holds
        self._ledger_lock = threading.Lock()
        self._select_by_release = True  # until the API server refuses fieldSelector=spec.release
        self._last_written: dict[tuple[str, str], str] = {}  # (namespace, name) → resourceVersion of its status write

    # The entry point -------------------------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> Result | None:
        """Bring one cycle one step closer to its end; None if it is gone or being deleted, or if another reconcile
        of it is already waiting for its turn: that one reads the cycle, its Jobs and its pods after whatever
        prompted this call had happened, so it does this call's work too (a burst of pod and Job events costs
        one reconcile, not one each)."""
        key = (namespace, name)
        with self._locks_guard:
            if key in self._waiting:
                return None
            self._waiting.add(key)
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._locks_guard:
                self._waiting.discard(key)
            cycle = self._get_cycle(namespace, name)
            if cycle is None or cycle["metadata"].get("deletionTimestamp"):
                return None
            status = cycle.get("status") or {}
            release = str((cycle.get("spec") or {}).get("release", ""))
            if status.get("phase") in plan.TERMINAL_PHASES:
                return Result(status["phase"], release)
            return self._reconcile(cycle, release)

    def _reconcile(self, cycle: dict[str, Any], release: str) -> Result:
        metadata = cycle["metadata"]
        ref = jobs.CycleRef(metadata["name"], metadata["namespace"], metadata["uid"], release,
                            **jobs.queueing(metadata, self.settings.queue_keys))
        record = read_record(cycle.get("status"))
        try:
            spec = CycleSpec.model_validate(cycle["spec"])
        except ValidationError as error:  # the API server validated it: only a CRD/operator version skew gets here
            failed = replace(record, failure=unreadable_spec(error))
            return self._finish_pass(cycle, ref, None, _Pass(failed, {}), suspended=False)
        layout = jobs.layout(ref, spec, self.settings)
        refused = jobs.refusal(spec, self.settings)
        if refused is not None:  # before admission and before any Job: the cycle only learns why it cannot run
            work = _Pass(replace(record, failure=refused), {})
            work.event("Warning", refused[0], refused[1][:1000])
            return self._finish_pass(cycle, ref, spec, work, suspended=False, layout=layout)
        if record.admitted:
            found = self._list(self.clients.batch.list_namespaced_job, ref)
            pods = self._list(self.clients.core.list_namespaced_pod, ref)
        else:  # the admission is recorded before the first Job is created: a queued cycle has none to look for
            found, pods = [], []
        work = _Pass(record, self._newest_jobs(found))
        self._observe(work, pods, spec, layout, ref)
        self._account(ref, spec, pods)

        # Counted from admission (status.startTime), as a Job's activeDeadlineSeconds counts from its start: a cycle
        # queued behind another, or suspended before it was admitted, cannot time out without having run.
        started = (cycle.get("status") or {}).get("startTime") or metadata["creationTimestamp"]
        deadline = _parse_time(started) + timedelta(seconds=spec.deadline_seconds)
        if work.record.admitted and self.clock() >= deadline:
            self._stop_jobs(ref, work)
            message = (f"the cycle did not finish within spec.deadlineSeconds={spec.deadline_seconds} "
                       f"(admitted {started})")
            work.record = replace(work.record, failure=("DeadlineExceeded", message))
            work.event("Warning", "DeadlineExceeded", message)
            return self._finish_pass(cycle, ref, spec, work, suspended=spec.suspend, layout=layout)

        if not work.record.admitted:
            if spec.suspend:
                return self._finish_pass(cycle, ref, spec, work, suspended=True, layout=layout)
            with self._admission:  # admit and record it before any other cycle of the release is looked at
                entries = [queue.Entry.of(c) for c in self.cycles_of(ref.namespace, ref.release)]
                verdict = queue.admission(ref.name, entries)
                if not verdict.admit:
                    work.queued_behind = verdict.message(release)
                    return self._finish_pass(cycle, ref, spec, work, suspended=False, layout=layout)
                work.record = replace(work.record, admitted=True)
                admitted = (f"the active cycle of AdapterRelease {release}" if verdict.holds_release else
                            f"a dry run: it runs beside the cycles of AdapterRelease {release}, not in their queue")
                work.event("Normal", "Admitted", admitted)
                cycle = self._write(cycle, spec, ref, layout, work, suspended=False)
                started = (cycle.get("status") or {}).get("startTime") or started  # the write just recorded it
                deadline = _parse_time(started) + timedelta(seconds=spec.deadline_seconds)
        self._act(spec, ref, layout, deadline, work)
        return self._finish_pass(cycle, ref, spec, work, suspended=spec.suspend, layout=layout)

    # Observing -------------------------------------------------------------------------------------------------

    def _list(self, method: Callable[..., Any], ref: jobs.CycleRef) -> list[dict[str, Any]]:
        response = method(ref.namespace, label_selector=jobs.cycle_selector(ref), _preload_content=False,
                          _request_timeout=self.clients.timeout)
        return list(_raw(response).get("items") or [])

    @staticmethod
    def _newest_jobs(found: list[dict[str, Any]]) -> dict[str, Mapping[str, Any]]:
        newest: dict[str, Mapping[str, Any]] = {}
        for job in found:
            job_labels = job["metadata"].get("labels") or {}
            step = job_labels.get(jobs.LABEL_STEP)
            attempt = int(job_labels.get(jobs.LABEL_ATTEMPT, "1"))
            if step and (step not in newest or attempt > _attempt(newest[step])):
                newest[step] = job
        return newest

    def _observe(self, work: _Pass, pods: list[dict[str, Any]], spec: CycleSpec, layout: plan.Layout,
                 ref: jobs.CycleRef) -> None:
        """Fold what each step's newest Job says into the record."""
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            for owner in pod["metadata"].get("ownerReferences") or []:
                by_owner.setdefault(owner.get("uid", ""), []).append(pod)
        for step, job in work.jobs.items():
            stage = work.record.stages.get(step)
            attempt = _attempt(job)
            if stage is not None and (stage.state != "running" or attempt < stage.attempt):
                continue
            if stage is None:  # created by an operator that was killed before it wrote the status
                work.event("Normal", "JobAdopted", f"{step}: adopted Job {job['metadata']['name']}")
                stage = StageRecord(job["metadata"]["name"], attempt, "running",
                                    isolation=self._isolation(spec, layout, work.record, step),
                                    resume_key=jobs.resume_key_of(job))
            seen = jobs.observe(job, by_owner.get(job["metadata"]["uid"], []), self.clock())
            stage_name = (job["metadata"].get("labels") or {}).get(jobs.LABEL_STAGE, "")
            limit = spec.stage_timeouts.of(stage_name)
            own_limit = limit is not None and (job.get("spec") or {}).get("activeDeadlineSeconds") == limit
            if seen.state == "failed" and own_limit and seen.message.startswith("DeadlineExceeded"):
                # the Job was given the stage's timeout, not the cycle's deadline (_start): it is the stage's
                seen = replace(seen, message=f"StageTimeout: {step} ran longer than spec.stageTimeouts."
                                             f"{stage_name}={limit} s ({seen.message})")
            if seen.state == "failed" and not jobs.finished(job):  # its pod cannot start: free what it holds
                self.clients.batch.delete_namespaced_job(job["metadata"]["name"], ref.namespace,
                                                         propagation_policy="Background",
                                                         _request_timeout=self.clients.timeout)
            on = (job["metadata"].get("labels") or {}).get(jobs.LABEL_PLACEMENT) or stage.placement
            summary, outputs = evidence.split(seen.summary)  # the digests go to their own field of the record
            updated = replace(stage, job=job["metadata"]["name"], attempt=attempt, state=seen.state,
                              summary=summary, message=seen.message, start=seen.start, end=seen.end,
                              placement=on, outputs=outputs if seen.state == "succeeded" else {})
            if seen.state == "running":
                work.waiting = seen.waiting or work.waiting
                if seen.unschedulable_since and seen.waiting:
                    work.unschedulable[step] = (seen.unschedulable_since, seen.waiting[1])
            elif stage.state == "running":
                seconds = _seconds_between(seen.start, seen.end)
                self.metrics.stage_finished(step, seen.state, seconds)
                took = f" in {seconds:.0f} s" if seconds is not None else ""
                if seen.state == "succeeded":
                    work.event("Normal", "StageSucceeded", f"{step} succeeded{took} (Job {updated.job})")
                else:
                    work.event("Warning", "StageFailed", f"{step} failed{took}: {seen.message}"[:1000])
            work.record = work.record.with_stage(step, updated)

    @staticmethod
    def _isolation(spec: CycleSpec, layout: plan.Layout, record: CycleRecord, name: str) -> str | None:
        """The isolation note `_start` records for step `name`, for a Job adopted without its record."""
        step = next((s for s in plan.steps(spec, record.state(), layout) if s.name == name), None)
        return jobs.stage_argv(step, spec.placement.sandbox.runtime_class_name)[1] if step else None

    def cycles_of(self, namespace: str, release: str) -> list[dict[str, Any]]:
        """Every TrainingCycle of `release` in `namespace`, read from the API server (never a cache: admission
        depends on it). The server selects them by the CRD's selectable field spec.release; one too old for
        selectable fields (before Kubernetes 1.31) refuses the selector, and then the namespace is listed whole."""
        from kubernetes.client.exceptions import ApiException

        selector = {"field_selector": f"spec.release={release}"} if self._select_by_release else {}
        try:
            response = self.clients.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, CYCLES, _preload_content=False, _request_timeout=self.clients.timeout,
                **selector)
        except ApiException as error:
            if error.status != 400 or not selector:
                raise
            said = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
            log.warning("the API server refused fieldSelector spec.release (%s); listing whole namespaces instead",
                        (said or error.reason or "")[:200])
            self._select_by_release = False
            return self.cycles_of(namespace, release)
        return [c for c in _raw(response).get("items") or [] if (c.get("spec") or {}).get("release") == release]

    # Acting ----------------------------------------------------------------------------------------------------

    def _act(self, spec: CycleSpec, ref: jobs.CycleRef, layout: plan.Layout, deadline: datetime,
             work: _Pass) -> None:
        releases = ClusterReleases(self.clients.custom, ref.namespace, timeout=self.clients.timeout)
        for _ in range(64):  # every pass of the loop records something; the plan has fewer steps than this
            action = plan.next_action(spec, work.record.state(), layout)
            if isinstance(action, plan.ResolveIncumbent):
                incumbent = releases.incumbent(spec.release)
                work.record = replace(work.record, incumbent_resolved=True, incumbent=incumbent)
                against = f"adapter {incumbent.digest} (revision {incumbent.revision})" if incumbent else "nothing"
                work.event("Normal", "IncumbentResolved", f"AdapterRelease {spec.release}: evaluating against "
                           f"{against}")
            elif isinstance(action, plan.RunStep):
                if spec.suspend:
                    return
                if not self._begin(spec, ref, action.step, 1, deadline, work):
                    return
            elif isinstance(action, plan.AwaitStep):
                stage = work.record.stages[action.step.name]
                if action.step.name in work.jobs:
                    if self._hold(ref, work.jobs[action.step.name], spec.suspend, work):
                        return
                    gpu_waits = action.step.kind == "gpu" and action.step.name in work.unschedulable
                    if gpu_waits and self._fall_back(spec, ref, action.step, stage, deadline, work):
                        continue
                    return
                # the Job is gone before it finished (deleted, or removed by its TTL while nobody watched)
                if stage.attempt - stage.fallbacks >= MAX_ATTEMPTS:
                    work.record = replace(work.record, failure=(
                        "JobLost", f"{action.step.name}: {MAX_ATTEMPTS} Jobs vanished before they finished"))
                    return
                work.event("Warning", "JobLost", f"{action.step.name}: Job {stage.job} is gone before it "
                           "finished; starting another attempt")
                if not self._begin(spec, ref, action.step, stage.attempt + 1, deadline, work, stage.skipped):
                    return
            elif isinstance(action, plan.Publish):
                published = releases.publish(
                    spec.release, cycle=ref.name, decision=action.decision, candidate_uri=action.candidate_uri,
                    candidate_digest=action.candidate_digest, incumbent=work.record.incumbent,
                    evidence=action.evidence)
                published = {k: v for k, v in published.items() if v is not None}
                work.record = replace(work.record, published=published)
                self.metrics.decided(spec.release, str(published["outcome"]))
                kind = "Warning" if published["outcome"] == "Stale" else "Normal"
                revision = f" (AdapterRelease revision {published['revision']})"
                work.event(kind, str(published["outcome"]), f"{published['reason']}{revision}"[:1000])
            else:
                if action.outcome is not None and work.record.published is None:
                    self.metrics.decided(spec.release, action.outcome)
                return
        raise RuntimeError("the plan did not settle in 64 actions; this is a bug in sigma0.plan")

    def _begin(self, spec: CycleSpec, ref: jobs.CycleRef, step: plan.Step, attempt: int, deadline: datetime,
               work: _Pass, skipped: tuple[Mapping[str, Any], ...] = ()) -> bool:
        """Start a step: a GPU step on the first placement with budget left (or not at all: the cycle waits)."""
        if step.kind != "gpu":
            return self._start(spec, ref, step, attempt, deadline, work)
        choice = self._choose(spec, ref, step, work)
        if choice is None:
            return False
        if choice.placement is None:
            until = choice.frees_at
            work.placement_wait = PlacementWait(step.name, "GPUBudgetExhausted", choice.reason(step.name),
                                                placement.format_time(until) if until else None)
            return False
        skipped = (*skipped, *self._skips(step, choice, work))
        return self._start(spec, ref, step, attempt, deadline, work, choice.placement, skipped)

    def _hold(self, ref: jobs.CycleRef, job: Mapping[str, Any], suspend: bool, work: _Pass) -> bool:
        """Make the running stage's Job follow spec.suspend: the Job controller deletes a suspended Job's pods (a
        GPU is freed, not kept idle) and starts new ones when it is resumed. The operator resumes only the Jobs it
        suspended itself (ANNOTATION_SUSPENDED): one a queue suspended (Kueue, until it admits it) stays the
        queue's. True while the stage is held for spec.suspend."""
        name = job["metadata"]["name"]
        suspended = bool((job.get("spec") or {}).get("suspend"))
        ours = (job["metadata"].get("annotations") or {}).get(jobs.ANNOTATION_SUSPENDED) == "true"
        if suspend and not suspended:
            body = {"metadata": {"annotations": {jobs.ANNOTATION_SUSPENDED: "true"}}, "spec": {"suspend": True}}
            self.clients.batch.patch_namespaced_job(name, ref.namespace, body, _request_timeout=self.clients.timeout)
            work.event("Normal", "StageSuspended", f"Job {name} suspended (spec.suspend): its pods are stopped")
        elif not suspend and suspended and ours:
            body = {"metadata": {"annotations": {jobs.ANNOTATION_SUSPENDED: None}}, "spec": {"suspend": False}}
            self.clients.batch.patch_namespaced_job(name, ref.namespace, body, _request_timeout=self.clients.timeout)
            work.event("Normal", "StageResumed", f"Job {name} resumed")
        return suspend

    def _fall_back(self, spec: CycleSpec, ref: jobs.CycleRef, step: plan.Step, stage: StageRecord,
                   deadline: datetime, work: _Pass) -> bool:
        """A GPU step's pod is Unschedulable: once it has been for longer than its placement allows, delete its
        Job and start the next usable placement. False (and the pod keeps waiting) while it may wait longer, or
        when no other placement is left to try."""
        since, why = work.unschedulable[step.name]
        now = self.clock()
        options = placement.options_for(spec, step.stage)
        current = next((o for o in options if o.name == stage.placement), GpuPlacement())  # (gone from the spec)
        waited = (now - placement.parse_time(since)).total_seconds()
        if waited < current.unschedulable_seconds:
            return False
        tried = {str(s.get("placement")) for s in stage.skipped if s.get("reason") == "Unschedulable"}
        choice = self._choose(spec, ref, step, work, exclude=tried | {stage.placement or ""})
        if choice is None:
            return False
        if choice.placement is None:
            others = "; ".join(f"{s.placement}: {s.message}" for s in choice.skipped)
            work.waiting = ("Unschedulable", f"{why} (no other placement to fall back to{': ' if others else ''}"
                            f"{others})")
            return False
        from kubernetes.client.exceptions import ApiException

        try:
            self.clients.batch.delete_namespaced_job(stage.job, ref.namespace, propagation_policy="Background",
                                                     _request_timeout=self.clients.timeout)
        except ApiException as error:
            if error.status != 404:
                raise
        work.jobs.pop(step.name, None)
        work.unschedulable.pop(step.name, None)
        work.waiting = None
        left = {"placement": stage.placement, "reason": "Unschedulable",
                "message": f"its pod stayed Unschedulable for {waited:.0f} s: {why}"[:1000],
                "time": placement.format_time(now)}
        self.metrics.placement_skipped(step.name, str(stage.placement), "Unschedulable")
        work.event("Warning", "PlacementFallback", f"{step.name}: the pod of Job {stage.job} stayed Unschedulable on "
                   f"placement {stage.placement} for {waited:.0f} s ({why}); deleted the Job, trying placement "
                   f"{choice.placement.name}"[:1000])
        skipped = (*stage.skipped, left, *self._skips(step, choice, work))
        return self._start(spec, ref, step, stage.attempt + 1, deadline, work, choice.placement, skipped)

    def _skips(self, step: plan.Step, choice: placement.Choice, work: _Pass) -> list[dict[str, Any]]:
        """The budget skips of a choice, as status entries; each one is an Event and a metric."""
        now = self.clock()
        for skip in choice.skipped:
            self.metrics.placement_skipped(step.name, skip.placement, skip.reason)
            work.event("Normal", "PlacementSkipped", f"{step.name}: placement {skip.placement} skipped: "
                       f"{skip.message}"[:1000])
        return [skip.to_status(now) for skip in choice.skipped]

    def _start(self, spec: CycleSpec, ref: jobs.CycleRef, step: plan.Step, attempt: int, deadline: datetime,
               work: _Pass, on: GpuPlacement | None = None, skipped: tuple[Mapping[str, Any], ...] = ()) -> bool:
        """Create the step's Job (or adopt the one a killed operator created); False if it cannot start yet."""
        from kubernetes.client.exceptions import ApiException

        remaining = math.ceil((deadline - self.clock()).total_seconds()) + JOB_DEADLINE_SLACK_SECONDS
        limit = spec.stage_timeouts.of(step.stage)  # the stage's own timeout, where it is the nearer end
        if limit is not None:
            remaining = min(remaining, limit)
        earlier = work.record.stages.get(step.name)  # every attempt of a step resumes under one key
        key = (earlier.resume_key if earlier else None) or secrets.token_hex(32)
        body = jobs.build_job(step, cycle=ref, spec=spec, settings=self.settings, attempt=attempt,
                              active_deadline_seconds=remaining, placement=on, resume_key=key)
        name = body["metadata"]["name"]
        adopted = False
        try:
            job = _raw(self.clients.batch.create_namespaced_job(ref.namespace, body, _preload_content=False,
                                                                _request_timeout=self.clients.timeout))
        except ApiException as error:
            if error.status != 409:
                raise
            job = _raw(self.clients.batch.read_namespaced_job(name, ref.namespace, _preload_content=False,
                                                              _request_timeout=self.clients.timeout))
            owners = {o.get("uid") for o in job["metadata"].get("ownerReferences") or []}
            if ref.uid not in owners:
                work.waiting = ("OldJobPresent", f"Job {name} belongs to an earlier cycle of the same name; "
                                "waiting for the garbage collector to remove it")
                return False
            adopted = True
            key = jobs.resume_key_of(job) or key
        _, isolation = jobs.stage_argv(step, spec.placement.sandbox.runtime_class_name)
        work.jobs[step.name] = job
        work.record = work.record.with_stage(step.name, StageRecord(
            name, attempt, "running", isolation=isolation, placement=on.name if on else None, skipped=skipped,
            resume_key=key))
        where = f" on placement {on.name}" if on else ""
        if adopted:  # created by an operator that was killed before it wrote the status, and not listed then
            work.event("Normal", "JobAdopted", f"{step.name}: adopted Job {name}, which already existed{where}")
        else:
            work.event("Normal", "StageStarted", f"{step.name}: Job {name}{where}" +
                       (f" ({isolation})" if isolation else ""))
        return True

    # GPU hours ---------------------------------------------------------------------------------------------------

    def _choose(self, spec: CycleSpec, ref: jobs.CycleRef, step: plan.Step, work: _Pass,
                exclude: set[str] | None = None) -> placement.Choice | None:
        """The placement for a GPU step now, from the ledger brought up to date with the namespace's pods; None
        (and the cycle waits, saying why) when the ledger cannot be read or written: budgets are never guessed."""
        from kubernetes.client.exceptions import ApiException

        now = self.clock()
        try:
            rows = self._sync(ref.namespace, now)
        except (ApiException, LedgerError) as error:
            detail = f"{error.status} {error.reason}" if isinstance(error, ApiException) else str(error)
            where = self._ledger(ref.namespace).where
            message = (f"{step.name} waits: the GPU ledger ({where}) cannot be used: {detail}; the operator needs "
                       f"get, create and update on configmaps in {self.ledger_namespace}")
            work.waiting = ("GPULedgerUnavailable", message[:1000])
            return None
        self._report(ref.namespace, rows, [spec], now)
        options = placement.with_budgets(placement.options_for(spec, step.stage), self.budgets, ref.namespace)
        return placement.choose(options, rows, now, exclude or ())

    def _sync(self, namespace: str, now: datetime) -> list[placement.Usage]:
        """Record every GPU pod of the namespace in its ledger and close the rows of pods that are gone."""
        pods = _raw(self.clients.core.list_namespaced_pod(
            namespace, label_selector=f"{jobs.MANAGED_BY[0]}={jobs.MANAGED_BY[1]},{jobs.LABEL_KIND}=gpu",
            _preload_content=False, _request_timeout=self.clients.timeout)).get("items") or []
        seen = [u for u in (jobs.gpu_usage(p) for p in pods) if u is not None]
        alive = {u.key for u in seen}
        return self._update(namespace, lambda rows: placement.close_vanished(placement.merge(rows, seen), alive, now),
                            now)

    def _account(self, ref: jobs.CycleRef, spec: CycleSpec, pods: list[dict[str, Any]]) -> None:
        """Record this cycle's GPU pods in the ledger when they start and end (and close the row of one that
        vanished): only what this operator has not written yet, so most reconciles cost no API call."""
        now = self.clock()
        seen = [u for u in (jobs.gpu_usage(p) for p in pods) if u is not None]
        uids = {str(p["metadata"].get("uid")) for p in pods}
        with self._ledger_lock:
            gone = [r for (ns, key), r in self._recorded.items()
                    if ns == ref.namespace and r.cycle == ref.name and r.end is None and key not in uids]
            changed = [u for u in seen if self._recorded.get((ref.namespace, u.key)) != u]
        if not changed and not gone:
            return
        from kubernetes.client.exceptions import ApiException

        closed = placement.close_vanished(gone, set(), now)
        try:
            rows = self._update(ref.namespace, lambda rows: placement.merge(rows, [*changed, *closed]), now)
        except (ApiException, LedgerError) as error:  # the next reconcile, or the resync, records them
            log.warning("could not record GPU hours of %s/%s: %s", ref.namespace, ref.name, error)
            return
        self._report(ref.namespace, rows, [spec], now)

    def pod_deleted(self, namespace: str, pod: Mapping[str, Any]) -> None:
        """A GPU pod is gone: its row ends at its container's end, or now if it never reported one."""
        found = jobs.gpu_usage(pod)
        if found is None:
            return
        now = self.clock()
        closed = placement.close_vanished([found], set(), now)
        self._update(namespace, lambda rows: placement.merge(rows, closed), now)

    def refresh_ledgers(self, cycles: list[Mapping[str, Any]]) -> None:
        """Bring each namespace's ledger up to date and the GPU-hour metrics with it (the resync calls this)."""
        by_namespace: dict[str, list[CycleSpec]] = {}
        for found in cycles:
            specs = by_namespace.setdefault(found["metadata"]["namespace"], [])
            try:
                specs.append(CycleSpec.model_validate(found.get("spec") or {}))
            except ValidationError:
                continue
        from kubernetes.client.exceptions import ApiException

        now = self.clock()
        for namespace, specs in sorted(by_namespace.items()):
            try:
                rows = self._sync(namespace, now)
            except LedgerError as error:
                log.error("%s", error)
                continue
            except ApiException as error:
                log.warning("could not bring the GPU ledger of %s up to date: %s %s", namespace, error.status,
                            error.reason)
                continue
            self._report(namespace, rows, specs, now)

    def _update(self, namespace: str, change: Callable[[list[placement.Usage]], list[placement.Usage]],
                now: datetime) -> list[placement.Usage]:
        rows = self._ledger(namespace).update(change, now)
        with self._ledger_lock:
            for key in [k for k in self._recorded if k[0] == namespace]:
                del self._recorded[key]
            self._recorded.update({(namespace, row.key): row for row in rows})
        return rows

    def _ledger(self, namespace: str) -> ClusterLedger:
        return ClusterLedger(self.clients.core, namespace, self.ledger_namespace, self.clients.timeout)

    def _report(self, namespace: str, rows: list[placement.Usage], specs: list[CycleSpec], now: datetime) -> None:
        options = placement.every_option(specs, self.budgets, namespace)
        self.metrics.gpu_hours(namespace, placement.usage_report(rows, options, now))

    def _stop_jobs(self, ref: jobs.CycleRef, work: _Pass) -> None:
        for step, stage in work.record.stages.items():
            if stage.state == "running" and step in work.jobs:
                self.clients.batch.delete_namespaced_job(stage.job, ref.namespace, propagation_policy="Background",
                                                         _request_timeout=self.clients.timeout)
                work.record = work.record.with_stage(step, replace(stage, state="failed",
                                                                   message="stopped: the cycle's deadline passed"))

    # Writing ---------------------------------------------------------------------------------------------------

    def _finish_pass(self, cycle: dict[str, Any], ref: jobs.CycleRef, spec: CycleSpec | None, work: _Pass, *,
                     suspended: bool, layout: plan.Layout | None = None) -> Result:
        before = (cycle.get("status") or {}).get("phase")
        if spec is None:  # an unreadable spec: only the failure can be shown
            old = cycle.get("status") or {}
            status = {**old, "phase": plan.PHASE_FAILED,
                      "phaseTransitionTime": phase_since(old, plan.PHASE_FAILED, placement.format_time(self.clock())),
                      "failure": {"reason": work.record.failure[0], "message": work.record.failure[1]}}
            self._replace_status(cycle, status)
            return Result(plan.PHASE_FAILED, ref.release, finished_now=True)
        assert layout is not None
        cycle = self._write(cycle, spec, ref, layout, work, suspended=suspended)
        phase = (cycle.get("status") or {}).get("phase", "")
        if phase != before:
            kind = "Warning" if phase == plan.PHASE_FAILED else "Normal"
            work.event(kind, f"Phase{phase}", (cycle.get("status") or {}).get("message", "")[:1000] or phase)
        self._post_events(cycle, work)
        return Result(phase, ref.release, finished_now=phase in plan.TERMINAL_PHASES and phase != before)

    def _write(self, cycle: dict[str, Any], spec: CycleSpec, ref: jobs.CycleRef, layout: plan.Layout, work: _Pass,
               *, suspended: bool) -> dict[str, Any]:
        situation = Situation(queued_behind=work.queued_behind, waiting=work.waiting, suspended=suspended,
                              placement_wait=work.placement_wait)
        old = cycle.get("status") or {}
        new = render(spec, work.record, layout, situation, generation=int(cycle["metadata"].get("generation", 0)),
                     now=placement.format_time(self.clock()), previous=old)
        if same_status(old, new):
            return cycle
        return self._replace_status(cycle, new)

    def _replace_status(self, cycle: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        metadata = cycle["metadata"]
        body = {"apiVersion": cycle["apiVersion"], "kind": cycle["kind"],
                "metadata": {"name": metadata["name"], "namespace": metadata["namespace"],
                             "resourceVersion": metadata["resourceVersion"]},
                "spec": cycle["spec"], "status": status}
        try:
            written = self.clients.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, metadata["namespace"], CYCLES, metadata["name"], body,
                _request_timeout=self.clients.timeout)
        except ApiException as error:
            if error.status in (404, 409):  # deleted meanwhile (its Jobs go with it), or written by someone else
                what = "was deleted" if error.status == 404 else "changed"
                raise Conflict(f"TrainingCycle {metadata['namespace']}/{metadata['name']} {what} meanwhile") from error
            raise
        with self._locks_guard:
            self._last_written[(metadata["namespace"], metadata["name"])] = written["metadata"]["resourceVersion"]
        # Only the write that moved the cycle out of a phase gets here with that change (the resourceVersion
        # precondition refuses any other), so each phase's time is observed once.
        left = phase_change(cycle.get("status"), status)
        if left is not None:
            self.metrics.phase_left(*left)
        return written

    def _post_events(self, cycle: dict[str, Any], work: _Pass) -> None:
        from kubernetes.client.exceptions import ApiException

        for kind, reason, message in work.events:
            log.info("%s/%s %s: %s", cycle["metadata"]["namespace"], cycle["metadata"]["name"], reason, message)
            try:
                self.clients.core.create_namespaced_event(cycle["metadata"]["namespace"],
                                                          event_for(cycle, kind, reason, message, self.component),
                                                          _request_timeout=self.clients.timeout)
            except ApiException as error:  # an event is a courtesy: never fail a reconcile over it
                log.warning("could not post event %s: %s", reason, error.reason)
        work.events.clear()

    # Small helpers ---------------------------------------------------------------------------------------------

    def _get_cycle(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return _raw(self.clients.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CYCLES, name, _preload_content=False,
                _request_timeout=self.clients.timeout))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept about a deleted cycle."""
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
            self._last_written.pop((namespace, name), None)

    def left_as_written(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """Whether the cycle at `resource_version` is the very object this operator's last status write made. Its
        watch event then brings no news: the pass that wrote it went on until it had to wait for a Job, a pod, a
        spec change or the clock (the resync), so reconciling it again would only read what was just written."""
        with self._locks_guard:
            return resource_version is not None and self._last_written.get((namespace, name)) == resource_version


def _attempt(job: Mapping[str, Any]) -> int:
    return int((job["metadata"].get("labels") or {}).get(jobs.LABEL_ATTEMPT, "1"))


def event_for(obj: Mapping[str, Any], kind: str, reason: str, message: str, component: str) -> dict[str, Any]:
    """A core/v1 Event about `obj`."""
    metadata = obj["metadata"]
    stamp = now_rfc3339()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": metadata["name"],
                           "namespace": metadata["namespace"], "uid": metadata["uid"],
                           "resourceVersion": metadata.get("resourceVersion")},
        "type": kind, "reason": reason, "message": message,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "source": {"component": component},
    }
