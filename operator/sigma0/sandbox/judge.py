"""The judge: decides whether a candidate passed, in a process that never runs a line of the candidate's code.

Standard library only (the worker loads it inside a bare sandbox image; `sigma0.sandbox.programs` imports it for the
static checks). The candidate's code runs in a forked child (harness.py) that can only answer questions. Here, every
name the candidate defined is a `Handle`: calling one asks the child to call the real function and send the result
back as plain data (wire.py). What the checks compute from those results, they compute here, with the judge's own
builtins and modules, on builtin data, so nothing the candidate wrote runs in the judge: a patched `math.isclose`, a
lying `__eq__` or `__bool__`, or a forged report in the child's memory changes nothing the judge sees. A candidate
object stays in the child; two handles are equal when their data are (type name and fields, as plain data), never
by their methods; a handle's truth is not decided at all.

Two kinds of checks:
- A suite's test code (HumanEval's `check(candidate)`) is trusted and runs here as it is, with handles in place of
  the candidate's names.
- Harvested asserts are untrusted text. They are evaluated by `Evaluator`, which walks the expression's tree and
  allows only: literals and displays, names, subscripts and slices, comparisons, boolean, unary and arithmetic
  operators, conditional expressions, comprehensions and generator expressions, f-strings, calls of the candidate's
  names, of `BUILTINS` and of `MODULES`' functions, the public methods of plain data and of its types, and lambdas:
  one passed to the candidate's function is shipped to the child as source (what the function does with it is its
  answer, compared here like any other); one called here goes through this evaluator. `validate` refuses the rest
  before anything runs (reason `unsupported_asserts`). Sizes are guarded (`**`, `*`, `<<`, `range`) so that an
  assert cannot stall the judge in one C call; the worker's timer bounds the rest.

Then mutation (`vacuous`): a row that passed is evaluated again with the function under test replaced by trivial
stand-ins (returns None, True, False, 0, "", [], its first argument; raises). If every assert holds for one of them,
the asserts cannot tell the function from it, and the row is dropped as `vacuous_asserts`.

What no judge can tell: a function that returns the asserted outputs for the asserted inputs (memorised) is, at those
inputs, the correct function.
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import re
import string
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

# --- what a candidate's answers become ------------------------------------------------------------------------------


class Untrusted(AssertionError):
    """A check whose answer would come from the candidate's own code (the truth or order of its objects)."""


class Unsupported(Exception):
    """An assert that uses something the restricted evaluator does not allow."""


class CandidateRaised(Exception):
    """The candidate's function raised; `kind` is the exception's type name in the child."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BadReply(Exception):
    """A reply the child could not have meant (the harness never writes it): the child was tampered with."""


class CandidateExited(BaseException):
    """The candidate raised SystemExit (or another exit) inside a call: it left before the checks were done."""


Ask = Callable[[list[Any]], Any]
"""Sends one request to the child and returns its decoded reply (["ok", value] or ["raise", kind, message])."""

_EXITS = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")


class Handle:
    """A value that stayed in the candidate's child: a function, a class, or an object of the candidate's."""

    __slots__ = ("_ask", "_callable", "_kind", "_ref", "_state")

    def __init__(self, ask: Ask, ref: int, kind: str, callable_: bool, state: Any = None) -> None:
        self._ask, self._ref, self._kind, self._callable = ask, ref, kind, callable_
        self._state = state  # an object's data, taken in the child as it was returned; None for a callable

    def __repr__(self) -> str:
        return f"<candidate {self._kind}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._callable:
            raise TypeError(f"'{self._kind}' object is not callable")
        return self._ask(["call", self._ref, list(args), kwargs])

    def attribute(self, name: str) -> Any:
        return self._ask(["attr", self._ref, name])

    def __eq__(self, other: object) -> bool:
        """Two objects of the candidate's are equal when their data are; functions and classes only to themselves."""
        if isinstance(other, Handle):
            if self._callable or other._callable:
                return self._ref == other._ref
            return self._kind == other._kind and self._state == other._state
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self._kind)

    def __bool__(self) -> bool:
        raise Untrusted(f"the truth of a {self._kind} would be decided by its own code")

    def _own_code(self, *_: Any) -> Any:
        raise Untrusted(f"comparing a {self._kind} by order or membership would run its own code")

    __lt__ = __le__ = __gt__ = __ge__ = __contains__ = _own_code


