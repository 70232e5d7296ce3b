"""TrainingCycle status: the record the operator keeps (⇔ the plan's CycleState) and what a person sees.

Pure. The status holds two kinds of fields:

    the record   what has been observed and must survive an operator restart: admitted, incumbentResolved,
                 resolvedIncumbent, stages (per step: Job, attempt, state, start, end, summary, message,
                 isolation, outputs: the digest of every file the step wrote, which later steps are held to;
                 resumeKey: the key of the journals it resumes from, sigma0.journal; GPU steps also their
                 placement and the placements skipped, with why), published, failure. `read_record` turns it
                 back into a CycleRecord.
    the view     derived from the record on every write: phase, message, conditions (Harvested, Verified,
                 Trained, Evaluated, Decided, Ready, Failed; a stage the plan skips, for a cycle that imports its
                 candidate or a dry run, makes its condition False with reason Skipped and says why), counts,
                 candidate and incumbent pass@1 (with the display strings the printer columns show), decision,
                 releaseRevision, placement (the `-o wide` column), placementWait (while no GPU placement has
                 budget left), dryRun (a dry run's report: sigma0.plan.dry_run_report).

kopf keeps nothing in it: the operator uses only event handlers, which store no progress (see handlers.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sigma0 import evidence, plan
from sigma0.placement import GPU_STAGES
from sigma0.spec import CycleSpec

PHASE_QUEUED = "Queued"
PHASE_SUSPENDED = "Suspended"
PHASE_PROMOTING = "Promoting"
PHASE_WAITING = "Waiting"  # a GPU step cannot start: every placement's budget is zero or spent

GROUPS: dict[str, tuple[str, ...]] = {  # condition type → the stages (Step.stage) it covers
    "Harvested": ("harvest",),
    "Verified": ("verify",),
    "Trained": ("dataset", "train", "import"),
    "Evaluated": ("generate", "score"),
    "Decided": ("decide",),
}
CONDITION_TYPES = (*GROUPS, "Ready", "Complete", "Suspended", "Failed")  # Complete, Suspended, Failed: as a Job's


@dataclass(frozen=True)
class StageRecord:
    job: str
    attempt: int
    state: plan.StepState
    start: str | None = None
    end: str | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    isolation: str | None = None
    placement: str | None = None  # GPU steps: the placement the Job runs on
    skipped: tuple[Mapping[str, Any], ...] = ()  # GPU steps: placements passed over (sigma0.placement.Skip)
    outputs: Mapping[str, str] = field(default_factory=dict)  # what the step wrote, by digest (sigma0.evidence)
    resume_key: str | None = None  # the key of its journals (sigma0.journal), the same for every attempt

    def to_status(self) -> dict[str, Any]:
        data: dict[str, Any] = {"job": self.job, "attempt": self.attempt, "state": self.state,
                                "summary": dict(self.summary)}
        if self.outputs:
            data["outputs"] = dict(self.outputs)
        for key, value in (("startTime", self.start), ("completionTime", self.end), ("message", self.message),
                           ("isolation", self.isolation), ("placement", self.placement),
                           ("resumeKey", self.resume_key)):
            if value:
                data[key] = value
        if self.skipped:
            data["skipped"] = [dict(skip) for skip in self.skipped]
        return data

    @classmethod
    def from_status(cls, data: Mapping[str, Any]) -> StageRecord:
        return cls(job=str(data["job"]), attempt=int(data.get("attempt", 1)), state=data["state"],
                   start=data.get("startTime"), end=data.get("completionTime"),
                   summary=dict(data.get("summary") or {}), message=str(data.get("message") or ""),
                   isolation=data.get("isolation"), placement=data.get("placement"),
                   skipped=tuple(dict(skip) for skip in data.get("skipped") or ()),
                   outputs=dict(data.get("outputs") or {}), resume_key=data.get("resumeKey"))

    @property
    def fallbacks(self) -> int:
        """Attempts that were ended on purpose: a pod that stayed Unschedulable, deleted for the next placement."""
        return sum(1 for skip in self.skipped if skip.get("reason") == "Unschedulable")


@dataclass(frozen=True)
class CycleRecord:
    """What the operator has observed about one cycle; `failure` is an end outside the plan (a deadline, an
    invalid spec) as (reason, message)."""

    admitted: bool = False
    incumbent_resolved: bool = False
    incumbent: plan.Incumbent | None = None
    stages: Mapping[str, StageRecord] = field(default_factory=dict)
    published: Mapping[str, Any] | None = None
    failure: tuple[str, str] | None = None

    def state(self) -> plan.CycleState:
        steps = {name: plan.StepResult(r.state, r.summary, r.message, r.outputs) for name, r in self.stages.items()}
        return plan.CycleState(self.incumbent_resolved, self.incumbent, steps, self.published)

    def with_stage(self, name: str, record: StageRecord) -> CycleRecord:
        return replace(self, stages={**self.stages, name: record})


def read_record(status: Mapping[str, Any] | None) -> CycleRecord:
    status = status or {}
    pointer = status.get("resolvedIncumbent")
    incumbent = None
    if pointer:
        incumbent = plan.Incumbent(digest=pointer["digest"], uri=pointer["uri"], pass_at_1=pointer.get("passAt1"),
                                   revision=int(pointer.get("revision", 0)))
    failure = status.get("failure")
    return CycleRecord(
        admitted=bool(status.get("admitted")),
        incumbent_resolved=bool(status.get("incumbentResolved")),
        incumbent=incumbent,
        stages={name: StageRecord.from_status(data) for name, data in (status.get("stages") or {}).items()},
        published=status.get("published"),
        failure=(failure["reason"], failure.get("message", "")) if failure else None,
    )


def _record_fields(record: CycleRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "admitted": record.admitted,
        "incumbentResolved": record.incumbent_resolved,
        "stages": {name: r.to_status() for name, r in record.stages.items()},
    }
    if record.incumbent is not None:
        pointer = {"digest": record.incumbent.digest, "uri": record.incumbent.uri,
                   "revision": record.incumbent.revision}
        if record.incumbent.pass_at_1 is not None:
            pointer["passAt1"] = record.incumbent.pass_at_1
        data["resolvedIncumbent"] = pointer
    if record.published is not None:
        data["published"] = dict(record.published)
    if record.failure is not None:
        data["failure"] = {"reason": record.failure[0], "message": record.failure[1]}
    return data


# The view ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementWait:
    """A GPU step that cannot start: no placement has budget left. `until`: the earliest time one frees."""

    step: str
    reason: str
    message: str
    until: str | None = None

    def to_status(self) -> dict[str, Any]:
        data = {"step": self.step, "reason": self.reason, "message": self.message[:1000]}
        return data | ({"until": self.until} if self.until else {})


@dataclass(frozen=True)
class Situation:
    """What the executor knows besides the record: why the cycle waits, if it does."""

    queued_behind: str | None = None  # a message naming the cycle(s) ahead in the release's queue
    waiting: tuple[str, str] | None = None  # (reason, message) of a stage pod that cannot run yet
    suspended: bool = False
    placement_wait: PlacementWait | None = None


@dataclass(frozen=True)
class View:
    phase: str
    outcome: str | None
    reason: str  # CamelCase, for the Ready / Failed conditions
    message: str
    report: Mapping[str, Any] | None = None  # a dry run's


def view(spec: CycleSpec, record: CycleRecord, layout: plan.Layout, situation: Situation) -> View:
    """Phase, outcome and what the cycle is doing or waiting for."""
    if record.failure is not None:
        return View(plan.PHASE_FAILED, None, record.failure[0], record.failure[1])
    if not record.admitted:
        if situation.suspended:
            return View(PHASE_SUSPENDED, None, PHASE_SUSPENDED,
                        "suspended before it started: set spec.suspend to false to queue it")
        return View(PHASE_QUEUED, None, PHASE_QUEUED, situation.queued_behind or "waiting for its turn")
    action = plan.next_action(spec, record.state(), layout)
    if isinstance(action, plan.Finish):
        reason = action.outcome or _failure_reason(record)
        return View(action.phase, action.outcome, reason, action.reason, action.report)
    if isinstance(action, plan.Publish):
        return View(PHASE_PROMOTING, None, PHASE_PROMOTING,
                    f"applying the decision {action.decision.get('outcome')} to AdapterRelease {spec.release}")
    if isinstance(action, plan.RunStep):
        if situation.suspended:
            return View(PHASE_SUSPENDED, None, PHASE_SUSPENDED,
                        f"suspended before {action.step.name}: set spec.suspend to false to continue")
        wait = situation.placement_wait
        if wait is not None and wait.step == action.step.name:
            return View(PHASE_WAITING, None, wait.reason, wait.message)
        if situation.waiting is not None:
            return View(action.step.phase, None, situation.waiting[0], situation.waiting[1])
        return View(action.step.phase, None, "Starting", f"starting {action.step.name}")
    if isinstance(action, plan.AwaitStep):
        stage = record.stages.get(action.step.name)
        if situation.suspended:
            return View(PHASE_SUSPENDED, None, PHASE_SUSPENDED,
                        f"suspended during {action.step.name}: its Job is suspended and its pods stopped; set "
                        "spec.suspend to false to resume it")
        if situation.waiting is not None:
            return View(action.step.phase, None, situation.waiting[0], situation.waiting[1])
        job = f" in Job {stage.job}" if stage and stage.job else ""  # a local step has no Job
        return View(action.step.phase, None, "Running", f"{action.step.name} is running{job}")
    return View(plan.PHASE_PENDING, None, "ResolvingIncumbent", f"reading AdapterRelease {spec.release}")


EVIDENCE_REASONS = {evidence.TAMPERED: "EvidenceTampered", evidence.MISSING: "EvidenceMissing",
                    "digest_mismatch": "DigestMismatch"}  # the last: an imported adapter not the one named


def _failure_reason(record: CycleRecord) -> str:
    """StageFailed, or EvidenceTampered / EvidenceMissing when a stage refused an input that is not what its writer
    recorded (sigma0.evidence): a person should see at a glance that something wrote where it should not have; or
    DigestMismatch when an imported adapter is not the one spec.candidate names."""
    for stage in record.stages.values():
        if stage.state == "failed" and stage.summary.get("kind") in EVIDENCE_REASONS:
            return EVIDENCE_REASONS[stage.summary["kind"]]
    return "StageFailed"


def _ratio_display(pass_at_1: float, passed: int, total: int) -> str:
    return f"{pass_at_1:.3f} ({passed}/{total})"


def _figures(summary: Mapping[str, Any], digest: str | None) -> dict[str, Any]:
    figures: dict[str, Any] = {"digest": digest} if digest else {}
    if "pass_at_1" in summary:
        passed, total = int(summary.get("passed", 0)), int(summary.get("total", 0))
        figures |= {"passAt1": float(summary["pass_at_1"]), "passed": passed, "total": total,
                    "passAt1Display": _ratio_display(float(summary["pass_at_1"]), passed, total)}
    return figures


def counts(record: CycleRecord) -> dict[str, Any]:
    """harvested / excluded / verified and every drop reason (harvest's and verify's, summed by reason)."""
    harvest = _succeeded_summary(record, "harvest")
    verify = _succeeded_summary(record, "verify")
    found: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    if harvest is not None:
        found["harvested"] = int(harvest.get("harvested", 0))
        found["excluded"] = int(harvest.get("excluded", 0))
        for reason, count in (harvest.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + int(count)
        if harvest.get("duplicates"):
            dropped["duplicate"] = dropped.get("duplicate", 0) + int(harvest["duplicates"])
    if verify is not None:
        found["verified"] = int(verify.get("passed", 0))
        for reason, count in (verify.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + int(count)
        if "harvested" in found:
            found["verifiedOfHarvested"] = f"{found['verified']}/{found['harvested']}"
    if dropped:
        found["dropped"] = dict(sorted(dropped.items()))
    return found


def _succeeded_summary(record: CycleRecord, name: str) -> Mapping[str, Any] | None:
    stage = record.stages.get(name)
    return stage.summary if stage is not None and stage.state == "succeeded" else None


def decision(record: CycleRecord, current: View) -> dict[str, Any] | None:
    decide = _succeeded_summary(record, "decide") or {}
    if record.published is not None:
        found = {"outcome": str(record.published.get("outcome")), "reason": str(record.published.get("reason", ""))}
    elif current.outcome is not None:
        found = {"outcome": current.outcome, "reason": current.message}
    else:
        return None
    if decide.get("p_value") is not None:
        found["pValue"] = float(decide["p_value"])
    return found


def _condition(kind: str, state: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": state, "reason": reason, "message": message[:1000]}


def _group_condition(kind: str, spec: CycleSpec, record: CycleRecord, layout: plan.Layout,
                     current: View, situation: Situation) -> dict[str, Any]:
    steps = [s for s in plan.steps(spec, record.state(), layout) if s.stage in GROUPS[kind]]
    stages = [(s, record.stages.get(s.name)) for s in steps]
    failed = [(s, r) for s, r in stages if r is not None and r.state == "failed"]
    if failed:
        step, stage = failed[0]
        return _condition(kind, "False", "StageFailed", f"{step.name} failed: {stage.message}")
    running = [(s, r) for s, r in stages if r is not None and r.state == "running"]
    if running:
        step, stage = running[0]
        if situation.waiting is not None:
            return _condition(kind, "Unknown", situation.waiting[0], situation.waiting[1])
        return _condition(kind, "Unknown", "Running", f"{step.name} is running in Job {stage.job}")
    skips = {stage: why for stage, why in plan.skipped(spec).items() if stage in GROUPS[kind]}
    if skips and not (kind == "Decided" and current.outcome is not None):
        ran = [s.name for s, r in stages if r is not None and r.state == "succeeded"]
        done = f"; {', '.join(ran)} succeeded" if ran else ""
        return _condition(kind, "False", "Skipped", f"{', '.join(skips)} skipped: {next(iter(skips.values()))}{done}")
    if stages and all(r is not None and r.state == "succeeded" for _, r in stages):
        if kind == "Decided":
            return _decided(record, current)
        return _condition(kind, "True", "Succeeded", _group_message(kind, record))
    if current.phase in plan.TERMINAL_PHASES:
        if kind == "Decided" and current.outcome is not None:
            return _decided(record, current)
        return _condition(kind, "False", "Skipped", "the cycle ended before this stage")
    if current.phase in (PHASE_QUEUED, PHASE_SUSPENDED):
        return _condition(kind, "Unknown", current.phase, current.message)
    wait = situation.placement_wait
    if wait is not None and any(s.name == wait.step for s, _ in stages):
        return _condition(kind, "Unknown", wait.reason, wait.message)
    return _condition(kind, "Unknown", "NotStarted", "not started yet")


def _decided(record: CycleRecord, current: View) -> dict[str, Any]:
    found = decision(record, current)
    if found is None:
        return _condition("Decided", "Unknown", PHASE_PROMOTING, current.message)
    return _condition("Decided", "True", found["outcome"], found["reason"])


def _group_message(kind: str, record: CycleRecord) -> str:
    figures = counts(record)
    if kind == "Harvested" and "harvested" in figures:
        kept = (_succeeded_summary(record, "harvest") or {}).get("kept", "?")
        return f"{figures['harvested']} rows read, {kept} kept, {figures['excluded']} excluded as eval overlap"
    if kind == "Verified" and "verified" in figures:
        verify = _succeeded_summary(record, "verify") or {}
        inside = " inside the pod's runtime class" if record.stages["verify"].isolation else ""
        return (f"{figures['verified']} of {verify.get('total', '?')} passed their asserts in the sandbox "
                f"({verify.get('sandbox', '?')}{inside})")
    if kind == "Trained":
        train = _succeeded_summary(record, "train") or {}
        return f"adapter {train.get('adapter_digest', '?')} trained for {train.get('steps', '?')} steps"
    return "succeeded"


def conditions(spec: CycleSpec, record: CycleRecord, layout: plan.Layout, current: View,
               situation: Situation, *, generation: int, now: str,
               previous: list[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The cycle's conditions, Kubernetes style; lastTransitionTime moves only when a status changes."""
    found = [_group_condition(kind, spec, record, layout, current, situation) for kind in GROUPS]
    if current.phase == plan.PHASE_SUCCEEDED:
        found.append(_condition("Ready", "True", current.reason, current.message))
    else:
        found.append(_condition("Ready", "False", current.reason if current.phase != plan.PHASE_FAILED
                                else "Failed", current.message))
    if current.phase == plan.PHASE_SUCCEEDED:  # a Job's and JobSet's convention: True once it succeeded, for good
        found.append(_condition("Complete", "True", current.reason, current.message))
    else:
        found.append(_condition("Complete", "False", current.reason, current.message))
    if current.phase == PHASE_SUSPENDED:
        found.append(_condition("Suspended", "True", PHASE_SUSPENDED, current.message))
    elif spec.suspend:
        found.append(_condition("Suspended", "False", "NotSuspended",
                                f"spec.suspend is set, but the cycle is {current.phase}: there is nothing to suspend"))
    else:
        found.append(_condition("Suspended", "False", "NotSuspended", "spec.suspend is false"))
    if current.phase == plan.PHASE_FAILED:
        found.append(_condition("Failed", "True", current.reason, current.message))
    else:
        found.append(_condition("Failed", "False", "NoFailure", "nothing has failed"))
    before = {c.get("type"): c for c in previous or []}
    for condition in found:
        old = before.get(condition["type"])
        condition["observedGeneration"] = generation
        keep = old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime")
        condition["lastTransitionTime"] = old["lastTransitionTime"] if keep else now
    return found


