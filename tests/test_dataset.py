"""`sigma0 stage dataset`: the HumanEval-shaped template, base rows validated and left untouched, a stable digest."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma0.io import file_digest
from sigma0.stages import StageInputError
from sigma0.stages import dataset as stage
from sigma0.stages.dataset import to_prompt_completion

VERIFIED = {
    "id": "count_vowels-0123456789ab",
    "fn": "count_vowels",
    "instruction": "Count the vowels in text.",
    "code": 'def count_vowels(text: str) -> int:\n    return sum(1 for ch in text if ch in "aeiou")\n',
    "asserts": ['assert count_vowels("abc") == 1'],
    "source": "corpus.json[0]",
    "code_digest": "sha256:0123456789ab",
}
BASE = {"prompt": "def one():\n", "completion": "    return 1\n", "id": "base-one", "source": "seed"}


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def run_stage(tmp_path: Path, verified: Path, base: Path | None = None) -> dict:
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    argv = [
        "--verified",
        str(verified),
        "--output",
        str(tmp_path / "train.jsonl"),
        "--report",
        str(tmp_path / "r.json"),
    ]
    return stage.run(parser.parse_args(argv + (["--base", str(base)] if base else [])))


def _function(program: str, name: str) -> ast.FunctionDef:
    return next(n for n in ast.parse(program).body if isinstance(n, ast.FunctionDef) and n.name == name)


# --- the template ---


def test_a_verified_row_becomes_signature_and_docstring_then_body():
    prompt, completion = to_prompt_completion(VERIFIED["code"], "count_vowels", VERIFIED["instruction"])
    assert prompt == 'def count_vowels(text: str) -> int:\n    """Count the vowels in text."""\n'
    assert completion == '    return sum(1 for ch in text if ch in "aeiou")\n'


def test_context_comes_first_and_the_functions_own_docstring_gives_way_to_the_instruction():
    code = (
        "import math\n\n"
        "def area(r: float) -> float:\n"
        '    """Old words."""\n'
        "    # pi r squared\n"
        "    return math.pi * r ** 2\n\n"
        "UNIT = 'cm'\n"
    )
    prompt, completion = to_prompt_completion(code, "area", "Area of a circle of radius r.")
    assert prompt == (
        'import math\n\n\nUNIT = \'cm\'\n\n\ndef area(r: float) -> float:\n    """Area of a circle of radius r."""\n'
    )
    assert completion == "    return math.pi * r ** 2\n"
    namespace: dict = {}
    exec(compile(prompt + completion, "<row>", "exec"), namespace)
    assert namespace["area"](1.0) == pytest.approx(3.14159, rel=1e-5)
    assert namespace["area"].__doc__.startswith("Area of a circle")


@pytest.mark.parametrize(
    "code",
    [
        "def f(x): return x + 1\n",  # body on the def line
        'def f(x):\n  """doc"""; return x + 1\n',  # body after the docstring on one line
        "def f(x):\n  if x:\n    return x + 1\n  return 1\n",  # two-space indentation
        # a decorator, a signature over two lines
        "@staticmethod\ndef f(x,\n      *rest, flag='y', **kw) -> int:\n    return x + 1\n",
        'def f(x):\n    text = """\nno indent\n"""\n    return x + 1\n',  # a string at column 0 inside the body
        "def f(x):\r\n    text = '\u2028\x0c'\r\n    return x + 1\r\n",  # CRLF, odd characters in a string
    ],
)
def test_every_shape_of_function_gives_a_program_that_defines_it(code):
    prompt, completion = to_prompt_completion(code, "f", "Add one.")
    function = _function(prompt + completion, "f")
    assert ast.get_docstring(function) == "Add one."
    assert prompt.endswith('"""\n') and completion.endswith("\n") and not completion.startswith("\n")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab \"'\\\n{}>.x")), min_size=1, max_size=40).filter(str.strip))
def test_any_instruction_survives_the_docstring_intact(instruction):
    prompt, completion = to_prompt_completion("def f(x):\n    return x\n", "f", instruction)
    docstring = ast.get_docstring(_function(prompt + completion, "f"), clean=False) or ""

    def lines(text: str) -> str:  # cleandoc leaves a last line of spaces; layout is not the point here
        return "\n".join(line.strip() for line in inspect.cleandoc(text).splitlines()).strip()

    assert lines(docstring) == lines(instruction)


