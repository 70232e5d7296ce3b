"""The demo end to end on the CPU, per stage: its three cycles (examples/demo/[0-9]-*.yaml, what `make demo` runs),
each with `sigma0 run`, in order, in a fresh workdir: Bootstrapped, then Promoted, then Rejected.

    python bench/demo_cycle.py                    # one run of the three
    python bench/demo_cycle.py --repeat 3 --json results.json
    python bench/demo_cycle.py --fresh-model      # also time tiny://coder's one-time pretraining (a temp model cache)

Each run is the user's command as a subprocess, timed from start to exit. Per-step times come from what the local
executor leaves in <workdir>/cycles/<name>/: every step's log opens with `$ command   # <start time>` and steps run
one after another, so a step's time is from the previous step's last log write (or the run's start) to its own
last log write; that charges the executor's own work between steps to the step after it. The stage's own figure
(the `seconds` in its summary, where it reports one) is shown beside it. Target: the three cycles together under 3
minutes, once the model is built (with --fresh-model the first cycle's train step includes the pretraining).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from machine import describe  # bench/machine.py: scripts here run as `python bench/NAME.py`

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((REPO / "examples" / "demo").glob("[0-9]-*.yaml"))
TARGET_SECONDS = 180.0
START_STAMP = re.compile(r"^\$ .*#\s*(\S+)\s*$", re.MULTILINE)


def run_cycle(workdir: Path, manifest: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `sigma0 run`; its wall time, outcome and per-step figures read back from the cycle folder."""
    before = {path.name for path in (workdir / "cycles").glob("*")} if (workdir / "cycles").exists() else set()
    load = os.getloadavg()[0]
    began_wall = time.time()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sigma0", "run", str(manifest), "--workdir", str(workdir)],
                          capture_output=True, text=True, env={**env, "COLUMNS": "120"})  # fmt: skip
    seconds = time.perf_counter() - began
    made = sorted({path.name for path in (workdir / "cycles").glob("*")} - before)
    if len(made) != 1:
        raise SystemExit(f"expected one new cycle in {workdir}/cycles, found {made}:\n{done.stdout[-3000:]}")
    cycle_dir = workdir / "cycles" / made[0]
    state = json.loads((cycle_dir / "state.json").read_text())
    if done.returncode != 0 or not state.get("finished"):
        raise SystemExit(f"sigma0 run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {
        "cycle": made[0],
        "seconds": round(seconds, 2),
        "outcome": state["finished"].get("outcome"),
        "steps": step_times(cycle_dir, state, began_wall),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def step_times(cycle_dir: Path, state: dict[str, Any], began: float) -> dict[str, dict[str, float | None]]:
    """{step: {wall, stage}} in the order the steps ran (see the module docstring for how wall is measured)."""
    started: list[tuple[float, str, float]] = []
    for name in state["steps"]:
        log = cycle_dir / "logs" / f"{name}.log"
        stamps = START_STAMP.findall(log.read_text(encoding="utf-8", errors="replace"))
        if not stamps:
            raise SystemExit(f"{log} has no start line")
        started.append((datetime.fromisoformat(stamps[-1]).timestamp(), name, log.stat().st_mtime))
    times: dict[str, dict[str, float | None]] = {}
    previous_end = began
    for _, name, ended in sorted(started):
        stage = state["steps"][name]["summary"].get("seconds")
        times[name] = {"wall": round(ended - previous_end, 2), "stage": stage}
        previous_end = ended
    return times


def machine() -> dict[str, Any]:
    return describe(("sigma0", "torch", "transformers", "peft"))


def spread(values: list[float]) -> str:
    return f"{min(values):8.1f}{statistics.median(values):8.1f}{max(values):8.1f}"


def print_table(label: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n{label}: seconds, min / median / max over {len(runs)} repeat(s); outcome {[r['outcome'] for r in runs]}")
    print(f"{'step':<24}{'wall':>8}{'':>16}{'stage':>8}{'':>16}")
    for name in runs[0]["steps"]:
        walls = [run["steps"][name]["wall"] for run in runs if name in run["steps"]]
        stages = [run["steps"][name]["stage"] for run in runs if run["steps"].get(name, {}).get("stage") is not None]
        stage = spread(stages) if stages else f"{'—':>8}{'':>16}"
        print(f"{name:<24}{spread(walls)}{stage}")
    totals = [run["seconds"] for run in runs]
    loads = ", ".join(f"{run['load'][0]:.1f}→{run['load'][1]:.1f}" for run in runs)
    print(f"{'whole run':<24}{spread(totals)}   load (1 min, start→end) {loads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs of the three cycles, each in a fresh workdir")
    parser.add_argument("--fresh-model", action="store_true", help="build tiny://coder in a temp model cache")
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()
    if args.repeat <= 0:
        parser.error("--repeat must be positive")
    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}")
    print(f"versions: python {info['python']}, sigma0 {info['sigma0']}, torch {info['torch']}, "
          f"transformers {info['transformers']}, peft {info['peft']}")  # fmt: skip
    print(f"command: sigma0 run for each of {', '.join(m.name for m in MANIFESTS)} in a fresh workdir")
    runs: list[list[dict[str, Any]]] = [[] for _ in MANIFESTS]
    totals = []
    for repeat in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="demo-bench-") as folder:
            env = dict(os.environ)
            if args.fresh_model:
                env["SIGMA0_MODEL_CACHE"] = str(Path(folder) / "models")
            for manifest, results in zip(MANIFESTS, runs, strict=True):
                result = run_cycle(Path(folder) / "work", manifest, env)
                results.append(result)
                print(f"repeat {repeat + 1}/{args.repeat} {manifest.name}: {result['seconds']:.1f} s, "
                      f"{result['outcome']}", file=sys.stderr)  # fmt: skip
            totals.append(sum(results[-1]["seconds"] for results in runs))
    for manifest, results in zip(MANIFESTS, runs, strict=True):
        print_table(manifest.name, results)
    print(f"\nthe three cycles: {spread(totals)} s (min / median / max); target < {TARGET_SECONDS:.0f} s: median is "
          f"{statistics.median(totals) / TARGET_SECONDS:.2f}x of it")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "cycles": runs, "totals": totals}, indent=2))


if __name__ == "__main__":
    main()