def render(spec: CycleSpec, record: CycleRecord, layout: plan.Layout, situation: Situation, *,
           generation: int, now: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole status for `record`: the record itself plus the view. `previous` is the status it replaces
    (for condition transition times and the cycle's start and end times)."""
    previous = previous or {}
    current = view(spec, record, layout, situation)
    status: dict[str, Any] = {
        **_record_fields(record),
        "phase": current.phase,
        "reason": current.reason,  # why the cycle is where it is, in one CamelCase word: the REASON column
        "message": current.message[:1000],
        "observedGeneration": generation,
        "conditions": conditions(spec, record, layout, current, situation, generation=generation, now=now,
                                 previous=previous.get("conditions")),
        "counts": counts(record),
    }
    status["phaseTransitionTime"] = phase_since(previous, current.phase, now)
    if record.admitted:
        status["startTime"] = previous.get("startTime") or now
    if current.phase in plan.TERMINAL_PHASES:
        status["completionTime"] = previous.get("completionTime") or now
    candidate = _figures(_succeeded_summary(record, "score-candidate") or {},
                         plan.candidate_digest_of(spec, record.state()) or None)
    if candidate:
        status["candidate"] = candidate
    if record.incumbent_resolved:
        if record.incumbent is None:
            status["incumbent"] = {"passAt1Display": "none"}
        else:
            figures = _figures(_succeeded_summary(record, "score-incumbent") or {}, record.incumbent.digest)
            status["incumbent"] = figures
    found = decision(record, current)
    if found is not None:
        status["decision"] = found
    if current.report is not None:
        status["dryRun"] = dict(current.report)
    if record.published is not None and record.published.get("revision") is not None:
        status["releaseRevision"] = int(record.published["revision"])
    placements = placement_display(record)
    if placements:
        status["placement"] = placements
    if situation.placement_wait is not None and current.phase == PHASE_WAITING:
        status["placementWait"] = situation.placement_wait.to_status()
    return status


def phase_since(previous: Mapping[str, Any], phase: str, now: str) -> str:
    """When the cycle entered `phase`: kept while the phase stays, `now` when it changes (or was never recorded)."""
    kept = previous.get("phaseTransitionTime") if previous.get("phase") == phase else None
    return str(kept or now)


def placement_display(record: CycleRecord) -> str:
    """`train=a100,generate=t4`: where each GPU step ran (or runs), in the plan's order, for `kubectl get tc -o
    wide`."""
    order = list(GPU_STAGES)
    placed = sorted((order.index(name) if name in order else len(order), name, stage.placement)
                    for name, stage in record.stages.items() if stage.placement)
    return ",".join(f"{name}={where}" for _, name, where in placed)


def same_status(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything (so a reconcile that learned nothing writes nothing)."""
    return dict(old or {}) == dict(new)
