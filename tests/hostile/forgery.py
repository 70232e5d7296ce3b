"""Forged evidence: rows whose code is wrong (or whose asserts prove nothing) and that try to pass the gate anyway,
written by an adversary who has read the judge (operator/sigma0/sandbox/judge.py, harness.py, worker.py).

Four categories, several variants each, and the honest rows that must still pass beside them:
    vacuous    asserts that hold whatever the function does
    forged     code that reaches for the harness, the judge or the verdict from inside its own process
    patched    code that patches the modules or shadows the builtins the checks use
    same_type  objects of one candidate-defined class that lie about their equality
Every case in the first four must not pass; `reason` is the verdict it gets under both sandboxes, or None where the
reason may differ between them (it never is "passed").
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from sigma0.sandbox import Program, Reason, from_asserts

WRONG = "def double(x):\n    return x + 1\n"
DOUBLES = ("assert double(2) == 4", "assert double(5) == 10")


@dataclass(frozen=True)
class Forgery:
    id: str
    category: str
    fn: str
    code: str
    asserts: tuple[str, ...]
    reason: Reason | None

    def program(self) -> Program:
        return from_asserts(self.id, self.fn, textwrap.dedent(self.code), list(self.asserts))


def case(id: str, category: str, fn: str, code: str, *asserts: str, reason: Reason | None) -> Forgery:
    return Forgery(id, category, fn, code, asserts, reason)


V, A, U, H = Reason.VACUOUS_ASSERTS, Reason.ASSERTION, Reason.UNSUPPORTED_ASSERTS, Reason.HARNESS_TAMPERED
ZERO = "def f(x):\n    return 0\n"

# Code that looks for the asserts in its own process and answers them: it would pass if they were there to find.
READ_THE_ASSERTS = """
import gc, re, sys
def _answers():
    found = {}
    texts = []
    for obj in gc.get_objects():
        if obj is texts:
            continue
        try:
            if isinstance(obj, dict):
                texts.extend(v for v in obj.values() if isinstance(v, str))
                texts.extend(x for v in obj.values() if isinstance(v, list) for x in v if isinstance(x, str))
            elif isinstance(obj, list | tuple):
                texts.extend(x for x in obj if isinstance(x, str))
        except Exception:
            pass
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, dict):
                texts.extend(v for v in value.values() if isinstance(v, str))
                texts.extend(x for v in value.values() if isinstance(v, list) for x in v if isinstance(x, str))
            elif isinstance(value, bytes | bytearray):
                texts.append(bytes(value).decode("utf-8", "replace"))
        frame = frame.f_back
    for text in texts:
        for arg, result in re.findall(r"double\\((\\d+)\\) == (\\d+)", text):
            found[int(arg)] = int(result)
    return found
ANSWERS = _answers()
def double(x):
    return ANSWERS.get(x, x + 1)
