"""Unforgeable evidence (sigma0.evidence): every stage output's digest is recorded when the stage ends, and a stage
refuses an input that is not what its writer recorded, before it reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sigma0 import cli, evidence
from sigma0.io import path_digest, read_json, tree_digest
from sigma0.termination import LIMIT_BYTES, encode

PROBLEMS = [{"task_id": "T/0", "prompt": "def inc(x):\n", "canonical_solution": "    return x + 1\n",
             "entry_point": "inc", "test": "def check(candidate):\n    assert candidate(1) == 2\n"}]
VERIFIED = {"id": "r1", "fn": "double", "instruction": "Double x.", "code": "def double(x):\n    return 2 * x\n"}


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`sigma0 stage NAME ARGS...` in this process: (exit code, termination-message summary)."""
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("SIGMA0_TERMINATION_LOG", str(termination))

    def run(name: str, *argv: str | Path) -> tuple[int, dict[str, Any]]:
        termination.unlink(missing_ok=True)
        code = cli.main(["stage", name, *map(str, argv)])
        return code, json.loads(termination.read_text()) if termination.exists() else {}

    return run


def dataset_argv(tmp_path: Path, *expect: str) -> list[str | Path]:
    argv: list[str | Path] = ["--verified", tmp_path / "verify" / "verified.jsonl", "--output",
                              tmp_path / "dataset" / "train.jsonl", "--report", tmp_path / "dataset" / "report.json"]
    for expectation in expect:
        argv += ["--expect", expectation]
    return argv


