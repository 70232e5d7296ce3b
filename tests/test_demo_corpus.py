"""The demo corpus (examples/corpus/) gives exactly the harvest it is written for, so an edit that breaks the demo
is caught here. expected.json says, per row, what it is meant to show; make_corpus.py writes both."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from sigma0.candidates import DROP_REASONS
from sigma0.stages import dataset, harvest

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus"
SOURCES = ("agent_corpus.json", "tasks.jsonl")


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], dict, Path]:
    out = tmp_path_factory.mktemp("demo")
    parser = argparse.ArgumentParser()
    harvest.add_arguments(parser)
    argv = [arg for name in SOURCES for arg in ("--source", str(CORPUS / name))]
    argv += ["--output", str(out / "candidates.jsonl"), "--report", str(out / "report.json")]
    summary = harvest.run(parser.parse_args(argv))
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    return summary, rows, json.loads((out / "report.json").read_text()), out


def _where(entry: dict) -> str:
    name = Path(entry["source"]).name
    return f"{name}:{entry['line']}" if "line" in entry else f"{name}[{entry['index']}]"


def test_the_files_are_what_the_generator_writes(generator):
    for name, text in generator.build().items():
        assert (CORPUS / name).read_text(encoding="utf-8") == text, f"run examples/corpus/make_corpus.py ({name})"


def test_harvest_gives_the_expected_counts(harvested, expected):
    summary, _, _, _ = harvested
    summary = dict(summary)
    by_source = summary.pop("by_source")  # rows read and kept per source file, what a dry run reports
    assert summary == expected["harvest"]
    assert {Path(source).name: counts for source, counts in by_source.items()} == {
        "agent_corpus.json": {"harvested": 28, "kept": 17}, "tasks.jsonl": {"harvested": 21, "kept": 13}}
    assert sum(c["harvested"] for c in by_source.values()) == summary["harvested"]
    assert sum(c["kept"] for c in by_source.values()) == summary["kept"]
    assert set(summary["dropped"]) == set(DROP_REASONS)  # the demo shows every way harvest drops a row


def test_every_row_ends_where_it_is_meant_to(harvested, expected):
    _, rows, report, _ = harvested
    actual = {Path(row["source"]).name: "kept" for row in rows}  # source: "dir/tasks.jsonl:3", "dir/x.json[0]"
    for entry in report["excluded_rows"]:
        actual[_where(entry)] = f"excluded:{entry['task_id']}"
    for entry in report["duplicate_rows"]:
        actual[_where(entry)] = "duplicate"
    for entry in report["dropped_rows"]:
        actual[_where(entry)] = f"dropped:{entry['reason']}"
    meant = {where: ("kept" if o.startswith("verify:") else o) for where, o in expected["rows"].items()}
    assert actual == meant


def test_rows_meant_to_pass_do_pass_with_plain_python(generator):
    assert generator.check_passing_rows() == []


def test_the_base_rows_and_the_harvest_make_a_dataset(harvested):
    _, rows, _, out = harvested
    parser = argparse.ArgumentParser()
    dataset.add_arguments(parser)
    argv = ["--verified", str(out / "candidates.jsonl"), "--base", str(CORPUS / "base_train.jsonl")]
    argv += ["--output", str(out / "train.jsonl"), "--report", str(out / "r.json")]
    summary = dataset.run(parser.parse_args(argv))
    assert (summary["base_rows"], summary["verified_rows"]) == (6, len(rows))


@pytest.mark.slow  # one row is an infinite loop: it costs the sandbox's whole timeout
def test_the_sandbox_gives_each_harvested_row_its_expected_verdict(harvested, expected):
    from sigma0.sandbox.programs import from_asserts
    from sigma0.sandbox.runner import run_programs

    _, rows, _, _ = harvested
    programs = [from_asserts(row["id"], row["fn"], row["code"], row["asserts"]) for row in rows]
    where = {row["id"]: Path(row["source"]).name for row in rows}
    verdicts = {where[v.id]: v.reason for v in run_programs(programs, sandbox="auto", timeout=2.0)}
    meant = {w: o.removeprefix("verify:") if o.startswith("verify:") else "passed" for w, o in expected["rows"].items()}
    assert verdicts == {w: meant[w] for w in where.values()}
