"""The local executor: runs a TrainingCycle on this machine, every stage as a subprocess, through the shared plan.

State lives in `<workdir>/cycles/<name>/state.json`, rewritten atomically after every transition, so a killed run
resumes where it stopped: finished steps are never redone, and an interrupted step is started again (every stage
command resumes or rewrites its own outputs atomically; it resumes only from partial output its journal, made under
the step's resume key kept here, vouches for: sigma0.journal). Each finished step's outputs are recorded by digest
(sigma0.evidence), and later steps are held to them. The state also keeps the manifest's spec and each step's start
and end, so `status_of` can render it as the operator renders a TrainingCycle's status (what `sigma0 dashboard`
shows).

GPU steps run on the placement `local` (this machine; the manifest's cluster placements do not apply here, and
neither do their budgets). Their hours are accounted as the operator accounts a GPU pod's (sigma0.placement):
a row in `<workdir>/gpu-ledger.jsonl` written when the step starts and again, with its end and the GPUs it used
(its summary's device: cuda is one GPU, cpu none), when it ends; a row left open by a killed run is closed at
the last write to the step's log when the cycle resumes.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sigma0 import evidence, journal, placement, plan, retention
from sigma0.clean import clean_folder
from sigma0.io import read_json, text_digest, write_json_atomic
from sigma0.release_rules import Releases
from sigma0.spec import CycleSpec, TrainingCycle

STATE_FILE = "state.json"
GPU_LEDGER = "gpu-ledger.jsonl"


class Reporter(Protocol):
    """Progress callbacks (the CLI draws them with rich; tests record them)."""

    def step_started(self, step: plan.Step, resumed: bool) -> None: ...

    def step_finished(self, step: plan.Step, result: plan.StepResult, seconds: float) -> None: ...

    def step_skipped(self, step: plan.Step, result: plan.StepResult) -> None: ...


class CycleLocked(RuntimeError):
    """Another `sigma0 run` is working on this cycle."""


@dataclass
class CycleRun:
    name: str
    cycle_dir: Path
    state: plan.CycleState
    manifest_digest: str
    started_at: str
    finished: dict[str, Any] | None = None
    placements: dict[str, str] = field(default_factory=dict)  # GPU step → the placement it ran on
    resume_keys: dict[str, str] = field(default_factory=dict)  # step → the key of its journals (sigma0.journal)
    times: dict[str, dict[str, str]] = field(default_factory=dict)  # step → {start, end} of its last run
    spec: dict[str, Any] | None = None  # the manifest's spec (what `sigma0 dashboard` plans the view from)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def manifest_digest(cycle: TrainingCycle) -> str:
    return text_digest(cycle.spec.model_dump_json(by_alias=True))


# State on disk ----------------------------------------------------------------------------------------------------


def _state_to_json(run: CycleRun) -> dict[str, Any]:
    state = run.state
    return {
        "name": run.name,
        "manifestDigest": run.manifest_digest,
        "startedAt": run.started_at,
        "incumbentResolved": state.incumbent_resolved,
        "incumbent": asdict(state.incumbent) if state.incumbent else None,
        "steps": {name: {"state": r.state, "summary": dict(r.summary), "message": r.message,
                         "outputs": dict(r.outputs)} for name, r in state.steps.items()},
        "published": dict(state.published) if state.published is not None else None,
        "finished": run.finished,
        "placements": dict(run.placements),
        "resumeKeys": dict(run.resume_keys),
        "times": {name: dict(times) for name, times in run.times.items()},
        "spec": run.spec,
    }


def _state_from_json(cycle_dir: Path, data: dict[str, Any]) -> CycleRun:
    incumbent = plan.Incumbent(**data["incumbent"]) if data.get("incumbent") else None
    state = plan.CycleState(
        incumbent_resolved=bool(data.get("incumbentResolved")),
        incumbent=incumbent,
        steps={name: plan.StepResult(r["state"], r.get("summary") or {}, r.get("message", ""), r.get("outputs") or {})
               for name, r in (data.get("steps") or {}).items()},
        published=data.get("published"),
    )
    return CycleRun(data["name"], cycle_dir, state, data["manifestDigest"], data["startedAt"], data.get("finished"),
                    dict(data.get("placements") or {}), dict(data.get("resumeKeys") or {}),
                    {name: dict(times) for name, times in (data.get("times") or {}).items()}, data.get("spec"))


def save(run: CycleRun) -> None:
    write_json_atomic(run.cycle_dir / STATE_FILE, _state_to_json(run))


def load(cycle_dir: Path) -> CycleRun:
    return _state_from_json(cycle_dir, read_json(cycle_dir / STATE_FILE))


def choose_cycle(cycle: TrainingCycle, workdir: Path, name: str | None = None) -> CycleRun:
    """The cycle this invocation works on: an explicit or manifest name (resumed if it exists), or, for a
    generateName manifest, the unfinished cycle made from the same manifest, or else a fresh name."""
    cycles = workdir / "cycles"
    digest = manifest_digest(cycle)
    chosen = name or cycle.name
    if chosen is None:
        prefix = cycle.generate_name or "cycle-"
        for candidate in sorted(cycles.glob(f"{prefix}*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime):
            existing = load(candidate.parent)
            if existing.finished is None and existing.manifest_digest == digest:
                return replace(existing, spec=existing.spec or _spec_json(cycle))
        chosen = prefix + secrets.token_hex(3)[:5]
    cycle_dir = cycles / chosen
    if (cycle_dir / STATE_FILE).exists():
        existing = load(cycle_dir)
        if existing.manifest_digest != digest:
            raise ValueError(f"cycle {chosen!r} in {cycles} was started from a different spec; a cycle's spec is "
                             "immutable: give this manifest another name (or use metadata.generateName)")
        return replace(existing, spec=existing.spec or _spec_json(cycle))
    return CycleRun(chosen, cycle_dir, plan.CycleState(), digest, _now(), spec=_spec_json(cycle))


def _spec_json(cycle: TrainingCycle) -> dict[str, Any]:
    return cycle.spec.model_dump(mode="json", by_alias=True, exclude_none=True)


# Running ----------------------------------------------------------------------------------------------------------


class LocalExecutor:
    def __init__(self, cycle: TrainingCycle, workdir: Path, releases: Releases, reporter: Reporter,
                 input_dir: Path) -> None:
        self.cycle = cycle
        self.spec = cycle.spec
        self.workdir = workdir.resolve()
        self.releases = releases
        self.reporter = reporter
        self.input_dir = input_dir.resolve()

    def layout(self, run: CycleRun) -> plan.Layout:
        return plan.Layout(cycle_dir=str(run.cycle_dir.resolve()), input_dir=str(self.input_dir),
                           leaderboard=str(self.workdir / "leaderboard.jsonl"))

    def run(self, run: CycleRun) -> CycleRun:
        """Drive the plan to a terminal phase. Holds a lock on the cycle folder so two runs never interleave."""
        run.cycle_dir.mkdir(parents=True, exist_ok=True)
        with open(run.cycle_dir / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise CycleLocked(f"another sigma0 run is working on {run.cycle_dir}") from error
            save(run)
            return self._drive(run)

    def _drive(self, run: CycleRun) -> CycleRun:
        layout = self.layout(run)
        self._close_interrupted(run)
        for step in plan.steps(self.spec, run.state, layout):
            done = run.state.steps.get(step.name)
            if done is not None and done.state == "succeeded":
                self.reporter.step_skipped(step, done)
        while True:
            action = plan.next_action(self.spec, run.state, layout)
            if isinstance(action, plan.ResolveIncumbent):
                incumbent = self.releases.incumbent(self.spec.release)
                run.state = replace(run.state, incumbent_resolved=True, incumbent=incumbent)
            elif isinstance(action, plan.RunStep | plan.AwaitStep):
                # Locally an AwaitStep means a previous run was killed mid-step: run the step again.
                resumed = isinstance(action, plan.AwaitStep)
                result = self._run_step(run, action.step, resumed)
                run.state = replace(run.state, steps={**run.state.steps, action.step.name: result})
            elif isinstance(action, plan.Publish):
                tampered = _check_decision(action)
                if tampered is not None:
                    run.finished = {"phase": plan.PHASE_FAILED, "outcome": None, "reason": tampered, "at": _now()}
                    save(run)
                    return run
                # the whole decision.json, not the step's summary: the local release log keeps its policy too
                published = self.releases.publish(
                    self.spec.release, cycle=run.name, decision=read_json(action.decision_file),
                    candidate_uri=action.candidate_uri, candidate_digest=action.candidate_digest,
                    incumbent=run.state.incumbent, evidence=action.evidence)
                run.state = replace(run.state, published=published)
            else:
                run.finished = {"phase": action.phase, "outcome": action.outcome, "reason": action.reason,
                                "at": _now()}
                if action.report is not None:
                    run.finished["report"] = dict(action.report)
                save(run)
                return run
            save(run)

    def _run_step(self, run: CycleRun, step: plan.Step, resumed: bool) -> plan.StepResult:
        run.state = replace(run.state, steps={**run.state.steps, step.name: plan.StepResult("running")})
        # Made when the step first starts, so no step before it can know it; a rerun after a kill gets the same.
        key = run.resume_keys.setdefault(step.name, secrets.token_hex(32))
        run.times[step.name] = {"start": _now()}
        save(run)
        self.reporter.step_started(step, resumed)
        logs = run.cycle_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        summary_file = logs / f"{step.name}.summary.json"
        summary_file.unlink(missing_ok=True)
        env = {**os.environ, "SIGMA0_TERMINATION_LOG": str(summary_file), "PYTHONUNBUFFERED": "1",
               journal.KEY_ENV: key}
        command = [sys.executable, "-m", "sigma0", *step.argv[1:]]
        began = time.monotonic()
        usage = self._gpu_started(run, step)
        with open(logs / f"{step.name}.log", "ab") as log:
            log.write(f"\n$ {' '.join(step.argv)}   # {_now()}\n".encode())
            log.flush()
            limit = self.cycle.spec.stage_timeouts.of(step.stage)
            code = _run_stage(command, log, env, limit)
        summary, outputs = evidence.split(_read_summary(summary_file))
        if usage is not None:
            gpus = usage.gpus if "device" not in summary else int(summary["device"] == "cuda")
            placement.record_local(self.ledger, replace(usage, end=datetime.now(UTC), gpus=gpus))
        if code == 0:
            result = plan.StepResult("succeeded", summary, outputs=outputs)
        elif code is None:
            result = plan.StepResult("failed", summary, f"StageTimeout: {step.name} ran longer than "
                                     f"spec.stageTimeouts.{step.stage}={limit} s")
        else:
            message = str(summary.get("error") or _tail(logs / f"{step.name}.log"))
            result = plan.StepResult("failed", summary, f"exit code {code}: {message}")
        run.times[step.name]["end"] = _now()
        self.reporter.step_finished(step, result, time.monotonic() - began)
        return result

    # GPU hours ---------------------------------------------------------------------------------------------------

    @property
    def ledger(self) -> Path:
        return self.workdir / GPU_LEDGER

    def _gpu_started(self, run: CycleRun, step: plan.Step) -> placement.Usage | None:
        """Record a GPU step's start on this machine (placement `local`); None for other steps."""
        if step.kind != "gpu":
            return None
        run.placements[step.name] = placement.LOCAL
        start = datetime.now(UTC).replace(microsecond=0)  # as the ledger keeps it
        usage = placement.Usage(key=f"{run.name}/{step.name}/{placement.format_time(start)}",
                                placement=placement.LOCAL, stage=step.name, cycle=run.name, start=start, end=None,
                                gpus=0 if self.spec.train.device == "cpu" else _gpus_here())
        placement.record_local(self.ledger, usage)
        save(run)
        return usage

    def _close_interrupted(self, run: CycleRun) -> None:
        """Rows this cycle left open when a run was killed end at the last write to that step's log."""
        for row in placement.read_ledger(self.ledger):
            if row.cycle == run.name and row.end is None:
                log = run.cycle_dir / "logs" / f"{row.stage}.log"
                ended = datetime.fromtimestamp(log.stat().st_mtime, UTC) if log.exists() else row.start
                placement.record_local(self.ledger, replace(row, end=max(ended, row.start)))


