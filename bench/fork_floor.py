"""The floor under sandboxed scoring: what one fork + exit + wait costs a Python process on the host and inside
gVisor, for a bare interpreter and for the worker's own (after it has loaded the judge), with the candidate's child
doing nothing at all. One child per candidate is the design (DESIGN.md), so this is the least any candidate costs a
lane; everything else (running the code, the judge's round trips) comes on top.

    python bench/fork_floor.py                      # host, and every runsc this machine has (ptrace, systrap)
    python bench/fork_floor.py --forks 300 --repeat 5
    python bench/fork_floor.py --profile            # also: where the sentry spends its time (needs `go` on PATH)

Each row is one fresh process (inside `runsc --network=none --platform=P do` for gVisor) that forks N children, each
of which calls _exit(0) at once, and waits for each; the figure is the median over the repeats of the mean per fork.
--profile runs the worker's case once more under runsc's CPU profiler and groups the sentry's samples: page faults
(copy-on-write breaks and new pages, which gVisor backs from its memory file and populates eagerly), returning
memory to the host, system calls, and switching to and from the application.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe  # bench/machine.py: scripts here run as `python bench/NAME.py`

SANDBOX = Path(__file__).resolve().parents[1] / "operator" / "sigma0" / "sandbox"
FORKS = """
import os, sys, time
{setup}
def once():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
for _ in range(10):
    once()
started = time.perf_counter()
for _ in range({forks}):
    once()
print((time.perf_counter() - started) / {forks} * 1e3)
"""
CASES = {
    "bare interpreter (-S)": ("", ["-I", "-S"]),
    # What the worker holds when it forks a candidate's child: the judge and the modules it loads, then gc.freeze().
    "the worker's interpreter": (
        f"sys.argv = ['worker']; sys.path.insert(0, {str(SANDBOX)!r}); import worker; "
        "import gc; gc.collect(); gc.freeze()",
        ["-I"],
    ),
}
GROUPS = (  # sentry functions → what the time is for; the first match in a sample's stack wins
    ("page faults: copy-on-write and new pages", "mm.(*MemoryManager).HandleUserFault"),
    ("returning memory to the host", "pgalloc.(*MemoryFile).releaserMain"),
    ("system calls", "kernel.(*Task).doSyscall"),
    ("switching to and from the application", "platform/systrap.(*platformContext).Switch"),
)


def environments() -> list[tuple[str, list[str]]]:
    """(label, command prefix): the host, then every runsc here with the platforms sigma0 would use."""
    from sigma0.sandbox.runner import RUNSC_FLAGS, find_runsc

    found: list[tuple[str, list[str]]] = [("host", [])]
    debian = shutil.which("runsc")
    if debian:
        found.append(("gVisor ptrace, Debian's runsc", [debian, *RUNSC_FLAGS, "--platform=ptrace"]))
    built = find_runsc()
    if built is not None and built.origin == "sigma0's build":
        found.append(
            (f"gVisor {built.platform}, sigma0's build", [built.path, *RUNSC_FLAGS, f"--platform={built.platform}"])
        )
    return found


def run(prefix: list[str], code: str, flags: list[str], extra: list[str] = ()) -> float:
    with tempfile.TemporaryDirectory(prefix="sigma0-fork-floor-") as root:
        python = [sys.executable, *flags, "-c", code]
        command = (
            [prefix[0], f"--root={root}", *extra, *prefix[1:], "do", "-quiet", "-cwd", "/", *python]
            if prefix
            else python
        )
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": root}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def profile(prefix: list[str], forks: int) -> None:
    go = shutil.which("go")
    if go is None:
        print("--profile needs `go` on PATH (go tool pprof reads runsc's profile)")
        return
    setup, flags = CASES["the worker's interpreter"]
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/cpu.prof"
        run(prefix, FORKS.format(setup=setup, forks=forks), flags, ["--profile", f"--profile-cpu={path}"])
        report = subprocess.run(
            [go, "tool", "pprof", "-traces", prefix[0], path], capture_output=True, text=True, check=True
        ).stdout
    totals = dict.fromkeys([label for label, _ in GROUPS] + ["other"], 0.0)
    for trace in report.split("-----------+-------------------------------------------------------")[1:]:
        lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
        if not lines:
            continue
        seconds = _seconds(lines[0].split()[0])
        label = next((label for label, marker in GROUPS if any(marker in line for line in lines)), "other")
        totals[label] += seconds
    whole = sum(totals.values()) or 1.0
    print(f"\nwhere the sentry's CPU goes ({prefix[-1]}, {forks} forks of the worker's interpreter):")
    for label, seconds in totals.items():
        print(f"  {label:32} {seconds:6.2f} s  {seconds / whole:5.1%}")


def _seconds(text: str) -> float:
    for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(describe(runsc=True), f"load {os.getloadavg()[0]:.1f}")
    print(f"{'where':32} {'case':28} {'fork + exit + wait, ms':>24}")
    found = environments()
    for label, prefix in found:
        for case, (setup, flags) in CASES.items():
            code = FORKS.format(setup=setup, forks=args.forks)
            figures = [run(prefix, code, flags) for _ in range(args.repeat)]
            print(f"{label:32} {case:28} {statistics.median(figures):24.2f}")
    if args.profile and len(found) > 1:
        profile(found[-1][1], args.forks)
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
