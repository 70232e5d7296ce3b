"""The CPU time of a command and everything it starts, gVisor sandboxes included.

getrusage(RUSAGE_CHILDREN) counts only descendants that were waited for, and a gVisor sandbox's work escapes it:
`runsc` moves its sandbox and gofer into a cgroup of their own (cpuacct `/runsc-<id>`) and the stub processes that
run the sandboxed code under the ptrace platform are never reaped into the command's totals. So, where the cgroup-v1
cpuacct hierarchy is writable (root, /sys/fs/cgroup/cpuacct), the command runs in a fresh cgroup of its own, and
every `runsc-*` cgroup whose processes' parent is in that cgroup is polled (every 20 ms) while it exists; the
figure is the sum. Only the last < 20 ms of a sandbox can be missed. Elsewhere this falls back to getrusage and
says so.
"""

from __future__ import annotations

import os
import resource
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
POLL_S = 0.02


def cgroup_available() -> bool:
    return (CPUACCT / "cpuacct.usage").exists() and os.access(CPUACCT, os.W_OK)


def run_measured(command: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess[str], float, float, str]:
    """Run `command` to its end: (the completed process, wall seconds, cpu seconds, how cpu was counted)."""
    if not cgroup_available():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, **kwargs)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return done, seconds, cpu, "getrusage"
    group = CPUACCT / f"sigma0-bench-{os.getpid()}-{secrets.token_hex(3)}"
    group.mkdir()
    procs = str(group / "cgroup.procs")

    def join() -> None:  # in the child, before exec: everything it starts stays in the group
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))

    sandboxes = _SandboxGroups(group)
    sandboxes.start()
    try:
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, preexec_fn=join, **kwargs)
        seconds = time.perf_counter() - started
        own = _usage_when_empty(group)
    finally:
        sandboxes.stop()
        _remove(group)
    return done, seconds, own + sandboxes.total(), "cgroup"


class _SandboxGroups(threading.Thread):
    """Polls the runsc cgroups started from `group`, keeping each one's latest CPU usage."""

    def __init__(self, group: Path) -> None:
        super().__init__(daemon=True)
        self.group = group
        self.usage: dict[str, int] = {}
        self.others: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.poll()
            self.halt.wait(POLL_S)
        self.poll()

    def poll(self) -> None:
        for found in CPUACCT.glob("runsc-*"):
            if found.name in self.others:
                continue
            try:
                if found.name not in self.usage and not self._ours(found):
                    continue
                self.usage[found.name] = int((found / "cpuacct.usage").read_text())
            except (OSError, ValueError):  # gone meanwhile
                continue

    def _ours(self, found: Path) -> bool:
        pids = (found / "cgroup.procs").read_text().split()
        if not pids:
            return False  # not started yet: decide on a later poll
        mine = set((self.group / "cgroup.procs").read_text().split())
        with open(f"/proc/{pids[0]}/stat") as handle:
            parent = handle.read().rsplit(")", 1)[1].split()[1]
        if parent not in mine:
            self.others.add(found.name)  # another user's sandbox (tests running beside the bench)
            return False
        return True

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)

    def total(self) -> float:
        return sum(self.usage.values()) / 1e9


def _usage_when_empty(group: Path, wait_s: float = 5.0) -> float:
    """The group's CPU seconds once its last process is gone (a sandbox can outlive its command briefly)."""
    deadline = time.monotonic() + wait_s
    while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int((group / "cpuacct.usage").read_text()) / 1e9


def _remove(group: Path) -> None:
    for _ in range(100):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # still busy: a process is on its way out
            time.sleep(0.05)
