"""`sigma0 stage verify`: the execution gate into training. Each candidate row runs in the sandbox; only rows whose
every assert held, as the judge evaluated it against the row's functions without running their code, and whose
asserts tell the function from trivial stand-ins (sigma0.sandbox.judge), are kept.

    sigma0 stage verify --input candidates.jsonl --output verified.jsonl --report report.json
                        [--sandbox auto|gvisor|process] [--timeout SECONDS] [--workers N] [--memory-mb MB]

Input rows: {id, fn, instruction, code, asserts: [str, ...] or one multi-line str, ...}. The output holds exactly
the rows that passed, as the very lines they were in the input, in input order. The report holds one verdict per
row (id, fn, passed, reason, detail, seconds) and the count of rows dropped for each reason (sigma0.sandbox.Reason).
A row that is not a JSON object with string `fn` and `code` is bad input (exit 2): harvest writes every row so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

from sigma0.candidates import source_of
from sigma0.io import JsonlError, atomic_writer, read_records, write_json_atomic
from sigma0.sandbox import Program, SandboxUnavailable, Verdict, from_asserts, options, run_programs
from sigma0.stages import StageInputError
from sigma0.stages.harvest import BY_SOURCE_SHOWN

DETAIL_CHARS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="candidates JSONL (from the harvest stage)")
    parser.add_argument("--output", required=True, help="JSONL to write: the rows that passed, unchanged")
    parser.add_argument("--report", required=True, help="JSON report to write: a verdict for every row")
    options.add_arguments(parser)



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): the verified rows and the report."""
    return [args.output, args.report]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    try:
        settings = options.from_args(args)
    except (ValueError, SandboxUnavailable) as error:
        raise StageInputError(str(error)) from error
    lines, rows = read_rows(args.input)
    print(f"verify: {len(rows)} rows; {settings.describe()}", file=sys.stderr)

    programs = [program_for(str(index), row) for index, row in enumerate(rows)]
    verdicts: dict[int, Verdict] = {}
    running = run_programs(
        programs, sandbox=settings.sandbox, workers=settings.workers, timeout=settings.timeout, limits=settings.limits
    )
    for verdict in running:
        verdicts[int(verdict.id)] = verdict
    ordered = [verdicts[index] for index in range(len(rows))]

    with atomic_writer(args.output) as handle:
        for line, verdict in zip(lines, ordered, strict=True):
            if verdict.passed:
                handle.write(line + "\n")
    summary = summarize(ordered, settings.sandbox, time.monotonic() - started)
    passed = Counter(source_of(str(row.get("source", ""))) for row, v in zip(rows, ordered, strict=True) if v.passed)
    summary["passed_by_source"] = dict(list(passed.items())[:BY_SOURCE_SHOWN])  # what a dry run reports
    write_json_atomic(
        args.report,
        {
            **summary,
            "settings": settings.to_dict(),
            "verdicts": [_verdict_row(row, verdict) for row, verdict in zip(rows, ordered, strict=True)],
        },
    )
    print(f"verify: {summary['passed']}/{summary['total']} passed, dropped {summary['dropped']}", file=sys.stderr)
    return summary


def read_rows(path: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(the non-blank lines as written, their parsed rows); a row harvest could not have written is bad input."""
    lines: list[str] = []
    rows: list[dict[str, Any]] = []
    try:
        for record in read_records(path):
            for field in ("fn", "code"):
                value = record.data.get(field)
                if not isinstance(value, str) or not value:
                    raise StageInputError(f"{path}:{record.line}: {field!r} must be a non-empty string, got {value!r}")
            lines.append(record.text)
            rows.append(record.data)
    except FileNotFoundError as error:
        raise StageInputError(f"input {path} does not exist; run the harvest stage first") from error
    except JsonlError as error:
        raise StageInputError(str(error)) from error
    return lines, rows


def program_for(key: str, row: dict[str, Any]) -> Program:
    asserts = row.get("asserts")
    return from_asserts(key, row["fn"], row["code"], [] if asserts is None else asserts)


def summarize(verdicts: list[Verdict], sandbox: str, seconds: float) -> dict[str, Any]:
    dropped = Counter(str(verdict.reason) for verdict in verdicts if not verdict.passed)
    return {
        "total": len(verdicts),
        "passed": sum(verdict.passed for verdict in verdicts),
        "sandbox": sandbox,
        "dropped": dict(sorted(dropped.items())),
        "seconds": round(seconds, 2),
    }


def _verdict_row(row: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    detail = verdict.detail if len(verdict.detail) <= DETAIL_CHARS else verdict.detail[: DETAIL_CHARS - 1] + "…"
    return {
        "id": row.get("id"),
        "fn": row["fn"],
        "passed": verdict.passed,
        "reason": str(verdict.reason),
        "detail": detail,
        "seconds": verdict.seconds,
    }