def raise_reply(reply: Any, exceptions: bool) -> NoReturn:
    """Raise what a reply that is not ["ok", value] says: for ["raise", kind, message], with `exceptions` a builtin
    exception type as itself (so that trusted suite code can catch a ValueError), otherwise CandidateRaised; an exit
    raised inside the call is CandidateExited either way. Anything else is BadReply."""
    if type(reply) is not list or not reply:
        raise BadReply("a reply that is not a message")
    if reply[0] == "raise" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
        kind, message = reply[1], reply[2]
        if kind in _EXITS:
            raise CandidateExited(f"{kind} inside a call: {message}")
        found = getattr(builtins, kind, None)
        if exceptions and isinstance(found, type) and issubclass(found, Exception):
            raise found(message)
        raise CandidateRaised(kind, message)
    raise BadReply(f"an unexpected reply: {str(reply)[:80]}")


# --- the restricted evaluator -----------------------------------------------------------------------------------------

SEQUENCE_CAP = 10_000_000
"""The longest str, bytes, list, tuple or range an assert may build."""

BITS_CAP = 1 << 20
"""The largest int (in bits) an assert may build with `**` or `<<`."""


def _guard_length(length: int) -> None:
    if length > SEQUENCE_CAP:
        raise Unsupported(f"a sequence of {length} items is over the cap of {SEQUENCE_CAP}")


def _guard_bits(bits: int) -> None:
    if bits > BITS_CAP:
        raise Unsupported(f"an int of about {bits} bits is over the cap of {BITS_CAP}")


def _power(base: Any, exponent: Any, modulo: Any = None) -> Any:
    integers = type(base) in (int, bool) and type(exponent) in (int, bool)
    if modulo is None and integers and exponent > 0 and abs(base) > 1:
        _guard_bits(int(exponent) * abs(base).bit_length())
    return pow(base, exponent) if modulo is None else pow(base, exponent, modulo)


def _multiply(left: Any, right: Any) -> Any:
    for sequence, count in ((left, right), (right, left)):
        if type(sequence) in (str, bytes, list, tuple) and type(count) in (int, bool):
            _guard_length(len(sequence) * max(int(count), 0))
    return left * right


def _shift(left: Any, right: Any) -> Any:
    if type(left) in (int, bool) and type(right) in (int, bool) and left:
        _guard_bits(abs(left).bit_length() + int(right))
    return left << right


def _range(*args: Any) -> range:
    value = range(*args)
    _guard_length(len(value))
    return value


def _type(*args: Any) -> type:
    if len(args) != 1:
        raise Unsupported("type() with more than one argument makes a class")
    return type(args[0])


def _format(value: Any, spec: str = "") -> str:
    return format(value, spec)


def words(text: str) -> list[str]:
    """The names in a space-separated list (ruff would have literal lists of them, one per line)."""
    return text.split()


BUILTINS: dict[str, Any] = {
    name: getattr(builtins, name)
    for name in words(
        "abs all any ascii bin bool bytes callable chr complex dict divmod enumerate filter float frozenset hash hex "
        "int isinstance len list map max min oct ord repr reversed round set slice sorted str sum tuple zip"
    )
} | {"pow": _power, "range": _range, "type": _type, "format": _format}
"""The builtins an assert may call: pure functions of their arguments, computed in the judge."""

MODULES: dict[str, dict[str, Any]] = {
    "math": {
        name: getattr(math, name)
        for name in words(
            "pi e tau inf nan sqrt isqrt floor ceil trunc fabs isclose isnan isinf isfinite log log2 log10 log1p exp "
            "expm1 sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh hypot degrees radians copysign "
            "fmod remainder gcd lcm fsum dist modf frexp ldexp erf erfc"
        )
    }
    | {"pow": math.pow},
    "string": {
        name: getattr(string, name)
        for name in words(
            "ascii_letters ascii_lowercase ascii_uppercase digits hexdigits octdigits punctuation printable "
            "whitespace capwords"
        )
    },
    "re": {
        name: getattr(re, name)
        for name in words(
            "match fullmatch search findall finditer sub subn split escape compile IGNORECASE I MULTILINE M DOTALL S "
            "ASCII A VERBOSE X"
        )
    },
}
"""The modules an assert may use, and which of their names: the judge's own modules, never the candidate's."""


