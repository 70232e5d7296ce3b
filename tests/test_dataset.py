"""`sigma0 stage dataset`: the HumanEval-shaped template, base rows validated and left untouched, a stable digest,
and base rows that copy an eval problem (verbatim, renamed, re-laid-out, edited, inside prose) excluded and counted."""

from __future__ import annotations

import argparse
import ast
import builtins
import inspect
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from sigma0 import plan
from sigma0.io import file_digest
from sigma0.stages import StageInputError
from sigma0.stages import dataset as stage
from sigma0.stages import harvest as harvest_stage
from sigma0.stages.dataset import to_prompt_completion
from sigma0.suites import Problem, load_suite
from sigma0.ui import highlight, result_table

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

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


def run_stage(tmp_path: Path, verified: Path, base: Path | None = None, extra: list[str] | None = None) -> dict:
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
    return stage.run(parser.parse_args(argv + (["--base", str(base)] if base else []) + (extra or [])))


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
        "excluded": 0,
        "dataset_digest": file_digest(tmp_path / "train.jsonl"),
        "bytes": (tmp_path / "train.jsonl").stat().st_size,  # what a dry run reports as the dataset's size
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


# --- base rows against the eval suites ---


@pytest.fixture(scope="module")
def humaneval() -> dict[str, Problem]:
    return {problem.task_id: problem for problem in load_suite("humaneval")}


def _renamed(source: str, insert_after: str | None = None) -> tuple[str, str]:
    """Every non-builtin name changed and every docstring gone (and a statement added after the line holding
    `insert_after`): the copied code, and the copy's new name for the last function."""
    lines = source.splitlines()
    if insert_after is not None:
        at = next(i for i, line in enumerate(lines) if insert_after in line)
        indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
        lines.insert(at + 1, f"{indent}print('checked', {lines[at].split('=')[0].strip()})")
    names: dict[str, str] = {}

    def new(name: str) -> str:
        return name if name in dir(builtins) else names.setdefault(name, f"thing_{len(names)}")

    tree = ast.parse("\n".join(lines))
    last = ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = new(node.id)
        elif isinstance(node, ast.arg):
            node.arg = new(node.arg)
        elif isinstance(node, ast.FunctionDef):
            node.name = last = new(node.name)
            if ast.get_docstring(node) is not None:
                node.body = node.body[1:]
    return ast.unparse(tree) + "\n", last


def _as_base_row(code: str, fn: str, instruction: str) -> dict[str, str]:
    prompt, completion = to_prompt_completion(code, fn, instruction)
    return {"prompt": prompt, "completion": completion}


def _leaks(problems: dict[str, Problem]) -> dict[str, tuple[dict[str, str], str, str]]:
    """Base rows that are HumanEval in disguise: the row, the problem it copies, the kind of evidence expected."""
    p0, p3, p12 = problems["HumanEval/0"], problems["HumanEval/3"], problems["HumanEval/12"]
    renamed3, fn3 = _renamed(p3.prompt + p3.canonical_solution)
    edited0, fn0 = _renamed(p0.prompt + p0.canonical_solution, insert_after="distance = abs")
    renamed12, _ = _renamed(p12.prompt + p12.canonical_solution)
    return {
        "verbatim": ({"prompt": p0.prompt, "completion": p0.canonical_solution}, "HumanEval/0", "exact"),
        "every name changed, docstring replaced": (
            _as_base_row(renamed3, fn3, "Tell whether the running total ever drops under nothing."),
            "HumanEval/3", "exact_code"),
        "comments, blank lines, two-space indent": ({
            "prompt": "def near(nums, t):\n  '''Any two numbers closer than t?'''\n",
            "completion": (
                "  # compare every pair\n"
                "  for i, a in enumerate(nums):\n\n"
                "    for j, b in enumerate(nums):   # all of them\n"
                "      if i != j:\n"
                "        d = abs(a - b)\n"
                "        if d < t: return True\n"
                "\n  return False\n"
            ),
        }, "HumanEval/0", "exact_code"),
        "renamed, a statement added": (
            _as_base_row(edited0, fn0, "Are any two of these close?"), "HumanEval/0", "ngram_code"),
        "chat-shaped, the code in a fence": ({
            "prompt": "Write a Python function that returns the longest of a list of strings.",
            "completion": f"Sure, here it is:\n\n```python\n{renamed12}```\n\nIt keeps the first of equal lengths.",
        }, "HumanEval/12", "exact_code"),
        "the body alone after a prose prompt": (
            {"prompt": "Finish this function body:\n", "completion": p3.canonical_solution},
            "HumanEval/3", "exact_code"),
        "the docstring copied, another body": (
            {"prompt": p12.prompt, "completion": "    return None\n"}, "HumanEval/12", "exact_instruction"),
    }


LEAK_NAMES = [
    "verbatim",
    "every name changed, docstring replaced",
    "comments, blank lines, two-space indent",
    "renamed, a statement added",
    "chat-shaped, the code in a fence",
    "the body alone after a prose prompt",
    "the docstring copied, another body",
]
HONEST = {"prompt": "def two():\n", "completion": "    return 2\n", "id": "base-two"}


