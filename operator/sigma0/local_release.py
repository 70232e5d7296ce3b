"""Local releases behind the `Releases` interface (sigma0.release_rules) that ClusterReleases implements too: the
LocalReleaseStore (sigma0.release) as the local executor and `sigma0 release` use it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sigma0 import release_rules as rules
from sigma0.gate import Decision
from sigma0.plan import Incumbent
from sigma0.release import LocalReleaseStore, ReleasePointer


class LocalReleases:
    def __init__(self, root: str | os.PathLike[str], *, history_limit: int = rules.DEFAULT_HISTORY_LIMIT) -> None:
        self.store = LocalReleaseStore(root, history_limit=history_limit)

    def current(self, name: str) -> ReleasePointer | None:
        return self.store.current(name)

    def history(self, name: str) -> list[ReleasePointer]:
        return self.store.history(name)

    def incumbent(self, name: str) -> Incumbent | None:
        pointer = self.store.current(name)
        if pointer is None:
            return None
        return Incumbent(digest=pointer.digest, uri=pointer.uri, pass_at_1=pointer.pass_at_1,
                         revision=pointer.revision)

    def publish(self, name: str, *, cycle: str, decision: Mapping[str, Any], candidate_uri: str,
                candidate_digest: str, incumbent: Incumbent | None, evidence: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the decision. The local log keeps the whole decision, so `decision` is decision.json's content
        (policy included); the evidence logged adds its inputs (both result files, by digest)."""
        rules.outcome_of(decision)  # the same refusal as the cluster's for what is not a gate decision
        try:
            parsed = Decision.from_dict(decision)
        except ValueError as error:
            raise rules.InvalidRelease(f"{error}: the local release log keeps the whole decision; pass the "
                                       "content of the decide step's decision.json") from error
        result = self.store.publish(
            name, decision=parsed, candidate_adapter_dir=candidate_uri, candidate_digest=candidate_digest,
            evaluated_incumbent_digest=incumbent.digest if incumbent else None,
            cycle=cycle, evidence={**evidence, "results": decision.get("inputs")})
        return {"outcome": str(result.outcome), "reason": result.reason, "revision": result.revision,
                "uri": result.pointer.uri if result.pointer else None}

    def rollback(self, name: str, *, reason: str = "") -> ReleasePointer:
        return self.store.rollback(name, reason=reason)
