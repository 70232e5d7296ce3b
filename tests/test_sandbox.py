"""The execution gate's sandbox: strict checks, the report protocol, confinement, and every trick a candidate might
use to pass without its asserts holding. Runtime tests run under both sandboxes; each sandbox runs one shared batch
(module-scoped fixture) so the whole file stays fast."""

from __future__ import annotations

import ast
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
    harness,
    resolve_sandbox,
    run_programs,
    runner,
    worker,
)
from sigma0.sandbox.programs import strict_expression, strict_test_code
from sigma0.suites import Subset, load_suite

HAS_RUNSC = shutil.which("runsc") is not None
SANDBOXES = [
    "process",
    pytest.param("gvisor", marks=pytest.mark.skipif(not HAS_RUNSC, reason="runsc is not on PATH (CI installs it)")),
]
TIMEOUT = 2.0
LIMITS = Limits(memory_mb=256, cpu_seconds=1, file_size_mb=1, max_processes=16, output_bytes=64 * 1024)


# --- the strict checks, in this process ------------------------------------------------------------------------------


class AlwaysEqual:
    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__


@dataclass
class Point:
    x: int
    y: int


def test_plain_data_compares_as_python_does() -> None:
    assert harness.compare(("==",), 4, 4.0)
    assert harness.compare(("==",), [1, (2, "a")], [1, (2, "a")])
    assert not harness.compare(("==",), [1, 2], (1, 2))
    assert harness.compare(("!=",), "a", None)
    assert harness.compare(("<", "<="), 1, 2, 2)
    assert harness.compare(("in",), "b", "abc") and harness.compare(("not in",), 3, {1: 2})


def test_an_always_equal_object_fails_every_comparison_with_plain_data() -> None:
    for ops, operands in [
        (("==",), (AlwaysEqual(), 3)),
        (("==",), (3, AlwaysEqual())),
        (("!=",), (AlwaysEqual(), 3)),
        (("==",), ([AlwaysEqual()], [3])),
        (("in",), (3, [AlwaysEqual()])),
        (("<",), (AlwaysEqual(), 3)),
    ]:
        with pytest.raises(harness.Untrusted):
            harness.compare(ops, *operands)