def test_a_stage_reports_the_digest_of_every_output(stage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    verified = tmp_path / "verify" / "verified.jsonl"
    verified.parent.mkdir()
    verified.write_text(json.dumps(VERIFIED) + "\n")
    code, summary = stage("dataset", *dataset_argv(tmp_path))
    assert code == 0, summary
    train, report = tmp_path / "dataset" / "train.jsonl", tmp_path / "dataset" / "report.json"
    assert summary["outputs"] == {"root": str(tmp_path / "dataset"),
                                  "digests": {"report.json": path_digest(report), "train.jsonl": path_digest(train)}}
    assert evidence.split(summary) == ({k: v for k, v in summary.items() if k != "outputs"},
                                       {str(train): path_digest(train), str(report): path_digest(report)})
    assert summary["dataset_digest"] == path_digest(train)


@pytest.mark.parametrize("tamper", ["edit", "plant", "remove"])
def test_an_input_changed_after_its_writer_recorded_it_stops_the_stage_before_it_reads_it(
    stage, tmp_path: Path, tamper: str  # type: ignore[no-untyped-def]
) -> None:
    """A candidate in the verify pod rewrites verified.jsonl after verify recorded it: dataset refuses."""
    verified = tmp_path / "verify" / "verified.jsonl"
    verified.parent.mkdir()
    verified.write_text(json.dumps(VERIFIED) + "\n")
    recorded = path_digest(verified)
    if tamper == "edit":
        verified.write_text(json.dumps({**VERIFIED, "code": "def double(x):\n    return x\n"}) + "\n")
    elif tamper == "plant":
        with verified.open("a") as handle:
            handle.write(json.dumps({**VERIFIED, "id": "planted"}) + "\n")
    else:
        verified.unlink()
    code, summary = stage("dataset", *dataset_argv(tmp_path, f"{recorded}={verified}"))
    assert code == cli.EXIT_BAD_INPUT and summary["kind"] == "evidence_tampered", summary
    assert summary["error"].startswith(f"evidence_tampered: {verified} ")
    assert "the release is untouched" in summary["error"]
    assert not (tmp_path / "dataset").exists(), "the stage read nothing and wrote nothing"


def test_an_input_with_no_recorded_digest_is_refused_too(stage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    verified = tmp_path / "verify" / "verified.jsonl"
    verified.parent.mkdir()
    verified.write_text(json.dumps(VERIFIED) + "\n")
    code, summary = stage("dataset", *dataset_argv(tmp_path, f"unrecorded={verified}"))
    assert code == cli.EXIT_BAD_INPUT and summary["kind"] == "evidence_missing", summary
    code, summary = stage("dataset", *dataset_argv(tmp_path, f"{path_digest(verified)}={verified}"))
    assert code == 0, summary


def test_planted_completions_stop_score(stage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """generate recorded its adapter/suite folder; a completion changed or added in it afterwards (by a candidate in
    an earlier score pod) stops the score step that reads it."""
    suite = tmp_path / "problems.jsonl"
    suite.write_text(json.dumps(PROBLEMS[0]) + "\n")
    folder = tmp_path / "eval" / "completions" / "incumbent" / "gate"
    folder.mkdir(parents=True)
    completions = folder / "completions.jsonl"
    completions.write_text(json.dumps({"task_id": "T/0", "completion": "    return x + 1\n"}) + "\n")
    (folder / "generation.json").write_text("{}\n")
    recorded = tree_digest(folder)
    argv = ["--completions", completions, "--output", tmp_path / "results.jsonl", "--report", tmp_path / "r.json",
            "--suite", suite, "--sandbox", "process", "--expect", f"{recorded}={folder}"]
    (folder / "extra.jsonl").write_text("{}\n")  # a file added beside them
    code, summary = stage("score", *argv)
    assert code == cli.EXIT_BAD_INPUT and summary["kind"] == "evidence_tampered", summary
    (folder / "extra.jsonl").unlink()
    completions.write_text(json.dumps({"task_id": "T/0", "completion": "    return 0\n"}) + "\n")
    code, summary = stage("score", *argv)
    assert code == cli.EXIT_BAD_INPUT and summary["kind"] == "evidence_tampered", summary
    assert not (tmp_path / "results.jsonl").exists()
    completions.write_text(json.dumps({"task_id": "T/0", "completion": "    return x + 1\n"}) + "\n")
    code, summary = stage("score", *argv)
    assert code == 0 and summary["pass_at_1"] == 1.0, summary


def test_recorded_names_are_the_plans_even_for_remote_outputs() -> None:
    digest = "sha256:" + "1" * 64
    local = evidence.record([])
    assert local == {"root": "", "digests": {}}
    entry = {"root": "s3://bucket/sigma0/cycles/c1/eval", "digests": {"completions/candidate/gate": digest}}
    assert evidence.expand(entry) == {"s3://bucket/sigma0/cycles/c1/eval/completions/candidate/gate": digest}
    assert evidence.expand({"root": "/a", "digests": {"x": "not a digest", "y": digest}}) == {"/a/y": digest}
    assert evidence.expand("cut") == {}
    recorded = evidence.expand(entry)
    found = evidence.find(recorded, "s3://bucket/sigma0/cycles/c1/eval/completions/candidate/gate/completions.jsonl")
    assert found == ("s3://bucket/sigma0/cycles/c1/eval/completions/candidate/gate", digest)
    assert evidence.find(recorded, "s3://bucket/sigma0/cycles/c1/eval/completions/candidate/gatex") is None


def test_record_names_outputs_as_given_and_digests_the_local_copies(tmp_path: Path) -> None:
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.jsonl").write_text("a\n")
    (tmp_path / "copy" / "adapter").mkdir()
    (tmp_path / "copy" / "adapter" / "w").write_text("w")
    entry = evidence.record([("s3://b/c1/train/a.jsonl", str(tmp_path / "copy" / "a.jsonl")),
                             ("s3://b/c1/train/adapter", str(tmp_path / "copy" / "adapter")),
                             ("s3://b/c1/train/missing.json", str(tmp_path / "copy" / "missing.json"))])
    assert evidence.expand(entry) == {"s3://b/c1/train/a.jsonl": path_digest(tmp_path / "copy" / "a.jsonl"),
                                      "s3://b/c1/train/adapter": tree_digest(tmp_path / "copy" / "adapter")}


def test_the_digests_are_the_last_thing_a_termination_message_gives_up() -> None:
    outputs = {"root": "/artifacts/cycles/ns/c1/eval",
               "digests": {f"completions/candidate/report{i}": "sha256:" + "1" * 64 for i in range(12)}}
    summary = {"results": {f"candidate/report{i}": {"generated": 164, "seconds": 12.5} for i in range(40)},
               "adapters": {"candidate": "sha256:" + "2" * 64}, "outputs": outputs}
    text = encode(summary)
    assert len(text.encode()) <= LIMIT_BYTES
    assert json.loads(text)["outputs"] == outputs


def test_the_record_reaches_the_local_state(tmp_path: Path) -> None:
    """state.json keeps each step's outputs beside its summary (sigma0.executors.local)."""
    from sigma0 import plan
    from sigma0.executors import local

    digest = "sha256:" + "3" * 64
    run = local.CycleRun("c1", tmp_path, plan.CycleState(True, None, {
        "harvest": plan.StepResult("succeeded", {"kept": 1}, outputs={"/x/candidates.jsonl": digest})}),
        "sha256:m", "now", resume_keys={"harvest": "k"})
    local.save(run)
    saved = read_json(tmp_path / "state.json")
    assert saved["steps"]["harvest"]["outputs"] == {"/x/candidates.jsonl": digest}
    assert saved["resumeKeys"] == {"harvest": "k"}
    assert local.load(tmp_path).state == run.state and local.load(tmp_path).resume_keys == {"harvest": "k"}


def test_a_decision_file_changed_after_decide_is_not_published(tmp_path: Path) -> None:
    """The local release store reads decision.json: it is held to what decide recorded."""
    from sigma0 import plan
    from sigma0.executors.local import _check_decision

    decision = tmp_path / "decision.json"
    decision.write_text('{"outcome": "Rejected"}\n')
    action = plan.Publish(decision={}, decision_file=str(decision), candidate_uri="", candidate_digest="",
                          decision_digest=path_digest(decision))
    assert _check_decision(action) is None
    decision.write_text('{"outcome": "Promoted"}\n')
    assert "evidence_tampered" in str(_check_decision(action))
    assert "evidence_missing" in str(_check_decision(plan.Publish({}, str(decision), "", "")))