def test_code_without_the_function_is_refused():
    with pytest.raises(ValueError, match="no top-level `def g"):
        to_prompt_completion("def f():\n    pass\n", "g", "x")


# --- the stage ---


def test_base_rows_then_verified_rows_with_a_stable_digest(tmp_path):
    base = jsonl(tmp_path / "base.jsonl", [BASE, {"prompt": "def two():\n", "completion": "    return 2\n"}])
    verified = jsonl(tmp_path / "verified.jsonl", [VERIFIED])
    before = (base.read_bytes(), base.stat().st_mtime_ns)

    summary = run_stage(tmp_path, verified, base)

    assert (base.read_bytes(), base.stat().st_mtime_ns) == before
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [set(row) for row in rows] == [{"prompt", "completion", "source", "id"}] * 3
    assert rows[0] == BASE
    assert rows[1]["source"] == "base" and rows[1]["id"].startswith("base-")
    assert rows[2]["id"] == VERIFIED["id"] and rows[2]["source"] == VERIFIED["source"]
    assert summary == {
        "base_rows": 2,
        "verified_rows": 1,
        "rows": 3,
        "dataset_digest": file_digest(tmp_path / "train.jsonl"),
    }
    report = json.loads((tmp_path / "r.json").read_text())
    assert {key: report[key] for key in summary} == summary

    again = run_stage(tmp_path, verified, base)
    assert again["dataset_digest"] == summary["dataset_digest"]


def test_no_base_file_is_fine(tmp_path):
    summary = run_stage(tmp_path, jsonl(tmp_path / "verified.jsonl", [VERIFIED]))
    assert (summary["base_rows"], summary["verified_rows"], summary["rows"]) == (0, 1, 1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"prompt": "def f():\n"}), "no `completion`"),
        (json.dumps({"prompt": 3, "completion": "x"}), "`prompt` must be a non-empty string"),
        (json.dumps({"prompt": "  ", "completion": "x"}), "`prompt` must be a non-empty string"),
        (json.dumps({**BASE, "id": 7}), "`id` must be a string"),
    ],
)
def test_a_bad_base_row_is_an_input_error_naming_its_line(tmp_path, line, message):
    base = jsonl(tmp_path / "base.jsonl", [BASE, line])
    with pytest.raises(StageInputError, match=message) as caught:
        run_stage(tmp_path, jsonl(tmp_path / "verified.jsonl", [VERIFIED]), base)
    assert f"{base}:2" in str(caught.value)
    assert not (tmp_path / "train.jsonl").exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**VERIFIED, "code": "def other():\n    pass\n"}, "no top-level `def count_vowels"),
        ({**VERIFIED, "code": "def count_vowels(:\n"}, "verified row"),
        ({key: value for key, value in VERIFIED.items() if key != "fn"}, "`fn`"),
    ],
)
def test_a_bad_verified_row_is_an_input_error_naming_its_line(tmp_path, row, message):
    verified = jsonl(tmp_path / "verified.jsonl", [row])
    with pytest.raises(StageInputError, match=message) as caught:
        run_stage(tmp_path, verified)
    assert f"{verified}:1" in str(caught.value)


def test_missing_inputs_duplicate_ids_and_overwriting_an_input_are_refused(tmp_path):
    verified = jsonl(tmp_path / "verified.jsonl", [VERIFIED])
    with pytest.raises(StageInputError, match="does not exist"):
        run_stage(tmp_path, tmp_path / "missing.jsonl")
    with pytest.raises(StageInputError, match="ids must be unique"):
        run_stage(tmp_path, verified, jsonl(tmp_path / "base.jsonl", [{**BASE, "id": VERIFIED["id"]}]))
    base = jsonl(tmp_path / "train.jsonl", [BASE])  # the output path
    with pytest.raises(StageInputError, match="also an input"):
        run_stage(tmp_path, verified, base)
    assert json.loads(base.read_text()) == BASE
