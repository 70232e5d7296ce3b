"""`sigma0 stage decide`: the promotion decision from the candidate's and the incumbent's per-problem results.

Reads the score stage's results.jsonl files (rows `{task_id, passed, reason}`), applies sigma0.gate.decide,
and writes decision.json: the Decision plus the path and digest of each input, so the release log can cite
its evidence.
Nothing else is read or written; publishing the decision is the release store's job.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sigma0.gate import Decision, Policy, decide
from sigma0.io import JsonlError, file_digest, read_records, write_json_atomic
from sigma0.stages import StageInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--candidate", required=True, help="the candidate's results.jsonl (from the score stage)"
    )
    parser.add_argument(
        "--incumbent", help="the incumbent's results.jsonl; leave out when no release exists yet"
    )
    parser.add_argument("--output", required=True, help="where to write decision.json")
    parser.add_argument(
        "--margin", type=float, default=0.0, help="pass@1 the candidate must gain (default 0)"
    )
    parser.add_argument(
        "--min-pass-at-1", type=float, default=0.0, help="the pass@1 floor for any release (default 0)"
    )
    parser.add_argument(
        "--significance",
        type=float,
        default=None,
        help="also require exact McNemar p below this (default: off)",
    )



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): decision.json."""
    return [args.output]


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        policy = Policy(margin=args.margin, min_pass_at_1=args.min_pass_at_1, significance=args.significance)
    except ValueError as error:
        raise StageInputError(str(error)) from error
    candidate = read_results(args.candidate)
    incumbent = read_results(args.incumbent) if args.incumbent else None
    decision = decide(candidate, incumbent, policy)
    inputs = {
        "candidate": _describe(args.candidate),
        "incumbent": _describe(args.incumbent) if args.incumbent else None,
    }
    write_json_atomic(args.output, {**decision.to_dict(), "inputs": inputs})
    return summary(decision)


def summary(decision: Decision) -> dict[str, Any]:
    keys = (
        "outcome", "reason", "candidate_pass_at_1", "incumbent_pass_at_1", "p_value",
        "candidate_passed", "candidate_total", "incumbent_passed", "incumbent_total",
    )  # fmt: skip
    data = decision.to_dict()
    return {key: data[key] for key in keys}


def read_results(path: str) -> dict[str, bool]:
    """task_id → passed from a results.jsonl; a malformed line is a StageInputError naming it."""
    if not Path(path).is_file():
        raise StageInputError(f"results file {path} does not exist; run the score stage first")
    results: dict[str, bool] = {}
    first_seen: dict[str, int] = {}
    try:
        for record in read_records(path):
            task_id, passed = _parse_row(record.data, f"{path}:{record.line}")
            if task_id in results:
                raise StageInputError(
                    f"{path}:{record.line}: task {task_id!r} appears again (first on line "
                    f"{first_seen[task_id]}); each problem must be scored once"
                )
            results[task_id] = passed
            first_seen[task_id] = record.line
    except JsonlError as error:
        raise StageInputError(str(error)) from error
    return results


def _parse_row(row: dict[str, Any], where: str) -> tuple[str, bool]:
    task_id, passed = row.get("task_id"), row.get("passed")
    if not isinstance(task_id, str) or not task_id:
        raise StageInputError(f"{where}: task_id must be a non-empty string, got {task_id!r}")
    if not isinstance(passed, bool):
        raise StageInputError(f"{where}: passed must be true or false, got {passed!r}")
    return task_id, passed


def _describe(path: str) -> dict[str, str]:
    return {"path": str(path), "digest": file_digest(path)}
