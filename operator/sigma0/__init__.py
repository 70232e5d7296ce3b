"""sigma0: an eval-gated continual-training flywheel for coding models."""

import os

__version__ = "0.2.0"

# Set before anything imports torch (its OpenMP runtime reads it once, when it loads): a thread that finishes its
# share of a parallel region sleeps instead of spinning. On a CPU shared with other work (the demo's 2 cores, a CI
# runner), spinning threads made 20 LoRA steps of tiny://coder take 27 s instead of 1.9 s (BENCHMARKS.md, section 4).
# A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
