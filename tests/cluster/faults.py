"""Fault injection into stage pods, for tests/cluster/test_faults.py.

`StageFaults` is the pod executor's `command_hook`: each rule names a cycle and a step (the pod's labels
sigma0.dev/cycle and sigma0.dev/step) and what that step's container does instead of, or before, the stage's own
command, through tests/cluster/stagefault.py: hold at a gate the test opens, hang, exit with a code, leave a given
termination message. Nothing in the product changes: the operator sees real pods of real Jobs that fail, hang or lie.

    faults = StageFaults()
    cluster.executor.command_hook = faults
    gate = faults.gate("c1", "verify", artifacts)    # c1's verify pod runs, held, until gate.open()
    faults.add("c1", "harvest", "--exit", "1", times=1)  # its first harvest pod exits 1; the retry is the real one
    faults.fake("c2", "harvest", FAKE_SUMMARIES["harvest"])  # c2's harvest succeeds at once with this summary
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigma0.kube import jobs

if TYPE_CHECKING:
    from .cluster import Cluster

STAGEFAULT = Path(__file__).resolve().parent / "stagefault.py"
GATES = ".faults"  # the gates' folder under the artifacts root

FAKE_DIGEST = "sha256:" + "f" * 64  # the adapter a faked train step says it wrote
INCUMBENT_DIGEST = "sha256:" + "a" * 64  # the adapter of the releases the tests publish beforehand
FAKE_SUMMARIES: dict[str, dict[str, Any]] = {  # what each stage says when it succeeds, in miniature
    "harvest": {"stage": "harvest", "harvested": 4, "kept": 3, "excluded": 1, "duplicates": 0, "dropped": {}},
    "verify": {"stage": "verify", "total": 3, "passed": 2, "sandbox": "process", "dropped": {"assert-failed": 1}},
    "dataset": {"stage": "dataset", "rows": 5, "dataset_digest": FAKE_DIGEST},
    "train": {"stage": "train", "adapter_digest": FAKE_DIGEST, "steps": 1},
    "generate": {"stage": "generate", "problems": 3, "generated": 3,
                 "adapters": {"candidate": FAKE_DIGEST, "incumbent": INCUMBENT_DIGEST}},
    "score": {"stage": "score", "pass_at_1": 0.0, "passed": 0, "total": 3},
    "decide": {"stage": "decide", "outcome": "Rejected", "reason": "a faked decide stage: no better"},
}


@dataclass
class Gate:
    """A file the held stage waits for; `open()` lets it run on."""

    path: Path

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()


@dataclass
class Rule:
    cycle: str
    step: str
    options: tuple[str, ...]  # stagefault.py options
    times: int | None  # the first `times` pods of the step; None: every one
    real: bool  # run the stage's own command after the options' gate
    used: int = 0


@contextlib.contextmanager
def hooked(cluster: Cluster) -> Iterator[StageFaults]:
    """StageFaults installed as the cluster's pod executor's command_hook, and taken out afterwards (a module's
    `faults` fixture)."""
    found = StageFaults()
    assert cluster.executor is not None
    cluster.executor.command_hook = found
    try:
        yield found
    finally:
        cluster.executor.command_hook = None


class StageFaults:
    """A PodExecutor command_hook (see the module doc). `applied` lists (cycle, step, pod) of each rewrite."""

    def __init__(self, mount_path: str = "/artifacts") -> None:
        self.mount_path = mount_path
        self.rules: list[Rule] = []
        self.applied: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def add(self, cycle: str, step: str, *options: str, times: int | None = None, real: bool = False) -> None:
        with self._lock:
            self.rules.append(Rule(cycle, step, options, times, real))

    def gate(self, cycle: str, step: str, artifacts: Path) -> Gate:
        """Hold the step's pods, Running, until the gate opens; then the real stage runs."""
        relative = f"{GATES}/{cycle}-{step}"
        (artifacts / GATES).mkdir(exist_ok=True)
        (artifacts / GATES).chmod(0o777)
        self.add(cycle, step, "--gate", f"{self.mount_path}/{relative}", real=True)
        return Gate(artifacts / relative)

    def fake(self, cycle: str, step: str, summary: Mapping[str, Any]) -> None:
        """The step succeeds at once, saying `summary`: moves a cycle to a later phase in seconds."""
        self.add(cycle, step, "--message", json.dumps(dict(summary)))

    def hang(self, cycle: str, step: str, times: int | None = None) -> None:
        self.add(cycle, step, "--hang", times=times)

    def __call__(self, pod: dict, container: dict, argv: list[str]) -> list[str]:
        labels = pod["metadata"].get("labels") or {}
        cycle, step = labels.get(jobs.LABEL_CYCLE), labels.get(jobs.LABEL_STEP)
        with self._lock:
            rule = next((r for r in self.rules if (r.cycle, r.step) == (cycle, step)
                         and (r.times is None or r.used < r.times)), None)
            if rule is None:
                return argv
            rule.used += 1
            self.applied.append((str(cycle), str(step), pod["metadata"]["name"]))
        return [sys.executable, str(STAGEFAULT), *rule.options, *(["--", *argv] if rule.real else [])]
