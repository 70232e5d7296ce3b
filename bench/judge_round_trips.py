"""What the judge's round trips cost: one row whose asserts call the candidate's function N times, against the same
row calling it once, under gVisor and as plain processes.

    python bench/judge_round_trips.py                    # N = 1000, 5 repeats
    python bench/judge_round_trips.py --calls 200 --repeat 3

Every call the judge makes is one request to the child and one reply (a few system calls each way). The table gives
the median seconds of one candidate with 1 call and with N calls, and the difference per call. HumanEval's checks
make 1,837 calls over its 164 problems (a median of 7 per problem), so the per-call figure times 1,837 is what the
judge adds to scoring HumanEval, spread over the workers.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

from machine import describe  # bench/machine.py: scripts here run as `python bench/NAME.py`

from sigma0.sandbox import Limits, from_asserts, run_programs

CODE = "def inc(x):\n    return x + 1\n"


def measure(sandbox: str, calls: int, repeat: int) -> list[float]:
    """Seconds per candidate, as the worker timed it (fork to verdict), over `repeat` candidates in one batch."""
    assertion = f"assert all(inc(x) == x + 1 for x in range({calls}))" if calls > 1 else "assert inc(1) == 2"
    programs = [from_asserts(f"r{index}", "inc", f"# {index}\n{CODE}", [assertion]) for index in range(repeat)]
    verdicts = list(run_programs(programs, sandbox=sandbox, workers=1, timeout=60.0, limits=Limits()))
    assert all(verdict.passed for verdict in verdicts), verdicts
    return [verdict.seconds for verdict in verdicts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sandboxes = ["process"] + (["gvisor"] if shutil.which("runsc") else [])
    print(describe())
    print(f"{'sandbox':10} {'1 call (s)':>11} {f'{args.calls} calls (s)':>15} {'per call (µs)':>14}")
    for sandbox in sandboxes:
        started = time.monotonic()
        one = statistics.median(measure(sandbox, 1, args.repeat))
        many = statistics.median(measure(sandbox, args.calls, args.repeat))
        per_call = (many - one) / (args.calls - 1) * 1e6
        print(f"{sandbox:10} {one:11.4f} {many:15.4f} {per_call:14.1f}   ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