STOP_GRACE_SECONDS = 15.0
"""How long a stage past its timeout gets to clean up after SIGINT (its sandboxes, as on Ctrl-C) before SIGKILL."""


def _run_stage(command: list[str], log: Any, env: dict[str, str], limit: int | None) -> int | None:
    """Run a stage process to its end: its exit code, or None when it ran past `limit` seconds and was stopped."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        return process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # KeyboardInterrupt: the stage's own cleanup runs, as on Ctrl-C
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return None
    finally:
        if process.poll() is None:  # sigma0 run itself was interrupted: the stage must not outlive it
            process.kill()
            process.wait()


def _check_decision(action: plan.Publish) -> str | None:
    """Why decision.json cannot be published (it is not what decide recorded), or None: the local release store
    reads the decision from that file."""
    try:
        evidence.check([f"{action.decision_digest or evidence.UNRECORDED}={action.decision_file}"])
    except evidence.EvidenceTampered as error:
        return f"publish: {error}"
    return None


def _gpus_here() -> int:
    """A GPU step's GPUs before its summary says which device it used: one if this machine shows a GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    nvidia = Path("/proc/driver/nvidia/gpus")
    return 1 if (nvidia.is_dir() and any(nvidia.iterdir())) or Path("/dev/kfd").exists() else 0


