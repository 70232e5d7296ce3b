"""The program run per candidate: the code that executes inside each forked child, around the candidate's code.

The worker (worker.py) executes this file once, before any candidate exists, into a namespace of its own whose
`__builtins__` is a copy of the builtins, and every forked child calls `run(...)` from there. So the functions below
resolve builtins (`type`, `isinstance`, `compile`, ...) and each other through dictionaries the candidate is never
handed: `builtins.isinstance = ...`, `import sigma0.sandbox.harness` or patching `__main__` changes nothing they
use. The report channel (`write`, the pipe's fd, the nonce) comes in as arguments captured before the fork.

What a run is: the candidate's code is executed (with ordinary builtins), then the trusted code, if any (a suite's
`check` function), then each check expression in turn, in a namespace copied from the candidate's but whose builtins
are a copy taken before any candidate ran. A check must evaluate to exactly `True`; the checks that `programs.py`
writes use the strict comparisons below, so an object whose `__eq__` always says yes, or whose `__bool__` lies,
makes the check fail instead of pass. After each check the harness writes `<nonce> step <i>` to the report pipe,
and after the last `<nonce> done <n>`; the worker counts a pass only when every step and the final done arrived, in
order, with the run's nonce, and the process then exited with status 0. Exiting early (`os._exit(0)`, `sys.exit()`,
SystemExit from anywhere) therefore never counts as a pass, whatever the exit status.

What a determined in-process attacker can still do: the nonce and the pipe must live in the child's memory for the
harness to use them, so code that goes looking for them (gc.get_objects(), frame objects reached through
sys._getframe or a traceback, closure cells, a trace function rewriting the harness's locals, ctypes poking at
memory) can forge a report or flip a result. That takes deliberate, conspicuous code written against this harness;
it buys nothing but a pass for one row, and it cannot reach beyond the child: each child runs as its own user (when
the worker is root), under resource limits, inside gVisor with no network, with only its own report pipe open. The
gate stops the cheats that happen by accident or by cheap tricks; the sandbox bounds what a deliberate one can do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NoReturn

CHECKER = "__sigma0__"
"""The name under which the checker is visible to the check expressions."""

FAILURE_REASONS = ("syntax", "assertion", "error", "memory", "exit_before_asserts")
"""The reasons the harness itself may report on a `fail` line."""

_SCALARS = (type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis))
_CONTAINERS = (list, tuple, set, frozenset, dict)
_ORDERING = ("<", "<=", ">", ">=")
_DEPTH = 200


class Untrusted(AssertionError):
    """A check whose answer would come from the candidate's own code (a custom __eq__, __bool__, __lt__...)."""


class _NotPlain(Exception):
    pass


def _kind(value: Any) -> str:
    return type(value).__qualname__


def is_plain(value: Any, limit: int = 1_000_000) -> bool:
    """True when `value` is built only from exact builtin data types, so comparing it runs no candidate code.

    Subclasses do not count: `type(x) is int`, not `isinstance`. Shared or cyclic references are visited once.
    """
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind not in _CONTAINERS:
            return False
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > limit:
            return False
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            stack.extend(item)
    return True


def plain_view(value: Any) -> Any:
    """`value` as exact builtin data, or raise _NotPlain.

    Plain data is returned as it is. An instance of a subclass of a builtin type (a namedtuple, a Counter, an IntEnum
    member, a list subclass with a lying __eq__) is read through the builtin type's own methods, called unbound
    (`list.copy(x)`, `dict.items(x)`, `int.__int__(x)`), which see its stored data and run none of the methods it
    overrides. Anything else (a class of the candidate's, a numpy array) is not plain.
    """
    if is_plain(value):
        return value
    return _view(value, 0)


def _view(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if depth > _DEPTH:
        raise _NotPlain
    if issubclass(kind, list):
        return [_view(item, depth + 1) for item in list.copy(value)]
    if issubclass(kind, tuple):
        return tuple(_view(item, depth + 1) for item in tuple.__getitem__(value, slice(None)))
    if issubclass(kind, dict):
        return {_view(key, depth + 1): _view(item, depth + 1) for key, item in dict.items(value)}
    if issubclass(kind, frozenset):
        return frozenset(_view(item, depth + 1) for item in frozenset.__iter__(value))
    if issubclass(kind, set):
        return {_view(item, depth + 1) for item in set.__iter__(value)}
    if issubclass(kind, int):
        return int.__int__(value)
    if issubclass(kind, float):
        return float.__float__(value)
    if issubclass(kind, complex):
        return complex.__complex__(value)
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, bytes):
        return bytes.__bytes__(value)
    raise _NotPlain


def _views(op: str, left: Any, right: Any) -> tuple[Any, Any] | None:
    """Both sides as plain data; None when both are of one non-builtin type, whose own comparison then decides."""
    try:
        return plain_view(left), plain_view(right)
    except _NotPlain:
        if type(left) is type(right) and not issubclass(type(left), _SCALARS + _CONTAINERS):
            return None
    except RecursionError:
        pass
    raise Untrusted(f"{_kind(left)} {op} {_kind(right)}: the answer would come from the candidate's own code")


def _boolean(op: str, left: Any, right: Any, result: Any) -> bool:
    if type(result) is not bool:
        raise Untrusted(f"{_kind(left)} {op} {_kind(right)} gave a {_kind(result)}, not a bool")
    return result


def _equal(left: Any, right: Any) -> bool:
    if left is None or right is None:
        return left is right
    views = _views("==", left, right)
    if views is None:
        return _boolean("==", left, right, left == right)
    return views[0] == views[1]


