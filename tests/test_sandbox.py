"""The execution gate's sandbox: strict checks, the report protocol, confinement, and every trick a candidate might
use to pass without its asserts holding. Runtime tests run under both sandboxes; each sandbox runs one shared batch
(module-scoped fixture) so the whole file stays fast."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma0.sandbox import (
    Limits,
    Program,
    Reason,
    SandboxUnavailable,
    Verdict,
    for_problem,
    from_asserts,
    judge,
    resolve_sandbox,
    run_programs,
    runner,
    wire,
)
from sigma0.suites import Subset, load_suite

HAS_RUNSC = shutil.which("runsc") is not None
SANDBOXES = [
    "process",
    pytest.param("gvisor", marks=pytest.mark.skipif(not HAS_RUNSC, reason="runsc is not on PATH (CI installs it)")),
]
TIMEOUT = 2.0
LIMITS = Limits(memory_mb=256, cpu_seconds=1, file_size_mb=1, max_processes=16, output_bytes=64 * 1024)


# --- the judge's parts, in this process ------------------------------------------------------------------------------


class LoopbackChild:
    """Answers the judge's questions as harness.py does, but in this process: the wire codec and the judge's logic
    without forking (the real child is exercised by the batches below)."""

    def __init__(self, namespace: dict[str, object]) -> None:
        self.objects: dict[int, object] = {}
        self.handles: dict[int, judge.Handle] = {}
        self.names = {name: self.cross(value) for name, value in namespace.items()}

    def keep(self, value: object) -> object:
        self.objects[id(value)] = value
        if callable(value):
            return {"h": id(value), "k": type(value).__qualname__, "c": True}
        fields = {name: getattr(value, name) for name in sorted(vars(value))}
        state = wire.encode([type(value).__qualname__, fields], self.keep)
        return {"h": id(value), "k": type(value).__qualname__, "c": False, "s": state}

    def cross(self, value: object) -> object:
        """What the judge holds after `value` went over the wire: JSON both ways."""
        data = json.loads(json.dumps(wire.encode(value, self.keep)))
        return wire.decode(data, self.handle, lambda name: name)

    def handle(self, ref: int, kind: str, callable_: bool, state: object) -> judge.Handle:
        return judge.Handle(self.ask, ref, kind, callable_, state)

    def ask(self, request: list[object]) -> object:
        target = self.objects[request[1]]  # type: ignore[index]
        back = lambda data: wire.decode(data, lambda ref, *_: self.objects[ref], lambda name: name)  # noqa: E731

        def own(item: object) -> object:
            if not isinstance(item, judge.Handle):
                raise judge.Unsupported(f"a {type(item).__name__} cannot be passed to the candidate's code")
            return {"h": item._ref, "k": item._kind, "c": True}

        if request[0] == "call":
            args = back(json.loads(json.dumps(wire.encode(request[2], own))))
            kwargs = back(json.loads(json.dumps(wire.encode(request[3], own))))
            try:
                return self.cross(target(*args, **kwargs))  # type: ignore[operator]
            except Exception as error:
                judge.raise_reply(["raise", type(error).__name__, str(error)], exceptions=False)
        return self.cross(getattr(target, request[2]))  # type: ignore[arg-type]

    def evaluate(self, source: str, function: str = "f") -> object:
        return judge.Evaluator(self.names.__getitem__, function).evaluate(judge.parse(source))


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __bool__(self) -> bool:
        return True

    __hash__ = object.__hash__


@dataclass
class Point:
    x: int
    y: int

    def __eq__(self, other: object) -> bool:  # lies: the judge must compare data, not ask this
        return True


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | st.binary(max_size=4)
    | st.complex_numbers(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=3), inner)
    | st.frozensets(st.integers(), max_size=3) | st.sets(st.text(max_size=2), max_size=3),
    max_leaves=12,
)  # fmt: skip


def _shape(value: object) -> object:
    """Type and value, all the way down (so that 1 == 1.0 == True do not hide a changed type)."""
    if isinstance(value, list | tuple):
        return (type(value), [_shape(item) for item in value])
    if isinstance(value, dict):
        return (dict, sorted((repr(key), _shape(item)) for key, item in value.items()))
    if isinstance(value, float) and value != value:
        return (float, "nan")
    return (type(value), value)


@settings(deadline=None)
@given(plain)
def test_plain_data_crosses_the_wire_unchanged(value: object) -> None:
    body = wire.frame(["ok", wire.encode(value, lambda item: pytest.fail(f"not plain: {item!r}"))])
    back = wire.decode(wire.parse(wire.split(bytearray(body)) or b""), lambda *a: None, lambda name: None)
    assert _shape(back[1]) == _shape(value)


def test_subclasses_of_builtin_types_cross_as_their_stored_data() -> None:
    class Sneaky(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    class Liar(list):  # type: ignore[type-arg]
        def __eq__(self, other: object) -> bool:
            return True

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([1, 2, 3])

    child = LoopbackChild({})
    point = collections.namedtuple("point", "x y")
    assert _shape(child.cross(Sneaky(1))) == (int, 1)
    assert _shape(child.cross(Liar([7]))) == _shape([7])
    assert _shape(child.cross(point(1, 2))) == _shape((1, 2))
    assert child.cross(collections.Counter("aab")) == {"a": 2, "b": 1}
    assert type(child.cross(collections.defaultdict(list, {"k": [1]}))) is dict
    assert child.cross(10**400) == 10**400


@pytest.mark.parametrize(
    "data",
    [
        {"x": 1},
        {"h": "1", "k": "f", "c": True},
        {"h": 1, "k": "P", "c": False},
        {"h": 1, "k": "f", "c": True, "s": 1},
        {"d": [[[1], 2]]},
        {"t": 5},
        {"c": [1, 2]},
        {"r": [0, "9", 1]},
        {"i": "zz"},
        {"d": [[1]]},
        {"s": [[1]]},
    ],
)
def test_the_judge_decodes_only_what_the_harness_writes(data: object) -> None:
    with pytest.raises(wire.Malformed):
        wire.decode(data, lambda *a: None, lambda name: None)


def test_frames_over_the_cap_or_not_json_are_refused() -> None:
    with pytest.raises(wire.Malformed):
        wire.split(bytearray((wire.MESSAGE_CAP + 1).to_bytes(4, "big") + b"[]"))
    with pytest.raises(wire.Malformed):
        wire.parse(b"\x80not json")
    with pytest.raises(wire.Malformed):
        wire.parse(b"[" * 100_000 + b"]" * 100_000)


def test_the_evaluator_computes_what_python_would_on_honest_answers() -> None:
    child = LoopbackChild({"f": lambda x=1: 2 * x, "words": lambda s: s.split(), "K": 3, "P": Point})
    for source in [
        "f(2) == 4",
        "all(f(x) == 2 * x for x in range(3))",
        "any([f(1) == 2])",
        "len([x for x in range(3) if f(x) == 2 * x]) == 3",
        "not f(1) != 2",
        "(f(1) == 2) if True else False",
        "bool(f(1) == 2) and 1 < 2 < f(2)",
        "sorted(words('b a')) == ['a', 'b'] and words('x y')[-1:] == ['y']",
        "f'{f(2):>3}' == '  4' and f(K) == 6 and f(x=5) == 10",
        "{k: v for k, v in zip('ab', map(f, [1, 2]))} == {'a': 2, 'b': 4}",
        "math.isclose(f(0.5), 1.0) and re.fullmatch('[a-z]+', words('ab c')[0]) is not None",
        "' '.join(words('a  b')).upper() == 'A B' and string.digits[f(1)] == '2'",
        "P(1, 2) == P(1, 2) and P(1, 2) != P(2, 1) and P(1, 2).x == 1",
        "f(2) in {4, 5} and [*range(f(1))] == [0, 1] and {**{'a': f(1)}} == {'a': 2}",
        "sorted([3, 1, 2], key=lambda v: -f(v)) == [3, 2, 1] and str.upper(words('a')[0]) == 'A'",
    ]:
        assert child.evaluate(source) is True, source


def test_answers_decide_nothing_by_their_own_methods() -> None:
    child = LoopbackChild({"f": lambda x: AlwaysEqual(), "g": lambda x: Point(x, x), "P": Point})
    assert child.evaluate("f(2) == 4") is False and child.evaluate("f(2) != 4") is True
    assert child.evaluate("[f(1)] == [2]") is False and child.evaluate("3 in [f(1)]") is False
    assert child.evaluate("g(1) == P(1, 1)") is True and child.evaluate("g(1) == P(2, 2)") is False
    for source in ["f(1)", "not f(1)", "f(1) and True", "f(1) < 3", "f(1) + 1 == 2", "f(1) if True else 0"]:
        with pytest.raises((judge.Untrusted, TypeError)):
            assert child.evaluate(source)


@pytest.mark.parametrize(
    "source",
    [
        "[x async for x in f(1)] == []",
        "(x := f(1)) == 2",
        "f(1).__class__ == int",
        "f.__globals__ is None",
        "'{0.__class__}'.format(f(1)) == ''",
        "eval('1') == f(1)",
        "open('/etc/passwd') and f(1)",
        "getattr(f, 'x') == 1",
        "isinstance(f(1), object)",
        "__import__('os') and f(1)",
        "globals() and f(1)",
    ],
)
def test_the_evaluator_refuses_anything_but_data_and_calls(source: str) -> None:
    child = LoopbackChild({"f": lambda x=1: x})
    with pytest.raises(judge.Unsupported):
        child.evaluate(source)
    program = from_asserts("r", "f", "def f(x=1):\n    return x\n", [f"assert {source}"])
    assert program.rejected is not None and program.rejected[0] is Reason.UNSUPPORTED_ASSERTS, program.rejected


@pytest.mark.parametrize("source", ["type(f(1)).mro() == []", "f(len) == 1", "(f(1) + 1j).conjugate() and re.I.name"])
def test_what_only_the_values_show_is_refused_while_evaluating(source: str) -> None:
    with pytest.raises(judge.Unsupported):
        LoopbackChild({"f": lambda x=1: x}).evaluate(source)


@pytest.mark.parametrize(
    "source", ["f(2) ** 10**9 == 0", "'a' * 10**9 == f(1)", "f(1) << 10**9 == 0", "len(range(10**12)) == f(1)",
               "pow(10, 10**9) == f(1)"]
)  # fmt: skip
def test_an_assert_cannot_stall_the_judge_in_one_huge_operation(source: str) -> None:
    child = LoopbackChild({"f": lambda x=1: x})
    started = time.monotonic()
    with pytest.raises(judge.Unsupported):
        child.evaluate(source)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "asserts, code",
    [
        (["f(2) == 5 or True"], "def f(x):\n    return 0\n"),
        (["f(2) == f(2)"], "def f(x):\n    return 0\n"),
        (["[f(2) == 4, True][1]"], "def f(x):\n    return 0\n"),
        (["callable(f)"], "def f(x):\n    return 0\n"),
        (["f is not None"], "def f(x):\n    return 0\n"),
        (["f(7)", "f(13)"], "def f(x):\n    return True\n"),
        (["not f(4)", "not f(9)"], "def f(x):\n    return False\n"),
        (["f(3) == 3", "f([1]) == [1]"], "def f(x):\n    return x\n"),
        (["f(1) is None or f(1) == 2"], "def f(x):\n    return None\n"),
        (["len(f('ab')) == 0 or f('ab') == 'ab'"], "def f(x):\n    return ''\n"),
        (["f(2) != 7"], "def f(x):\n    return 0\n"),
        (["(f(2) if False else True)"], "def f(x):\n    return 0\n"),
    ],
)
def test_asserts_that_a_stand_in_satisfies_are_vacuous(asserts: list[str], code: str) -> None:
    namespace: dict[str, object] = {}
    exec(code, namespace)
    child = LoopbackChild({"f": namespace["f"]})
    checks = [judge.parse(source) for source in asserts]
    assert all(judge.truth(judge.Evaluator(child.names.__getitem__, "f").evaluate(c)) for c in checks)
    assert judge.vacuous(checks, child.names.__getitem__, "f") is not None


@pytest.mark.parametrize(
    "asserts",
    [["f(2) == 4"], ["f(7) is True", "f(8) is False"], ["f(0) == 0", "f(3) == 6"], ["sorted(g(3)) == [0, 2, 4]"]],
)
def test_asserts_that_tell_the_function_from_every_stand_in_are_not(asserts: list[str]) -> None:
    f = lambda x: 2 * x if x != 7 and x != 8 else x == 7  # noqa: E731
    child = LoopbackChild({"f": f, "g": lambda n: [f(x) for x in range(n)]})
    checks = [judge.parse(source) for source in asserts]
    function = "g" if "g(" in asserts[0] else "f"
    assert judge.vacuous(checks, child.names.__getitem__, function) is None


def test_rows_without_real_asserts_are_refused_without_running() -> None:
    code = "def f(x):\n    return x\n"
    cases = {
        Reason.NO_ASSERTS: [[], "", "\n  \n"],
        Reason.ASSERTS_WITHOUT_CALL: [["assert True"], ["assert f(1) == 1", "assert 1 == 1"]],
        Reason.INVALID_ASSERTS: [["print(f(1))"], ["assert f(1) == 1\nx = 2"], [3], {"a": 1}, 7],
        Reason.SYNTAX: [["assert f(1) =="], ["assert f(1) == 1 )"]],
        Reason.UNSUPPORTED_ASSERTS: [["assert (y := f(1)) == 1"], ["assert f.__code__ is not None"]],
    }
    for reason, variants in cases.items():
        for asserts in variants:
            program = from_asserts("r", "f", code, asserts)
            assert program.rejected is not None and program.rejected[0] is reason, (asserts, program.rejected)
    accepted = from_asserts("r", "f", code, "assert f(1) == 1\nassert obj.f(2) == 2 or f(2) == 2\n")
    assert accepted.rejected is None and len(accepted.checks) == 2 and accepted.function == "f"


# --- the sandbox runs them ---------------------------------------------------------------------------------------


def row(fn: str, code: str, *asserts: str) -> tuple[str, str, list[str]]:
    return fn, textwrap.dedent(code), list(asserts)


WRONG_DOUBLE = "def double(x):\n    return x + 1\n"

# id → (fn, code, asserts), expected reason. Everything but the PASSED ones must fail.
CASES: dict[str, tuple[tuple[str, str, list[str]], Reason]] = {
    # honest rows pass
    "good": (
        row("double", "def double(x):\n    return 2 * x\n", "assert double(2) == 4", "assert double(0) == 0"),
        Reason.PASSED,
    ),
    "good_numbers": (row("area", "def area(r):\n    return 4\n", "assert area(2) == 4.0"), Reason.PASSED),
    "good_dataclass": (
        row(
            "mid",
            """
            from dataclasses import dataclass
            @dataclass
            class P:
                x: float
                y: float
            def mid(a, b):
                return P((a.x + b.x) / 2, (a.y + b.y) / 2)
            """,
            "assert mid(P(0, 0), P(2, 2)) == P(1, 1)",
        ),
        Reason.PASSED,
    ),
    "good_generators": (
        row("sq", "def sq(x):\n    return x * x\n", "assert all(sq(x) == x * x for x in range(5))",
            "assert sum(1 for x in range(5) if sq(x) > 3) == 3", "assert sq(2) in [4, 5] and sq(3) is not None"),
        Reason.PASSED,
    ),
    "good_prints_and_patches_os_write": (
        row("double", "import os\nprint('hello ' * 100)\nos.write = lambda fd, data: len(data)\n"
            "def double(x):\n    return 2 * x\n", "assert double(3) == 6"),
        Reason.PASSED,
    ),
    "good_confinement": (
        row(
            "probe",
            """
            import os, resource, sys
            open("scratch.txt", "w").write("mine")
            def probe():
                return {
                    "env": sorted(os.environ),
                    "stdin": sys.stdin.read(),
                    "cwd": sorted(os.listdir(".")),
                    "root": os.getuid() == 0,
                    "own_group": os.getpgid(0) == os.getpid(),
                    "as": resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,
                    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20,
                    "cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
                    "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0] >= 16,
                    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                }
            """,
            'assert probe()["env"] == ["HOME", "LANG", "PATH", "TMPDIR"]',
            'assert probe()["stdin"] == ""',
            'assert probe()["cwd"] == ["scratch.txt"]',
            'assert probe()["root"] is False',
            'assert probe()["own_group"] is True',
            'assert (probe()["as"], probe()["fsize"], probe()["cpu"]) == (256, 1, 1)',
            'assert probe()["nproc"] is True',
            'assert probe()["fds"][:5] == [0, 1, 2, 3, 4] and len(probe()["fds"]) <= 6',
        ),
        Reason.PASSED,
    ),
    # plain wrong answers and refusals
    "wrong": (row("double", WRONG_DOUBLE, "assert double(2) == 4"), Reason.ASSERTION),
    "raises": (row("double", "def double(x):\n    return 1 / 0\n", "assert double(2) == 4"), Reason.ERROR),
    "syntax": (row("double", "def double(x)\n    return 2 * x\n", "assert double(2) == 4"), Reason.SYNTAX),
    "no_asserts": (row("double", WRONG_DOUBLE), Reason.NO_ASSERTS),
    "assert_true": (row("double", WRONG_DOUBLE, "assert True"), Reason.ASSERTS_WITHOUT_CALL),
    "not_an_assert": (row("double", WRONG_DOUBLE, "double(2)"), Reason.INVALID_ASSERTS),
    # leaving before the asserts run
    "os_exit": (
        row("double", "import os\nos._exit(0)\n" + WRONG_DOUBLE, "assert double(2) == 4"), Reason.EXIT_BEFORE_ASSERTS
    ),
    "sys_exit": (row("double", "import sys\nsys.exit(0)\n", "assert double(2) == 4"), Reason.EXIT_BEFORE_ASSERTS),
    "exit": (row("double", "exit()\n", "assert double(2) == 4"), Reason.EXIT_BEFORE_ASSERTS),
    "quit": (row("double", "quit(0)\n", "assert double(2) == 4"), Reason.EXIT_BEFORE_ASSERTS),
    "raise_system_exit": (row("double", "raise SystemExit(0)\n", "assert double(2) == 4"), Reason.EXIT_BEFORE_ASSERTS),
    "exit_inside_call": (
        row("double", "import os\ncalls = []\ndef double(x):\n    calls.append(x)\n    if len(calls) == 2:\n"
            "        os._exit(0)\n    return 2 * x\n", "assert double(1) == 2", "assert double(2) == 5"),
        Reason.EXIT_BEFORE_ASSERTS,
    ),
    "system_exit_in_destructor": (
        row("double", """
            class Bye:
                def __del__(self):
                    raise SystemExit(0)
            def double(x):
                b = Bye()
                del b
                return x + 1
            keep = Bye()
            """, "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    # objects that lie about themselves
    "always_equal": (
        row("double", "class E:\n    def __eq__(self, other):\n        return True\n"
            "def double(x):\n    return E()\n", "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    "always_equal_int": (
        row("double", "class E(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
            "def double(x):\n    return E(0)\n", "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    "always_equal_inside_all": (
        row("double", "class E:\n    def __eq__(self, other):\n        return True\n"
            "def double(x):\n    return [E()]\n", "assert all(double(x) == [2 * x] for x in range(3))"),
        Reason.ASSERTION,
    ),
    "lying_bool": (
        row("is_even", "class T:\n    def __bool__(self):\n        return True\n"
            "def is_even(x):\n    return T()\n", "assert is_even(3)"),
        Reason.ASSERTION,
    ),
    "lying_bool_under_not": (
        row("is_odd", "class F:\n    def __bool__(self):\n        return False\n"
            "def is_odd(x):\n    return F()\n", "assert not is_odd(3)"),
        Reason.ASSERTION,
    ),
    "lying_contains_and_lt": (
        row("bag", "class B:\n    def __contains__(self, x):\n        return True\n    def __lt__(self, o):\n"
            "        return True\ndef bag():\n    return B()\n", "assert 3 in bag()", "assert bag() < 5"),
        Reason.ASSERTION,
    ),
    # replacing builtins
    "patch_assertion_error": (
        row("double", "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n" + WRONG_DOUBLE,
            "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    "patch_len_print_isinstance": (
        row("chars", "import builtins\nbuiltins.len = lambda x: 3\nbuiltins.isinstance = lambda *a: True\n"
            "builtins.print = lambda *a, **k: None\ndef chars(s):\n    return 7\n",
            "assert len([chars('abc')]) == 3", "assert isinstance(chars('abc'), str)"),
        Reason.CRASH,  # the child's own channel breaks with isinstance: it can only fail
    ),
    "patch_len_during_call": (
        row("chars", "import builtins\ncalls = []\ndef chars(s):\n    calls.append(s)\n"
            "    builtins.len = lambda x: 3\n    return list(s) if len(calls) == 1 else []\n",
            "assert len(chars('abc')) == 3", "assert len(chars('abc')) == 3"),
        Reason.ASSERTION,
    ),
    "patch_type_and_bool": (
        row("double", "import builtins\nclass E:\n    def __eq__(self, o):\n        return True\n"
            "builtins.type = lambda x: int\nbuiltins.bool = lambda x: True\ndef double(x):\n    return E()\n",
            "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    # replacing the harness and its channel
    "patch_harness_modules": (
        row("double", """
            import sys, __main__
            for name in ("judge", "wire", "sigma0.sandbox.judge"):
                module = sys.modules.get(name) or __import__(name)
                if hasattr(module, "truth"):
                    module.truth = lambda *a: True
                    module.Evaluator.evaluate = lambda *a: True
                if hasattr(module, "decode"):
                    module.decode = lambda *a: 4
            __main__.Worker = None
            def double(x):
                return x + 1
            """, "assert double(2) == 4"),
        Reason.ERROR,  # its patched decoder hands double() garbage: nothing in the judge changed
    ),
    "patch_stdout_write_exit": (
        row("double", "import io, os, sys\nsys.stdout = io.StringIO()\nos.write = lambda fd, data: len(data)\n"
            "os._exit = lambda code: None\n" + WRONG_DOUBLE, "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    "forged_report": (
        row("double", """
            import os
            for fd in range(3, 64):
                for line in (b"step 0\\ndone 1\\n", b"0123456789abcdef0123456789abcdef step 0\\n"):
                    try:
                        os.write(fd, line)
                    except OSError:
                        pass
            os._exit(0)
            """, "assert double(2) == 4"),
        Reason.HARNESS_TAMPERED,
    ),
    "closes_the_report_pipe": (
        row("double", "import os\nos.closerange(3, 1024)\ndef double(x):\n    return 2 * x\n", "assert double(2) == 4"),
        Reason.CRASH,
    ),
    "forged_verdict_to_worker": (
        row("double", """
            import json, os
            for pid in {os.getppid(), 1}:
                for fd in (1, 2):
                    try:
                        with open(f"/proc/{pid}/fd/{fd}", "w") as out:
                            for key in range(64):
                                verdict = {"key": str(key), "reason": "passed", "detail": "", "seconds": 0}
                                out.write(json.dumps(verdict) + "\\n")
                    except OSError:
                        pass
            def double(x):
                return x + 1
            """, "assert double(2) == 4"),
        Reason.ASSERTION,
    ),
    # resources
    "busy_loop": (row("double", "def double(x):\n    while True:\n        pass\n", "assert double(2) == 4"),
                  Reason.TIMEOUT),
    "sleeps": (row("double", "import time\ndef double(x):\n    time.sleep(60)\n", "assert double(2) == 4"),
               Reason.TIMEOUT),
    # bytes(n) is calloc'd: the address-space limit stops it without touching pages, so the load cannot turn it
    # into a CPU timeout first (the touching bomb is bench-only: tests/hostile/corpus.py, memory_bomb_touching)
    "memory_bomb": (row("double", "blocks = []\nwhile True:\n    blocks.append(bytes(1 << 24))\n",
                        "assert double(2) == 4"), Reason.MEMORY),
    "output_flood": (row("double", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
                         "assert double(2) == 4"), Reason.OUTPUT_LIMIT),
    "big_file": (row("double", "open('big', 'wb').write(b'x' * (2 << 20))\n", "assert double(2) == 4"), Reason.ERROR),
    "fork_bomb": (
        row("double", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            "assert double(2) == 4"),
        Reason.TIMEOUT,
    ),
}  # fmt: skip


def programs() -> list[Program]:
    return [from_asserts(name, *spec) for name, (spec, _) in CASES.items()]


@pytest.fixture(scope="module", params=SANDBOXES)
def batch(request: pytest.FixtureRequest) -> tuple[str, dict[str, Verdict], float]:
    """Every case above, run as one batch; returns (sandbox, verdicts by id, seconds for the whole batch)."""
    os.environ["SIGMA0_TEST_SECRET"] = "must not reach candidates"
    try:
        started = time.monotonic()
        verdicts = list(run_programs(programs(), sandbox=request.param, workers=4, timeout=TIMEOUT, limits=LIMITS))
        seconds = time.monotonic() - started
    finally:
        del os.environ["SIGMA0_TEST_SECRET"]
    by_id = {verdict.id: verdict for verdict in verdicts}
    assert len(by_id) == len(verdicts) == len(CASES)
    return request.param, by_id, seconds


@pytest.mark.parametrize("case", list(CASES))
def test_each_case_gets_its_verdict(batch: tuple[str, dict[str, Verdict], float], case: str) -> None:
    sandbox, verdicts, _ = batch
    verdict = verdicts[case]
    expected = CASES[case][1]
    if case == "forged_verdict_to_worker" and sandbox == "process" and os.geteuid() != 0:
        # Without root there is no user of its own to keep the candidate out of the worker's pipes: the forged,
        # tokenless lines reach the parent, which kills that worker and, the second time, fails the candidate.
        expected = Reason.SANDBOX_ERROR
    assert verdict.reason is expected, verdict
    assert verdict.passed is (expected is Reason.PASSED)


def test_bad_candidates_cost_no_more_than_their_own_timeout(batch: tuple[str, dict[str, Verdict], float]) -> None:
    """Bombs, floods and endless loops share the batch with the good rows: the good ones pass (above), each bad one
    is stopped at its own limit, and the batch takes about its timeouts, not the sum of what the bad ones tried."""
    _, verdicts, seconds = batch
    slow = [verdict for verdict in verdicts.values() if verdict.reason is Reason.TIMEOUT]
    assert len(slow) == 3
    assert all(verdict.seconds < TIMEOUT + 2 for verdict in verdicts.values())
    assert seconds < 3 * TIMEOUT + 15


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_every_process_a_candidate_leaves_is_killed_when_it_ends(sandbox: str) -> None:
    """A candidate leaves a child in its group and a grandchild that detached (setsid) to sleep forever; the next
    candidate in the same worker looks for them in /proc."""
    spawner = textwrap.dedent(
        """
        import ctypes, os, time
        def name(text):
            ctypes.CDLL(None).prctl(15, text.encode(), 0, 0, 0)
        if os.fork() == 0:
            name("sigma0-kid")
            if os.fork() == 0:
                os.setsid()
                name("sigma0-orphan")
                while True:
                    time.sleep(1)
            while True:
                time.sleep(1)
        time.sleep(0.3)
        def spawned(x):
            return 2 * x
        """
    )
    checker = textwrap.dedent(
        """
        import os
        def leftovers(tag):
            names = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = open(f"/proc/{pid}/stat").read()
                    if stat[stat.rindex(")") + 2] != "Z":
                        names.append(stat[stat.index("(") + 1 : stat.rindex(")")])
                except OSError:
                    pass
            return f"{tag}: " + ",".join(sorted(name for name in names if name.startswith("sigma0-")))
        """
    )
    checks = [
        from_asserts("spawner", "spawned", spawner, ["assert spawned(2) == 4"]),
        from_asserts("checker", "leftovers", checker, ["assert leftovers('left') == 'left: '"]),
    ]
    verdicts = {v.id: v for v in run_programs(checks, sandbox=sandbox, workers=1, timeout=TIMEOUT, limits=LIMITS)}
    assert verdicts["spawner"].passed, verdicts["spawner"]
    assert verdicts["checker"].passed, verdicts["checker"]


def _processes_named(name: str) -> int:
    """Live (not zombie) processes with this name."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            count += stat[stat.index("(") + 1 : stat.rindex(")")] == name and stat[stat.rindex(")") + 2] != "Z"
    return count


