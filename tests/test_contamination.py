"""The eval-overlap index: what it catches (exact, n-gram, renamed, edited, embedded, docstrings) and what it lets
through (trivial bodies, idioms, unrelated code)."""

from __future__ import annotations

import ast
import builtins

import pytest

from sigma0.contamination import ContaminationIndex, code_tokens, text_tokens
from sigma0.suites import Problem, load_suite


@pytest.fixture(scope="module")
def humaneval() -> dict[str, Problem]:
    return {problem.task_id: problem for problem in load_suite("humaneval")}


@pytest.fixture(scope="module")
def index(humaneval: dict[str, Problem]) -> ContaminationIndex:
    return ContaminationIndex.build(humaneval.values())


def _renamed(source: str) -> str:
    """Every non-builtin name changed, docstrings gone: a paraphrase that keeps the structure."""
    names: dict[str, str] = {}

    def new(name: str) -> str:
        return name if name in dir(builtins) else names.setdefault(name, f"my_{len(names)}_thing")

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = new(node.id)
        elif isinstance(node, ast.arg):
            node.arg = new(node.arg)
        elif isinstance(node, ast.FunctionDef):
            node.name = new(node.name)
            if ast.get_docstring(node) is not None:
                node.body = node.body[1:]
    return ast.unparse(tree)


def test_a_verbatim_copy_of_a_canonical_solution_is_an_exact_hit(index, humaneval):
    problem = humaneval["HumanEval/0"]
    hit = index.check(problem.prompt + problem.canonical_solution, "")
    assert hit is not None
    assert (hit.task_id, hit.kind, hit.score) == ("HumanEval/0", "exact_code", 1.0)
    assert "HumanEval/0" in hit.describe()


def test_a_copy_with_every_name_changed_and_no_docstring_is_still_caught(index, humaneval):
    problem = humaneval["HumanEval/3"]
    paraphrase = _renamed(problem.prompt + problem.canonical_solution)
    assert "below_zero" not in paraphrase and "balance" not in paraphrase
    hit = index.check(paraphrase, "Tell whether the running total ever drops under nothing.")
    assert hit is not None and (hit.task_id, hit.kind) == ("HumanEval/3", "exact_code")


def test_comments_layout_and_quotes_do_not_hide_a_copy(index):
    copy = (
        "def has_close(nums, t):\n"
        "    # compare every pair\n"
        "    for i, a in enumerate(nums):\n"
        "        for j, b in enumerate(nums):\n"
        "            if i != j:\n"
        "                d = abs(a - b)   # distance\n"
        "                if d < t: return True\n"
        "    return False\n"
    )
    hit = index.check(copy, "")
    assert hit is not None and hit.task_id == "HumanEval/0"


def test_a_copy_with_a_statement_added_is_an_ngram_hit(index, humaneval):
    problem = humaneval["HumanEval/0"]
    lines = (problem.prompt + problem.canonical_solution).splitlines()
    at = next(i for i, line in enumerate(lines) if "distance = abs" in line)
    lines.insert(at + 1, "                print('checked', idx, idx2)")
    hit = index.check(_renamed("\n".join(lines)), "")
    assert hit is not None
    assert (hit.task_id, hit.kind) == ("HumanEval/0", "ngram_code")
    assert hit.score >= index.threshold and hit.shared >= 3


def test_a_solution_inside_a_larger_module_is_caught(index, humaneval):
    problem = humaneval["HumanEval/12"]
    module = (
        "import os\n\n"
        "def unrelated(path):\n    return os.path.basename(path).upper()\n\n"
        + problem.prompt
        + problem.canonical_solution
        + "\n\ndef also_unrelated(x):\n    return [y * 2 for y in x if y]\n"
    )
    hit = index.check(module, "")
    assert hit is not None and hit.task_id == "HumanEval/12"


def test_a_copied_docstring_is_caught_whole_or_in_part(index, humaneval):
    problem = humaneval["HumanEval/12"]
    docstring = ast.get_docstring(ast.parse(problem.prompt).body[-1]) or ""
    whole = index.check("def f(x):\n    return x\n", docstring)
    assert whole is not None and (whole.task_id, whole.kind) == ("HumanEval/12", "exact_instruction")
    first_paragraph = docstring.split(">>>")[0]
    part = index.check("def f(x):\n    return x\n", first_paragraph.upper())  # case and spacing do not matter
    assert part is not None and (part.task_id, part.kind) == ("HumanEval/12", "ngram_instruction")


@pytest.mark.parametrize(
    ("code", "instruction"),
    [
        # HumanEval/53 is `return x + y`: four tokens are everybody's code, not a leak
        ("def add(a: int, b: int) -> int:\n    return a + b\n", "Return the sum of a and b."),
        # HumanEval/23 is `return len(string)`; HumanEval/29 is a one-line filter comprehension
        ("def length(s):\n    return len(s)\n", "Return the length of s."),
        ("def with_prefix(items, p):\n    return [x for x in items if x.startswith(p)]\n", "Keep items with prefix p."),
        # idioms shared by many problems
        ("def total(xs):\n    s = 0\n    for i in range(len(xs)):\n        s += xs[i]\n    return s\n", "Add up xs."),
        ("def evens(xs):\n    return [x for x in xs if x % 2 == 0]\n", "Keep the even numbers."),
        # unrelated code and prose
        (
            "def median_of_three(a, b, c):\n    return sorted([a, b, c])[1]\n",
            "Return the middle one of three numbers when they are put in order from small to large.",
        ),
    ],
)
def test_trivial_bodies_idioms_and_unrelated_rows_pass(index, code, instruction):
    assert index.check(code, instruction) is None


def test_normalisation_collapses_names_and_drops_docstrings_and_comments():
    first = code_tokens('def f(a, b):\n    """Doc."""\n    # note\n    return max(a, b) + a.real\n')
    second = code_tokens("def g(x, y): return max(x, y) + x.real")
    assert first == second
    assert "max" in first and "real" in first and "f" not in first
    assert text_tokens("Hello,   WORLD! >>> f(1)") == ("hello", "world", "f", "1")


def _problem(task_id: str, body: str, doc: str = "") -> Problem:
    prompt = f'def {task_id.lower()}(xs):\n    """{doc}"""\n'
    return Problem(task_id=task_id, prompt=prompt, canonical_solution=body, test="", entry_point=task_id.lower())


def test_ngrams_found_in_max_df_problems_are_idioms_not_evidence():
    idiom = "    out = []\n    for item in xs:\n        if item is not None:\n            out.append(item)\n"
    problems = [_problem(f"P{i}", idiom + f"    return sorted(out)[{i}::{i + 1}]\n") for i in range(3)]
    index = ContaminationIndex.build(problems, ngram_size=6, max_df=3)
    row = "def keep(xs):\n" + idiom + "    return out\n"
    assert index.check(row, "") is None  # the shared loop is in all three problems
    strict = ContaminationIndex.build(problems, ngram_size=6, max_df=10)
    assert strict.check(row, "") is not None  # counted as evidence when the idiom filter is off


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="ngram size"):
        ContaminationIndex(ngram_size=0)
    with pytest.raises(ValueError, match="threshold"):
        ContaminationIndex(threshold=1.5)
