"""The parent side: pick the sandbox, start the warm workers of a batch, stream jobs in and verdicts out.

A batch runs in `workers` lanes side by side. Each lane is one warm worker (worker.py) that forks a fresh child per
candidate; under gVisor, the lane's worker runs inside one `runsc --network=none --platform=P do` started once for
the whole batch (a fresh interpreter per candidate inside gVisor costs ~3.5x; see DESIGN.md). Lanes rather than one
worker with several children: a fork inside gVisor's ptrace platform costs the forking process ~12 ms, so the
children of one worker would queue behind each other's forks. Which runsc, on which platform P (find_runsc): the
static build of a current gVisor that scripts/build-gvisor.sh caches, on systrap, when that script recorded that it
runs here; else the runsc on PATH (Debian's, 2022, which has no systrap) on ptrace. When a batch's lanes cover the
CPUs this process may use, each lane's sandbox is pinned to a CPU of its own (lane_cpus), where its judge and child
hand over to each other without waking another CPU. Every batch's sandboxes keep their state in a folder of their
own, removed when the batch ends: it is their --root and their TMPDIR, since `runsc do` (Debian's and the current
one alike) keeps its state, and the bind mount that pins its gofers' empty network namespace, in a runsc-do* folder
under TMPDIR whatever --root says. `runsc do` shows the host filesystem read-only under a tmpfs overlay, so jobs and
verdicts travel over the worker's stdin and stdout. (The `gvisor` PyPI bindings start a sandbox and `exec` commands
in it, but `Sandbox.exec` returns a command's output only when it ends, so a streaming worker does not fit it.)
`process` runs the same worker without runsc.

If a worker dies or stops answering, the candidates that were inside it are run again, each alone in a new one; a
candidate that was inside two dead workers gets `sandbox_error`. So no single candidate can stop the batch, and
only the one that kills its worker pays for it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import IO, Any

from sigma0.sandbox.limits import Limits
from sigma0.sandbox.programs import Program, Reason, Verdict

SANDBOXES = ("auto", "gvisor", "process")
RUNSC_FLAGS = ("--network=none",)
RUNSC_PLATFORMS = ("systrap", "ptrace", "kvm")
WORKER_PATH = Path(__file__).with_name("worker.py")
WORKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
START_TIMEOUT = 60.0
DEATHS_ALLOWED = 1
SLOTS_PER_LANE = 1
UID_FLOOR = 1_000_000
UID_RANGES = 1 << 20


class SandboxUnavailable(RuntimeError):
    """The requested sandbox cannot be used here (runsc missing, or the worker would not start)."""


@dataclass(frozen=True)
class Runsc:
    """The runsc that starts the gVisor sandboxes, the platform it runs them on, and why this one (`origin`)."""

    path: str
    platform: str
    origin: str  # "SIGMA0_RUNSC", "sigma0's build" (scripts/build-gvisor.sh) or "PATH"
    version: str | None = None  # gVisor's pseudo-version for sigma0's build; else what `runsc --version` says

    def flags(self, root: str) -> list[str]:
        return [f"--root={root}", *RUNSC_FLAGS, f"--platform={self.platform}"]

    def describe(self) -> str:
        return f"runsc {self.version or 'version unknown'} at {self.path} ({self.origin}), --platform={self.platform}"

    def to_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "platform": self.platform, "origin": self.origin, "version": self.version}


def gvisor_cache(environ: Mapping[str, str] | None = None) -> Path:
    """Where scripts/build-gvisor.sh caches its builds and writes runsc.json (the same rule as that script)."""
    environ = os.environ if environ is None else environ
    if environ.get("SIGMA0_GVISOR_CACHE"):
        return Path(environ["SIGMA0_GVISOR_CACHE"])
    # expanduser, not Path.home(): a pod's user may have neither HOME nor a passwd entry, and then there is no cache
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "sigma0" / "gvisor"


def find_runsc(environ: Mapping[str, str] | None = None) -> Runsc | None:
    """The runsc to start sandboxes with, None when there is none. In order:

    - SIGMA0_RUNSC=PATH: that runsc, on SIGMA0_RUNSC_PLATFORM (default ptrace, which every runsc has); an unusable
      one raises SandboxUnavailable rather than silently running another;
    - sigma0's build: the runsc named by <gvisor cache>/runsc.json, which scripts/build-gvisor.sh writes only after
      that runsc started a systrap sandbox on this kernel: systrap (or SIGMA0_RUNSC_PLATFORM);
    - the runsc on PATH (Debian's has no systrap): ptrace (or SIGMA0_RUNSC_PLATFORM).
    """
    environ = os.environ if environ is None else environ
    platform = environ.get("SIGMA0_RUNSC_PLATFORM") or None
    if platform is not None and platform not in RUNSC_PLATFORMS:
        raise SandboxUnavailable(
            f"SIGMA0_RUNSC_PLATFORM={platform!r} is not a gVisor platform: use one of {', '.join(RUNSC_PLATFORMS)}"
        )
    override = environ.get("SIGMA0_RUNSC")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise SandboxUnavailable(f"SIGMA0_RUNSC={override} is not an executable file")
        return Runsc(override, platform or "ptrace", "SIGMA0_RUNSC", _runsc_version(override))
    built = _recorded_build(gvisor_cache(environ) / "runsc.json")
    if built is not None:
        path, version = built
        return Runsc(path, platform or "systrap", "sigma0's build", version)
    found = shutil.which("runsc", path=environ.get("PATH", os.defpath))
    if found is not None:
        return Runsc(found, platform or "ptrace", "PATH", _runsc_version(found))
    return None


def _recorded_build(record: Path) -> tuple[str, str | None] | None:
    """(runsc, version) from runsc.json if it names an executable runsc that passed its smoke test on this kernel."""
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("platform") != "systrap" or found.get("kernel") != os.uname().release:
        return None  # a smoke test on another kernel says nothing about this one: scripts/setup.sh reruns it
    path = found.get("runsc")
    if not isinstance(path, str) or not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None
    version = found.get("version")
    return path, version if isinstance(version, str) else None


@lru_cache(maxsize=8)
def _runsc_version(path: str) -> str | None:
    """`runsc --version`'s version ("0.0~20221219.0" for Debian's), None if it will not say."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = done.stdout.splitlines()[0] if done.stdout.strip() else ""
    return first.removeprefix("runsc version ").strip() or None