class _Module:
    """An allowed module as an assert sees it: only its allowed names."""

    __slots__ = ("name", "names")

    def __init__(self, name: str, names: dict[str, Any]) -> None:
        self.name, self.names = name, names


_MODULES = {name: _Module(name, names) for name, names in MODULES.items()}

_PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, range, slice)
_REGEX = (re.Pattern, re.Match)
_PLAIN_TYPES = (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
"""Types whose public methods an assert may name (`str.upper`): their functions are the same in every process."""
_REFUSED_METHODS = frozenset({"format", "format_map"})  # format fields reach attributes: `"{0.__class__}"`

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
    ast.LShift: _shift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda item, container: item in container,
    ast.NotIn: lambda item, container: item not in container,
}
_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple, ast.Set, ast.Dict,
    ast.Subscript, ast.Slice, ast.Compare, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.BinOp, ast.IfExp,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue,
    ast.Call, ast.keyword, ast.Starred, ast.Attribute, ast.Lambda, ast.arguments, ast.arg,
    *_BINARY, *_UNARY, *_COMPARE,
)  # fmt: skip
_BUILTIN_NAMES = frozenset(dir(builtins))


def validate(tree: ast.AST) -> str | None:
    """Why the restricted evaluator refuses this expression, or None when every part of it is allowed."""
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            return f"{type(node).__name__} is not allowed in an assert"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f"the attribute {node.attr!r} is not allowed (no private or special attributes)"
        if isinstance(node, ast.Attribute) and node.attr in _REFUSED_METHODS:
            return f"{node.attr}() is not allowed (its fields reach attributes); use an f-string"
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                return f"the name {node.id!r} is not allowed"
            if node.id in _BUILTIN_NAMES and node.id not in BUILTINS and node.id not in ("True", "False", "None"):
                return f"the builtin {node.id!r} is not allowed in an assert"
        if isinstance(node, ast.comprehension) and node.is_async:
            return "async comprehensions are not allowed"
        if isinstance(node, ast.comprehension) and not _targets_are_names(node.target):
            return "a comprehension may only assign to names"
    return None


