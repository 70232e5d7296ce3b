"""Stage summaries travel through the termination-message file: `/dev/termination-log` in a pod (the operator reads
it from the pod status), a file named by SIGMA0_TERMINATION_LOG locally. Kubernetes keeps at most 4096 bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LIMIT_BYTES = 4096
POD_PATH = Path("/dev/termination-log")
CUT = "(cut: too large for a termination message)"


def termination_path() -> Path | None:
    configured = os.environ.get("SIGMA0_TERMINATION_LOG")
    if configured:
        return Path(configured)
    if POD_PATH.exists() and os.access(POD_PATH, os.W_OK):
        return POD_PATH
    return None


KEPT = ("outputs", "error", "kind", "stage")  # cut only when nothing else is left to cut


def encode(summary: dict[str, Any], limit: int = LIMIT_BYTES) -> str:
    """Compact JSON that fits the limit: if it does not, the largest fields are replaced by a note, one by one,
    so what arrives is always valid JSON and says what was cut. The outputs' digests (sigma0.evidence) and an
    error go last: a later stage cannot read an output whose digest was not recorded."""
    summary = dict(summary)
    text = json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str)
    while len(text.encode()) > limit and summary:
        cuttable = ([key for key in summary if key not in KEPT and summary[key] != CUT]
                    or [key for key in summary if summary[key] == CUT] or list(summary))
        largest = max(cuttable, key=lambda key: len(json.dumps(summary[key], default=str)))
        if summary[largest] == CUT:
            summary.pop(largest)
        else:
            summary[largest] = CUT
        text = json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str)
    return text


def write_summary(summary: dict[str, Any]) -> None:
    path = termination_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(encode(summary), encoding="utf-8")
