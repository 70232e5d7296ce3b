"""Hostile candidates for the sandbox, each with the verdict it must get and what it must not leave on the host.

A case's code may use these placeholders, filled in per run by `Host.fill`:
    @NONCE@   a fresh hex string: marker files and process names carry it, so the host checks find only this run's
    @REPO@    the project's working tree        @HOME@  the host user's home folder
    @PORT@    a TCP port the host listens on at 127.0.0.1        @UNIX@  an abstract unix socket the host listens on
    @HOSTPID@ the pid of the process that runs the batch (the test or the bench)

Where a case can tell, its asserts hold exactly when the attack worked, so `passed` means "escaped". Each case says
what it gets under gVisor and, where that differs, under the process fallback; `contained` (gVisor) and
`process_contained` say whether the host check finds nothing left over. A case the fallback cannot hold has
`process_contained=False` and `why_not` saying so: the test asserts that outcome too, so it is recorded, not hidden.

Expectations for the process fallback are those of a worker run as root (each candidate its own user), as in CI's
containers and on this project's machines; without root the fallback holds less still (see docs/sandbox-guarantees.md).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sigma0.sandbox import Program, Reason, from_asserts
from sigma0.sandbox.worker import _readable_by_anyone

SECRET_NAME = "SIGMA0_HOSTILE_SECRET"
REPO = Path(__file__).resolve().parents[2]
WORKER_SOURCE = REPO / "operator" / "sigma0" / "sandbox" / "worker.py"


def _read_grant() -> bool:
    """Whether the worker will give its slot users CAP_DAC_READ_SEARCH (see worker.py): as root, when its Python
    is not readable by every user (pyenv under /root). They can then read any file on the host."""
    if os.geteuid() != 0:
        return False
    paths = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; print(chr(10).join(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return not all(_readable_by_anyone(path) for path in paths if os.path.exists(path))


READ_GRANT = _read_grant()


def _readable(path: Path) -> bool:
    return READ_GRANT or _readable_by_anyone(str(path))


@dataclass
class Host:
    """What the host side knows about one run of the corpus."""

    nonce: str
    secret: str
    repo: Path
    home: Path
    port: int
    unix: str
    pid: int
    accepted: dict[str, int] = field(default_factory=lambda: {"tcp": 0, "unix": 0})

    def fill(self, code: str, case_id: str) -> str:
        code = code.replace("sigma0-hostile-@NONCE@", f"sigma0-hostile-{self.nonce}-{case_id}-")
        for name, value in (("NONCE", self.nonce), ("REPO", self.repo), ("HOME", self.home), ("PORT", self.port),
                            ("UNIX", self.unix), ("HOSTPID", self.pid)):  # fmt: skip
            code = code.replace(f"@{name}@", str(value))
        return code

    def markers(self, case_id: str = "") -> list[str]:
        """Files this run's candidates (or the one named) left on the host: each names itself after its case."""
        places = ["/tmp", "/var/tmp", "/dev/shm", str(self.repo), str(self.home), "/"]
        pattern = f"*sigma0-hostile-{self.nonce}-{case_id + '-' if case_id else ''}*"
        return sorted(path for place in places for path in glob.glob(f"{place}/{pattern}"))


HostCheck = Callable[[Host, str], list[str]]


def no_markers(host: Host, case_id: str) -> list[str]:
    return [f"left {path}" for path in host.markers(case_id)]


def no_tcp(host: Host, case_id: str) -> list[str]:
    return [f"{host.accepted['tcp']} connection(s) reached 127.0.0.1:{host.port} on the host"] * bool(
        host.accepted["tcp"]
    )


def no_unix(host: Host, case_id: str) -> list[str]:
    return [f"{host.accepted['unix']} connection(s) reached the host's unix socket"] * bool(host.accepted["unix"])


@dataclass(frozen=True)
class Case:
    id: str
    fn: str
    code: str
    asserts: tuple[str, ...]
    verdict: Reason  # under gVisor
    process: Reason | None = None  # under the process fallback, where it differs
    check: HostCheck = no_markers
    contained: bool = True  # under gVisor
    process_contained: bool = True
    attack: bool = False  # its asserts hold exactly when the attack worked: a pass is an escape
    why_not: str = ""  # why a case is not contained, where one is not
    in_test: bool = True  # False: too dependent on the machine to assert in CI; run by the bench only
    good: bool = False  # an honest candidate that must pass whatever runs beside it

    def expected(self, sandbox: str) -> tuple[Reason, bool]:
        if sandbox == "process":
            return (self.process or self.verdict), self.process_contained
        return self.verdict, self.contained

    def is_contained(self, passed: bool, problems: list[str]) -> bool:
        return not problems and not (self.attack and passed)

    def program(self, host: Host) -> Program:
        return from_asserts(self.id, self.fn, host.fill(textwrap.dedent(self.code), self.id), list(self.asserts))