"""

FORGERIES: list[Forgery] = [
    # --- vacuous: asserts that hold whatever the function does ------------------------------------------------------
    case("or_true", "vacuous", "f", ZERO, "assert f(2) == 5 or True", reason=V),
    case("compares_with_itself", "vacuous", "f", ZERO, "assert f(2) == f(2)", reason=V),
    case("list_index", "vacuous", "f", ZERO, "assert [f(2) == 4, True][1]", reason=V),
    case("callable", "vacuous", "f", ZERO, "assert callable(f)", reason=V),
    case("not_none", "vacuous", "f", ZERO, "assert f is not None", reason=V),
    case("isinstance_object", "vacuous", "f", ZERO, "assert isinstance(f(4), object)", reason=U),
    case("truthy_only", "vacuous", "is_prime", "def is_prime(n):\n    return True\n", "assert is_prime(7)",
         "assert is_prime(13)", reason=V),
    case("falsy_only", "vacuous", "is_odd", "def is_odd(n):\n    return False\n", "assert not is_odd(4)",
         "assert not is_odd(8)", reason=V),
    case("identity", "vacuous", "f", "def f(x):\n    return x\n", "assert f(3) == 3", "assert f([1]) == [1]", reason=V),
    case("not_equal", "vacuous", "f", ZERO, "assert f(2) != 99", reason=V),
    case("max_floor", "vacuous", "f", ZERO, "assert max(f(2) or 0, 4) >= 4", reason=V),
    case("dict_get", "vacuous", "f", ZERO, "assert {1: True}.get(f(1) is None, True)", reason=V),
    case("str_of", "vacuous", "f", ZERO, "assert str(f(2))", reason=V),
    case("length_at_least_zero", "vacuous", "f", ZERO, "assert len(str(f(2))) >= 0", reason=V),
    case("dead_branch", "vacuous", "f", ZERO, "assert (f(2) == 4) if False else True", reason=V),
    case("any_with_true", "vacuous", "f", ZERO, "assert any([f(1) == 7, 1 == 1])", reason=V),
    case("empty_all", "vacuous", "f", ZERO, "assert all(f(x) == 9 for x in [])", reason=V),
    case("equal_or_not", "vacuous", "f", ZERO, "assert f(1) == 2 or f(1) != 2", reason=V),
    # --- forged: reaching for the harness, the judge or the verdict from inside the process ---------------------------
    case("reads_the_asserts", "forged", "double", READ_THE_ASSERTS, *DOUBLES, reason=A),
    case("frame_locals", "forged", "double", textwrap.dedent("""
        import sys
        frame = sys._getframe()
        while frame is not None:
            for name in ("reply", "verdict", "reason", "passed", "held"):
                if name in frame.f_locals:
                    frame.f_locals[name] = "passed" if name != "held" else True
            frame.f_globals.get("__builtins__")
            frame = frame.f_back
        """) + WRONG, *DOUBLES, reason=A),
    case("traceback_frames", "forged", "double", textwrap.dedent("""
        import os, sys
        try:
            raise RuntimeError
        except RuntimeError as error:
            frame = error.__traceback__.tb_frame
        while frame is not None:
            worker = frame.f_locals.get("self")
            if worker is not None and hasattr(worker, "send"):
                try:
                    worker.send({"key": "0", "reason": "passed", "detail": "", "seconds": 0})
                except Exception:
                    pass
            frame = frame.f_back
        """) + WRONG, *DOUBLES, reason=None),  # its write lands on the reply pipe: tampered
    case("inspect_stack", "forged", "double", textwrap.dedent("""
        import inspect
        for info in inspect.stack():
            for value in list(info.frame.f_locals.values()):
                if isinstance(value, dict) and "checks" in value:
                    value["checks"] = ["True"]
        """) + WRONG, *DOUBLES, reason=A),
    case("gc_closures", "forged", "double", textwrap.dedent("""
        import gc
        for obj in gc.get_objects():
            if callable(obj) and getattr(obj, "__name__", "") in ("send", "judge", "judge_asserts", "run"):
                try:
                    obj.__code__ = (lambda *a, **k: ("passed", "")).__code__
                except Exception:
                    pass
        """) + WRONG, *DOUBLES, reason=A),
    case("patches_the_judge_modules", "forged", "double", textwrap.dedent("""
        import sys
        for name in ("judge", "wire", "harness"):
            module = sys.modules.get(name)
            if module is not None:
                for attr in ("truth", "holds"):
                    if hasattr(module, attr):
                        setattr(module, attr, lambda *a, **k: True)
                if hasattr(module, "vacuous"):
                    module.vacuous = lambda *a, **k: None
        """) + WRONG, *DOUBLES, reason=A),
    case("fake_reply_before_ready", "forged", "double", textwrap.dedent("""
        import json, os, struct
        body = json.dumps(["ok", 4]).encode()
        os.write(4, struct.pack(">I", len(body)) + body)
        """) + WRONG, *DOUBLES, reason=H),
    case("fake_ready_with_answers", "forged", "double", """
        import json, os, struct
        body = json.dumps(["ready", {"double": 4}]).encode()
        os.write(4, struct.pack(">I", len(body)) + body)
        os._exit(0)
        """, *DOUBLES, reason=None),
    case("verdict_to_the_runner", "forged", "double", textwrap.dedent("""
        import json, os
        line = json.dumps({"key": "0", "reason": "passed", "detail": "", "seconds": 0}) + "\\n"
        for pid in (os.getppid(), 1):
            for fd in range(0, 16):
                try:
                    with open(f"/proc/{pid}/fd/{fd}", "w") as out:
                        out.write(line)
                except OSError:
                    pass
        for fd in range(0, 16):
            try:
                os.write(fd, line.encode())
            except OSError:
                pass
        """) + WRONG, *DOUBLES, reason=None),
    case("trace_the_judge", "forged", "double", """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        attached = libc.ptrace(16, os.getppid(), 0, 0)  # PTRACE_ATTACH
        try:
            open(f"/proc/{os.getppid()}/mem", "rb").read(1)
            readable = True
        except OSError:
            readable = False
        def double(x):
            return x * 2 if attached == 0 or readable else x + 1
        """, *DOUBLES, reason=A),
    # --- patched: modules and builtins the checks use -----------------------------------------------------------------
    case("math_isclose", "patched", "f", "import math\nmath.isclose = lambda *a, **k: True\n" + ZERO,
         "assert math.isclose(f(1.0), 3.14159)", reason=A),
    case("math_fabs", "patched", "f", "import math\nmath.fabs = lambda x: 0.0\n" + ZERO,
         "assert math.fabs(f(2) - 4) < 1e-9", reason=A),
    case("math_sqrt", "patched", "f", "import math\nmath.sqrt = lambda x: 2.0\ndef f(x):\n    return 9\n",
         "assert math.sqrt(f(2)) == 2.0", reason=A),
    case("re_fullmatch", "patched", "f",
         "import re\nre.fullmatch = lambda *a, **k: True\ndef f(x):\n    return 'abc'\n",
         "assert re.fullmatch('[0-9]+', f(3)) is not None", reason=A),
    case("string_digits", "patched", "f", "import string\nstring.digits = 'xyz'\ndef f(x):\n    return 'xyz'\n",
         "assert f(1) == string.digits[:3]", reason=A),
    case("shadows_sorted", "patched", "f", "def sorted(x, **k):\n    return [1, 2, 3]\ndef f(x):\n    return [9]\n",
         "assert sorted(f(3)) == [1, 2, 3]", reason=A),
    case("shadows_len", "patched", "f", "len = lambda x: 3\ndef f(x):\n    return []\n", "assert len(f('abc')) == 3",
         reason=A),
    case("patches_builtins_abs", "patched", "f",
         "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 9\n",
         "assert abs(f(2) - 4) == 0", reason=A),
    case("shadows_math", "patched", "f", "class math:\n    pi = 3\ndef f(x):\n    return 3\n", "assert f(1) == math.pi",
         reason=A),
    # --- same type: a class of the candidate's that lies about equality -----------------------------------------------
    case("always_equal", "same_type", "f", """
        class P:
            def __init__(self, x):
                self.x = x
            def __eq__(self, other):
                return True
        def f(x):
            return P(x + 1)
        """, "assert f(1) == P(1)", reason=A),
    case("always_equal_in_a_set", "same_type", "f", """
        class P:
            def __init__(self, x):
                self.x = x
            def __eq__(self, other):
                return True
            def __hash__(self):
                return 0
        def f(x):
            return P(x + 1)
        """, "assert f(1) in {P(1)}", reason=A),
    case("never_unequal", "same_type", "f", """
        class P:
            def __init__(self, x):
                self.x = x
            def __ne__(self, other):
                return False
        def f(x):
            return P(x + 1)
        """, "assert not (f(1) != P(1))", reason=A),
    case("rewrites_earlier_answers", "same_type", "f", """
        class P:
            made = []
            def __init__(self, x):
                self.x = x
                for earlier in P.made:
                    earlier.x = x
                P.made.append(self)
        def f(x):
            return P(x + 1)
        """, "assert f(1) == P(1)", reason=A),
    case("dataclass_overrides_eq", "same_type", "f", """
        from dataclasses import dataclass
        @dataclass(eq=False)
        class P:
            x: int
            def __eq__(self, other):
                return True
        def f(x):
            return P(x + 1)
        """, "assert f(1) == P(1)", reason=A),
    case("int_subclass", "same_type", "double", """
        class E(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def double(x):
            return E(x)
        """, *DOUBLES, reason=A),
    case("lying_getattribute", "same_type", "f", """
        class P:
            def __init__(self, x):
                self.x = x
            def __getattribute__(self, name):
                return {"x": 1} if name == "__dict__" else 1
        def f(x):
            return P(x + 1)
        """, "assert f(1) == P(1)", reason=A),
    case("slots", "same_type", "f", """
        class P:
            __slots__ = ("x",)
            def __init__(self, x):
                self.x = x
            def __eq__(self, other):
                return True
        def f(x):
            return P(x + 1)
        """, "assert f(1) == P(1)", reason=A),
    case("metaclass_equal", "same_type", "f", """
        class Meta(type):
            def __eq__(cls, other):
                return True
            __hash__ = type.__hash__
        class P(metaclass=Meta):
            pass
        def f(x):
            return P
        """, "assert f(1) == int", reason=A),
]  # fmt: skip

HONEST: list[Forgery] = [
    case("double", "honest", "double", "def double(x):\n    return 2 * x\n", *DOUBLES, reason=Reason.PASSED),
    case("dataclass", "honest", "mid", """
        from dataclasses import dataclass
        @dataclass
        class P:
            x: float
            y: float
        def mid(a, b):
            return P((a.x + b.x) / 2, (a.y + b.y) / 2)
        """, "assert mid(P(0, 0), P(2, 2)) == P(1, 1)", "assert mid(P(0, 0), P(2, 2)) != P(0, 1)",
         reason=Reason.PASSED),
    case("higher_order", "honest", "fn", "def fn(f, x):\n    return f(f(x))\n",
         "assert fn(lambda v: v * 3, 2) == 18", 'assert fn(str.upper, "fn") == "FN"', reason=Reason.PASSED),
    case("collections", "honest", "count", "from collections import Counter\ndef count(s):\n    return Counter(s)\n",
         "assert count('aab') == {'a': 2, 'b': 1}", "assert sorted(count('ba')) == ['a', 'b']", reason=Reason.PASSED),
    case("floats_and_math", "honest", "area", "import math\ndef area(r):\n    return math.pi * r * r\n",
         "assert math.isclose(area(1), 3.14159, rel_tol=1e-5)", "assert round(area(2), 2) == 12.57",
         reason=Reason.PASSED),
    case("strings_and_re", "honest", "slug", "import re\ndef slug(s):\n    return re.sub('[^a-z]+', '-', s.lower())\n",
         "assert slug('Hello World') == 'hello-world'", "assert re.fullmatch('[a-z-]+', slug('A b')) is not None",
         reason=Reason.PASSED),
    case("none_and_bools", "honest", "first_even", """
        def first_even(xs):
            return next((x for x in xs if x % 2 == 0), None)
        """, "assert first_even([1, 3]) is None", "assert first_even([1, 4, 6]) == 4", reason=Reason.PASSED),
    case("predicate", "honest", "is_prime", """
        def is_prime(n):
            return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))
        """, "assert is_prime(7)", "assert not is_prime(9)",
         "assert [n for n in range(10) if is_prime(n)] == [2, 3, 5, 7]",
         reason=Reason.PASSED),
    case("big_ints_and_tuples", "honest", "fib", """
        def fib(n):
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            return a, n
        """, "assert fib(200) == (280571172992510140037611932413038677189525, 200)", reason=Reason.PASSED),
    case("patches_for_itself", "honest", "double", "import os\nos.write = lambda fd, data: len(data)\n"
         "print('noise')\ndef double(x):\n    return 2 * x\n", *DOUBLES, reason=Reason.PASSED),
]  # fmt: skip

CATEGORIES = ("vacuous", "forged", "patched", "same_type")
