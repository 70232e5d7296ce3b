"""The warm worker and judge: started once per lane (inside `runsc do` under gVisor, or as a plain process), it reads
jobs as JSON lines on stdin and writes one verdict per job as a JSON line on stdout, forking a fresh child per job.

Run as `python -I -B -u worker.py`. Standard library only: it must start inside a bare sandbox image.

Protocol
    stdin   first line: {"uid_base", "token", "base", "timeout", "limits": {...}}; then one job per line:
            {"key", "code", "trusted", "entry", "checks": [...], "labels": [...], "fn"}; EOF means no more jobs.
    stdout  first line: {"ready": true, ...}; then one verdict per job, in order:
            {"key", "reason", "detail", "seconds"}; every line carries the configuration's token.

The worker is the judge (judge.py): it never executes a line of candidate code. Per job it forks a child that runs
the candidate's code (harness.py) and then only answers questions over a pipe pair ("call this with these
arguments"); the judge evaluates the checks with handles in place of the candidate's names, and decides. The
child's exit status, its output and anything it writes decide nothing but how it failed.

Each child: its own session and process group, stdin on /dev/null, stdout+stderr on a capped pipe, its request and
reply pipes on fds 3 and 4 and nothing else open, a private temporary folder as cwd, a scrubbed environment,
RLIMIT_AS/CPU/FSIZE/NPROC/NOFILE/CORE, and, when the worker runs as root (always inside `runsc do`), a user id of its
own, so that it cannot signal, trace or read the judge. Without root the judge makes itself non-dumpable
(PR_SET_DUMPABLE 0), so that a child of the same user cannot ptrace it or open its /proc/PID/mem or fds; it can
still kill it, which fails the candidate (sandbox_error), never passes it. When a job is decided, or at the
wall-clock deadline, every process the child left behind is killed: the process group, every process of the slot's
user (root), and orphans reparented to the worker (not root).

Cost: inside gVisor a fork costs the forking process time in proportion to its memory mappings, and every system
call tens of microseconds (ptrace platform). So this worker imports little (every extension module adds mappings to
every fork) and a check's round trip to the child is a handful of system calls.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import gc
import json
import os
import resource
import select
import signal
import stat
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str) -> Any:
    """One of the sandbox's own modules (standard library only), loaded from this folder with a builtins dictionary
    of its own: the child runs harness and wire after the candidate's code, which may replace `builtins.len`."""
    module = type(sys)(name)
    module.__dict__["__builtins__"] = dict(builtins.__dict__)
    sys.modules[name] = module
    path = os.path.join(HERE, name + ".py")
    with open(path, encoding="utf-8") as handle:
        exec(compile(handle.read(), path, "exec"), module.__dict__)
    return module


wire = _load("wire")
harness = _load("harness")
sys.path.insert(0, HERE)
import judge  # noqa: E402  (runs only here, in the judge, where no candidate code ever runs)

_exit = os._exit

OUTPUT_TAIL = 2000
GONE_GRACE = 500
LEFTOVER_SECONDS = 5.0  # for the kills after a run (Worker.kill_leftovers)
"""How many milliseconds a child that closed its reply pipe gets to exit by itself before it is killed."""
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
FAILURES_FROM_CHILD = ("syntax", "error", "memory", "exit_before_asserts")
"""What a child may say about itself before it is asked anything: only ways to fail."""


SUITE_MODULES = frozenset(
    judge.words(
        "math cmath string re collections itertools functools heapq bisect typing random statistics fractions "
        "decimal operator hashlib json copy datetime numbers array dataclasses enum"
    )
)
"""Modules a candidate imported that a suite's test code may use: the judge's own copy, never the child's."""


class JudgeTimeout(BaseException):
    """The job's wall-clock deadline passed (SIGALRM)."""


class ChildGone(Exception):
    """The child closed its reply pipe: it exited or was killed."""


class OutputFlood(Exception):
    """The child wrote more than its output cap."""


class LeftoversSurvived(Exception):
    """A run's processes outlived the kills after it: the worker stops rather than run the next job beside them."""


