"""The warm worker: started once per lane (inside `runsc do` under gVisor, or as a plain process), it reads jobs as
JSON lines on stdin and writes one verdict per job as a JSON line on stdout, forking a fresh child per job.

Run as `python -I -B -u worker.py`. Standard library only: it must start inside a bare sandbox image.

Protocol
    stdin   first line: {"slots", "uid_base", "token", "base", "timeout", "limits": {...}}; then one job per line:
            {"key", "code", "trusted", "checks": [...], "labels": [...]}; EOF means no more jobs.
    stdout  first line: {"ready": true, ...}; then one verdict per job, in the order they finish:
            {"key", "reason", "detail", "seconds"}; every line carries the configuration's token.

Each child: its own session and process group, stdin on /dev/null, stdout+stderr on a capped pipe, a private
temporary folder as cwd, a scrubbed environment, RLIMIT_AS/CPU/FSIZE/NPROC/NOFILE/CORE, every other descriptor closed
but its report pipe, and, when the worker runs as root (always inside `runsc do`), its own user id per slot so that
it cannot signal or trace the worker or its neighbours and its process count is its own. When it is done, or at the
wall-clock deadline, every process it left behind is killed: the process group, every process of the slot's user
(root), and orphans reparented to the worker (not root). The harness in the child (harness.py) runs the checks and
reports on the pipe with a per-run nonce; `decide` below turns what came back into a verdict.

Without root (the `process` sandbox run by an ordinary user) there is no user per slot: RLIMIT_NPROC is shared with
the user's other processes, and a candidate can signal the worker or open its pipes through /proc. Lines without the
worker's token are caught by the parent (the lane is then replaced, and the candidate fails with sandbox_error), but
a candidate determined enough to dig the token out of its own memory could forge its verdict. Untrusted code belongs
under gVisor, where the worker is root inside the sandbox.

Cost: inside gVisor's ptrace platform a fork costs the forking process time in proportion to its memory mappings,
and every system call tens of microseconds. So this worker imports little (every extension module adds mappings to
every fork: preloading the modules candidates might use made each fork dearer than the imports it saved) and makes
few system calls per job.
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

# Taken at import, before any candidate exists: what the harness runs with in every child.
PRISTINE_BUILTINS = dict(builtins.__dict__)
_write = os.write
_exit = os._exit

HARNESS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")
REPORT_FD = 3
REPORT_CAP = 1 << 20
OUTPUT_TAIL = 2000
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Run:
    """One job in flight in one slot."""

    def __init__(self, job: dict[str, Any], slot: int, nonce: str, workdir: str, started: float, deadline: float):
        self.key: str = job["key"]
        self.job = job
        self.slot = slot
        self.nonce = nonce
        self.workdir = workdir
        self.started = started
        self.deadline = deadline
        self.pid = 0
        self.pipes: dict[int, str] = {}  # open read ends: fd → "output" | "report"
        self.output: collections.deque[bytes] = collections.deque()
        self.output_bytes = 0
        self.report = bytearray()
        self.killed_for: str | None = None
        self.status: int | None = None
        self.cpu_seconds = 0.0
        self.ended = 0.0

    def tail(self) -> str:
        return b"".join(self.output)[-OUTPUT_TAIL:].decode("utf-8", "replace").strip()


def decide(run: Run, limits: dict[str, Any], failure_reasons: tuple[str, ...]) -> tuple[str, str]:
    """(reason, detail) from what a finished run left: how it ended, its report lines, its output."""
    expected = len(run.job["checks"])
    cpu_limit = float(limits["cpu_seconds"])
    if run.killed_for == "output_limit":
        return "output_limit", f"wrote more than {limits['output_bytes']} bytes to stdout/stderr"
    if run.killed_for == "timeout":
        return "timeout", f"still running after {run.deadline - run.started:g} s (wall clock)"
    steps, done, failure, tampered = _read_report(bytes(run.report), run.nonce, expected, failure_reasons)
    if tampered:
        return "harness_tampered", tampered
    status = run.status if run.status is not None else -1
    exited = os.WIFEXITED(status)
    code = os.WEXITSTATUS(status) if exited else None
    if done and code == 0:
        return "passed", ""
    if failure:
        return failure
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU or (number == signal.SIGKILL and run.cpu_seconds >= cpu_limit - 0.05):
            return "timeout", f"used its {cpu_limit:g} s of CPU time"
        return "crash", _with_tail(run, f"killed by {signal.Signals(number).name} after {steps} of {expected} checks")
    if code == 0:
        return "exit_before_asserts", _with_tail(run, f"exited with status 0 after {steps} of {expected} checks")
    return "crash", _with_tail(run, f"exited with status {code} after {steps} of {expected} checks")


def _with_tail(run: Run, text: str) -> str:
    tail = run.tail()
    return f"{text}; output: {tail[-500:]}" if tail else text


def _read_report(
    report: bytes, nonce: str, expected: int, failure_reasons: tuple[str, ...]
) -> tuple[int, bool, tuple[str, str] | None, str]:
    """Parse the report pipe: (steps acknowledged in order, done seen, failure reported, why it is tampered or "")."""
    tag = nonce + " "
    lines = report.decode("utf-8", "replace").split("\n")
    steps, done, failure = 0, False, None
    if lines[-1]:
        return steps, done, failure, "an unterminated line on the report pipe"
    for line in lines[:-1]:
        if not line.startswith(tag):
            return steps, done, failure, "a report line without the run's nonce"
        word, _, rest = line[len(tag) :].partition(" ")
        if done or failure:
            return steps, done, failure, "a report line after the run's last one"
        if word == "step" and rest == str(steps):
            steps += 1
        elif word == "done" and rest == str(expected) and steps == expected:
            done = True
        elif word == "fail" and rest.partition(" ")[0] in failure_reasons:
            reason, _, detail = rest.partition(" ")
            failure = (reason, detail)
        else:
            return steps, done, failure, f"an unexpected report line: {line[len(tag) :][:80]!r}"
    return steps, done, failure, ""


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, uid) of every live (not zombie) process visible in /proc, from /proc/PID/status."""
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
        if fields.get(b"State", b"Z").split()[0] in (b"Z", b"X"):
            continue
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