def resolve_sandbox(requested: str) -> str:
    """The sandbox to use: "auto" means "gvisor" when there is a runsc (find_runsc), else "process"."""
    if requested not in SANDBOXES:
        raise ValueError(f"unknown sandbox {requested!r}: use one of {', '.join(SANDBOXES)}")
    if requested == "process":
        return "process"
    if find_runsc() is not None:
        return "gvisor"
    if requested == "gvisor":
        raise SandboxUnavailable(
            "sandbox 'gvisor' needs runsc: run scripts/setup.sh, install gVisor, or pass --sandbox process"
        )
    return "process"


def describe_sandbox(kind: str, workers: int) -> str:
    """One line for logs: which sandbox, and how a batch of `workers` lanes starts it (for gVisor: which runsc, on
    which platform, pinned or not)."""
    if kind == "gvisor":
        runsc = find_runsc()
        if runsc is None:
            return "gvisor (no runsc found)"
        lanes = "one sandbox and warm worker per lane" + (", each pinned to a CPU" if pin_lanes(kind, workers) else "")
        return f"gvisor ({runsc.describe()}; `runsc {' '.join(RUNSC_FLAGS)} do`, {lanes})"
    return "process (no gVisor: rlimits, own process group and user per candidate, one warm worker per lane)"


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def worker_command(kind: str, root: str | None = None) -> list[str]:
    """The worker's command line; under gVisor, inside `runsc do` with its state under `root`."""
    python = [sys.executable, "-I", "-B", "-u", str(WORKER_PATH)]
    if kind == "gvisor":
        runsc = find_runsc()
        if runsc is None:
            raise SandboxUnavailable("no runsc: not on PATH, no SIGMA0_RUNSC, no build by scripts/build-gvisor.sh")
        if root is None:
            raise ValueError("a gVisor worker needs a --root folder of its own")
        return [runsc.path, *runsc.flags(root), "do", "-quiet", "-cwd", "/", *python]
    return python


class _Untrustworthy(Exception):
    """A lane's worker said something it could not have meant: a line without its token, or an unknown job."""


