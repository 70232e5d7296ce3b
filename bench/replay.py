"""Replayed stage pods: like kwok, a stage pod "runs" at once and ends with the termination message that a real
run of its step wrote, so a benchmark measures the operator and the API server, not the stages.

    recording = Recording.from_pods(pods)             # the stage pods of real cycles (as the API returns them)
    cluster.executor.worker_factory = recording.worker_factory()   # tests/cluster/podexecutor.py's opt-in hook

A replayed pod goes through the statuses the test pod executor gives a real one (Running; its container
terminated; Succeeded), with the recorded message as the container's termination message; no process runs and
nothing is written to the artifacts volume (the operator reads only pod statuses). Two things are adjusted so
that replayed cycles stay consistent with each other:

- the variant: a step whose command names an incumbent (`generate --adapter incumbent=...`, `decide
  --incumbent ...`, `score-incumbent`) replays a cycle that had one, the others a cycle that had none; so a
  cycle without an incumbent never replays a decision made against one (the release would refuse it);
- adapter digests (train's `adapter_digest`, generate's `adapters`) become a digest of the adapter's folder as
  the step's command names it (train's --output-dir, generate's --adapter LABEL=FOLDER): every cycle has its own
  adapter, as real runs with different data would, and generate reports the very adapters the train step and the
  release name, as the operator checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.cluster: the pod executor

from sigma0.kube import jobs  # noqa: E402
from tests.cluster.node import now  # noqa: E402
from tests.cluster.podexecutor import Container, PodExecutor, PodWorker  # noqa: E402

VARIANTS = ("without-incumbent", "with-incumbent")
WITH_VARIANTS = ("generate", "score-incumbent", "decide")  # steps whose summary depends on the incumbent


def variant_of(command: Iterable[str]) -> str:
    return VARIANTS[1] if any("incumbent" in part for part in command) else VARIANTS[0]


@dataclass
class Recording:
    """Termination messages of real stage pods: variant → step → message."""

    messages: dict[str, dict[str, str]] = field(default_factory=lambda: {v: {} for v in VARIANTS})

    @classmethod
    def from_pods(cls, pods: Iterable[Mapping[str, Any]]) -> Recording:
        """From stage pods that succeeded (other pods are skipped); a later pod of a step replaces an earlier one."""
        found = cls()
        for pod in pods:
            step = (pod["metadata"].get("labels") or {}).get(jobs.LABEL_STEP)
            if not step or (pod.get("status") or {}).get("phase") != "Succeeded":
                continue
            container = next(c for c in pod["spec"]["containers"] if c["name"] == jobs.CONTAINER)
            message = _terminated(pod).get("message")
            if message:
                found.messages[variant_of(container.get("command") or [])][step] = message
        return found

    @classmethod
    def load(cls, path: Path) -> Recording:
        data = json.loads(path.read_text())
        return cls({variant: dict(data.get(variant) or {}) for variant in VARIANTS})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.messages, indent=1))

    def steps(self) -> dict[str, list[str]]:
        return {variant: sorted(found) for variant, found in self.messages.items()}

    def message_for(self, pod: Mapping[str, Any]) -> str:
        """The message to replay for `pod`; KeyError names what was never recorded."""
        labels = pod["metadata"].get("labels") or {}
        step = labels.get(jobs.LABEL_STEP)
        container = next(c for c in pod["spec"]["containers"] if c["name"] == jobs.CONTAINER)
        variant = variant_of(container.get("command") or [])
        message = self.messages[variant].get(step or "")
        if message is None and step not in WITH_VARIANTS:  # the same with or without an incumbent
            message = next((found[step] for found in self.messages.values() if step in found), None)
        if not message:
            raise KeyError(f"no recorded termination message for step {step!r} ({variant}); recorded: {self.steps()}")
        command = list(container.get("command") or [])
        if step == "train":
            summary = json.loads(message)
            summary["adapter_digest"] = adapter_digest(command[command.index("--output-dir") + 1])
            message = json.dumps(summary)
        elif step == "generate":
            summary = json.loads(message)
            named = [command[i + 1] for i, part in enumerate(command) if part == "--adapter"]
            summary["adapters"] = {label: adapter_digest(path) for label, path in (a.split("=", 1) for a in named)}
            message = json.dumps(summary)
        return message

    def worker_factory(self, hold_s: float = 0.0) -> Any:
        """For PodExecutor.worker_factory: stage pods are replayed, other pods run for real."""
        return functools.partial(ReplayWorker, recording=self, hold_s=hold_s)


def adapter_digest(folder: str) -> str:
    """The replayed digest of the adapter in `folder`: each cycle's own, and the same wherever it is named."""
    return "sha256:" + hashlib.sha256(folder.encode()).hexdigest()


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == jobs.CONTAINER:
            return (status.get("state") or {}).get("terminated") or {}
    return {}


class ReplayWorker(PodWorker):
    """A stage pod that ends at once (after `hold_s`) with its step's recorded termination message."""

    def __init__(self, ex: PodExecutor, pod: dict, *, recording: Recording, hold_s: float = 0.0) -> None:
        super().__init__(ex, pod)
        self.recording = recording
        self.hold_s = hold_s

    def _run_pod(self) -> None:
        if jobs.LABEL_STEP not in (self.pod["metadata"].get("labels") or {}):
            super()._run_pod()
            return
        message = self.recording.message_for(self.pod)  # a KeyError fails the pod, saying what is missing
        self.start_time = now()
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = next(c for c in self.spec["containers"] if c["name"] == jobs.CONTAINER)
        run = Container(spec, 0, self.dir / "replay.log", self.dir / "termination-log")
        run.log_path.write_text("replayed by bench/replay.py: no process ran\n")
        run.term_path.write_text(message)
        run.started_at = now()
        with self.lock:
            self.current[spec["name"]] = run
        self.init_done = True
        self.phase = "Running"
        self.report()
        if self.hold_s and self.deleted.wait(self.hold_s):
            run.exit_code, run.finished_at = 137, now()
            self.phase = "Failed"
            self.report()
            return
        run.exit_code, run.finished_at = 0, now()
        self.report()  # as the executor reports a container's end, before the pod's phase
        self.phase = "Succeeded"
        self.report()
