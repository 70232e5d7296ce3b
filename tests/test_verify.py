"""`sigma0 stage verify`: exactly the passing rows come out, unchanged and in order; every row gets a verdict."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from sigma0.io import read_json
from sigma0.sandbox.runner import find_runsc
from sigma0.stages import StageInputError, verify

SANDBOXES = [
    "process",
    pytest.param(
        "gvisor",
        marks=pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc is not on PATH (CI installs it)"),
    ),
]

ROWS = [
    {"id": "a", "fn": "add", "instruction": "Add.", "code": "def add(a, b):\n    return a + b\n",
     "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "source": "x", "extra": {"kept": [1, 2]}},
    {"id": "b", "fn": "add", "instruction": "Add.", "code": "def add(a, b):\n    return a - b\n",
     "asserts": ["assert add(1, 2) == 3"]},
    {"id": "c", "fn": "rev", "instruction": "Reverse.", "code": "def rev(s):\n    return s[::-1]\n",
     "asserts": "assert rev('ab') == 'ba'\nassert rev('') == ''\n"},
    {"id": "d", "fn": "rev", "instruction": "Reverse.", "code": "import os\nos._exit(0)\n",
     "asserts": ["assert rev('ab') == 'ba'"]},
    {"id": "e", "fn": "rev", "instruction": "Reverse.", "code": "def rev(s):\n    return s\n", "asserts": []},
    {"id": "f", "fn": "rev", "instruction": "Reverse.", "code": "def rev(s):\n    return s\n",
     "asserts": ["assert True"]},
    {"id": "g", "fn": "loop", "instruction": "Loop.", "code": "def loop():\n    while True:\n        pass\n",
     "asserts": ["assert loop() is None"]},
    {"id": "h", "fn": "sq", "instruction": "Square.", "code": "def sq(x):\n    return x * x\n",
     "asserts": ["assert sq(3) == 9"]},
]  # fmt: skip
PASSING = {"a", "c", "h"}


def stage_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    out = [f"--{name}={tmp_path / file}" for name, file in (("output", "verified.jsonl"), ("report", "report.json"))]
    return parser.parse_args(["--input", str(tmp_path / "candidates.jsonl"), *out, *extra])


def write_rows(tmp_path: Path, rows: list[dict]) -> list[str]:
    # Key order and spacing as another tool might write them: the output must keep each line exactly.
    lines = [json.dumps(row, indent=None, separators=(", ", ": ")) for row in rows]
    (tmp_path / "candidates.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    return lines


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_output_is_exactly_the_passing_rows_unchanged_in_order(tmp_path: Path, sandbox: str) -> None:
    lines = write_rows(tmp_path, ROWS)
    summary = verify.run(stage_args(tmp_path, "--sandbox", sandbox, "--timeout", "2", "--workers", "2"))

    expected = [line for line, row in zip(lines, ROWS, strict=True) if row["id"] in PASSING]
    assert (tmp_path / "verified.jsonl").read_text().splitlines() == expected
    assert summary["total"] == len(ROWS) and summary["passed"] == len(PASSING) and summary["sandbox"] == sandbox
    assert summary["dropped"] == {
        "assertion": 1,
        "asserts_without_call": 1,
        "exit_before_asserts": 1,
        "no_asserts": 1,
        "timeout": 1,
    }
    assert len(json.dumps(summary)) < 3000

    report = read_json(tmp_path / "report.json")
    assert all(report[key] == summary[key] for key in ("total", "passed", "sandbox", "dropped"))
    verdicts = report["verdicts"]
    assert [v["id"] for v in verdicts] == [row["id"] for row in ROWS]
    assert {v["id"] for v in verdicts if v["passed"]} == PASSING
    by_id = {v["id"]: v for v in verdicts}
    assert by_id["d"]["reason"] == "exit_before_asserts" and by_id["g"]["reason"] == "timeout"
    assert by_id["b"]["fn"] == "add" and "add(1, 2) == 3" in by_id["b"]["detail"]
    assert report["settings"]["sandbox"] == sandbox and report["settings"]["limits"]["memory_mb"] == 1024
    # which runsc ran, on which platform (sigma0's systrap build where it runs, else Debian's on ptrace)
    runsc = find_runsc()
    assert report["settings"]["runsc"] == (runsc.to_dict() if sandbox == "gvisor" and runsc else None)


def test_the_sandbox_used_is_said_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rows(tmp_path, ROWS[:1])
    verify.run(stage_args(tmp_path, "--sandbox", "process"))
    assert "sandbox process" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"fn": "f", "asserts": []}), "'code' must be a non-empty string"),
        (json.dumps({"fn": 3, "code": "x = 1"}), "'fn' must be a non-empty string"),
    ],
)
def test_a_row_harvest_could_not_have_written_is_bad_input(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "candidates.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(StageInputError, match=message) as caught:
        verify.run(stage_args(tmp_path, "--sandbox", "process"))
    assert "candidates.jsonl:2" in str(caught.value)
    assert not (tmp_path / "verified.jsonl").exists()


def test_settings_that_cannot_work_are_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_rows(tmp_path, ROWS[:1])
    with pytest.raises(StageInputError, match="--timeout must be positive"):
        verify.run(stage_args(tmp_path, "--timeout", "0"))
    with pytest.raises(StageInputError, match="does not exist"):
        verify.run(stage_args(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no runsc on PATH, and no runsc built by scripts/build-gvisor.sh
    monkeypatch.setenv("SIGMA0_GVISOR_CACHE", str(tmp_path))
    monkeypatch.delenv("SIGMA0_RUNSC", raising=False)
    with pytest.raises(StageInputError, match="needs runsc"):
        verify.run(stage_args(tmp_path, "--sandbox", "gvisor"))


def test_an_empty_input_gives_an_empty_output(tmp_path: Path) -> None:
    (tmp_path / "candidates.jsonl").write_text("")
    summary = verify.run(stage_args(tmp_path, "--sandbox", "process"))
    assert summary["total"] == summary["passed"] == 0
    assert (tmp_path / "verified.jsonl").read_text() == ""
