"""The local executor's view of releases: the LocalReleaseStore behind the `Releases` interface the plan needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from sigma0.gate import Decision
from sigma0.io import file_digest
from sigma0.plan import Incumbent
from sigma0.release import LocalReleaseStore


class LocalReleases:
    def __init__(self, root: Path) -> None:
        self.store = LocalReleaseStore(root)

    def incumbent(self, release: str) -> Incumbent | None:
        pointer = self.store.current(release)
        if pointer is None:
            return None
        return Incumbent(digest=pointer.digest, uri=pointer.uri, pass_at_1=pointer.pass_at_1,
                         revision=pointer.revision)

    def publish(self, release: str, *, cycle: str, decision: Mapping[str, Any], candidate_uri: str,
                candidate_digest: str, incumbent: Incumbent | None,
                evidence: Mapping[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(Decision)}
        verdict = Decision.from_dict({k: v for k, v in decision.items() if k in known})
        logged = dict(evidence)
        for key in ("candidate_results", "incumbent_results"):
            if logged.get(key):
                logged[f"{key}_digest"] = file_digest(logged[key])
        result = self.store.publish(
            release, decision=verdict, candidate_adapter_dir=candidate_uri, candidate_digest=candidate_digest,
            evaluated_incumbent_digest=incumbent.digest if incumbent else None, cycle=cycle, evidence=logged)
        reason = verdict.reason
        if result.outcome != verdict.outcome:
            reason = "the release changed while this cycle ran; its incumbent result is stale and nothing was written"
        return {"outcome": str(result.outcome), "reason": reason, "revision": result.revision,
                "uri": result.pointer.uri if result.pointer else None}
