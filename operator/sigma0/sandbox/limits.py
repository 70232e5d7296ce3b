"""Resource limits applied to every candidate process."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one candidate may use. The wall-clock timeout is passed separately (it is per batch call).

    memory_mb       RLIMIT_AS: address space of each process of the candidate.
    cpu_seconds     RLIMIT_CPU: None means the wall-clock timeout rounded up, plus one second.
    file_size_mb    RLIMIT_FSIZE: the largest file the candidate may write.
    max_processes   RLIMIT_NPROC: processes the candidate may have at once (its own included).
    open_files      RLIMIT_NOFILE.
    output_bytes    stdout + stderr together; a candidate that writes more is killed (reason output_limit).
    """

    memory_mb: int = 1024
    cpu_seconds: float | None = None
    file_size_mb: int = 16
    max_processes: int = 32
    open_files: int = 256
    output_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("memory_mb", "file_size_mb", "max_processes", "open_files", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")
        if self.cpu_seconds is not None and self.cpu_seconds <= 0:
            raise ValueError(f"Limits.cpu_seconds must be positive, got {self.cpu_seconds}")

    def for_worker(self, timeout: float) -> dict[str, Any]:
        """The plain-data form the worker reads, with the CPU limit resolved against the timeout."""
        data = asdict(self)
        data["cpu_seconds"] = math.ceil(self.cpu_seconds if self.cpu_seconds is not None else timeout + 1)
        return data