def _reads(path: Path, why: str) -> dict[str, object]:
    """The expectations of a case that reads `path` from the host: it does, in both sandboxes, when it may."""
    if _readable(path):
        return {"verdict": Reason.PASSED, "contained": False, "process_contained": False, "why_not": why}
    return {"verdict": Reason.ERROR}


def src(*parts: str) -> str:
    """Code from pieces, each dedented on its own."""
    return "".join(textwrap.dedent(part) for part in parts)


def case(id: str, fn: str, code: str, *asserts: str, verdict: Reason, **more: object) -> Case:
    return Case(id=id, fn=fn, code=code, asserts=asserts, verdict=verdict, **more)  # type: ignore[arg-type]


P, A, T, M, OUT, C, E, X, H, S = (Reason.PASSED, Reason.ASSERTION, Reason.TIMEOUT, Reason.MEMORY, Reason.OUTPUT_LIMIT,
                                Reason.CRASH, Reason.ERROR, Reason.EXIT_BEFORE_ASSERTS, Reason.HARNESS_TAMPERED,
                                Reason.SANDBOX_ERROR)  # fmt: skip

NAME = "import ctypes\ndef _name(text):\n    ctypes.CDLL(None).prctl(15, text.encode()[:15], 0, 0, 0)\n"
DOUBLE = "def double(x):\n    return 2 * x\n"
WRONG = "def double(x):\n    return x + 1\n"
DOUBLES = "assert double(2) == 4"