def local_gpu_hours(workdir: Path, now: datetime | None = None) -> dict[str, dict[str, float]]:
    """GPU-hours used on this machine in the trailing 7 days, as the operator reports a placement's."""
    return placement.usage_report(placement.read_ledger(workdir / GPU_LEDGER), (), now or datetime.now(UTC))


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:])[-500:]


# Cleaning up ------------------------------------------------------------------------------------------------------


def sweep(workdir: Path, release: str, limits: retention.Limits, releases: Releases,
          now: datetime | None = None) -> list[retention.Doomed]:
    """The local janitor, the cluster's rule (sigma0.retention) on a workdir: the finished cycles of `release` past
    `limits` (`sigma0 run --successful-cycles-history-limit / --failed-cycles-history-limit`) or past their own
    spec.ttlSecondsAfterFinished lose their folder, but for any path the release points at (a local release keeps
    its own copies under releases/, so usually nothing). What went, oldest first."""
    cycles = []
    for state_file in sorted((workdir / "cycles").glob(f"*/{STATE_FILE}")):
        try:
            run = load(state_file.parent)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a state file this version can read: not ours to judge
        spec, finished = run.spec or {}, run.finished or {}
        cycles.append(retention.Cycle(
            name=run.name, release=str(spec.get("release", "")), phase=finished.get("phase"),
            created=placement.parse_time(run.started_at),
            finished=placement.parse_time(finished["at"]) if finished.get("at") else None,
            ttl_seconds=spec.get("ttlSecondsAfterFinished"), artifacts=str(state_file.parent.resolve())))
    current = releases.current(release)
    pointers = [p.uri for p in ([current] if current else []) + list(releases.history(release))]
    found = retention.doomed(cycles, release, limits, pointers, now or datetime.now(UTC))
    for doomed in found:
        clean_folder(doomed.cycle.artifacts, doomed.keep)
    return found


