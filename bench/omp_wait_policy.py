"""What OMP_WAIT_POLICY does to CPU training on a shared machine: 20 LoRA steps of tiny://coder, two threads.

    python bench/omp_wait_policy.py [--repeat 3]

sigma0 sets OMP_WAIT_POLICY=PASSIVE before torch loads (operator/sigma0/__init__.py) unless the user set it. This
runs the same training in fresh processes with ACTIVE (OpenMP threads spin between parallel regions, what an unset
policy does in practice) and PASSIVE (they sleep), taking turns, and prints the loop's seconds and the 1-minute load.
Under no other load the two are close; with other processes on the cores, spinning threads fight them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, time, torch
torch.set_num_threads(2)
from sigma0.ml.corpus import COMMON
from sigma0.ml.models import load_base_model
from sigma0.ml.qlora import TrainConfig, encode_example, train_adapter
loaded = load_base_model("tiny://coder", "none", "cpu")
functions = [COMMON["add"].function(a) for a in range(2, 30)]
examples = [encode_example(loaded.tokenizer, f.prompt, f.body, 128) for f in functions]
result = train_adapter(loaded, examples, TrainConfig(steps=20, batch_size=8, learning_rate=2e-3))
print(json.dumps({"seconds": result.seconds}))
"""


def run(policy: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
    loads = []
    for _ in range(args.repeat):
        for policy in times:
            times[policy].append(run(policy))
            loads.append(os.getloadavg()[0])
    print(f"20 LoRA steps of tiny://coder (batch 8), 2 threads; 1-minute load {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'OMP_WAIT_POLICY':<18}{'min':>8}{'median':>8}{'max':>8}  seconds")
    for policy, values in times.items():
        print(f"{policy:<18}{min(values):8.2f}{statistics.median(values):8.2f}{max(values):8.2f}")


if __name__ == "__main__":
    main()
