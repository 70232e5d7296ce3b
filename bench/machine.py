"""What every benchmark prints first: the machine and the versions its figures were taken with."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def runsc_version() -> str | None:
    """The runsc sigma0's gVisor sandboxes start with here, its version and platform (sigma0.sandbox.runner)."""
    from sigma0.sandbox.runner import find_runsc

    runsc = find_runsc()
    if runsc is None:
        return None
    return f"runsc {runsc.version} --platform={runsc.platform} ({runsc.origin}: {runsc.path})"


def describe(packages: tuple[str, ...] = (), *, runsc: bool = False) -> dict[str, Any]:
    """Cores, CPU model, Python, the versions of `packages`, and runsc's version when `runsc` is asked for."""
    info: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(),
                            "python": platform.python_version()}
    if runsc:
        info["runsc"] = runsc_version()
    return info | {name: importlib.metadata.version(name) for name in packages}
