"""`sigma0 stage harvest`: candidate rows from corpus files, checked, renamed, deduplicated, eval rows removed.

    sigma0 stage harvest --source PATH [--source PATH ...] --output candidates.jsonl --report report.json
                         [--exclude-suite humaneval ...] [--ngram-size 8] [--ngram-threshold 0.5]

Every row read ends in exactly one bucket, so harvested = kept + excluded + duplicates + sum(dropped):
  dropped     the row cannot be used (sigma0.candidates.DROP_REASONS names why)
  excluded    it overlaps a problem of an eval suite (sigma0.contamination says which and how)
  duplicate   an earlier kept row has the same function name and normalised code
  kept        written to --output as {id, fn, instruction, code, asserts, source, code_digest}
Sources are only read. A source that is missing, unreadable or not a corpus at all (empty, not JSON, or without one
row that is an object with a code field) stops the stage (exit 2) before anything is written.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma0 import contamination
from sigma0.candidates import (
    ALIASES,
    Candidate,
    RawRow,
    RowError,
    SourceError,
    normalise_row,
    parse_source,
    source_of,
)
from sigma0.contamination import ContaminationIndex
from sigma0.io import write_json_atomic, write_jsonl_atomic
from sigma0.stages import StageInputError

BY_SOURCE_SHOWN = 8  # sources counted one by one in the summary (the report file lists every row)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", required=True, help="corpus JSON or JSONL file (repeatable)")
    parser.add_argument("--output", required=True, help="candidates JSONL to write")
    parser.add_argument("--report", required=True, help="JSON report to write: every excluded and dropped row")
    contamination.add_arguments(parser, rows="harvested row")



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): the candidates and the report."""
    return [args.output, args.report]


def run(args: argparse.Namespace) -> dict[str, Any]:
    sources = [str(path) for path in args.source]
    _refuse_to_overwrite(sources, [args.output, args.report])
    raw_rows, formats = _read_sources(sources)
    try:
        index, settings = contamination.from_arguments(args)
    except ValueError as error:
        raise StageInputError(str(error)) from None

    result = harvest(raw_rows, index)
    write_jsonl_atomic(args.output, (candidate.to_row() for candidate in result.kept))
    report = {
        **result.summary(),
        "sources": [{"path": path, "format": formats[path]} for path in sources],
        "settings": settings,
        "excluded_rows": result.excluded_rows,
        "duplicate_rows": result.duplicate_rows,
        "dropped_rows": result.dropped_rows,
    }
    write_json_atomic(args.report, report)
    return result.summary()


@dataclass
class HarvestResult:
    """Where every row went: the kept candidates, and one report entry per row that did not make it."""

    harvested: int = 0
    kept: list[Candidate] = field(default_factory=list)
    excluded_rows: list[dict[str, Any]] = field(default_factory=list)
    duplicate_rows: list[dict[str, Any]] = field(default_factory=list)
    dropped_rows: list[dict[str, Any]] = field(default_factory=list)

    read_by_source: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        kept = Counter(source_of(candidate.source) for candidate in self.kept)
        return {
            "harvested": self.harvested,
            "kept": len(self.kept),
            "excluded": len(self.excluded_rows),
            "duplicates": len(self.duplicate_rows),
            "dropped": dict(sorted(Counter(row["reason"] for row in self.dropped_rows).items())),
            # what a dry run reports; the first sources only, so that a summary fits a termination message
            "by_source": {source: {"harvested": count, "kept": kept[source]}
                          for source, count in list(self.read_by_source.items())[:BY_SOURCE_SHOWN]},
        }


def harvest(raw_rows: list[RawRow], index: ContaminationIndex) -> HarvestResult:
    """Sort every raw row into dropped, excluded, duplicate or kept, in input order (the first copy is kept)."""
    result = HarvestResult()
    first_of: dict[tuple[str, str], Candidate] = {}
    for raw in raw_rows:
        result.harvested += 1
        result.read_by_source[raw.source] += 1
        try:
            candidate = normalise_row(raw)
        except RowError as error:
            result.dropped_rows.append({**raw.location(), "reason": error.reason, "detail": error.detail})
            continue
        overlap = index.check(candidate.code, candidate.instruction)
        if overlap is not None:
            result.excluded_rows.append({**raw.location(), "fn": candidate.fn, **overlap.record()})
            continue
        key = (candidate.fn, candidate.code_digest)
        if key in first_of:
            first = first_of[key]
            result.duplicate_rows.append(
                {**raw.location(), "fn": candidate.fn, "duplicate_of": first.id, "first_seen": first.source}
            )
            continue
        first_of[key] = candidate
        result.kept.append(candidate)
    return result


def _refuse_to_overwrite(sources: list[str], outputs: list[str]) -> None:
    for output in outputs:
        for source in sources:
            if os.path.exists(output) and os.path.exists(source) and os.path.samefile(output, source):
                raise StageInputError(f"{output} is also a --source: harvest never writes to its sources")


def _read_sources(sources: list[str]) -> tuple[list[RawRow], dict[str, str]]:
    rows: list[RawRow] = []
    formats: dict[str, str] = {}
    for path in sources:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise StageInputError(f"source {path} does not exist") from None
        except UnicodeDecodeError as error:
            raise StageInputError(f"source {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        except OSError as error:
            raise StageInputError(f"source {path} cannot be read: {error.strerror or error}") from None
        try:
            formats[path], found = parse_source(text, path)
        except SourceError as error:
            raise StageInputError(f"source {error}") from None
        _check_is_a_corpus(path, found)
        rows.extend(found)
    return rows, formats


def _check_is_a_corpus(path: str, rows: list[RawRow]) -> None:
    """Bad rows are dropped one by one, but a source in which not one row even looks like a task (an empty file,
    text that is not JSON, JSON of another kind) is not a corpus at all: the wrong file, not a pile of drops."""
    if not rows:
        raise StageInputError(f"source {path} holds no rows: it is empty; nothing to harvest from it")
    if all(row.json_error is not None for row in rows):
        first = rows[0]
        raise StageInputError(
            f"source {path} is neither a JSON corpus nor JSON lines: none of its {len(rows)} non-blank line(s) "
            f"is JSON (line {first.line}, {first.json_error})"
        )
    code_names = set(ALIASES["code"])
    if not any(isinstance(row.data, dict) and code_names & {str(key).lower() for key in row.data} for row in rows):
        raise StageInputError(
            f"source {path} holds no task rows: none of its {len(rows)} row(s) is a JSON object with a code field "
            f"({', '.join(ALIASES['code'])}); a row is {{fn, instruction, code, asserts}}"
        )