class ForeignModule:
    """A module of the candidate's that the judge does not use: any use of it fails."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<candidate's module {self.name}>"


def _alarm(_number: int, _frame: Any) -> None:
    raise JudgeTimeout


class Child:
    """One candidate's process, as the judge sees it: a channel to ask it questions, and its output."""

    def __init__(self, pid: int, request: int, reply: int, output: int, workdir: str, suite: bool, cap: int) -> None:
        self.pid, self.request, self.reply, self.output = pid, request, reply, output
        self.workdir = workdir
        self.suite = suite
        self.cap = cap
        self.buffer = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.output_bytes = 0
        self.output_open = True
        self.handles: dict[int, judge.Handle] = {}
        self.status = -1
        self.cpu_seconds = 0.0
        self.calls = 0

    # --- the channel ------------------------------------------------------------------------------------------------

    def receive(self) -> Any:
        """The next message from the child, while its output is drained; ChildGone at its end."""
        while True:
            body = wire.split(self.buffer)
            if body is not None:
                return wire.parse(body)
            fds = [self.reply, self.output] if self.output_open else [self.reply]
            ready, _, _ = select.select(fds, [], [])
            if self.output in ready and self.output_open:
                self.drain()
            if self.reply in ready:
                chunk = os.read(self.reply, 1 << 16)
                if not chunk:
                    raise ChildGone
                self.buffer += chunk

    def drain(self) -> None:
        chunk = os.read(self.output, 1 << 16)
        if not chunk:
            self.output_open = False
            return
        self.output_bytes += len(chunk)
        self.tail.append(chunk)
        while len(self.tail) > 1 and sum(map(len, self.tail)) - len(self.tail[0]) >= OUTPUT_TAIL:
            self.tail.popleft()
        if self.output_bytes > self.cap:
            raise OutputFlood

    def ask(self, request: list[Any]) -> Any:
        """Send a request (arguments as the judge holds them) and return the decoded answer (see judge.Ask)."""
        self.calls += 1
        if request[0] == "call":
            request = ["call", request[1], self.encode(request[2]), self.encode(request[3])]
        try:
            os.write(self.request, wire.frame(request))
        except BrokenPipeError:
            raise ChildGone from None
        reply = self.receive()
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            return self.decode(reply[1])
        judge.raise_reply(reply, exceptions=self.suite)

    def encode(self, value: Any) -> Any:
        def other(item: Any) -> Any:
            if isinstance(item, judge.Handle):
                return {"h": item._ref, "k": item._kind, "c": True}  # the child looks it up by ref alone
            if isinstance(item, judge.Shipped):
                return {"L": [item.source, wire.encode(item.captured, other)]}
            method = judge.method_of_type(item)
            if method is not None:
                return {"M": list(method)}
            raise judge.Unsupported(f"a {type(item).__name__} cannot be passed to the candidate's code")

        return wire.encode(value, other)

    def decode(self, data: Any) -> Any:
        return wire.decode(data, self.handle, self.module)

    def handle(self, ref: int, kind: str, callable_: bool, state: Any) -> judge.Handle:
        if callable_:  # the same function or class each time; an object's handle carries its data as of now
            found = self.handles.get(ref)
            if found is None:
                found = self.handles[ref] = judge.Handle(self.ask, ref, kind, callable_)
            return found
        return judge.Handle(self.ask, ref, kind, callable_, state)

    def module(self, name: str) -> Any:
        if self.suite and name in SUITE_MODULES:
            __import__(name)
            return sys.modules[name]
        return ForeignModule(name)

    def output_tail(self) -> str:
        return b"".join(self.tail)[-OUTPUT_TAIL:].decode("utf-8", "replace").strip()


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, uid) of every process visible in /proc, zombies included, from /proc/PID/status.

    Zombies count: one that is read as a zombie may have forked a child after the folder was listed, so only a scan
    that finds none at all, with orphans reaped only between scans, shows that nothing is left."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/status", os.O_RDONLY)
            try:
                status = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            continue
        fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        if b"PPid" in fields and b"Uid" in fields:
            found.append((int(name), int(fields[b"PPid"]), int(fields[b"Uid"].split()[0])))
    return found


# CAP_CHOWN, CAP_KILL, CAP_SETGID, CAP_SETUID: what running each slot as its own user takes.
SLOT_USER_CAPABILITIES = (0, 5, 6, 7)


