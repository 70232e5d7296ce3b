"""The local executor's view of releases: the LocalReleaseStore behind the `Releases` interface the plan needs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sigma0.gate import Decision
from sigma0.io import read_json
from sigma0.plan import Incumbent, Publish
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

    def publish(self, release: str, *, cycle: str, action: Publish, incumbent: Incumbent | None,
                evidence: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the decision: the evidence logged is the decision file's inputs (both result files, by digest)."""
        recorded = read_json(action.decision_file)
        decision = Decision.from_dict(recorded)
        result = self.store.publish(
            release, decision=decision, candidate_adapter_dir=action.candidate_uri,
            candidate_digest=action.candidate_digest,
            evaluated_incumbent_digest=incumbent.digest if incumbent else None,
            cycle=cycle, evidence={**evidence, "results": recorded.get("inputs")})
        reason = decision.reason
        if result.outcome != decision.outcome:
            reason = "the release changed while this cycle ran; its incumbent result is stale and nothing was written"
        return {"outcome": str(result.outcome), "reason": reason, "revision": result.revision,
                "uri": result.pointer.uri if result.pointer else None}
