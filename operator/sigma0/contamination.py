"""Eval-set contamination: does a training row overlap a problem of an evaluation suite?

A row that teaches the model an eval problem makes the eval gate measure memory instead of skill, so no training
row may overlap one: harvest excludes harvested rows, the dataset stage excludes base rows, both with this index
and the same options (`add_arguments`, `from_arguments`). Build the index once
(`ContaminationIndex.build(load_suite("humaneval"))`), then ask `check(code, instruction) -> Overlap | None` for
every row, or `check_pieces(codes, text)` for a row whose code comes in several pieces.

Two channels:
  code          the row's code against the body of every function in a problem's prompt + canonical solution
                (bodies only: a signature like `def add(x: int, y: int) -> int` is no evidence of anything)
  instruction   the row's instruction against the problem's docstring (the task as the model reads it)

Normalisation:
  code          `ast.parse`, docstrings dropped, every identifier that is not a builtin collapsed to `_` (so
                renamed variables, parameters and functions still match; attribute names, keyword names and
                literals stay), `ast.unparse`, `tokenize`: no comments, no layout, a statement ends in `;`.
  instruction   lower-case words (`[a-z0-9]+`): spacing, punctuation and `>>>` prompts do not matter.

Evidence, strongest first:
  exact         the problem's whole normalised body (or docstring) is a contiguous run of the row's tokens.
  ngram         the overlap coefficient of token n-grams, |row ∩ problem| / min(|row|, |problem|), is at least
                `threshold` with at least `min_shared` n-grams in common (a row holding a whole solution
                scores 1.0 however much else it holds). n-grams found in `max_df` or more problems are idioms
                (`for _ in range ( len ( _ ) ) :`) and count on neither side.
  Trivial bodies are no evidence: a body or docstring shorter than `min_exact_tokens` normalised tokens
  (`return x + y` is 5) is not indexed at all, so it can match neither way.

Defaults (n = 8, threshold 0.5, min_shared 3, min_exact_tokens 20, max_df 3) are the most sensitive setting
measured by examples/corpus/measure_contamination.py (HumanEval against itself, edited, and against the standard
library's functions) that flags under 0.5% of unrelated code: wrongly dropping a clean row costs one training
row, while keeping a leaked one corrupts the eval gate's evidence, so recall comes first. An 8-gram is most of
one logical line, so a hit needs more than a shared idiom.
What this catches: verbatim copies; copies with comments, docstrings, layout, or every variable, parameter and
function renamed; copies with a statement added; copies inside larger code; copied docstrings, whole or in
good part. What it misses: solutions under 20 tokens (22 of HumanEval's 164), re-implementations with another
structure (a loop rewritten as a comprehension), task descriptions paraphrased in other words.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import io
import re
import tokenize
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sigma0.suites import Problem, load_suite

DEFAULT_NGRAM_SIZE = 8
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SHARED = 3
DEFAULT_MIN_EXACT_TOKENS = 20
DEFAULT_MAX_DF = 3
DEFAULT_SUITES = ("humaneval",)

BUILTIN_NAMES = frozenset(dir(builtins))
_WORD = re.compile(r"[a-z0-9]+")
_SKIPPED_TOKENS = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}

Tokens = tuple[str, ...]


@dataclass(frozen=True)
class Overlap:
    """Why a row is taken to overlap an eval problem."""

    task_id: str
    kind: str  # "exact_code" | "exact_instruction" | "ngram_code" | "ngram_instruction"
    score: float  # 1.0 for exact hits; the overlap coefficient for n-gram hits
    shared: int  # tokens matched (exact) or n-grams in common (ngram)

    def record(self) -> dict[str, str | float | int]:
        """What a stage's report says about a row it left out for this overlap."""
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "score": self.score,
            "shared": self.shared,
            "detail": self.describe(),
        }

    def describe(self) -> str:
        if self.kind.startswith("exact"):
            what = self.kind.removeprefix("exact_")
            return f"{what} contains the normalised {_SIDE[what]} of {self.task_id} ({self.shared} tokens)"
        what = self.kind.removeprefix("ngram_")
        return (
            f"{what} shares {self.shared} token n-grams with the {_SIDE[what]} of {self.task_id} "
            f"(overlap {self.score:.2f})"
        )


_SIDE = {"code": "solution", "instruction": "docstring"}


# --- normalisation ---


