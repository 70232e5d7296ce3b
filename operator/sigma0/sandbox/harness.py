"""The child's side: run the candidate's code, then answer the judge's questions about what it defined.

Standard library only. Everything here runs in the forked child, in the same process as the candidate's code, so
nothing here is trusted: the candidate may replace any of it. It does not matter. The child never says "passed"; it
only answers "what does calling this return?", and the judge (judge.py, in a process that never ran a line of the
candidate's code) decides. A child that lies can only claim values, and the only values that pass are the expected
ones.

Messages (wire.py framing, fd 3 in, fd 4 out):
    child → judge   ["ready", {name: value}]          after the code ran: every global it defined, as plain data
                                                       or handles (an object's handle carries its data, taken as
                                                       it crosses: type name and fields, as plain data)
                    ["fail", reason, detail]           the code did not compile or raised while it ran
    judge → child   ["call", ref, [args], {kwargs}]    call a handle; arguments are plain data or {"h": ref}
                    ["attr", ref, name]                read an attribute of a handle
                                                       (a lambda from an assert comes as {"L": [source, captured]}
                                                       and is made here; str.upper as {"M": ["str", "upper"]})
    child → judge   ["ok", value] | ["raise", type name, message]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NoReturn

REQUEST_FD = 3
REPLY_FD = 4
DATA_DEPTH = 20


def describe_error(error: BaseException) -> str:
    try:
        message = str(error)
    except BaseException:
        message = "<unprintable>"
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def _reason(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return "exit_before_asserts"
    if isinstance(error, MemoryError):
        return "memory"
    return "error"


def serve(code: str, *, wire: Any, exit: Callable[[int], NoReturn], builtins_module: Any) -> NoReturn:
    """Run `code`, report what it defined, then answer requests until the judge is done. Never returns."""
    handles: dict[int, Any] = {}

    module_type = type(builtins_module)

    def keep(value: Any) -> Any:
        if type(value) is module_type:
            return {"m": str(getattr(value, "__name__", "?"))}
        handles[id(value)] = value
        if callable(value):
            return {"h": id(value), "k": type(value).__qualname__, "c": True}
        # An object's data is taken now, as it is returned, before any more of the candidate's code runs: code that
        # runs later (the constructor of the expected value, say) cannot change what this answer was.
        return {"h": id(value), "k": type(value).__qualname__, "c": False, "s": state(value)}

    def encode(value: Any) -> Any:
        try:
            return wire.encode(value, keep)
        except (wire.NotPlain, RecursionError, ValueError):
            return keep(value)

    def function(tag: str, value: list[Any]) -> Any:
        """A lambda from an assert, made here with the values it captured; or a method of a builtin type by name."""
        if tag == "L":
            return eval(value[0], {**namespace, **value[1]})
        return getattr(getattr(builtins_module, value[0]), value[1])

    def arguments(data: Any) -> Any:
        return wire.decode(data, lambda ref, *_: handles[ref], _no_module, 0, function)

    def describe(value: Any, depth: int) -> Any:
        """A value that is not plain data, described as plain data: its type's name and its fields, recursively."""
        kind = type(value)
        if kind is module_type:
            return ["<module>", str(getattr(value, "__name__", "?"))]
        if callable(value) or depth > DATA_DEPTH:
            return ["<object>", kind.__qualname__, id(value)]
        fields: dict[str, Any] = {}
        with contextlib.suppress(AttributeError, TypeError):
            fields.update(object.__getattribute__(value, "__dict__"))
        for klass in kind.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                with contextlib.suppress(AttributeError, TypeError):
                    fields[name] = object.__getattribute__(value, name)
        inner = {str(name): item for name, item in fields.items()}
        return ["<object>", kind.__qualname__, wire.encode(inner, lambda item: describe(item, depth + 1), depth)]

    def state(value: Any) -> Any:
        try:
            return wire.encode(value, lambda item: describe(item, 0))
        except (wire.NotPlain, RecursionError, ValueError):
            return ["<object>", type(value).__qualname__, id(value)]

    try:
        body = compile(code, "<candidate>", "exec", dont_inherit=True)
    except BaseException as error:
        reason = "syntax" if isinstance(error, SyntaxError | ValueError) else "error"
        wire.send(REPLY_FD, ["fail", reason, describe_error(error)[:2000]])
        exit(1)
    namespace: dict[str, Any] = {"__name__": "candidate", "__builtins__": builtins_module}
    try:
        exec(body, namespace)
    except BaseException as error:
        wire.send(REPLY_FD, ["fail", _reason(error), "while running the code: " + describe_error(error)[:2000]])
        exit(1)
    wire.send(REPLY_FD, ["ready", {name: encode(value) for name, value in namespace.items() if name[:2] != "__"}])
    while True:
        try:
            request = wire.receive(REQUEST_FD)
        except EOFError:
            exit(0)
        op = request[0]
        try:
            if op == "call":
                target, args, kwargs = handles[request[1]], arguments(request[2]), arguments(request[3])
                reply = ["ok", encode(target(*args, **kwargs))]
            elif op == "attr":
                reply = ["ok", encode(getattr(handles[request[1]], request[2]))]
            else:
                exit(2)
        except BaseException as error:
            reply = ["raise", type(error).__name__, describe_error(error)[:2000]]
        wire.send(REPLY_FD, reply)


def _no_module(name: str) -> Any:
    raise ValueError(f"a module ({name}) cannot be an argument")