def _ordered(op: str, left: Any, right: Any) -> bool:
    views = _views(op, left, right)
    if views is not None:
        left, right = views
    if op == "<":
        return _boolean(op, left, right, left < right)
    if op == "<=":
        return _boolean(op, left, right, left <= right)
    if op == ">":
        return _boolean(op, left, right, left > right)
    return _boolean(op, left, right, left >= right)


def _contains(op: str, item: Any, container: Any) -> bool:
    try:
        found = plain_view(item) in plain_view(container)
    except (_NotPlain, RecursionError):
        raise Untrusted(f"`{op}` needs plain data on both sides, got {_kind(item)} and {_kind(container)}") from None
    return found if op == "in" else not found


def _pair(op: str, left: Any, right: Any) -> bool:
    if op == "is":
        return left is right
    if op == "is not":
        return left is not right
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in ("in", "not in"):
        return _contains(op, left, right)
    if op in _ORDERING:
        return _ordered(op, left, right)
    raise ValueError(f"unknown comparison {op!r}")


def compare(ops: tuple[str, ...], *operands: Any) -> bool:
    """A chained comparison `operands[0] ops[0] operands[1] ...`, each link decided strictly.

    Equality and order are decided on plain views of both sides (see `plain_view`), so builtin semantics decide them
    and nothing the candidate wrote runs; `None` compares by identity. Values of one non-builtin type (a dataclass,
    say) are compared by that type, and the answer must be a bool: a row that defines its own equality is taken at
    its word there. Mixing a non-builtin object with plain data (an always-equal object against an expected list)
    is a failure, not a question for the object.
    """
    return all(_pair(op, operands[index], operands[index + 1]) for index, op in enumerate(ops))


def truth(value: Any) -> bool:
    """The truth of a value, only when it is plain data; an object whose own code would decide it fails."""
    if value is True or value is False:
        return value
    try:
        return bool(plain_view(value))
    except (_NotPlain, RecursionError):
        raise Untrusted(f"the truth of a {_kind(value)} is decided by its own code") from None


def all_(values: Iterable[Any]) -> bool:
    return all(truth(value) for value in values)


def any_(values: Iterable[Any]) -> bool:
    return any(truth(value) for value in values)


def returned(_value: Any) -> bool:
    """For a check that passes by returning at all, like HumanEval's `check(candidate)`."""
    return True


class Checker:
    """What the check expressions call, as `__sigma0__.compare(...)` etc."""

    compare = staticmethod(compare)
    truth = staticmethod(truth)
    all = staticmethod(all_)
    any = staticmethod(any_)
    returned = staticmethod(returned)


def _describe(error: BaseException) -> str:
    try:
        message = str(error)
    except BaseException:
        message = "<unprintable>"
    return f"{_kind(error)}: {message}" if message else _kind(error)


def _reason(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return "exit_before_asserts"
    if isinstance(error, MemoryError):
        return "memory"
    if isinstance(error, AssertionError):
        return "assertion"
    return "error"


def run(
    job: dict[str, Any],
    *,
    report_fd: int,
    nonce: str,
    write: Callable[[int, bytes], int],
    exit: Callable[[int], NoReturn],
    builtins_module: Any,
    pristine_builtins: dict[str, Any],
) -> NoReturn:
    """Run one job {code, trusted, checks, labels} and report on `report_fd`; never returns."""
    tag = (nonce + " ").encode()

    def line(text: str) -> bytes:
        return tag + text.replace("\n", "\\n").encode("utf-8", "backslashreplace") + b"\n"

    def report(text: str) -> None:
        write(report_fd, line(text))

    def fail(reason: str, detail: str) -> NoReturn:
        try:
            report(f"fail {reason} {detail[:2000]}")
        finally:
            exit(1)

    labels = job["labels"]
    try:
        body = compile(job["code"], "<candidate>", "exec", dont_inherit=True)
        trusted = compile(job["trusted"], "<test>", "exec", dont_inherit=True) if job["trusted"] else None
        checks = [
            compile(source, f"<check {number}>", "eval", dont_inherit=True)
            for number, source in enumerate(job["checks"], start=1)
        ]
    except (SyntaxError, ValueError) as error:
        fail("syntax", _describe(error))
    except BaseException as error:
        fail(_reason(error), "while compiling: " + _describe(error))

    candidate: dict[str, Any] = {"__name__": "candidate", "__builtins__": builtins_module}
    try:
        exec(body, candidate)
    except BaseException as error:
        reason = _reason(error)
        fail("error" if reason == "assertion" else reason, "while running the code: " + _describe(error))

    namespace = dict(candidate)
    namespace["__builtins__"] = dict(pristine_builtins)
    namespace[CHECKER] = Checker
    if trusted is not None:
        try:
            exec(trusted, namespace)
        except BaseException as error:
            fail(_reason(error), "while running the test code: " + _describe(error))

    for index, check in enumerate(checks):
        try:
            result = eval(check, namespace)
        except BaseException as error:
            fail(_reason(error), f"check {index + 1} `{labels[index]}`: {_describe(error)}")
        if result is not True:
            fail("assertion", f"check {index + 1} failed: `{labels[index]}`")
        if index < len(checks) - 1:
            report(f"step {index}")
    last = line(f"step {len(checks) - 1}") if checks else b""
    write(report_fd, last + line(f"done {len(checks)}"))  # the last step and done in one write
    exit(0)
