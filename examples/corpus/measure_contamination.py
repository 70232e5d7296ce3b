"""Measures the HumanEval contamination check: what it catches, and what it wrongly flags.

    python examples/corpus/measure_contamination.py            # the defaults
    python examples/corpus/measure_contamination.py --sweep    # n-gram sizes 8/10/12 x thresholds 0.5/0.6/0.7

Should be caught (each HumanEval problem, checked against the index of all 164):
  renamed        prompt + canonical solution, docstring dropped, every variable/parameter/function renamed
  edited         the same, with one extra statement inserted in the middle of the entry point's body
  docstring      the problem's whole prompt given as the instruction (code: `pass`)
  first para     only the docstring's first paragraph (before any example) as the instruction
Should not be caught:
  stdlib         every top-level function of the Python standard library's own .py files (code + docstring)
  demo           the demo corpus's rows that are not meant to be excluded (examples/corpus/expected.json)
  stdlib as base the same functions as the dataset stage checks a base row: prompt = signature + docstring,
                 completion = body (sigma0.stages.dataset.code_pieces, words of prompt and completion)
"""

from __future__ import annotations

import ast
import builtins
import json
import sys
import sysconfig
import time
from pathlib import Path

from sigma0.candidates import RowError, normalise_row, parse_source
from sigma0.contamination import ContaminationIndex
from sigma0.stages.dataset import code_pieces, to_prompt_completion
from sigma0.suites import Problem, load_suite

HERE = Path(__file__).resolve().parent


class _Rename(ast.NodeTransformer):
    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def _new(self, name: str) -> str:
        return name if name in dir(builtins) else self.names.setdefault(name, f"renamed_{len(self.names)}")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._new(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self._new(node.arg)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self._new(node.name)
        if ast.get_docstring(node) is not None:
            node.body = node.body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node


def renamed(problem: Problem, edit: bool = False) -> str:
    tree = ast.parse(problem.prompt + problem.canonical_solution)
    if edit:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == problem.entry_point:
                node.body.insert(len(node.body) // 2 + 1, ast.parse("log = []").body[0])
    return ast.unparse(_Rename().visit(tree))


def first_paragraph(problem: Problem) -> str:
    tree = ast.parse(problem.prompt + problem.canonical_solution)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == problem.entry_point:
            text = ast.get_docstring(node) or ""
            for marker in (">>>", "For example", "Example", "Examples"):
                text = text.split(marker)[0]
            return text
    return ""


def stdlib_functions() -> list[tuple[str, str, str]]:
    functions = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                functions.append((f"{path.name}:{node.name}", ast.unparse(node), ast.get_docstring(node) or ""))
    return functions


def as_base_rows(functions: list[tuple[str, str, str]]) -> list[tuple[str, list[str], str]]:
    """Each function as a HumanEval-shaped base row, in the pieces and words the dataset stage checks."""
    rows = []
    for name, code, docstring in functions:
        prompt, completion = to_prompt_completion(code, name.split(":")[1], docstring or name)
        rows.append((name, code_pieces(prompt, completion), f"{prompt}\n{completion}"))
    return rows


def demo_rows() -> list[tuple[str, str, str]]:
    expected = json.loads((HERE / "expected.json").read_text())["rows"]
    rows = []
    for name in ("agent_corpus.json", "tasks.jsonl"):
        for raw in parse_source((HERE / name).read_text(), name)[1]:
            if expected[raw.where].startswith("excluded"):
                continue
            try:
                candidate = normalise_row(raw)
            except RowError:
                continue
            rows.append((raw.where, candidate.code, candidate.instruction))
    return rows


def measure(problems: list[Problem], negatives: dict[str, list[tuple[str, list[str], str]]], **settings: float) -> None:
    started = time.perf_counter()
    index = ContaminationIndex.build(problems, **settings)  # type: ignore[arg-type]
    built = time.perf_counter() - started

    def caught(rows: list[tuple[str, str, str]]) -> int:
        return sum((hit := index.check(code, text)) is not None and hit.task_id == task for task, code, text in rows)

    positives = {
        "renamed": [(p.task_id, renamed(p), "") for p in problems],
        "edited": [(p.task_id, renamed(p, edit=True), "") for p in problems],
        "docstring": [(p.task_id, "pass", p.prompt) for p in problems],
        "first para": [(p.task_id, "pass", first_paragraph(p)) for p in problems],
    }
    line = ", ".join(f"{key} {caught(rows)}/{len(rows)}" for key, rows in positives.items())
    started = time.perf_counter()
    flagged = {
        key: [(name, hit) for name, codes, text in rows if (hit := index.check_pieces(codes, text))]
        for key, rows in negatives.items()
    }
    elapsed = time.perf_counter() - started
    line += "; wrongly flagged: " + ", ".join(
        f"{key} {len(flagged[key])}/{len(rows)}" for key, rows in negatives.items()
    )
    print(f"{settings}: {line}  (build {built:.2f} s, {elapsed:.2f} s for the negatives)")
    for key, hits in flagged.items():
        for name, hit in hits:
            print(f"    {key} {name}: {hit.describe()}")


def main() -> int:
    problems = load_suite("humaneval")
    stdlib = stdlib_functions()
    negatives = {
        "stdlib": [(name, [code], text) for name, code, text in stdlib],
        "demo": [(name, [code], text) for name, code, text in demo_rows()],
        "stdlib as base": as_base_rows(stdlib),
    }
    if "--sweep" in sys.argv[1:]:
        for size in (8, 10, 12):
            for threshold in (0.5, 0.6, 0.7):
                measure(problems, negatives, ngram_size=size, threshold=threshold)
    else:
        measure(problems, negatives)
    return 0


if __name__ == "__main__":
    sys.exit(main())