class _Lane:
    """One worker process (one sandbox under gVisor) and the jobs it holds."""

    def __init__(self, command: list[str], config: dict[str, Any], env: dict[str, str], cpu: int | None = None) -> None:
        self.command = command
        self.token = config["token"]
        # The runs' folders live here; made and removed on this side, so that a worker killed outside gVisor (whose
        # own cleanup never ran) leaves nothing behind. Under gVisor the worker writes to an overlay of it.
        self.base = tempfile.mkdtemp(prefix="sigma0-runs-")
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd="/",
            start_new_session=True,
            bufsize=0,
            preexec_fn=None if cpu is None else partial(os.sched_setaffinity, 0, (cpu,)),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin = self.process.stdin
        self.fd = self.process.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.retiring = False
        self.inside: set[str] = set()
        self.heard = time.monotonic()
        self.send({**config, "base": self.base})

    def send(self, message: dict[str, Any]) -> bool:
        """Write one line to the worker; False when it is gone."""
        data = memoryview((json.dumps(message) + "\n").encode())
        try:
            while data:
                data = data[self.stdin.write(data) :]
        except (BrokenPipeError, ValueError):
            return False
        return True

    def read(self) -> list[dict[str, Any]] | None:
        """The complete messages now readable ([] when none yet); None when the worker has ended."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.heard = time.monotonic()
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                raise _Untrustworthy(f"a line that is not JSON: {line[:100]!r}") from None
            if not isinstance(message, dict) or message.pop("token", None) != self.token:
                raise _Untrustworthy(f"a line without its token: {line[:100]!r}")
            if message.get("ready") and not self.ready:
                self.ready = True
            elif message.get("key") in self.inside:
                messages.append(message)
            else:
                raise _Untrustworthy(f"a verdict for a job it does not hold: {line[:100]!r}")
        return messages

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace").strip()
        return text[-1500:] or "(nothing on stderr)"

    def no_more_jobs(self) -> None:
        """Close the worker's stdin: it ends once its jobs are done (and its sandbox winds down meanwhile)."""
        self.retiring = True
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()

    def close(self, *, wait: bool) -> None:
        """End the worker: let it finish by itself when `wait` (no jobs left), else stop it now.

        SIGTERM first: the worker then kills what its runs left, and runsc tears its sandbox down and cleans up.
        SIGKILL if that takes more than a few seconds; the children have PR_SET_PDEATHSIG to follow it."""
        self.no_more_jobs()
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr.close()
        shutil.rmtree(self.base, ignore_errors=True)


def lane_config(timeout: float, limits: Limits) -> dict[str, Any]:
    """A new lane's configuration line. A fresh range of user ids per lane, so that lanes and concurrent batches never
    share one; the token marks the worker's own lines: a candidate that writes to the worker's stdout blindly is
    caught."""
    uid_base = UID_FLOOR + secrets.randbelow(UID_RANGES) * SLOTS_PER_LANE
    return {"uid_base": uid_base, "token": secrets.token_hex(16), "timeout": timeout,
            "limits": limits.for_worker(timeout)}


def pin_lanes(kind: str, workers: int) -> bool:
    """Whether a batch of `workers` lanes of sandbox `kind` is pinned (lane_cpus): under gVisor, when its lanes cover
    every CPU this process may use, unless SIGMA0_PIN_LANES=off (which the benchmarks use to measure what pinning
    buys). Never the process sandbox's, where pinning bought nothing.

    With fewer lanes than CPUs the batch does not own the CPUs it would be pinned to: on a bigger machine, shared
    with other cycles or with containers whose CPU quota is not an affinity, every such batch would pin its lanes
    to the same first few while the rest sit idle. Such a batch runs unpinned, where the kernel spreads it. (On a
    cluster the stages run `--sandbox process` inside the node's gVisor, and nothing is pinned.)"""
    if kind != "gvisor":
        return False
    value = os.environ.get("SIGMA0_PIN_LANES", "on")
    if value not in ("on", "off"):
        raise SandboxUnavailable(f"SIGMA0_PIN_LANES={value!r}: use on (the default) or off")
    return value == "on" and workers >= len(os.sched_getaffinity(0))


def lane_cpus(kind: str, workers: int) -> list[int | None]:
    """The CPU each of a batch's `workers` lanes is pinned to under gVisor (its runsc, sentry and gofer, and
    everything inside): the CPUs this process may use, in turn; None where lanes are not pinned (pin_lanes).

    A lane's judge and its child take turns, never both running. Under gVisor each hand-off between them is a
    wake-up by the sentry; on one CPU it stays there, across two it is an inter-processor interrupt, which inside a
    VM is an exit to the hypervisor: pinned lanes scored HumanEval in 8-17 % less wall time (BENCHMARKS.md 2b)."""
    if not pin_lanes(kind, workers):
        return [None] * workers
    cpus = sorted(os.sched_getaffinity(0))
    return [cpus[index % len(cpus)] for index in range(workers)]


