"""A cycle's decision evidence: the per-problem results of both models, side by side, as the score steps wrote them.

The files are believed only on the cycle's record (sigma0.evidence): each score step recorded its results.jsonl's
digest when it ended, and a file whose bytes no longer have that digest is shown as such, not its rows. Pure but
for `read`, the source's way to fetch a file's bytes (None: it cannot be read from here).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LABELS = ("candidate", "incumbent")


@dataclass(frozen=True)
class ResultsFile:
    label: str
    path: str
    recorded: str
    problem: str = ""  # why its rows are not shown ("" when they are)


@dataclass(frozen=True)
class Row:
    task_id: str
    candidate: bool | None
    incumbent: bool | None
    candidate_reason: str = ""
    incumbent_reason: str = ""


@dataclass(frozen=True)
class Evidence:
    cycle: str
    phase: str
    outcome: str | None
    reason: str
    p_value: float | None
    figures: Mapping[str, Any]
    files: tuple[ResultsFile, ...]
    rows: tuple[Row, ...]

    @property
    def candidate_only(self) -> int:
        return sum(1 for r in self.rows if r.candidate and r.incumbent is False)

    @property
    def incumbent_only(self) -> int:
        return sum(1 for r in self.rows if r.incumbent and r.candidate is False)


def results_path(stage: Mapping[str, Any]) -> tuple[str, str] | None:
    """(path, digest) of the results.jsonl a score step recorded, or None."""
    for path, digest in (stage.get("outputs") or {}).items():
        if str(path).endswith("/results.jsonl"):
            return str(path), str(digest)
    return None


def _rows(data: bytes) -> dict[str, tuple[bool, str]]:
    found = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            row = json.loads(line)
            found[str(row["task_id"])] = (bool(row["passed"]), str(row.get("reason") or ""))
    return found


def evidence_of(name: str, status: Mapping[str, Any], read: Callable[[str], bytes | None]) -> Evidence:
    stages = status.get("stages") or {}
    decision = status.get("decision") or {}
    decide = (stages.get("decide") or {}).get("summary") or {}
    files: list[ResultsFile] = []
    results: dict[str, dict[str, tuple[bool, str]]] = {}
    for label in LABELS:
        stage = stages.get(f"score-{label}") or {}
        where = results_path(stage) if stage.get("state") == "succeeded" else None
        if where is None:
            continue
        path, recorded = where
        data = read(path)
        problem = ""
        if data is None:
            problem = "not readable from here (the artifacts are not mounted where the dashboard runs)"
        elif "sha256:" + hashlib.sha256(data).hexdigest() != recorded:
            problem = "its bytes are not what the score step recorded: changed after it was written"
        else:
            try:
                results[label] = _rows(data)
            except (ValueError, KeyError, TypeError) as error:
                problem = f"not a results file: {error}"
        files.append(ResultsFile(label, path, recorded, problem))
    candidate, incumbent = results.get("candidate", {}), results.get("incumbent", {})
    rows = tuple(
        Row(
            task,
            candidate[task][0] if task in candidate else None,
            incumbent[task][0] if task in incumbent else None,
            candidate.get(task, (False, ""))[1],
            incumbent.get(task, (False, ""))[1],
        )
        for task in sorted(set(candidate) | set(incumbent), key=_natural)
    )
    figures = {
        key: decide.get(key)
        for key in (
            "candidate_pass_at_1",
            "candidate_passed",
            "candidate_total",
            "incumbent_pass_at_1",
            "incumbent_passed",
            "incumbent_total",
        )
    }
    p_value = decision.get("pValue", decide.get("p_value"))
    return Evidence(
        name,
        str(status.get("phase") or ""),
        decision.get("outcome"),
        str(decision.get("reason") or ""),
        float(p_value) if p_value is not None else None,
        figures,
        tuple(files),
        rows,
    )


def _natural(task: str) -> tuple[str, int, str]:
    """HumanEval/2 before HumanEval/10."""
    head, _, tail = task.rpartition("/")
    return (head, int(tail), "") if tail.isdigit() else (task, 0, task)