def test_stopping_a_batch_early_leaves_nothing_running() -> None:
    sleeper = "import ctypes, time\nctypes.CDLL(None).prctl(15, b'sigma0-sleeper', 0, 0, 0)\ntime.sleep(60)\n"
    programs = [from_asserts("quick", "f", "def f():\n    return 1\n", ["assert f() == 1"])]
    programs += [from_asserts(f"sleeper{i}", "f", sleeper, ["assert f() == 1"]) for i in range(2)]
    verdicts = run_programs(programs, sandbox="process", workers=3, timeout=60)
    assert next(verdicts).id == "quick"
    deadline = time.monotonic() + 10
    while _processes_named("sigma0-sleeper") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_named("sigma0-sleeper") == 2
    verdicts.close()
    deadline = time.monotonic() + 5
    while _processes_named("sigma0-sleeper") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_named("sigma0-sleeper") == 0


@pytest.mark.skipif(not HAS_RUNSC, reason="runsc is not on PATH (CI installs it)")
def test_gvisor_has_no_network() -> None:
    code = textwrap.dedent(
        """
        import socket
        def reach(host, port):
            try:
                socket.create_connection((host, port), timeout=2).close()
                return "reached"
            except OSError:
                return "blocked"
        """
    )
    program = from_asserts("net", "reach", code, ["assert reach('8.8.8.8', 53) == 'blocked'"])
    (verdict,) = run_programs([program], sandbox="gvisor", workers=1, timeout=TIMEOUT)
    assert verdict.passed, verdict


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_canonical_humaneval_solutions_pass(sandbox: str) -> None:
    problems = load_suite("humaneval", Subset(first=20))
    programs = [for_problem(p.task_id, p.prompt, p.canonical_solution, p.test, p.entry_point) for p in problems]
    verdicts = list(run_programs(programs, sandbox=sandbox, workers=2, timeout=10))
    assert [v for v in verdicts if not v.passed] == []
    assert sorted(v.id for v in verdicts) == sorted(p.task_id for p in problems)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RUNSC, reason="runsc is not on PATH (CI installs it)")