def run_programs(
    programs: Iterable[Program],
    *,
    sandbox: str = "auto",
    workers: int | None = None,
    timeout: float = 10.0,
    limits: Limits | None = None,
) -> Iterator[Verdict]:
    """Run each program in its own confined child and yield its verdict as soon as it is known.

    `workers` lanes run side by side (see the module's docstring). Programs rejected without running are answered
    first. Raises SandboxUnavailable when the sandbox cannot be started; never stops because of what a candidate does.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    kind = resolve_sandbox(sandbox)
    limits = limits or Limits()
    runnable: dict[str, Program] = {}
    for program in programs:
        if program.rejected is not None:
            reason, detail = program.rejected
            yield Verdict(id=program.id, passed=False, reason=reason, detail=detail)
        else:
            runnable[str(len(runnable))] = program
    if not runnable:
        return
    workers = workers or default_workers()
    lanes: list[_Lane | None] = [None] * min(workers, len(runnable))
    cpus = lane_cpus(kind, workers)
    queue = collections.deque(runnable)
    deaths: collections.Counter[str] = collections.Counter()
    silence = timeout + 30.0
    finished = False

    # The batch's runsc state, in a folder of its own rather than /var/run/runsc or /tmp (see the module's docstring).
    root = tempfile.mkdtemp(prefix="sigma0-runsc-") if kind == "gvisor" else None
    env = WORKER_ENV if root is None else {**WORKER_ENV, "TMPDIR": root}
    try:
        command = worker_command(kind, root)
        while queue or any(lane is not None and lane.inside for lane in lanes):
            for index, lane in enumerate(lanes):
                if lane is not None and lane.retiring and not lane.inside and queue:  # jobs came back from a dead lane
                    lane.close(wait=True)
                    lane = lanes[index] = None
                if lane is None and queue:
                    lane = lanes[index] = _Lane(command, lane_config(timeout, limits), env, cpus[index])
                while lane is not None and queue and len(lane.inside) < 2 * SLOTS_PER_LANE:
                    if lane.inside and (deaths[queue[0]] or any(deaths[key] for key in lane.inside)):
                        break  # a job that was in a dying worker runs alone, so a second death is its own
                    key = queue.popleft()
                    lane.inside.add(key)
                    if not lane.send({"key": key, **runnable[key].job()}):
                        yield from _bury(lanes, lane, "died", runnable, queue, deaths)
                        break
            if not queue:
                for lane in lanes:
                    if lane is not None and not lane.inside:
                        lane.no_more_jobs()
            busy = {lane.fd: lane for lane in lanes if lane is not None and lane.inside}
            readable, _, _ = select.select(list(busy), [], [], 1.0)
            for fd in readable:
                lane = busy[fd]
                try:
                    messages = lane.read()
                except _Untrustworthy as error:
                    yield from _bury(lanes, lane, f"was killed for sending {error}", runnable, queue, deaths)
                    continue
                if messages is None:
                    yield from _bury(lanes, lane, "died", runnable, queue, deaths)
                    continue
                for message in messages:
                    lane.inside.discard(message["key"])
                    reason = Reason(message["reason"])
                    yield Verdict(
                        id=runnable[message["key"]].id,
                        passed=reason is Reason.PASSED,
                        reason=reason,
                        detail=message["detail"],
                        seconds=message["seconds"],
                    )
            now = time.monotonic()
            for lane in busy.values():
                if lane in lanes and now - lane.heard > (silence if lane.ready else START_TIMEOUT):
                    yield from _bury(lanes, lane, "stopped answering", runnable, queue, deaths)
        finished = True
    finally:
        for lane in lanes:
            if lane is not None:
                lane.no_more_jobs()  # all at once, so that they wind down side by side
        for lane in lanes:
            if lane is not None:
                lane.close(wait=finished)
        if root is not None:
            _remove_runsc_root(root)


def _remove_runsc_root(root: str) -> None:
    """Remove a batch's runsc folder. A runsc killed before its own cleanup leaves its network namespace pinned by
    a bind mount there (runsc-do*/null-netns): unmounted first, or neither the folder nor the namespace would go."""
    for pinned in Path(root).glob("*/null-netns"):
        subprocess.run(["umount", "--lazy", str(pinned)], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _bury(
    lanes: list[_Lane | None],
    lane: _Lane,
    how: str,
    runnable: dict[str, Program],
    queue: collections.deque[str],
    deaths: collections.Counter[str],
) -> Iterator[Verdict]:
    """A lane's worker died or hung: close it, send its jobs to a new one, and fail those that already did that."""
    why = lane.stderr_tail()
    lane.close(wait=False)
    lanes[lanes.index(lane)] = None
    if not lane.ready:
        raise SandboxUnavailable(f"the sandbox worker did not start ({' '.join(lane.command)}): {why}")
    detail = f"the sandbox worker {how}: {why[-300:]}"
    for key in sorted(lane.inside, key=int, reverse=True):
        deaths[key] += 1
        if deaths[key] > DEATHS_ALLOWED:
            yield Verdict(id=runnable[key].id, passed=False, reason=Reason.SANDBOX_ERROR, detail=detail)
        else:
            queue.appendleft(key)