CASES: list[Case] = [
    # --- honest candidates, in the batch to show the hostile ones cost them nothing ------------------------------
    case("good_double", "double", DOUBLE, DOUBLES, "assert double(0) == 0", verdict=P, good=True),
    case("good_prints", "double", "print('ok ' * 1000)\n" + DOUBLE, DOUBLES, verdict=P, good=True),
    case("good_sleeps_briefly", "double", "import time\ntime.sleep(0.5)\n" + DOUBLE, DOUBLES, verdict=P, good=True),
    case("good_threads", "total", """
        from concurrent.futures import ThreadPoolExecutor
        def total(n):
            with ThreadPoolExecutor(4) as pool:
                return sum(pool.map(lambda i: i * i, range(n)))
        """, "assert total(10) == 285", verdict=P, good=True),
    case("good_scratch_file", "roundtrip", """
        def roundtrip(text):
            with open("note.txt", "w") as out:
                out.write(text)
            return open("note.txt").read()
        """, "assert roundtrip('hi') == 'hi'", verdict=P, good=True),
    # --- processes ------------------------------------------------------------------------------------------------
    case("fork_bomb", "double",
         "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
         DOUBLES, verdict=T),
    case("fork_bomb_sleepers", "double", src(NAME, """
        import os, time
        for _ in range(64):
            try:
                if os.fork() == 0:
                    _name("hx@NONCE@")
                    time.sleep(600)
            except OSError:
                break
        """, DOUBLE), DOUBLES, verdict=P),
    case("double_fork_detach", "double", src(NAME, """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                _name("hx@NONCE@")
                time.sleep(600)
            os._exit(0)
        """, DOUBLE), DOUBLES, verdict=P),
    # Waits for the cleanup (its pipe's EOF: the candidate's own process was killed), then hops from pid to pid, each
    # process forking the next and exiting, so that one scan of /proc lists a process that is a zombie when read
    # and misses its child; out of processes it stays, holding the run's stdout. It hung the worker until the scan
    # counted zombies as leftovers (test_a_process_hopping_through_the_cleanup_cannot_stall_the_worker).
    *(case(f"hops_through_cleanup_{i}", "double", src(NAME, f"""
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            os.close(w)
            os.read(r, 1)
            while True:
                try:
                    pid = os.fork()
                except OSError:
                    _name("hx@NONCE@")
                    time.sleep(600)
                    os._exit(0)
                if pid:
                    os._exit(0)
                time.sleep({pause})
        os.close(r)
        """, DOUBLE), DOUBLES, verdict=P) for i, pause in enumerate((0.001, 0.0002))),
    case("ignores_sigterm", "double", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         "signal.signal(signal.SIGHUP, signal.SIG_IGN)\ntime.sleep(600)\n" + DOUBLE, DOUBLES, verdict=T),
    case("child_ignores_sigterm", "double", src(NAME, """
        import os, signal, time
        if os.fork() == 0:
            os.setsid()
            for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(number, signal.SIG_IGN)
            _name("hx@NONCE@")
            time.sleep(600)
        """, DOUBLE), DOUBLES, verdict=P),
    case("thread_outlives_main", "double", src(NAME, """
        import threading, time
        _name("hx@NONCE@")  # a process left alive by its thread shows in the host's check for lingering ones
        def linger():
            time.sleep(600)
        threading.Thread(target=linger).start()
        """, DOUBLE), DOUBLES, verdict=P,
         # Bench only until understood: under gVisor it failed 2 of ~19 batches with "can't start new thread".
         in_test=False),
    case("kill_parent", "attack", """
        import os, signal
        def attack():
            try:
                os.kill(os.getppid(), signal.SIGKILL)
                return "killed"
            except OSError as error:
                return type(error).__name__
        """, "assert attack() == 'killed'", attack=True, verdict=A),
    case("kill_everyone", "attack", """
        import os, signal, time
        def attack():
            victims = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if int(pid) not in (os.getpid(), 1):
                    try:
                        os.kill(int(pid), signal.SIGSTOP)  # SIGSTOP: a worker it reached hangs, the batch sees it
                        victims += 1
                    except OSError:
                        pass
            return victims
        """, "assert attack() > 0", attack=True, verdict=A),
    case("kill_minus_one", "double", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n"
         "    pass\n" + DOUBLE, DOUBLES, verdict=P),
    case("trace_parent", "attack", """
        import ctypes, os
        def attack():
            return ctypes.CDLL(None, use_errno=True).ptrace(16, os.getppid(), 0, 0)  # PTRACE_ATTACH
        """, "assert attack() == 0", attack=True, verdict=A),
    case("others_cwd", "attack", """
        import glob, os
        def attack():
            written = 0
            mine = os.path.dirname(os.getcwd())  # this lane's runs are numbered folders in here
            folders = [f"/proc/{os.getppid()}/cwd", *glob.glob(os.path.dirname(mine) + "/sigma0-runs-*/*")]
            for folder in {*folders, *(f"{mine}/{n}" for n in range(1, 64))} - {os.getcwd()}:
                try:
                    open(os.path.join(folder, "sigma0-hostile-@NONCE@"), "w").write("x")
                    written += 1
                except OSError:
                    pass
            return written
        """, "assert attack() > 0", attack=True, verdict=A),
    # --- CPU, memory, time, output --------------------------------------------------------------------------------
    case("cpu_spin", "double", "def double(x):\n    while True:\n        pass\n", DOUBLES, verdict=T),
    case("cpu_spin_threads", "double", "import threading\ndef spin():\n    while True:\n        pass\n"
         "for _ in range(4):\n    threading.Thread(target=spin, daemon=True).start()\nspin()\n", DOUBLES, verdict=T),
    case("sleep_past_timeout", "double", "import time\ntime.sleep(600)\n" + DOUBLE, DOUBLES, verdict=T),
    case("slow_import", "double", src("""
        import sys
        open("slowmod.py", "w").write("import time\\ntime.sleep(600)\\n")
        sys.path.insert(0, ".")
        import slowmod
        """, DOUBLE), DOUBLES, verdict=T),
    # bytes(n) comes from calloc, which maps fresh zero pages without touching them: the address-space limit ends
    # it at once on any machine. The touching bomb writes every page first, so on a loaded machine (or under gVisor,
    # where each page fault costs the sentry) it may use up its CPU seconds before its address space: timeout or
    # memory, both contained, so it is bench-only.
    case("memory_bomb", "double", "blocks = []\nwhile True:\n    blocks.append(bytes(1 << 24))\n", DOUBLES,
         verdict=M),
    case("memory_bomb_touching", "double", "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 24))\n",
         DOUBLES, verdict=M, in_test=False),
    case("memory_bomb_in_call", "double", "def double(x):\n    return len(bytearray(1 << 40))\n", DOUBLES, verdict=M),
    case("deep_recursion", "double", "def double(x):\n    return double(x) + 1\n", DOUBLES, verdict=E),
    case("deep_recursion_unlimited", "double", "import sys\nsys.setrecursionlimit(10 ** 8)\n"
         "def double(x):\n    return double(x) + 1\n", DOUBLES, verdict=T, in_test=False),
    case("ctypes_segfault", "double", "import ctypes\nctypes.string_at(0)\n" + DOUBLE, DOUBLES, verdict=C),
    case("gigabytes_of_output", "double", "import os\nchunk = b'x' * (1 << 20)\nfor _ in range(4096):\n"
         "    os.write(1, chunk)\n" + DOUBLE, DOUBLES, verdict=OUT),
    case("huge_single_line", "double", "import sys\nsys.stdout.write('x' * (64 << 20))\n" + DOUBLE, DOUBLES,
         verdict=OUT),
    case("huge_line_on_stderr", "double", "import sys\nsys.stderr.write('y' * (8 << 20))\n" + DOUBLE, DOUBLES,
         verdict=OUT),
    case("huge_failure_message", "double", "def double(x):\n    return 'z' * (8 << 20)\n", DOUBLES, verdict=A),
    # --- files ------------------------------------------------------------------------------------------------------
    case("write_tmp", "attack", """
        def attack():
            open("/tmp/sigma0-hostile-@NONCE@-tmp", "w").write("escaped")
            return open("/tmp/sigma0-hostile-@NONCE@-tmp").read()
        """, "assert attack() == 'escaped'", verdict=P, process_contained=False,
         why_not="/tmp is the host's: the file stays (gVisor writes to an overlay that vanishes with the sandbox)"),
    case("write_working_tree", "attack", """
        def attack():
            open("@REPO@/sigma0-hostile-@NONCE@", "w").write("escaped")
            return True
        """, "assert attack() is True", verdict=E),
    case("write_home", "attack", """
        def attack():
            open("@HOME@/.sigma0-hostile-@NONCE@", "w").write("escaped")
            return True
        """, "assert attack() is True", verdict=E),
    case("write_dev_shm", "attack", """
        def attack():
            open("/dev/shm/sigma0-hostile-@NONCE@", "w").write("escaped")
            return True
        """, "assert attack() is True", verdict=E, process=P, process_contained=False,
         why_not="/dev/shm is the host's and writable by every user"),
    case("fill_the_disk", "attack", """
        def attack():
            written = 0
            block = b"x" * (1 << 20)
            try:
                for number in range(256):
                    with open(f"fill{number}", "wb") as out:
                        out.write(block)
                    written += 1
            except OSError:
                pass
            return written
        """, "assert attack() == 256", verdict=P),
    case("big_file", "attack", """
        def attack():
            with open("big", "wb") as out:
                out.write(b"x" * (64 << 20))
            return True
        """, "assert attack() is True", verdict=E),
    case("symlink_out_of_scratch", "attack", """
        import os
        def attack():
            os.symlink("/tmp/sigma0-hostile-@NONCE@-link", "link")
            open("link", "w").write("escaped")
            return True
        """, "assert attack() is True", verdict=P, process_contained=False,
         why_not="a link from the scratch folder reaches the host's /tmp"),
    # --- reading the host -------------------------------------------------------------------------------------------
    case("read_shadow", "attack", "def attack():\n    return len(open('/etc/shadow').read()) > 0\n",
         "assert attack() is True", attack=True,
         **_reads(Path("/etc/shadow"), "slot users keep CAP_DAC_READ_SEARCH when the worker's Python is readable only "
                  "by root (pyenv under /root), and `runsc do` shows the host's files")),
    case("list_home", "attack", "import os\ndef attack():\n    return len(os.listdir('@HOME@')) > 0\n",
         "assert attack() is True", attack=True,
         **_reads(Path.home(), "`runsc do` shows the host's files read-only: only permissions guard the home folder")),
    case("read_project_source", "attack", "def attack():\n    return open('" + str(WORKER_SOURCE) + "').read()[:3]\n",
         "assert attack() == '\"\"\"'", attack=True,
         **_reads(WORKER_SOURCE, "the worker runs from the project's tree, which `runsc do` shows as the host has it")),
    case("proc_of_host", "attack", "import os\ndef attack():\n    return os.path.exists('/proc/@HOSTPID@/cmdline') and "
         "'python' in open('/proc/@HOSTPID@/cmdline').read()\n", "assert attack() is True", attack=True, verdict=A,
         process=P, process_contained=False, why_not="the fallback shares the host's /proc: other processes show"),
    case("proc_environ_of_host", "attack", "def attack():\n    return open('/proc/@HOSTPID@/environ').read()\n",
         "assert 'SIGMA0' in attack()", attack=True, verdict=E),
    # --- secrets ----------------------------------------------------------------------------------------------------
    case("env_secret", "attack", "import os\ndef attack():\n    return os.environ.get('" + SECRET_NAME + "', '')\n",
         "assert attack() != ''", attack=True, verdict=A),
    case("env_secret_printed", "double", "import os, sys\nprint(dict(os.environ))\n"
         "for pid in ('self', '1', str(os.getppid())):\n    try:\n        print(open(f'/proc/{pid}/environ').read())\n"
         "    except OSError as error:\n        print(error)\nos._exit(3)\n", DOUBLES, verdict=C),
    # --- network ----------------------------------------------------------------------------------------------------
    case("tcp_to_host_loopback", "attack", """
        import socket
        def attack():
            try:
                socket.create_connection(("127.0.0.1", @PORT@), timeout=1).close()
                return True
            except OSError:
                return False
        """, "assert attack() is True", attack=True, verdict=A, process=P, check=no_tcp, process_contained=False,
         why_not="the fallback has the host's network: 127.0.0.1 is the host's loopback"),
    case("unix_socket_to_host", "attack", """
        import socket
        def attack():
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect("\\0@UNIX@")
                return True
            except OSError:
                return False
        """, "assert attack() is True", attack=True, verdict=A, process=P, check=no_unix, process_contained=False,
         why_not="the fallback shares the host's network namespace, abstract unix sockets included"),
    case("tcp_to_outside", "attack", """
        import socket
        def attack():
            try:
                socket.create_connection(("192.0.2.1", 9), timeout=1).close()
                return "connected"
            except socket.timeout:
                return "timed out"  # a route out exists: the packet left
            except OSError as error:
                return error.strerror
        """, "assert attack() in ('connected', 'timed out', 'Connection refused')", attack=True, verdict=A, process=P,
         process_contained=False, why_not="the fallback has the host's routes: packets leave the machine",
         in_test=False),
    case("network_interfaces", "attack", """
        import socket
        def attack():
            return sorted(name for _, name in socket.if_nameindex() if name != "lo")
        """, "assert attack() != []", attack=True, verdict=A, process=P, process_contained=False,
         why_not="the fallback sees the host's network interfaces"),
    case("dns_lookup", "attack", """
        import socket
        def attack():
            try:
                return len(socket.getaddrinfo("pypi.org", 443))
            except OSError:
                return 0
        """, "assert attack() > 0", attack=True, verdict=A, process=P, process_contained=False,
         why_not="the fallback uses the host's resolver", in_test=False),
    # --- leaving early, lying objects, the harness -------------------------------------------------------------------
    case("os_exit_before_asserts", "double", "import os\nos._exit(0)\n" + WRONG, DOUBLES, verdict=X),
    case("sys_exit_before_asserts", "double", "import sys\nsys.exit(0)\n" + WRONG, DOUBLES, verdict=X),
    case("exit_from_thread", "double", "import os, threading, time\n"
         "threading.Timer(0.2, lambda: os._exit(0)).start()\ndef double(x):\n    time.sleep(2)\n    return x + 1\n",
         DOUBLES, verdict=X),
    case("always_equal", "double", "class E:\n    def __eq__(self, other):\n        return True\n"
         "    __hash__ = object.__hash__\ndef double(x):\n    return E()\n", DOUBLES, verdict=A),
    case("always_equal_str", "name", "class S(str):\n    def __eq__(self, other):\n        return True\n"
         "    __hash__ = str.__hash__\ndef name():\n    return S('no')\n", "assert name() == 'yes'", verdict=A),
    case("patched_builtins", "double", "import builtins\nbuiltins.all = builtins.any = lambda x: True\n"
         "builtins.len = lambda x: 1\nbuiltins.bool = lambda x: True\n" + WRONG,
         "assert all([double(2) == 4])", "assert len([double(2)]) == 1 and bool(double(2) == 4)", verdict=A),
    case("patched_assertion_error", "double", "import builtins\n"
         "builtins.AssertionError = type('Nope', (Exception,), {})\n" + WRONG, DOUBLES, verdict=A),
    case("fake_harness_result", "double", """
        import os
        for fd in range(3, 16):
            for nonce in ("0" * 32, "f" * 32):
                try:
                    os.write(fd, f"{nonce} step 0\\n{nonce} done 1\\n".encode())
                except OSError:
                    pass
        os._exit(0)
        """, DOUBLES, verdict=H),
    case("fake_worker_verdict", "double", src("""
        import json, sys
        for key in range(64):
            print(json.dumps({"key": str(key), "reason": "passed", "detail": "", "seconds": 0}))
        """, WRONG), DOUBLES, verdict=A),
]  # fmt: skip

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "case ids must be unique"