class _Collapse(ast.NodeTransformer):
    """Drop docstrings and rename every user identifier to `_`; builtins, attributes and keywords stay."""

    def _drop_docstring(self, node: ast.AST) -> None:
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]

    def visit_Module(self, node: ast.Module) -> ast.AST:
        self._drop_docstring(node)
        return self.generic_visit(node)

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST:
        self._drop_docstring(node)
        node.name = "_"
        return self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in BUILTIN_NAMES:
            node.id = "_"
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = "_"
        return self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        if node.name:
            node.name = "_"
        return self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> ast.AST:
        node.names = ["_"] * len(node.names)
        return node

    visit_Nonlocal = visit_Global  # type: ignore[assignment]


def _tokens_of(source: str) -> Tokens:
    out: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in _SKIPPED_TOKENS:
            continue
        out.append(";" if token.type == tokenize.NEWLINE else token.string)
    return tuple(out)


def code_tokens(code: str | ast.AST) -> Tokens:
    """The normalised tokens of a module's source, or of a parsed tree (which is left unchanged)."""
    tree = ast.parse(code) if isinstance(code, str) else ast.parse(ast.unparse(code))
    return _tokens_of(ast.unparse(_Collapse().visit(tree)))


def text_tokens(text: str) -> Tokens:
    return tuple(_WORD.findall(text.lower()))


def ngrams(tokens: Sequence[str], size: int) -> set[Tokens]:
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    if not needle or len(needle) > len(haystack):
        return False
    sep = "\x00"
    return f"{sep}{sep.join(needle)}{sep}" in f"{sep}{sep.join(haystack)}{sep}"


def _solution_bodies(problem: Problem) -> list[Tokens]:
    """Normalised tokens of the body of each function in prompt + canonical solution (docstrings dropped)."""
    tree = ast.parse(problem.prompt + problem.canonical_solution)
    bodies = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = ast.Module(body=list(node.body), type_ignores=[])
            tokens = code_tokens(body)
            if tokens:
                bodies.append(tokens)
    return bodies


def _docstring(problem: Problem) -> str:
    tree = ast.parse(problem.prompt + problem.canonical_solution)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == problem.entry_point:
            return ast.get_docstring(node) or ""
    return ""


# --- the index ---


@dataclass
class _Channel:
    """One channel's index: every n-gram → the problems holding it, and the runs exact matching looks for."""

    size: int
    min_exact_tokens: int
    max_df: int
    exact: dict[str, list[Tokens]] = field(default_factory=dict)  # task_id → runs to look for verbatim
    postings: dict[Tokens, set[str]] = field(default_factory=dict)
    generic: set[Tokens] = field(default_factory=set)  # idioms: in `max_df` or more problems
    sizes: dict[str, int] = field(default_factory=dict)  # task_id → informative (non-generic) n-grams
    unposted: set[str] = field(default_factory=set)  # tasks with an exact run too short to have an n-gram

    def add(self, task_id: str, runs: Iterable[Tokens]) -> None:
        runs = [run for run in runs if len(run) >= self.min_exact_tokens]  # shorter ones are trivial
        self.exact[task_id] = runs
        if any(len(run) < self.size for run in runs):
            self.unposted.add(task_id)
        for gram in set().union(*(ngrams(run, self.size) for run in runs)):
            self.postings.setdefault(gram, set()).add(task_id)

    def seal(self) -> None:
        self.generic = {gram for gram, tasks in self.postings.items() if len(tasks) >= self.max_df}
        counts: Counter[str] = Counter()
        for gram, tasks in self.postings.items():
            if gram not in self.generic:
                counts.update(tasks)
        self.sizes = {task: counts[task] for task in self.exact}

    def check(self, tokens: Tokens, kind: str, threshold: float, min_shared: int) -> Overlap | None:
        grams = ngrams(tokens, self.size)
        # An exact run at least n tokens long shares its n-grams with the row: the postings name its problem.
        candidates = {task for gram in grams for task in self.postings.get(gram, ())} | self.unposted
        for task in sorted(candidates):
            for run in self.exact[task]:
                if _contains(tokens, run):
                    return Overlap(task, f"exact_{kind}", 1.0, len(run))
        informative = grams - self.generic
        shared: Counter[str] = Counter()
        for gram in informative:
            shared.update(self.postings.get(gram, ()))
        best: Overlap | None = None
        for task, count in sorted(shared.items()):
            score = count / min(len(informative), self.sizes[task])
            if count >= min_shared and score >= threshold and (best is None or score > best.score):
                best = Overlap(task, f"ngram_{kind}", round(score, 3), count)
        return best