def _has_capabilities(bits: tuple[int, ...]) -> bool:
    """Whether this process holds every capability in `bits` (its CapEff mask in /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            effective = next(int(line.split()[1], 16) for line in handle if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return all(effective >> bit & 1 for bit in bits)


def _readable_by_anyone(path: str) -> bool:
    """Whether a user other than the owner can reach `path` (every folder above it searchable) and read it."""
    target = os.path.realpath(path)
    folders = [target]
    while folders[-1] != os.path.dirname(folders[-1]):
        folders.append(os.path.dirname(folders[-1]))
    try:
        if not all(os.stat(folder).st_mode & stat.S_IXOTH for folder in folders[1:]):
            return False
        return bool(os.stat(target).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _remove_tree(path: str, reclaim: bool = False) -> None:
    """rm -rf without following symbolic links (shutil would add its compression modules to every fork). With
    `reclaim` (a root worker), each folder is first taken back (chown to root, mode 0700): a root with only CAP_CHOWN,
    as in a gVisor pod, may neither list nor empty a slot user's folder, whatever mode the candidate left on it."""
    if reclaim:
        with contextlib.suppress(OSError):
            os.chown(path, 0, 0, follow_symlinks=False)
            os.chmod(path, 0o700)  # a folder (callers check), now root's own: no capability needed
    try:
        entries = list(os.scandir(path))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path, reclaim)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    with contextlib.suppress(OSError):
        os.rmdir(path)


