"""The execution gate's sandbox: run untrusted candidates, each in its own confined child, and say which passed.

    programs.py  Program, Verdict, Reason; programs from a row's code + asserts or a suite problem + completion
    harness.py   the code that runs around each candidate inside its child: strict checks, nonce-tagged reports
    worker.py    the warm worker (inside gVisor or not) that forks, confines, times and kills one child per job
    runner.py    the parent side: sandbox choice, a few warm workers (lanes) per batch, verdicts streamed back
    limits.py    the resource limits
    options.py   the command-line options of the stages that use it

The sandbox knows nothing of training or models; the stages `verify` and `score` use it.
"""

from sigma0.sandbox import options
from sigma0.sandbox.limits import Limits
from sigma0.sandbox.programs import Program, Reason, Verdict, for_problem, from_asserts
from sigma0.sandbox.runner import SANDBOXES, SandboxUnavailable, describe_sandbox, resolve_sandbox, run_programs

__all__ = [
    "SANDBOXES",
    "Limits",
    "Program",
    "Reason",
    "SandboxUnavailable",
    "Verdict",
    "describe_sandbox",
    "for_problem",
    "from_asserts",
    "options",
    "resolve_sandbox",
    "run_programs",
]