# What the cycle looks like ------------------------------------------------------------------------------------------


def status_of(run: CycleRun, spec: CycleSpec, now: str | None = None) -> dict[str, Any]:
    """The cycle's status as the operator writes a TrainingCycle's (sigma0.kube.status.render, the one view):
    phase, message, counts, both pass@1 figures, the decision, and each step with its start and end. What
    `sigma0 dashboard` shows of a local cycle."""
    from sigma0.kube import status

    failure = None
    finished = run.finished
    if finished is not None and finished["phase"] == plan.PHASE_FAILED:
        action = plan.next_action(spec, run.state, _view_layout(run))
        if not isinstance(action, plan.Finish):  # a refusal outside the plan (a tampered decision.json)
            failure = ("PublishRefused", str(finished.get("reason", "")))
    stages = {name: status.StageRecord(job="", attempt=1, state=result.state,
                                       start=run.times.get(name, {}).get("start"),
                                       end=run.times.get(name, {}).get("end") if result.state != "running" else None,
                                       summary=result.summary, message=result.message,
                                       placement=run.placements.get(name), outputs=result.outputs)
              for name, result in run.state.steps.items()}
    record = status.CycleRecord(admitted=True, incumbent_resolved=run.state.incumbent_resolved,
                                incumbent=run.state.incumbent, stages=stages, published=run.state.published,
                                failure=failure)
    previous = {"startTime": run.started_at, "completionTime": (finished or {}).get("at")}
    return status.render(spec, record, _view_layout(run), status.Situation(), generation=1, now=now or _now(),
                         previous=previous)


def _view_layout(run: CycleRun) -> plan.Layout:
    """The layout the view needs: the phase depends on which steps there are, not on where the inputs were."""
    return plan.Layout(cycle_dir=str(run.cycle_dir.resolve()), input_dir="", leaderboard="")
