"""Stage commands: `sigma0 stage NAME ...`.

Every stage module exposes the same two functions, so the CLI, the local executor and a Kubernetes Job run it alike:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> dict      # the stage's summary: small, JSON-serialisable
    outputs(args: argparse.Namespace) -> list  # the files and folders it writes

`run` reads its inputs from files, writes its outputs to files, and returns a summary that the CLI writes to the
termination-message file (what the operator reads from the pod status), with the digest of every output added
(sigma0.evidence). Bad input raises `StageInputError` (exit code 2); anything else that goes wrong raises and
exits 1.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES: dict[str, str] = {
    "harvest": "sigma0.stages.harvest",
    "verify": "sigma0.stages.verify",
    "dataset": "sigma0.stages.dataset",
    "train": "sigma0.stages.train",
    "import": "sigma0.stages.import_adapter",
    "generate": "sigma0.stages.generate",
    "score": "sigma0.stages.score",
    "decide": "sigma0.stages.decide",
    "presign": "sigma0.stages.presign",
}


class StageInputError(Exception):
    """The stage was given input it cannot use; the message says which and what to do. `kind` goes into the
    summary (a person sees it as the cycle's reason: sigma0.kube.status)."""

    kind = "input"


def load_stage(name: str) -> ModuleType:
    if name not in STAGES:
        raise StageInputError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])