def test_all_164_canonical_humaneval_solutions_pass_under_gvisor() -> None:
    problems = load_suite("humaneval")
    programs = [for_problem(p.task_id, p.prompt, p.canonical_solution, p.test, p.entry_point) for p in problems]
    verdicts = list(run_programs(programs, sandbox="gvisor", timeout=10))
    assert len(verdicts) == 164
    assert [v for v in verdicts if not v.passed] == []


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_wrong_completion_fails_a_humaneval_problem(sandbox: str) -> None:
    (problem,) = load_suite("humaneval", Subset(first=1))
    cheat = "    class E:\n        def __eq__(self, o):\n            return True\n    return E()\n"
    programs = [
        for_problem("wrong", problem.prompt, "    return True\n", problem.test, problem.entry_point),
        for_problem("cheat", problem.prompt, cheat, problem.test, problem.entry_point),
        for_problem("exits", problem.prompt, "    import sys\n    sys.exit(0)\n", problem.test, problem.entry_point),
    ]
    verdicts = {v.id: v for v in run_programs(programs, sandbox=sandbox, workers=2, timeout=10)}
    assert {key: v.reason for key, v in verdicts.items()} == {
        "wrong": Reason.ASSERTION,
        "cheat": Reason.ASSERTION,
        "exits": Reason.EXIT_BEFORE_ASSERTS,
    }


