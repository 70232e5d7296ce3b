"""`sigma0 stage score`: pass@1 of a completions file, one result row per problem, resumable, and a leaderboard row."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from sigma0.io import read_json, read_jsonl, text_digest
from sigma0.sandbox.runner import find_runsc
from sigma0.stages import StageInputError, score
from sigma0.suites import Subset, load_suite

SANDBOXES = [
    "process",
    pytest.param(
        "gvisor",
        marks=pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc is not on PATH (CI installs it)"),
    ),
]
PROBLEMS = [
    {"task_id": "T/0", "prompt": "def inc(x):\n", "canonical_solution": "    return x + 1\n", "entry_point": "inc",
     "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"},
    {"task_id": "T/1", "prompt": "def neg(x):\n", "canonical_solution": "    return -x\n", "entry_point": "neg",
     "test": "def check(candidate):\n    assert candidate(1) == -1\n"},
    {"task_id": "T/2", "prompt": "def half(x):\n", "canonical_solution": "    return x / 2\n", "entry_point": "half",
     "test": "def check(candidate):\n    assert abs(candidate(3) - 1.5) < 1e-9\n"},
    {"task_id": "T/3", "prompt": "def same(x):\n", "canonical_solution": "    return x\n", "entry_point": "same",
     "test": "def check(candidate):\n    assert candidate([1]) == [1]\n"},
]  # fmt: skip


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    return path


def write_completions(tmp_path: Path, completions: dict[str, str]) -> Path:
    path = tmp_path / "completions.jsonl"
    rows = [{"task_id": task, "completion": text, "model": "ignored"} for task, text in completions.items()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stage_args(tmp_path: Path, suite: Path | str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    score.add_arguments(parser)
    return parser.parse_args(
        [
            "--completions", str(tmp_path / "completions.jsonl"), "--output", str(tmp_path / "results.jsonl"),
            "--report", str(tmp_path / "report.json"), "--suite", str(suite), *extra,
        ]
    )  # fmt: skip


COMPLETIONS = {
    "T/0": "    return x + 1\n",  # right
    "T/1": "    return x\n",  # wrong
    "T/3": "    class E(list):\n        def __eq__(self, o):\n            return True\n    return E()\n",  # cheat
}  # T/2 has none


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_every_problem_gets_one_result_and_pass_at_1_counts_them(tmp_path: Path, suite: Path, sandbox: str) -> None:
    write_completions(tmp_path, COMPLETIONS)
    summary = score.run(stage_args(tmp_path, suite, "--sandbox", sandbox, "--workers", "2"))

    assert summary == {
        "pass_at_1": 0.25, "passed": 1, "total": 4, "sandbox": sandbox, "suite": str(suite), "subset": "all",
        "resumed": 0, "seconds": summary["seconds"],
    }  # fmt: skip
    rows = {row["task_id"]: row for row in read_jsonl(tmp_path / "results.jsonl")}
    assert sorted(rows) == ["T/0", "T/1", "T/2", "T/3"]
    assert {task: row["reason"] for task, row in rows.items()} == {
        "T/0": "passed",
        "T/1": "assertion",
        "T/2": "missing_completion",
        "T/3": "assertion",
    }
    assert rows["T/0"]["completion_digest"] == text_digest(COMPLETIONS["T/0"])
    assert rows["T/2"]["completion_digest"] is None
    report = read_json(tmp_path / "report.json")
    assert report["failed"] == {"assertion": 2, "missing_completion": 1}
    assert report["pass_at_1"] == 0.25 and report["sandbox"] == sandbox
    runsc = find_runsc()  # which runsc ran, on which platform
    assert report["settings"]["runsc"] == (runsc.to_dict() if sandbox == "gvisor" and runsc else None)


def test_an_interrupted_score_resumes_without_rerunning_what_is_done(tmp_path: Path, suite: Path) -> None:
    write_completions(tmp_path, {task: problem["canonical_solution"] for task, problem in zip(
        ["T/0", "T/1", "T/2", "T/3"], PROBLEMS, strict=True)})  # fmt: skip
    # A result an earlier run left: marked so that a rerun would show (the real verdict would be "passed").
    earlier = {"task_id": "T/1", "passed": False, "reason": "timeout", "detail": "from the earlier run",
               "completion_digest": text_digest(PROBLEMS[1]["canonical_solution"])}  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(earlier) + "\n" + '{"task_id": "T/2", "pass')  # cut off mid-write

    summary = score.run(stage_args(tmp_path, suite, "--sandbox", "process"))

    assert summary["resumed"] == 1 and summary["passed"] == 3 and summary["total"] == 4
    rows = list(read_jsonl(results))
    assert rows[0] == earlier
    assert sorted(row["task_id"] for row in rows) == ["T/0", "T/1", "T/2", "T/3"]

    again = score.run(stage_args(tmp_path, suite, "--sandbox", "process"))
    assert again["resumed"] == 4 and again["passed"] == 3 and list(read_jsonl(results)) == rows


def test_results_from_another_completion_or_task_set_are_refused(tmp_path: Path, suite: Path) -> None:
    write_completions(tmp_path, COMPLETIONS)
    results = tmp_path / "results.jsonl"
    stale = {"task_id": "T/0", "passed": True, "reason": "passed", "detail": "", "completion_digest": "sha256:other"}
    results.write_text(json.dumps(stale) + "\n")
    with pytest.raises(StageInputError, match="another completion"):
        score.run(stage_args(tmp_path, suite, "--sandbox", "process"))
    results.write_text(json.dumps({**stale, "task_id": "X/9"}) + "\n")
    with pytest.raises(StageInputError, match="not a task of this suite"):
        score.run(stage_args(tmp_path, suite, "--sandbox", "process"))


def test_subset_and_leaderboard(tmp_path: Path, suite: Path) -> None:
    write_completions(tmp_path, COMPLETIONS)
    board = tmp_path / "board" / "leaderboard.jsonl"
    extra = ["--sandbox", "process", "--subset", "tasks:T/0,T/1", "--leaderboard", str(board)]
    with pytest.raises(StageInputError, match="--adapter-digest and --label"):
        score.run(stage_args(tmp_path, suite, *extra))
    summary = score.run(stage_args(tmp_path, suite, *extra, "--adapter-digest", "sha256:abc", "--label", "cand/gate"))
    assert summary["subset"] == "tasks:T/0,T/1" and summary["total"] == 2 and summary["pass_at_1"] == 0.5
    (row,) = read_jsonl(board)
    assert {key: row[key] for key in row if key != "time"} == {
        "adapter_digest": "sha256:abc", "label": "cand/gate", "suite": str(suite), "subset": "tasks:T/0,T/1",
        "pass_at_1": 0.5, "passed": 1, "total": 2,
    }  # fmt: skip
    assert row["time"].endswith("+00:00")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"task_id": "T/0"}], "needs a string task_id and completion"),
        ([{"task_id": "T/0", "completion": "a"}, {"task_id": "T/0", "completion": "b"}], "more than one completion"),
    ],
)
def test_bad_completions_are_bad_input(tmp_path: Path, suite: Path, rows: list[dict], message: str) -> None:
    (tmp_path / "completions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(StageInputError, match=message):
        score.run(stage_args(tmp_path, suite, "--sandbox", "process"))


def test_unknown_suite_or_task_is_bad_input(tmp_path: Path, suite: Path) -> None:
    write_completions(tmp_path, COMPLETIONS)
    with pytest.raises(StageInputError, match="unknown suite"):
        score.run(stage_args(tmp_path, tmp_path / "missing.jsonl"))
    with pytest.raises(StageInputError, match="no task"):
        score.run(stage_args(tmp_path, suite, "--subset", "tasks:T/9"))


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_canonical_humaneval_solutions_score_one(tmp_path: Path, sandbox: str) -> None:
    problems = load_suite("humaneval", Subset(first=20))
    write_completions(tmp_path, {problem.task_id: problem.canonical_solution for problem in problems})
    summary = score.run(stage_args(tmp_path, "humaneval", "--subset", "first:20", "--sandbox", sandbox))
    assert (summary["pass_at_1"], summary["passed"], summary["total"]) == (1.0, 20, 20)