def test_subclasses_of_builtin_types_are_read_as_the_builtin_type_sees_them() -> None:
    class Sneaky(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    class Liar(list):
        def __eq__(self, other: object) -> bool:
            return True

        def __len__(self) -> int:
            return 3

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([1, 2, 3])

    assert not harness.is_plain(Sneaky(1))
    assert not harness.compare(("==",), Sneaky(1), 2) and harness.compare(("==",), Sneaky(2), 2)
    assert not harness.compare(("==",), Liar(), [1, 2, 3]) and not harness.truth(Liar())
    assert not harness.compare(("in",), 1, Liar()) and not harness.compare(("==",), [Sneaky(1)], [2])
    point = collections.namedtuple("point", "x y")
    assert harness.compare(("==",), point(1, 2), (1, 2)) and harness.compare(("<",), point(1, 2), (1, 3))
    assert harness.compare(("==",), collections.Counter("aab"), {"a": 2, "b": 1})
    assert harness.compare(("==",), collections.defaultdict(list, {"k": [1]}), {"k": [1]})


def test_objects_of_one_type_use_that_type_and_none_compares_by_identity() -> None:
    assert harness.compare(("==",), Point(1, 2), Point(1, 2))
    assert not harness.compare(("==",), Point(1, 2), Point(2, 1))
    assert not harness.compare(("==",), AlwaysEqual(), None)
    assert harness.compare(("is", "is not"), None, None, 1)


def test_truth_is_decided_only_for_plain_data() -> None:
    class Liar:
        def __bool__(self) -> bool:
            return True

    assert harness.truth([1]) is True and harness.truth("") is False
    with pytest.raises(harness.Untrusted):
        harness.truth(Liar())
    with pytest.raises(harness.Untrusted):
        harness.all_([True, Liar()])


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@settings(deadline=None)
@given(plain, plain)
def test_strict_equality_agrees_with_python_on_plain_data(left: object, right: object) -> None:
    if left is None or right is None:
        assert harness.compare(("==",), left, right) is (left is right)
    else:
        assert harness.compare(("==",), left, right) is (left == right)
        assert harness.compare(("!=",), left, right) is (left != right)


def _strict(source: str) -> str:
    return strict_expression(ast.parse(source, mode="eval").body)


def _evaluate(source: str, **names: object) -> object:
    return eval(_strict(source), {"__sigma0__": harness.Checker, **names})


def test_rewriting_reaches_comparisons_and_truth_tests_anywhere_in_the_assert() -> None:
    cheat = {"f": lambda x: AlwaysEqual()}
    honest = {"f": lambda x: x * 2}
    for source in [
        "f(2) == 4",
        "all(f(x) == 2 * x for x in range(3))",
        "any([f(1) == 2])",
        "len([x for x in range(3) if f(x) == 2 * x]) == 3",
        "not f(1) != 2",
        "(f(1) == 2) if True else False",
        "bool(f(1) == 2) and 1 < 2",
    ]:
        assert _evaluate(source, **honest) is True, source
        with pytest.raises(harness.Untrusted):
            _evaluate(source, **cheat)
    assert _strict("1 < x < 3") == "__sigma0__.compare(('<', '<'), 1, x, 3)"


def test_rows_without_real_asserts_are_refused_without_running() -> None:
    code = "def f(x):\n    return x\n"
    cases = {
        Reason.NO_ASSERTS: [[], "", "\n  \n"],
        Reason.ASSERTS_WITHOUT_CALL: [["assert True"], ["assert f(1) == 1", "assert 1 == 1"]],
        Reason.INVALID_ASSERTS: [["print(f(1))"], ["assert f(1) == 1\nx = 2"], [3], {"a": 1}, 7],
        Reason.SYNTAX: [["assert f(1) =="], ["assert f(1) == 1 )"]],
    }
    for reason, variants in cases.items():
        for asserts in variants:
            program = from_asserts("r", "f", code, asserts)
            assert program.rejected is not None and program.rejected[0] is reason, (asserts, program.rejected)
    accepted = from_asserts("r", "f", code, "assert f(1) == 1\nassert obj.f(2) == 2 or f(2) == 2\n")
    assert accepted.rejected is None and len(accepted.checks) == 2


def test_suite_test_code_gets_strict_asserts_and_keeps_everything_else() -> None:
    test = 'METADATA = {"a": 1}\n\ndef check(candidate):\n    assert candidate(1) == 2, "message"\n    x = [1] == [1]\n'
    rewritten = strict_test_code(test)
    assert "__sigma0__.compare(('==',), candidate(1), 2)" in rewritten
    assert "x = [1] == [1]" in rewritten and "METADATA" in rewritten


# --- the report protocol, decided by the worker --------------------------------------------------------------------


def _run(report: bytes, status: int = 0, checks: int = 2, killed_for: str | None = None) -> worker.Run:
    job = {"key": "k", "checks": ["c"] * checks, "labels": ["l"] * checks}
    run = worker.Run(job, slot=0, nonce="n0nce", workdir="/nowhere", started=0.0, deadline=10.0)
    run.report, run.status, run.killed_for = bytearray(report), status, killed_for
    return run


def _decide(run: worker.Run) -> tuple[str, str]:
    limits = {"cpu_seconds": 11, "output_bytes": 1000}
    return worker.decide(run, limits, ("syntax", "assertion", "error", "memory", "exit_before_asserts"))


def test_only_every_step_then_done_with_the_nonce_and_status_zero_is_a_pass() -> None:
    full = b"n0nce step 0\nn0nce step 1\nn0nce done 2\n"
    assert _decide(_run(full))[0] == "passed"
    assert _decide(_run(full, status=1 << 8))[0] == "crash"
    assert _decide(_run(b"n0nce step 0\n"))[0] == "exit_before_asserts"
    assert _decide(_run(b""))[0] == "exit_before_asserts"
    assert _decide(_run(b"n0nce step 0\nn0nce fail assertion check 2 failed\n", status=1 << 8)) == (
        "assertion",
        "check 2 failed",
    )
    assert _decide(_run(full, killed_for="timeout"))[0] == "timeout"
    assert _decide(_run(full, killed_for="output_limit"))[0] == "output_limit"


@pytest.mark.parametrize(
    "report",
    [
        b"guess step 0\nguess step 1\nguess done 2\n",  # wrong nonce
        b"n0nce step 0\nn0nce done 2\n",  # done before every step
        b"n0nce step 1\nn0nce step 0\nn0nce done 2\n",  # out of order
        b"n0nce step 0\nn0nce step 0\nn0nce step 1\nn0nce done 2\n",  # a step twice
        b"n0nce step 0\nn0nce step 1\nn0nce done 2\nn0nce done 2\n",  # anything after done
        b"n0nce fail passed \n",  # not a failure reason
        b"n0nce step 0\nn0nce step 1\nn0nce done 2",  # unterminated
    ],
)
def test_a_report_the_harness_did_not_write_is_tampering(report: bytes) -> None:
    assert _decide(_run(report))[0] == "harness_tampered"


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
            'assert probe()["fds"][:4] == [0, 1, 2, 3] and len(probe()["fds"]) <= 5',
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
        Reason.ASSERTION,
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
            import sigma0.sandbox.harness as h
            h.compare = h.truth = lambda *a: True
            h.Checker.compare = staticmethod(lambda *a: True)
            __main__.decide = lambda *a: ("passed", "")
            for module in list(sys.modules.values()):
                if hasattr(module, "Checker"):
                    module.Checker.truth = staticmethod(lambda *a: True)
            def double(x):
                return x + 1
            """, "assert double(2) == 4"),
        Reason.ASSERTION,
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
    "memory_bomb": (row("double", "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 24))\n",
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
        def spawned():
            return True
        """
    )
    checker = textwrap.dedent(
        """
        import os
        def leftovers():
            names = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = open(f"/proc/{pid}/stat").read()
                    if stat[stat.rindex(")") + 2] != "Z":
                        names.append(stat[stat.index("(") + 1 : stat.rindex(")")])
                except OSError:
                    pass
            return sorted(name for name in names if name.startswith("sigma0-"))
        """
    )
    checks = [
        from_asserts("spawner", "spawned", spawner, ["assert spawned() is True"]),
        from_asserts("checker", "leftovers", checker, ["assert leftovers() == []"]),
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
                return True
            except OSError:
                return False
        """
    )
    program = from_asserts("net", "reach", code, ["assert reach('8.8.8.8', 53) is False"])
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