# --- the parent side ---------------------------------------------------------------------------------------------


def test_auto_means_gvisor_exactly_when_there_is_a_runsc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_sandbox("process") == "process"
    if HAS_RUNSC:
        assert resolve_sandbox("auto") == "gvisor"
    monkeypatch.setenv("PATH", str(tmp_path))  # no runsc on PATH, and no runsc built by scripts/build-gvisor.sh
    monkeypatch.setenv("SIGMA0_GVISOR_CACHE", str(tmp_path))
    monkeypatch.delenv("SIGMA0_RUNSC", raising=False)
    assert resolve_sandbox("auto") == "process"
    with pytest.raises(SandboxUnavailable, match="runsc"):
        resolve_sandbox("gvisor")
    with pytest.raises(ValueError, match="unknown sandbox"):
        resolve_sandbox("docker")


FAKE_WORKER = """
import json, os, sys
config = json.loads(sys.stdin.readline())
def say(message):
    sys.stdout.write(json.dumps({**message, "token": config["token"]}) + "\\n")
    sys.stdout.flush()
say({"ready": True})
for line in sys.stdin:
    job = json.loads(line)
    if "DIE" in job["code"]:
        os._exit(3)
    if "FORGE" in job["code"]:
        sys.stdout.write(json.dumps({"key": job["key"], "reason": "passed", "detail": "", "seconds": 0}) + "\\n")
        sys.stdout.flush()
        continue
    say({"key": job["key"], "reason": "passed", "detail": "", "seconds": 0.0})
"""


