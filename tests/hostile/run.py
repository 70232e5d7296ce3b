"""Run the hostile corpus in one batch and look at the host afterwards: shared by tests/test_hostile.py and
bench/hostile_corpus.py."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sigma0.sandbox import Limits, Verdict, run_programs

from .corpus import REPO, SECRET_NAME, Case, Host

TIMEOUT = 4.0
LIMITS = Limits(memory_mb=1024, cpu_seconds=3, file_size_mb=16, max_processes=32, output_bytes=1 << 20)


@dataclass
class Outcome:
    verdict: Verdict
    problems: list[str]  # what the case's host check found; empty: contained

    @property
    def contained(self) -> bool:
        return not self.problems


@dataclass
class Batch:
    sandbox: str
    outcomes: dict[str, Outcome]
    seconds: float
    lingering: list[str] = field(default_factory=list)  # processes or files the batch left on the host
    leaks: list[str] = field(default_factory=list)  # verdicts that carry the host's secret


def _live_processes() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, name) of every live process on the host."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if rest[0] not in "ZX":
                found[int(pid)] = (int(rest[1]), name)
    return found


@contextlib.contextmanager
def _listeners(host: Host) -> Iterator[None]:
    """A TCP listener on 127.0.0.1 and an abstract unix socket that count the connections they accept."""
    tcp = socket.create_server(("127.0.0.1", 0))
    host.port = tcp.getsockname()[1]
    unix = socket.socket(socket.AF_UNIX)
    unix.bind("\0" + host.unix)
    unix.listen()
    stop = threading.Event()

    def accept(server: socket.socket, kind: str) -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                server.accept()[0].close()
                host.accepted[kind] += 1

    threads = [threading.Thread(target=accept, args=(s, k), daemon=True) for s, k in ((tcp, "tcp"), (unix, "unix"))]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        tcp.close()
        unix.close()


def run_corpus(cases: Sequence[Case], sandbox: str, *, workers: int = 2, timeout: float = TIMEOUT) -> Batch:
    """All `cases` in one batch under `sandbox`, then every host check. Cleans up what the candidates left."""
    nonce = secrets.token_hex(6)
    host = Host(nonce=nonce, secret=f"s3cret-{secrets.token_hex(16)}", repo=REPO, home=Path.home(), port=0,
                unix=f"sigma0-hostile-{nonce}", pid=os.getpid())  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="sigma0-hostile-tmp-"))
    scratch.chmod(0o711)  # the slot users reach their own folders in the runs' folder below it
    before = set(_live_processes())
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(scratch)  # the runs' folders go here, to be checked
    os.environ[SECRET_NAME] = host.secret
    try:
        with _listeners(host):
            # The corpus's asserts hold exactly when an attack worked (`assert escaped()`), which mutation would call
            # vacuous: it is a containment corpus, so its rows run without stand-ins (the judge's own attacks, vacuous
            # asserts included, are in tests/hostile/forgery.py).
            programs = [dataclasses.replace(c.program(host), function="") for c in cases]
            started = time.monotonic()
            verdicts = list(run_programs(programs, sandbox=sandbox, workers=workers, timeout=timeout, limits=LIMITS))
            seconds = time.monotonic() - started
            time.sleep(2.0)  # let a detached process that escaped do what it waited to do
    finally:
        tempfile.tempdir = saved_tempdir
        del os.environ[SECRET_NAME]
    by_id = {verdict.id: verdict for verdict in verdicts}
    outcomes = {c.id: Outcome(by_id[c.id], c.check(host, c.id)) for c in cases}
    batch = Batch(sandbox, outcomes, seconds)
    tag = "hx" + nonce
    for pid, (parent, name) in _live_processes().items():
        if name.startswith(tag) or (pid not in before and parent == os.getpid()):
            batch.lingering.append(f"process {pid} ({name})")
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    batch.lingering += [f"file {path}" for path in scratch.rglob("*")]
    batch.leaks = [v.id for v in verdicts if host.secret in v.detail or host.secret in v.id]
    for path in host.markers():
        with contextlib.suppress(OSError):
            os.unlink(path)
    with contextlib.suppress(OSError):
        scratch.rmdir()
    return batch
