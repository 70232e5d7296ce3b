"""The API server's own count of one user's requests, from its audit log.

kube-apiserver has no per-user request metric (apiserver_request_total is by verb, resource and code), so the
benchmark starts it with an audit policy (tests/cluster/controlplane.py, opt-in through $SIGMA0_AUDIT_POLICY)
that records, at Metadata level, only the requests of one user, here the operator's ServiceAccount. Every
request has one RequestReceived event (counted: a watch counts once, when it starts) and one ResponseComplete
event (its status code; a watch's comes when it ends).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


def policy(user: str) -> str:
    """An audit policy (YAML) that records `user`'s requests and nothing else."""
    return (
        "apiVersion: audit.k8s.io/v1\n"
        "kind: Policy\n"
        "omitStages: [ResponseStarted]\n"
        "rules:\n"
        f"  - level: Metadata\n    users: [{json.dumps(user)}]\n"
        "  - level: None\n"
    )


@dataclass(frozen=True)
class Request:
    at: float  # epoch seconds the server received it
    verb: str
    what: str  # resource[/subresource]
    code: int | None  # None until its ResponseComplete is read


class AuditLog:
    """Reads the log as it grows: `read()` folds in what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._pending = b""
        self.requests: dict[str, Request] = {}  # auditID → request

    def read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size < self._offset:
                raise RuntimeError(f"{self.path} was rotated or truncated under the reader: counts would be wrong")
            handle.seek(self._offset)
            data = self._pending + handle.read()
            self._offset = handle.tell()
        *lines, self._pending = data.split(b"\n")
        for line in lines:
            if line.strip():
                self._fold(json.loads(line))

    def _fold(self, event: dict[str, Any]) -> None:
        ref = event.get("objectRef") or {}
        what = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
        if ref.get("subresource"):
            what += "/" + ref["subresource"]
        at = _epoch(event["requestReceivedTimestamp"])
        code = (event.get("responseStatus") or {}).get("code") if event["stage"] == "ResponseComplete" else None
        known = self.requests.get(event["auditID"])
        if known is None or code is not None:
            self.requests[event["auditID"]] = Request(at, event["verb"], what, code)

    def between(self, start: float, end: float) -> list[Request]:
        """The requests the server received in [start, end] (epoch seconds)."""
        self.read()
        return [r for r in self.requests.values() if start <= r.at <= end]


def breakdown(requests: list[Request]) -> Counter[str]:
    """`verb resource` → count."""
    return Counter(f"{r.verb} {r.what}" for r in requests)


def codes(requests: list[Request]) -> Counter[int]:
    return Counter(r.code for r in requests if r.code is not None)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