def test_a_dying_worker_costs_only_the_candidate_that_killed_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE_WORKER)
    monkeypatch.setattr(runner, "worker_command", lambda kind, root=None: [sys.executable, str(fake)])
    programs = [from_asserts(f"ok{i}", "f", "def f(): return 1", ["assert f() == 1"]) for i in range(6)]
    programs.insert(2, from_asserts("killer", "f", "# DIE", ["assert f() == 1"]))
    programs.insert(5, from_asserts("forger", "f", "# FORGE", ["assert f() == 1"]))
    verdicts = {v.id: v for v in run_programs(programs, sandbox="process", workers=2, timeout=5)}
    assert verdicts["killer"].reason is Reason.SANDBOX_ERROR and "died" in verdicts["killer"].detail
    assert verdicts["forger"].reason is Reason.SANDBOX_ERROR and "token" in verdicts["forger"].detail
    assert all(verdicts[f"ok{i}"].passed for i in range(6)), verdicts


def test_a_worker_that_cannot_start_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        runner, "worker_command", lambda kind, root=None: [sys.executable, "-c", "import sys; sys.exit('no')"]
    )
    program = from_asserts("x", "f", "def f(): return 1", ["assert f() == 1"])
    with pytest.raises(SandboxUnavailable, match="did not start"):
        list(run_programs([program], sandbox="process", workers=1, timeout=5))


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0)
    assert Limits().for_worker(10)["cpu_seconds"] == 11
    assert json.loads(json.dumps(Limits(cpu_seconds=2.5).for_worker(10)))["cpu_seconds"] == 3