def _remove_tree(path: str) -> None:
    """rm -rf without following symbolic links (shutil would add its compression modules to every fork)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
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
        self.uid_base = int(config["uid_base"])
        self.token = str(config["token"])
        self.timeout = float(config["timeout"])
        self.limits = config["limits"]
        # Root in name only (a pod that dropped every capability) cannot give each slot its own user.
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
        self.base = str(config["base"])  # made by the parent, which removes it too
        os.chmod(self.base, 0o711)  # the slot users reach their own folders in it, and nothing else
        self.runs_started = 0
        self.entropy = b""
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
        self.slots: list[Run | None] = [None] * int(config["slots"])
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.stdin_open = True
        self.stdin_buffer = b""
        self.outbox = bytearray()
        self.take_jobs(pending)
        # The harness, in a namespace of its own with builtins of its own, made once here and inherited by every
        # child: nothing a candidate can reach by name leads to it (see harness.py).
        with open(HARNESS_PATH, encoding="utf-8") as handle:
            runtime = compile(handle.read(), HARNESS_PATH, "exec")
        self.harness: dict[str, Any] = {"__builtins__": dict(PRISTINE_BUILTINS), "__name__": "sigma0_harness"}
        exec(runtime, self.harness)
        self.check_builtins = dict(PRISTINE_BUILTINS)
        self.failure_reasons: tuple[str, ...] = self.harness["FAILURE_REASONS"]
        os.environ.clear()
        os.environ.update({"PATH": SAFE_PATH, "LANG": "C.UTF-8"})
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.epoll = select.epoll()
        self.watched: dict[int, Any] = {}  # fd → "wake" | "stdin" | "stdout" | (run, channel)
        self.wake_read, wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, _terminate)
        self.watch(self.wake_read, "wake")
        os.set_blocking(0, False)
        os.set_blocking(1, False)
        self.watch(0, "stdin")

    def watch(self, fd: int, what: Any, events: int = select.EPOLLIN) -> None:
        self.epoll.register(fd, events)
        self.watched[fd] = what

    def unwatch(self, fd: int) -> None:
        if self.watched.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    # --- the loop ---------------------------------------------------------------------------------------------

    def serve(self) -> None:
        now = time.monotonic()
        while True:
            self.start_queued(now)
            running = [run for run in self.slots if run is not None]
            if not (self.stdin_open or self.queue or running or self.outbox):
                return
            waiting = [run.deadline for run in running if run.status is None and run.killed_for is None]
            timeout = max(0.0, min(waiting) - now) if waiting else -1
            for fd, _ in self.epoll.poll(timeout):
                if fd in self.watched:
                    self.on_ready(fd, self.watched[fd])
            now = time.monotonic()
            for run in running:
                if run.status is None and run.killed_for is None and now >= run.deadline:
                    self.kill(run, "timeout")
                if run.status is not None:
                    self.finish(run)

    def on_ready(self, fd: int, what: Any) -> None:
        if what == "wake":  # a signal arrived, SIGCHLD as a rule: reap
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)
            self.reap()
        elif what == "stdin":
            self.read_jobs()
        elif what == "stdout":
            self.flush()
        else:
            run, channel = what
            self.read_from(run, fd, channel, drain=False)

    def read_jobs(self) -> None:
        try:
            chunk = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            self.stdin_open = False
            self.unwatch(0)
            return
        self.take_jobs(chunk)

    def take_jobs(self, chunk: bytes) -> None:
        *lines, self.stdin_buffer = (self.stdin_buffer + chunk).split(b"\n")
        self.queue.extend(json.loads(line) for line in lines if line.strip())

    def read_from(self, run: Run, fd: int, channel: str, drain: bool) -> None:
        """Read what the pipe holds: one read per readiness (epoll calls again while there is more), or everything
        when `drain`. At its end, or past its cap, the pipe is closed."""
        while fd in run.pipes:
            try:
                chunk = os.read(fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                self.close_pipe(run, fd)
                return
            if channel == "report":
                run.report += chunk
                if len(run.report) > REPORT_CAP:
                    run.report += b"\n<flood>"  # unterminated junk: decide() calls it tampering
                    self.close_pipe(run, fd)
                    self.kill(run, None)
            else:
                run.output_bytes += len(chunk)
                run.output.append(chunk)
                while len(run.output) > 1 and sum(map(len, run.output)) - len(run.output[0]) >= OUTPUT_TAIL:
                    run.output.popleft()
                if run.output_bytes > self.limits["output_bytes"] and run.killed_for is None:
                    self.close_pipe(run, fd)
                    self.kill(run, "output_limit")
            if not drain:
                return

    def close_pipe(self, run: Run, fd: int) -> None:
        if run.pipes.pop(fd, None) is not None:
            self.watched.pop(fd, None)
            os.close(fd)  # closing also takes it out of the epoll set

    def reap(self) -> None:
        by_pid = {run.pid: run for run in self.slots if run is not None}
        while True:
            try:
                pid, status, usage = os.wait3(os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = by_pid.get(pid)
            if run is not None and run.status is None:
                run.status = status
                run.cpu_seconds = usage.ru_utime + usage.ru_stime
                run.ended = time.monotonic()

    # --- one run ----------------------------------------------------------------------------------------------

    def start_queued(self, now: float) -> None:
        for slot, occupant in enumerate(self.slots):
            if occupant is None and self.queue:
                self.slots[slot] = self.start(self.queue.popleft(), slot, now)

    def start(self, job: dict[str, Any], slot: int, started: float) -> Run:
        self.runs_started += 1
        uid = self.uid_base + slot
        run = Run(job, slot, self.nonce(), f"{self.base}/{self.runs_started}", started, started + self.timeout)
        os.mkdir(run.workdir, 0o700)
        if self.root:
            os.chown(run.workdir, uid, uid)
        output_read, output_write = os.pipe()
        report_read, report_write = os.pipe()
        run.pid = os.fork()
        if run.pid == 0:
            try:
                self.child(job, run.nonce, uid, run.workdir, output_write, report_write)
            except BaseException:
                import traceback  # into the output pipe when confinement itself failed: the verdict shows it

                traceback.print_exc()
            finally:
                _exit(70)
        os.close(output_write)
        os.close(report_write)
        for fd, channel in ((output_read, "output"), (report_read, "report")):
            os.set_blocking(fd, False)
            run.pipes[fd] = channel
            self.watch(fd, (run, channel))
        return run

    def nonce(self) -> str:
        if not self.entropy:
            self.entropy = os.urandom(16 * 64)
        nonce, self.entropy = self.entropy[:16], self.entropy[16:]
        return nonce.hex()

    def child(self, job: dict[str, Any], nonce: str, uid: int, workdir: str, output: int, report: int) -> None:
        """In the forked child: confine this process, then hand over to the harness. Never returns normally."""
        os.setsid()
        signal.set_wakeup_fd(-1)  # the worker's SIGCHLD and SIGTERM handlers stay: in a child they do no harm
        os.dup2(self.devnull, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(report, REPORT_FD)
        os.closerange(REPORT_FD + 1, 1 << 20)  # one close_range call
        # sys.stdin/stdout/stderr keep working on the new fds: the worker never used their buffers, and runs with
        # -u so that a candidate's output reaches the pipe even when it dies without flushing.
        os.chdir(workdir)
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
            os.setgid(uid)
            os.setuid(uid)
            if self.grant_read and libc is not None:
                libc.call("capset", libc.header, libc.caps)
        if libc is not None and self.pid != 1:
            libc.call("prctl", 1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after setuid, which clears it)
            if os.getppid() != self.pid:
                _exit(71)  # the worker died before that took effect
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        self.token = ""  # drop what the candidate has no business finding in its copy of the worker
        self.queue.clear()
        run, check_builtins = self.harness["run"], self.check_builtins
        del self
        run(
            job,
            report_fd=REPORT_FD,
            nonce=nonce,
            write=_write,
            exit=_exit,
            builtins_module=builtins,
            pristine_builtins=check_builtins,
        )

    def kill(self, run: Run, why: str | None) -> None:
        if run.killed_for is None:
            run.killed_for = why
        self.kill_leftovers(run)

    def kill_leftovers(self, run: Run) -> None:
        """Kill everything the run left: its process group, its slot user's processes, orphans reparented here."""
        with contextlib.suppress(OSError):
            os.killpg(run.pid, signal.SIGKILL)
        uid = self.uid_base + run.slot
        active = {other.pid for other in self.slots if other is not None and other.status is None}
        for _ in range(20):
            processes = _processes()
            if self.root:
                leftovers = [pid for pid, _, owner in processes if owner == uid]
            else:
                leftovers = [pid for pid, parent, _ in processes if parent == self.pid and pid not in active]
            if not leftovers:
                return
            if self.root:
                self.kill_user(uid)
            else:
                for pid in leftovers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

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

    def finish(self, run: Run) -> None:
        self.kill_leftovers(run)
        for fd, channel in list(run.pipes.items()):
            self.read_from(run, fd, channel, drain=True)
            self.close_pipe(run, fd)
        reason, detail = decide(run, self.limits, self.failure_reasons)
        seconds = round(run.ended - run.started, 4)
        self.send({"key": run.key, "reason": reason, "detail": detail[:2000], "seconds": seconds})
        try:
            os.rmdir(run.workdir)
        except OSError:
            _remove_tree(run.workdir)
        self.slots[run.slot] = None

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the parent. Writes never block, so a slow reader cannot stall the runs."""
        self.outbox += (json.dumps({**message, "token": self.token}) + "\n").encode()
        self.flush()

    def flush(self) -> None:
        while self.outbox:
            try:
                written = os.write(1, self.outbox)
            except BlockingIOError:
                break
            del self.outbox[:written]
        if self.outbox and 1 not in self.watched:
            self.watch(1, "stdout", select.EPOLLOUT)
        elif not self.outbox and 1 in self.watched:
            self.unwatch(1)

    def close(self) -> None:
        for run in self.slots:
            if run is not None:
                self.kill_leftovers(run)
        _remove_tree(self.base)


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
