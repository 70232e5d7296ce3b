"""The sandbox's command-line options, shared by the stages that run candidates (verify, score)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from sigma0.sandbox.limits import Limits
from sigma0.sandbox.runner import (
    SANDBOXES,
    Runsc,
    default_workers,
    describe_sandbox,
    find_runsc,
    pin_lanes,
    resolve_sandbox,
)


@dataclass(frozen=True)
class Settings:
    sandbox: str  # resolved: "gvisor" or "process"
    workers: int
    timeout: float
    limits: Limits
    runsc: Runsc | None = None  # under gVisor: which runsc, on which platform (runner.find_runsc)
    pinned: bool = False  # under gVisor: each lane's sandbox pinned to a CPU of its own (runner.lane_cpus)

    def describe(self) -> str:
        sandbox = describe_sandbox(self.sandbox, self.workers)
        return f"sandbox {sandbox}, {self.workers} workers, timeout {self.timeout:g} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sandbox": self.sandbox,
            "workers": self.workers,
            "timeout": self.timeout,
            "limits": self.limits.for_worker(self.timeout),
            "runsc": None if self.runsc is None else self.runsc.to_dict(),
            "pinned": self.pinned,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sandbox",
        choices=SANDBOXES,
        default="auto",
        help="auto (default): gvisor if there is a runsc (sigma0's build or one on PATH), else process",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per candidate (default 10)")
    parser.add_argument("--workers", type=int, default=None, help="candidates run at once (default: CPU cores)")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per candidate (default 1024)")


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed options; ValueError (or SandboxUnavailable) says what is wrong with them."""
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    if args.workers is not None and args.workers <= 0:
        raise ValueError(f"--workers must be positive, got {args.workers}")
    if args.memory_mb <= 0:
        raise ValueError(f"--memory-mb must be positive, got {args.memory_mb}")
    sandbox = resolve_sandbox(args.sandbox)
    workers = args.workers or default_workers()
    return Settings(
        sandbox=sandbox,
        workers=workers,
        timeout=args.timeout,
        limits=Limits(memory_mb=args.memory_mb),
        runsc=find_runsc() if sandbox == "gvisor" else None,
        pinned=pin_lanes(sandbox, workers),
    )