class ContaminationIndex:
    """N-gram and exact-run index of an eval suite's solutions and docstrings. Build once, check many rows."""

    def __init__(
        self,
        ngram_size: int = DEFAULT_NGRAM_SIZE,
        threshold: float = DEFAULT_THRESHOLD,
        min_shared: int = DEFAULT_MIN_SHARED,
        min_exact_tokens: int = DEFAULT_MIN_EXACT_TOKENS,
        max_df: int = DEFAULT_MAX_DF,
    ) -> None:
        if ngram_size < 1:
            raise ValueError(f"ngram size must be at least 1, got {ngram_size}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"ngram threshold must be in (0, 1], got {threshold}")
        self.ngram_size = ngram_size
        self.threshold = threshold
        self.min_shared = min_shared
        self._code = _Channel(ngram_size, min_exact_tokens, max_df)
        self._text = _Channel(ngram_size, min_exact_tokens, max_df)
        self.task_ids: list[str] = []

    @classmethod
    def build(
        cls,
        problems: Iterable[Problem],
        ngram_size: int = DEFAULT_NGRAM_SIZE,
        threshold: float = DEFAULT_THRESHOLD,
        min_shared: int = DEFAULT_MIN_SHARED,
        min_exact_tokens: int = DEFAULT_MIN_EXACT_TOKENS,
        max_df: int = DEFAULT_MAX_DF,
    ) -> ContaminationIndex:
        index = cls(ngram_size, threshold, min_shared, min_exact_tokens, max_df)
        for problem in problems:
            index.task_ids.append(problem.task_id)
            index._code.add(problem.task_id, _solution_bodies(problem))
            index._text.add(problem.task_id, [text_tokens(_docstring(problem))])
        index._code.seal()
        index._text.seal()
        return index

    def check(self, code: str, instruction: str = "") -> Overlap | None:
        """The strongest overlap of this row with any indexed problem, or None. `code` must parse."""
        return self.check_pieces([code], instruction)

    def check_pieces(self, codes: Iterable[str], text: str = "") -> Overlap | None:
        """The strongest overlap of any of these pieces of code (each must parse) or of this text with any
        indexed problem, or None: for a row whose code is not one program (prose around code blocks)."""
        hits = [self._code.check(code_tokens(code), "code", self.threshold, self.min_shared) for code in codes]
        hits.append(self._text.check(text_tokens(text), "instruction", self.threshold, self.min_shared))
        found = [hit for hit in hits if hit is not None]
        if not found:
            return None
        return max(found, key=lambda hit: (hit.kind.startswith("exact"), hit.score, hit.shared))


# --- the stages' options: harvest and dataset check their rows alike ---


def add_arguments(parser: argparse.ArgumentParser, rows: str) -> None:
    """`--exclude-suite` (repeatable; default humaneval), `--ngram-size`, `--ngram-threshold`: which suites `rows`
    may not overlap, and how closely. There is no option to check nothing."""
    parser.add_argument(
        "--exclude-suite",
        action="append",
        help=f"eval suite whose problems no {rows} may overlap (repeatable; default: {', '.join(DEFAULT_SUITES)})",
    )
    parser.add_argument(
        "--ngram-size",
        type=int,
        default=DEFAULT_NGRAM_SIZE,
        help=f"tokens per n-gram in the overlap check (default {DEFAULT_NGRAM_SIZE}, most of a line of code)",
    )
    parser.add_argument(
        "--ngram-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"overlap coefficient of n-grams at which a row counts as an eval copy (default {DEFAULT_THRESHOLD})",
    )


def from_arguments(args: argparse.Namespace) -> tuple[ContaminationIndex, dict[str, Any]]:
    """The index those options ask for, and the settings a report records. A bad option raises ValueError
    naming it."""
    suites = list(args.exclude_suite or DEFAULT_SUITES)
    if args.ngram_size < 1:
        raise ValueError(f"--ngram-size must be at least 1, got {args.ngram_size}")
    if not 0.0 < args.ngram_threshold <= 1.0:
        raise ValueError(f"--ngram-threshold must be in (0, 1], got {args.ngram_threshold}")
    problems: list[Problem] = []
    for suite in suites:
        try:
            problems.extend(load_suite(suite))
        except (ValueError, OSError) as error:
            raise ValueError(f"--exclude-suite {suite}: {error}") from None
    index = ContaminationIndex.build(problems, ngram_size=args.ngram_size, threshold=args.ngram_threshold)
    settings = {"exclude_suites": suites, "ngram_size": args.ngram_size, "ngram_threshold": args.ngram_threshold}
    return index, settings