def _targets_are_names(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    return isinstance(target, ast.Tuple | ast.List) and all(_targets_are_names(item) for item in target.elts)


def truth(value: Any) -> bool:
    """The truth of a value the judge holds: builtin data decides as Python does, a handle not at all."""
    return bool(value)  # Handle.__bool__ raises Untrusted


class Evaluator:
    """Evaluates one validated assert expression. `names(name)` resolves a name that is not a builtin or module the
    assert may use: the candidate's globals, or a stand-in for the function under test."""

    def __init__(self, names: Callable[[str], Any], function: str) -> None:
        self.names = names
        self.function = function

    def evaluate(self, tree: ast.Expression) -> Any:
        return self.value(tree.body, ())

    def value(self, node: ast.expr, scopes: tuple[dict[str, Any], ...]) -> Any:
        method = getattr(self, "on_" + type(node).__name__, None)
        if method is None:
            raise Unsupported(f"{type(node).__name__} is not allowed in an assert")
        return method(node, scopes)

    def values(self, nodes: list[ast.expr], scopes: tuple[dict[str, Any], ...]) -> Iterator[Any]:
        for node in nodes:
            if isinstance(node, ast.Starred):
                yield from self.value(node.value, scopes)
            else:
                yield self.value(node, scopes)

    def on_Constant(self, node: ast.Constant, scopes: tuple[dict[str, Any], ...]) -> Any:
        return node.value

    def on_Name(self, node: ast.Name, scopes: tuple[dict[str, Any], ...]) -> Any:
        name = node.id
        for scope in reversed(scopes):
            if name in scope:
                return scope[name]
        if name == self.function:
            return self.names(name)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in _MODULES:
            return _MODULES[name]
        if name.startswith("__") or name in _BUILTIN_NAMES:
            raise Unsupported(f"the name {name!r} is not allowed in an assert")
        return self.names(name)

    def on_List(self, node: ast.List, scopes: tuple[dict[str, Any], ...]) -> Any:
        return list(self.values(node.elts, scopes))

    def on_Tuple(self, node: ast.Tuple, scopes: tuple[dict[str, Any], ...]) -> Any:
        return tuple(self.values(node.elts, scopes))

    def on_Set(self, node: ast.Set, scopes: tuple[dict[str, Any], ...]) -> Any:
        return set(self.values(node.elts, scopes))

    def on_Dict(self, node: ast.Dict, scopes: tuple[dict[str, Any], ...]) -> Any:
        result: dict[Any, Any] = {}
        for key, item in zip(node.keys, node.values, strict=True):
            if key is None:
                result.update(self.value(item, scopes))
            else:
                result[self.value(key, scopes)] = self.value(item, scopes)
        return result

    def on_Subscript(self, node: ast.Subscript, scopes: tuple[dict[str, Any], ...]) -> Any:
        container = self.value(node.value, scopes)
        if not isinstance(container, _PLAIN):
            raise Unsupported(f"subscripting a {type(container).__name__} is not allowed in an assert")
        return container[self.value(node.slice, scopes)]

    def on_Slice(self, node: ast.Slice, scopes: tuple[dict[str, Any], ...]) -> Any:
        bounds = (node.lower, node.upper, node.step)
        return slice(*(None if bound is None else self.value(bound, scopes) for bound in bounds))

    def on_Compare(self, node: ast.Compare, scopes: tuple[dict[str, Any], ...]) -> Any:
        left = self.value(node.left, scopes)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.value(right_node, scopes)
            if not truth(_COMPARE[type(op)](left, right)):
                return False
            left = right
        return True

    def on_BoolOp(self, node: ast.BoolOp, scopes: tuple[dict[str, Any], ...]) -> Any:
        result: Any = None
        for item in node.values:
            result = self.value(item, scopes)
            if truth(result) is isinstance(node.op, ast.Or):
                return result
        return result

    def on_UnaryOp(self, node: ast.UnaryOp, scopes: tuple[dict[str, Any], ...]) -> Any:
        operand = self.value(node.operand, scopes)
        if isinstance(node.op, ast.Not):
            return not truth(operand)
        return _UNARY[type(node.op)](operand)

    def on_BinOp(self, node: ast.BinOp, scopes: tuple[dict[str, Any], ...]) -> Any:
        left, right = self.value(node.left, scopes), self.value(node.right, scopes)
        if isinstance(left, Handle) or isinstance(right, Handle):
            raise Untrusted("arithmetic on a candidate's object would run its own code")
        return _BINARY[type(node.op)](left, right)

    def on_IfExp(self, node: ast.IfExp, scopes: tuple[dict[str, Any], ...]) -> Any:
        return self.value(node.body if truth(self.value(node.test, scopes)) else node.orelse, scopes)

    def on_JoinedStr(self, node: ast.JoinedStr, scopes: tuple[dict[str, Any], ...]) -> Any:
        return "".join(str(self.value(part, scopes)) for part in node.values)

    def on_FormattedValue(self, node: ast.FormattedValue, scopes: tuple[dict[str, Any], ...]) -> Any:
        value = self.value(node.value, scopes)
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion == ord("s"):
            value = str(value)
        elif node.conversion == ord("a"):
            value = ascii(value)
        spec = "" if node.format_spec is None else self.value(node.format_spec, scopes)
        return format(value, spec)

    def on_Attribute(self, node: ast.Attribute, scopes: tuple[dict[str, Any], ...]) -> Any:
        owner, name = self.value(node.value, scopes), node.attr
        if name.startswith("_") or name in _REFUSED_METHODS:
            raise Unsupported(f"the attribute {name!r} is not allowed in an assert")
        if isinstance(owner, _Module):
            if name not in owner.names:
                raise Unsupported(f"{owner.name}.{name} is not allowed in an assert")
            return owner.names[name]
        if isinstance(owner, Handle):
            return owner.attribute(name)
        if owner in _PLAIN_TYPES and name in vars(owner):  # its own methods (str.upper), not type's (int.mro)
            return getattr(owner, name)
        if type(owner) in _PLAIN or isinstance(owner, _REGEX):
            return getattr(owner, name)
        raise Unsupported(f"attributes of a {type(owner).__name__} are not allowed in an assert")

    def on_Call(self, node: ast.Call, scopes: tuple[dict[str, Any], ...]) -> Any:
        function = self.value(node.func, scopes)
        args = list(self.values(node.args, scopes))
        kwargs: dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                kwargs.update(self.value(keyword.value, scopes))
            else:
                kwargs[keyword.arg] = self.value(keyword.value, scopes)
        if not (isinstance(function, Handle) or _allowed_callable(function)):
            raise Unsupported(f"calling a {type(function).__name__} is not allowed in an assert")
        return function(*args, **kwargs)

    def comprehension(
        self, generators: list[ast.comprehension], scopes: tuple[dict[str, Any], ...]
    ) -> Iterator[tuple[dict[str, Any], ...]]:
        """Every scope the comprehension's element is evaluated in, in order."""
        first, rest = generators[0], generators[1:]
        for item in self.value(first.iter, scopes):
            scope: dict[str, Any] = {}
            _assign(first.target, item, scope)
            inner = (*scopes, scope)
            if all(truth(self.value(condition, inner)) for condition in first.ifs):
                if rest:
                    yield from self.comprehension(rest, inner)
                else:
                    yield inner

    def on_ListComp(self, node: ast.ListComp, scopes: tuple[dict[str, Any], ...]) -> Any:
        return [self.value(node.elt, inner) for inner in self.comprehension(node.generators, scopes)]

    def on_SetComp(self, node: ast.SetComp, scopes: tuple[dict[str, Any], ...]) -> Any:
        return {self.value(node.elt, inner) for inner in self.comprehension(node.generators, scopes)}

    def on_DictComp(self, node: ast.DictComp, scopes: tuple[dict[str, Any], ...]) -> Any:
        return {
            self.value(node.key, inner): self.value(node.value, inner)
            for inner in self.comprehension(node.generators, scopes)
        }

    def on_GeneratorExp(self, node: ast.GeneratorExp, scopes: tuple[dict[str, Any], ...]) -> Any:
        return (self.value(node.elt, inner) for inner in self.comprehension(node.generators, scopes))

    def on_Lambda(self, node: ast.Lambda, scopes: tuple[dict[str, Any], ...]) -> Any:
        """A lambda is shipped to the child as source, with the values it captures from comprehensions here."""
        used = {child.id for child in ast.walk(node.body) if isinstance(child, ast.Name)}
        captured: dict[str, Any] = {}
        for scope in scopes:
            captured.update((name, value) for name, value in scope.items() if name in used)

        def call(*args: Any) -> Any:
            positional = node.args
            if positional.vararg or positional.kwarg or positional.kwonlyargs or positional.defaults:
                raise Unsupported("a lambda called in the judge takes plain positional parameters only")
            names = [parameter.arg for parameter in positional.posonlyargs + positional.args]
            if len(args) != len(names):
                raise TypeError(f"<lambda> takes {len(names)} arguments, got {len(args)}")
            return self.value(node.body, (*scopes, dict(zip(names, args, strict=True))))

        return Shipped(ast.unparse(node), captured, call)


class Shipped:
    """A lambda from an assert. Passed to the candidate's code, it is shipped to the child as source and runs there
    (what the candidate's function does with it is the candidate's answer, compared here like any other); called
    here (`sorted(..., key=lambda v: -v)`), its body goes through the restricted evaluator like the rest."""

    __slots__ = ("call", "captured", "source")

    def __init__(self, source: str, captured: dict[str, Any], call: Callable[..., Any]) -> None:
        self.source, self.captured, self.call = source, captured, call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise Unsupported("a lambda called in the judge takes positional arguments only")
        return self.call(*args)

    def __repr__(self) -> str:
        return self.source


def _assign(target: ast.expr, value: Any, scope: dict[str, Any]) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
        return
    assert isinstance(target, ast.Tuple | ast.List)  # validate() allows nothing else
    items = list(value)
    if len(items) != len(target.elts):
        raise ValueError(f"cannot unpack {len(items)} values into {len(target.elts)} names")
    for element, item in zip(target.elts, items, strict=True):
        _assign(element, item, scope)


_ALLOWED_FUNCTIONS = frozenset(id(function) for function in BUILTINS.values()) | frozenset(
    id(value) for names in MODULES.values() for value in names.values() if callable(value)
)
_BUILTIN_METHOD = type(len)
_METHOD_WRAPPER = type("".__str__)
_METHOD_DESCRIPTOR = type(str.upper)
_CLASS_METHOD_DESCRIPTOR = type(dict.__dict__["fromkeys"])


def _allowed_callable(function: Any) -> bool:
    """An allowed builtin or module function, a stand-in, or a public method bound to plain data or a regex."""
    if id(function) in _ALLOWED_FUNCTIONS or isinstance(function, StandIn | Shipped):
        return True
    if type(function) in (_BUILTIN_METHOD, _METHOD_WRAPPER):
        owner = getattr(function, "__self__", None)
        return type(owner) in _PLAIN or isinstance(owner, _REGEX) or owner in _PLAIN_TYPES
    return type(function) is _METHOD_DESCRIPTOR and function.__objclass__ in _PLAIN_TYPES


def method_of_type(function: Any) -> tuple[str, str] | None:
    """("str", "upper") for a public method of a plain type, which crosses to the child by name; else None."""
    if type(function) is _METHOD_DESCRIPTOR and function.__objclass__ in _PLAIN_TYPES:
        return function.__objclass__.__name__, function.__name__
    return None


def parse(source: str) -> ast.Expression:
    """An assert's expression, parsed and validated; Unsupported with the reason when it is refused."""
    tree = ast.parse(source, mode="eval")
    why = validate(tree)
    if why is not None:
        raise Unsupported(why)
    return tree


# --- mutation: asserts must tell the function from trivial stand-ins --------------------------------------------------


class StandIn:
    """A trivial function standing in for the one under test."""

    def __init__(self, name: str, answer: Callable[[tuple[Any, ...]], Any]) -> None:
        self.name, self.answer = name, answer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.answer(args)

    def __repr__(self) -> str:
        return f"<stand-in that {self.name}>"


class StandInRaised(Exception):
    pass


def _raise(_args: tuple[Any, ...]) -> Any:
    raise StandInRaised("the stand-in raises")


STAND_INS = (
    StandIn("returns None", lambda args: None),
    StandIn("returns True", lambda args: True),
    StandIn("returns False", lambda args: False),
    StandIn("returns 0", lambda args: 0),
    StandIn('returns ""', lambda args: ""),
    StandIn("returns []", lambda args: []),
    StandIn("returns its first argument", lambda args: args[0] if args else None),
    StandIn("raises", _raise),
)


def holds(checks: list[ast.Expression], names: Callable[[str], Any], function: str) -> bool:
    """Whether every check is true with these names; any exception means it does not hold."""
    evaluator = Evaluator(names, function)
    try:
        return all(truth(evaluator.evaluate(check)) for check in checks)
    except CandidateExited:
        raise
    except Exception:
        return False


def vacuous(checks: list[ast.Expression], names: Callable[[str], Any], function: str) -> StandIn | None:
    """The first stand-in for `function` that satisfies every check, or None when the checks tell them all apart."""
    for stand_in in STAND_INS:

        def replaced(name: str, stand_in: StandIn = stand_in) -> Any:
            return stand_in if name == function else names(name)

        if holds(checks, replaced, function):
            return stand_in
    return None


# --- a suite's trusted test code ------------------------------------------------------------------------------------


def suite_namespace(candidate: dict[str, Any]) -> dict[str, Any]:
    """The namespace a suite's test code runs in: the candidate's names (handles and plain data, its modules as the
    judge's own), with the judge's own builtins."""
    return {"__name__": "suite", "__builtins__": builtins, **candidate}