class _Libc:
    """The prctl and capset calls the os module lacks, through ctypes: loaded only where needed (ctypes adds
    mappings to every fork), that is outside gVisor, or where the slot users need CAP_DAC_READ_SEARCH."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self.prctl, self.capset = libc.prctl, libc.capset
        self.header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        read_search = 1 << 2  # CAP_DAC_READ_SEARCH
        self.caps = (ctypes.c_uint32 * 6)(read_search, read_search, 0, 0, 0, 0)  # effective, permitted, inheritable

    def call(self, name: str, *args: Any) -> None:
        if getattr(self, name)(*args) != 0:
            raise OSError(self.ctypes.get_errno(), name)


class Worker:
    def __init__(self, config: dict[str, Any], pending: bytes) -> None:
        self.uid = int(config["uid_base"])
        self.token = str(config["token"])
        self.timeout = float(config["timeout"])
        self.limits = config["limits"]
        # Root in name only (a pod that dropped every capability) cannot give each child its own user.
        self.root = os.geteuid() == 0 and _has_capabilities(SLOT_USER_CAPABILITIES)
        self.pid = os.getpid()
        # A Python that only root can read (pyenv under /root) needs CAP_DAC_READ_SEARCH kept for the slot users, or
        # their imports fail: they can then read any file, but still not signal, trace or write what is not theirs.
        self.grant_read = self.root and not all(_readable_by_anyone(path) for path in sys.path if os.path.exists(path))
        # Outside gVisor (not pid 1) the worker becomes the reaper of orphans, and children die with it.
        self.libc = _Libc() if self.grant_read or self.pid != 1 else None
        if self.libc is not None and self.pid != 1:
            try:
                self.libc.call("prctl", 36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
            except OSError as error:
                # Older gVisor (a worker inside a gVisor pod) lacks it: orphans then go to the pod's init and die
                # with the pod; each run's process group and slot user are still killed after it.
                if error.errno != errno.EINVAL:
                    raise
        if self.libc is not None and not self.root:
            self.libc.call("prctl", 4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: a child of our user cannot trace or read us
        self.base = str(config["base"])  # made by the parent, which removes it too
        os.chmod(self.base, 0o711)  # the slot users reach their own folders in it, and nothing else
        self.runs_started = 0
        # Limits that hold as well for the worker are set here once and inherited: fewer system calls per child.
        inherited = [
            (resource.RLIMIT_FSIZE, self.limits["file_size_mb"] << 20),
            (resource.RLIMIT_NOFILE, self.limits["open_files"]),
            (resource.RLIMIT_CORE, 0),
        ]
        if self.root:  # counted for the slot user once a child is that user; root's own forks are not counted
            inherited.append((resource.RLIMIT_NPROC, self.limits["max_processes"]))
            os.setgroups([])
        for which, value in inherited:
            resource.setrlimit(which, (value, value))
        os.environ.clear()
        os.environ.update({"PATH": SAFE_PATH, "LANG": "C.UTF-8"})
        self.devnull = os.open(os.devnull, os.O_RDWR)
        # Verdicts go out on a descriptor of their own: fd 1 is /dev/null, so that nothing printed in the judge (a
        # suite's test code) can reach the parent's protocol.
        self.out = os.dup(1)
        os.dup2(self.devnull, 1)
        self.stdin_buffer = pending
        self.stdin_open = True
        self.suites: dict[str, Any] = {}  # a suite's test code, compiled once per worker
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGALRM, _alarm)

    # --- the loop -----------------------------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            job = self.next_job()
            if job is None:
                return
            self.send(self.run(job))

    def next_job(self) -> dict[str, Any] | None:
        while True:
            line, newline, rest = self.stdin_buffer.partition(b"\n")
            if newline:
                self.stdin_buffer = rest
                if line.strip():
                    return json.loads(line)
                continue
            if not self.stdin_open:
                return None
            chunk = os.read(0, 1 << 20)
            if not chunk:
                self.stdin_open = False
            self.stdin_buffer += chunk

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview((json.dumps({**message, "token": self.token}) + "\n").encode())
        while data:
            data = data[os.write(self.out, data) :]

    # --- one job ----------------------------------------------------------------------------------------------------

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        self.runs_started += 1
        workdir = f"{self.base}/{self.runs_started}"
        os.mkdir(workdir, 0o700)
        if self.root:
            os.chown(workdir, self.uid, self.uid)
        child = self.start(job, workdir)
        gone = False
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
                reason, detail = self.judge(job, child)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except JudgeTimeout:
            reason, detail = "timeout", f"still running after {self.timeout:g} s (wall clock)"
        except ChildGone:
            gone, reason, detail = True, "", ""
        except (wire.Malformed, judge.BadReply) as error:
            reason, detail = "harness_tampered", f"the child sent {error}"
        except OutputFlood:
            reason, detail = "output_limit", f"wrote more than {self.limits['output_bytes']} bytes to stdout/stderr"
        seconds = round(time.monotonic() - started, 4)
        self.end(child, gone)
        if gone:
            reason, detail = self.how_it_ended(child)
        with contextlib.suppress(OSError):
            os.rmdir(workdir)
        _remove_tree(workdir, reclaim=self.root)
        return {"key": job["key"], "reason": reason, "detail": detail[:2000], "seconds": seconds, "calls": child.calls}

    def judge(self, job: dict[str, Any], child: Child) -> tuple[str, str]:
        """The verdict, from the checks evaluated here against the child's answers."""
        hello = child.receive()
        if type(hello) is list and len(hello) == 3 and hello[0] == "fail" and hello[1] in FAILURES_FROM_CHILD:
            return str(hello[1]), str(hello[2])
        if type(hello) is not list or len(hello) != 2 or hello[0] != "ready" or type(hello[1]) is not dict:
            return "harness_tampered", "the child's first message is not the harness's"
        try:
            names = {str(name): child.decode(value) for name, value in hello[1].items()}
        except wire.Malformed as error:
            return "harness_tampered", f"the child sent {error}"
        if job["entry"]:
            return self.judge_suite(job, child, names)
        return self.judge_asserts(job, names)

    def judge_suite(self, job: dict[str, Any], child: Child, names: dict[str, Any]) -> tuple[str, str]:
        """A suite problem: its trusted test code runs here as it is, then `check(<the candidate's function>)`."""
        label = job["labels"][0] if job["labels"] else "check"
        try:
            code = self.suites.get(job["trusted"])
            if code is None:
                code = self.suites[job["trusted"]] = compile(job["trusted"], "<test>", "exec", dont_inherit=True)
            namespace = judge.suite_namespace(names)
            exec(code, namespace)
            if job["entry"] not in names:
                raise NameError(f"name {job['entry']!r} is not defined")
            namespace["check"](names[job["entry"]])
        except (JudgeTimeout, ChildGone, OutputFlood, SystemExit):
            raise
        except BaseException as error:
            return _failure(error, f"`{label}`: ")
        return "passed", ""

    def judge_asserts(self, job: dict[str, Any], names: dict[str, Any]) -> tuple[str, str]:
        """A harvested row: each assert through the restricted evaluator, then the stand-ins (mutation)."""
        labels = job["labels"]
        try:
            checks = [judge.parse(source) for source in job["checks"]]
        except judge.Unsupported as error:
            return "unsupported_asserts", str(error)
        except SyntaxError as error:
            return "syntax", f"an assert: {error}"

        def resolve(name: str) -> Any:
            if name not in names:
                raise NameError(f"name {name!r} is not defined")
            return names[name]

        evaluator = judge.Evaluator(resolve, job["fn"])
        for index, check in enumerate(checks):
            prefix = f"check {index + 1} `{labels[index]}`: "
            try:
                held = judge.truth(evaluator.evaluate(check))
            except (JudgeTimeout, ChildGone, OutputFlood, SystemExit):
                raise
            except BaseException as error:
                return _failure(error, prefix)
            if not held:
                return "assertion", f"check {index + 1} failed: `{labels[index]}`"
        if job["fn"]:
            try:
                stand_in = judge.vacuous(checks, resolve, job["fn"])
            except (JudgeTimeout, ChildGone, OutputFlood, SystemExit):
                raise
            except BaseException as error:
                return _failure(error, "while trying stand-ins: ")
            if stand_in is not None:
                return "vacuous_asserts", f"every assert also holds for a stand-in that {stand_in.name}"
        return "passed", ""

    def start(self, job: dict[str, Any], workdir: str) -> Child:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        output_read, output_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(request_write)
                os.close(reply_read)
                os.close(output_read)
                self.child(job, workdir, (self.devnull, output_write, output_write, request_read, reply_write))
            except BaseException:
                import traceback  # into the output pipe when confinement itself failed: the verdict shows it

                traceback.print_exc()
            finally:
                _exit(70)
        for fd in (request_read, reply_write, output_write):
            os.close(fd)
        return Child(
            pid, request_write, reply_read, output_read, workdir, bool(job["entry"]), self.limits["output_bytes"]
        )

    def child(self, job: dict[str, Any], workdir: str, fds: tuple[int, ...]) -> None:
        """In the forked child: confine this process, then hand over to the harness. Never returns normally."""
        os.setsid()
        # Each source first copied above the targets, so that no dup2 overwrites a source still to be placed.
        high = [_above(fd, len(fds)) for fd in fds]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        os.closerange(len(fds), 1 << 20)  # one close_range call: fds 0-4 are all the child has
        limits = self.limits  # RLIMIT_FSIZE, NOFILE and CORE (and NPROC under root) come from the worker
        memory = limits["memory_mb"] << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = limits["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        if not self.root:  # RLIMIT_NPROC counts every process of the user: leave room for the ones already there
            processes = limits["max_processes"] + sum(1 for _, _, owner in _processes() if owner == os.getuid())
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        libc = self.libc
        if self.root:
            if self.grant_read and libc is not None:
                libc.call("prctl", 8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS, so that setuid keeps what capset narrows
            os.setgid(self.uid)
            os.setuid(self.uid)
            if self.grant_read and libc is not None:
                libc.call("capset", libc.header, libc.caps)
        # As the slot user, who owns it: a root without CAP_DAC_OVERRIDE (a gVisor pod keeps CHOWN, KILL, SETGID and
        # SETUID only) may not enter another user's 0700 folder.
        os.chdir(workdir)
        if libc is not None and self.pid != 1:
            libc.call("prctl", 1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after setuid, which clears it)
            if os.getppid() != self.pid:
                _exit(71)  # the worker died before that took effect
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        # Drop what the candidate has no business finding in its copy of the worker: the token, this job's checks
        # and the jobs queued behind it (a candidate that read its asserts could answer just those).
        self.token = ""
        self.stdin_buffer = b""
        self.suites.clear()
        code = job["code"]
        job.clear()
        del self, job
        harness.serve(code, wire=wire, exit=_exit, builtins_module=builtins)

    def end(self, child: Child, gone: bool) -> None:
        """Reap the child (killed first, unless it is `gone` by itself and ends within a moment: then its own exit
        status tells how it failed), kill whatever it left, and close its pipes.

        The child is reaped before anything else is looked for, so that an ordinary run leaves nothing to find and
        costs no extra fork (kill_user) under gVisor."""
        waited = 0
        while True:
            if not gone or waited >= GONE_GRACE:
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signal.SIGKILL)
            try:
                pid, status, usage = os.wait4(child.pid, 0 if not gone or waited >= GONE_GRACE else os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                waited += 1
                time.sleep(0.001)
                continue
            child.status = status
            child.cpu_seconds = usage.ru_utime + usage.ru_stime
            break
        self.kill_leftovers(child.pid)
        while child.output_open:  # what it printed last, for the verdict's detail
            try:
                child.drain()
            except OutputFlood:
                break
        for fd in (child.request, child.reply, child.output):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.reap_orphans()

    def how_it_ended(self, child: Child) -> tuple[str, str]:
        """(reason, detail) for a child that ended before the judge was done with it."""
        status = child.status
        cpu_limit = float(self.limits["cpu_seconds"])
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            if number == signal.SIGXCPU or (number == signal.SIGKILL and child.cpu_seconds >= cpu_limit - 0.05):
                return "timeout", f"used its {cpu_limit:g} s of CPU time"
            return "crash", _with_tail(child, f"killed by {signal.Signals(number).name} after {child.calls} calls")
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if code == 0:
            return "exit_before_asserts", _with_tail(child, f"exited with status 0 after {child.calls} calls")
        return "crash", _with_tail(child, f"exited with status {code} after {child.calls} calls")

    def kill_leftovers(self, pid: int) -> None:
        """Kill everything a run left: its process group, its slot user's processes, orphans reparented here.

        Done when one whole scan of /proc finds none of them, not even a zombie: a process that forks and exits
        while the scan runs leaves its zombie here (orphans come to this worker, which reaps them only between
        scans), so a child it forked after /proc was listed cannot be missed. A run whose processes still outlive
        the kills after LEFTOVER_SECONDS ends this worker (the runner reruns its jobs in a fresh one)."""
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + LEFTOVER_SECONDS
        while True:
            self.reap_orphans()
            processes = _processes()
            if self.root:
                leftovers = [found for found, _, owner in processes if owner == self.uid]
            else:
                leftovers = [found for found, parent, _ in processes if parent == self.pid and found != pid]
            if not leftovers:
                return
            if time.monotonic() > deadline:
                raise LeftoversSurvived(f"{len(leftovers)} processes of a run outlived {LEFTOVER_SECONDS:g} s of kills")
            if self.root:
                self.kill_user(self.uid)
            else:
                for found in leftovers:
                    with contextlib.suppress(OSError):
                        os.kill(found, signal.SIGKILL)
            time.sleep(0.002)

    def reap_orphans(self) -> None:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass

    @staticmethod
    def kill_user(uid: int) -> None:
        """kill(-1) as the slot's user reaches every process of that user, detached or not, in one call."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setuid(uid)
                for _ in range(3):
                    os.kill(-1, signal.SIGKILL)
            finally:
                _exit(0)
        os.waitpid(pid, 0)

    def close(self) -> None:
        if self.root and self.pid != 1:  # inside `runsc do` the worker is init: its exit ends every process left
            self.kill_user(self.uid)
        _remove_tree(self.base, reclaim=self.root)


def _above(fd: int, floor: int) -> int:
    """`fd`, or a duplicate of it numbered at least `floor`."""
    while fd < floor:
        fd = os.dup(fd)  # the copies below `floor` are replaced by dup2 or closed with the rest
    return fd


def _failure(error: BaseException, prefix: str) -> tuple[str, str]:
    """(reason, detail) for an exception met while judging."""
    if isinstance(error, judge.CandidateExited):
        return "exit_before_asserts", prefix + str(error)
    if isinstance(error, wire.Malformed | judge.BadReply):
        return "harness_tampered", prefix + f"the child sent {error}"
    if isinstance(error, judge.Unsupported):
        return "unsupported_asserts", prefix + str(error)
    if isinstance(error, judge.CandidateRaised):
        kinds = {"AssertionError": "assertion", "MemoryError": "memory"}
        return kinds.get(error.kind, "error"), prefix + f"{error.kind}: {error}"
    if isinstance(error, MemoryError):
        return "memory", prefix + "MemoryError"
    if isinstance(error, AssertionError):
        return "assertion", prefix + harness.describe_error(error)
    return "error", prefix + harness.describe_error(error)


def _with_tail(child: Child, text: str) -> str:
    tail = child.output_tail()
    return f"{text}; output: {tail[-500:]}" if tail else text


def _terminate(number: int, frame: Any) -> None:
    raise SystemExit(128 + number)  # unwinds to main()'s finally, which kills what the runs left


def read_config() -> tuple[dict[str, Any], bytes]:
    """The first stdin line, read with os.read so that no job is left behind in a Python buffer."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            raise SystemExit("worker: stdin closed before the configuration line")
        data += chunk
    line, _, rest = data.partition(b"\n")
    return json.loads(line), rest


def main() -> None:
    config, pending = read_config()
    worker = Worker(config, pending)
    del pending  # the jobs it may hold live on only in the worker's buffer, which each child clears
    gc.collect()
    gc.freeze()  # children then leave the worker's objects alone when they collect: fewer pages copied on write
    try:
        python = sys.version.split()[0]
        worker.send({"ready": True, "root": worker.root, "read_grant": worker.grant_read, "python": python})
        worker.serve()
    except BrokenPipeError:
        pass
    finally:
        worker.close()


if __name__ == "__main__":
    main()