@pytest.mark.parametrize("name", LEAK_NAMES)
def test_a_base_row_that_copies_an_eval_problem_is_excluded_and_counted(tmp_path, humaneval, name):
    leak, task_id, kind = _leaks(humaneval)[name]
    base = jsonl(tmp_path / "base.jsonl", [BASE, {**leak, "id": "base-leak"}, HONEST])
    before = (base.read_bytes(), base.stat().st_mtime_ns)

    summary = run_stage(tmp_path, jsonl(tmp_path / "verified.jsonl", [VERIFIED]), base)

    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["base-one", "base-two", VERIFIED["id"]]
    assert (summary["base_rows"], summary["excluded"], summary["rows"]) == (2, 1, 3)
    report = json.loads((tmp_path / "r.json").read_text())
    [excluded] = report["excluded_rows"]
    assert (excluded["line"], excluded["id"], excluded["task_id"]) == (2, "base-leak", task_id)
    assert excluded["kind"].startswith(kind), excluded
    assert task_id in excluded["detail"]
    assert report["settings"] == {"exclude_suites": ["humaneval"], "ngram_size": 8, "ngram_threshold": 0.5}
    assert (base.read_bytes(), base.stat().st_mtime_ns) == before, "the base file is only read"


def test_honest_base_rows_survive_the_check(tmp_path):
    demo = [json.loads(line) for line in (EXAMPLES / "corpus" / "base_train.jsonl").read_text().splitlines()]
    everyday = [
        # HumanEval/53 is `return x + y`: a trivial body is nobody's solution
        {"prompt": 'def add(a: int, b: int) -> int:\n    """Add a and b."""\n', "completion": "    return a + b\n"},
        # prose: no code to compare, its words against the docstrings
        {"prompt": "What does a list comprehension do?", "completion": "It builds a list from an iterable in one "
         "expression, optionally filtering the items with an if clause."},
        {"prompt": "Sum the squares of xs.\n", "completion": "```python\ndef sum_sq(xs):\n    total = 0\n    for x "
         "in xs:\n        total += x * x\n    return total\n```\n"},
    ]
    absurd = [  # code the normaliser cannot walk (too deep for ast, then for its own recursion): kept, not a crash
        {"prompt": "x = ", "completion": "+".join(["1"] * 5000) + "\n"},
        {"prompt": "x = ", "completion": "+".join(["1"] * 600) + "\n"},
    ]
    base = jsonl(tmp_path / "base.jsonl", demo + everyday + absurd)
    summary = run_stage(tmp_path, jsonl(tmp_path / "verified.jsonl", [VERIFIED]), base)
    assert (summary["base_rows"], summary["excluded"]) == (len(demo) + len(everyday) + len(absurd), 0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["excluded_rows"] == []
    assert report["text_only"] == 3, "the prose row and the absurd ones: only their words were compared"


def test_the_suites_checked_are_the_ones_named(tmp_path):
    problem = {
        "task_id": "local/1",
        "prompt": 'def rotate(items: list, k: int) -> list:\n    """Rotate items k places to the right."""\n',
        "canonical_solution": (
            "    if not items:\n        return []\n    k = k % len(items)\n    return items[-k:] + items[:-k]\n"
        ),
        "test": "def check(f):\n    assert f([1, 2, 3], 1) == [3, 1, 2]\n",
        "entry_point": "rotate",
    }
    suite = jsonl(tmp_path / "local.jsonl", [problem])
    copy = {"prompt": "def spin(xs, n):\n", "completion": problem["canonical_solution"].replace("items", "xs")}
    base = jsonl(tmp_path / "base.jsonl", [copy])
    verified = jsonl(tmp_path / "verified.jsonl", [VERIFIED])

    assert run_stage(tmp_path, verified, base)["excluded"] == 0, "humaneval alone by default"
    summary = run_stage(tmp_path, verified, base, extra=["--exclude-suite", "humaneval", "--exclude-suite", str(suite)])
    assert (summary["base_rows"], summary["excluded"]) == (0, 1)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["excluded_rows"][0]["task_id"] == "local/1"
    assert report["settings"]["exclude_suites"] == ["humaneval", str(suite)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ngram-size", "0"], "--ngram-size"),
        (["--ngram-threshold", "0"], "--ngram-threshold"),
        (["--exclude-suite", "no-such-suite"], "no-such-suite"),
    ],
)
def test_bad_overlap_settings_are_input_errors_as_in_harvest(tmp_path, extra, message):
    with pytest.raises(StageInputError, match=message):
        run_stage(tmp_path, jsonl(tmp_path / "verified.jsonl", [VERIFIED]), extra=extra)
    assert not (tmp_path / "train.jsonl").exists()


def test_the_overlap_options_are_harvests_own():
    def options(module) -> dict[str, tuple]:
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return {a.dest: (a.option_strings, a.default, a.type, type(a))
                for a in parser._actions if a.dest in ("exclude_suite", "ngram_size", "ngram_threshold")}

    assert options(stage) == options(harvest_stage) and len(options(stage)) == 3


def test_the_run_display_counts_excluded_base_rows():
    shown = highlight("dataset", {"rows": 9, "base_rows": 4, "verified_rows": 5, "excluded": 2})
    assert shown == "9 rows (4 base + 5 verified); 2 base rows excluded (eval overlap)"
    state = plan.CycleState(True, None, {
        "harvest": plan.StepResult("succeeded", {"harvested": 10, "excluded": 3}),
        "dataset": plan.StepResult("succeeded", {"rows": 9, "excluded": 2}),
    })
    out = io.StringIO()
    Console(file=out, width=200).print(result_table("c1", state, {"phase": "Succeeded"}))
    [row] = [line for line in out.getvalue().splitlines() if "excluded (eval overlap)" in line]
    assert "3 harvested, 2 base" in row
