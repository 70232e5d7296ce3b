"""The AdapterRelease: which adapter serving should load now, as a Kubernetes resource.

The cluster twin of sigma0.release.LocalReleaseStore, with the same rules (sigma0.release_rules, used by both)
and the same `Releases` interface:

- publish: only a promoting decision (Bootstrapped, Promoted) writes, and only if the incumbent that was
  evaluated is still the current one; otherwise the outcome is Stale and nothing is written. The new pointer
  goes into spec.current, the old one to the front of spec.history (bounded by spec.historyLimit), and
  spec.revision increases by one.
- rollback: spec.current goes back to the newest earlier pointer that was not itself rolled back from; the
  revision still increases; the pointer rolled back from goes into history marked rolledBack.

Where the local store holds a file lock, the cluster uses the resourceVersion precondition: every write is a
replace (or a create) of the object that was read. On 409 Conflict (someone else wrote first) the release is
read again and the decision applied again, never retried blindly: if the other writer changed the current
adapter, this publish becomes Stale. So of two racing promotions against the same incumbent exactly one wins.

A publish that already happened (the operator was killed after the write, before it recorded it) is
recognised (current.cycle and current.digest are this cycle's) and not redone or misreported as Stale.

The adapter folder itself is not copied: the train stage wrote it atomically under the cycle's folder on the
artifacts volume and nothing rewrites it; the pointer's uri is that folder as the pods see it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sigma0 import plan, retention
from sigma0 import release_rules as rules
from sigma0.kube import API_VERSION, GROUP, RELEASES, VERSION
from sigma0.release_rules import DEFAULT_HISTORY_LIMIT, ReleaseError


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Pointer:
    uri: str
    digest: str
    cycle: str
    promoted_at: str
    revision: int
    pass_at_1: float | None = None
    passed: int | None = None
    total: int | None = None
    suite: str | None = None
    subset: str | None = None
    p_value: float | None = None
    dataset_digest: str | None = None
    imported_from: str | None = None  # an adapter trained elsewhere (spec.candidate): where it came from
    reason: str = ""
    rolled_back: bool = False

    _FIELDS = (("uri", "uri"), ("digest", "digest"), ("cycle", "cycle"), ("promoted_at", "promotedAt"),
               ("revision", "revision"), ("pass_at_1", "passAt1"), ("passed", "passed"), ("total", "total"),
               ("suite", "suite"), ("subset", "subset"), ("p_value", "pValue"),
               ("dataset_digest", "datasetDigest"), ("imported_from", "importedFrom"), ("reason", "reason"),
               ("rolled_back", "rolledBack"))

    def to_spec(self) -> dict[str, Any]:
        data = {key: getattr(self, name) for name, key in self._FIELDS}
        data["shortDigest"] = rules.short_digest(self.digest)  # derived, for the ADAPTER column; from_spec drops it
        # `is`, not `in`: 0 == False, and a pass@1 of 0.0 or 0 problems passed are figures, not absences
        return {key: value for key, value in data.items() if value is not None and value is not False and value != ""}

    @classmethod
    def from_spec(cls, data: Mapping[str, Any]) -> Pointer:
        values = {name: data.get(key) for name, key in cls._FIELDS if data.get(key) is not None}
        values.setdefault("cycle", "")
        values.setdefault("promoted_at", "")
        values.setdefault("revision", 0)
        return cls(**values)


def current_of(release: Mapping[str, Any] | None) -> Pointer | None:
    current = ((release or {}).get("spec") or {}).get("current")
    return Pointer.from_spec(current) if current else None


def history_of(release: Mapping[str, Any] | None) -> list[Pointer]:
    return [Pointer.from_spec(p) for p in ((release or {}).get("spec") or {}).get("history") or []]


def revision_of(release: Mapping[str, Any] | None) -> int:
    return int(((release or {}).get("spec") or {}).get("revision") or 0)


def history_limit_of(release: Mapping[str, Any] | None) -> int:
    spec = (release or {}).get("spec") or {}
    return rules.check_history_limit(int(spec.get("historyLimit") or DEFAULT_HISTORY_LIMIT))


def cycle_limits_of(release: Mapping[str, Any] | None) -> retention.Limits:
    """spec.successfulCyclesHistoryLimit and spec.failedCyclesHistoryLimit (unset: keep every cycle)."""
    spec = (release or {}).get("spec") or {}
    return retention.Limits(successful=spec.get("successfulCyclesHistoryLimit"),
                            failed=spec.get("failedCyclesHistoryLimit"))


def pointed_at(release: Mapping[str, Any] | None) -> list[str]:
    """The uri of every adapter the release points at: the current one and every one in its history (a rollback
    may return to any of them), so none of them may be deleted."""
    return [p.uri for p in (current_of(release), *history_of(release)) if p is not None]


def incumbent_of(release: Mapping[str, Any] | None) -> plan.Incumbent | None:
    current = current_of(release)
    if current is None:
        return None
    return plan.Incumbent(digest=current.digest, uri=current.uri, pass_at_1=current.pass_at_1,
                          revision=revision_of(release))


# Pure planning ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishPlan:
    outcome: str
    reason: str
    revision: int
    uri: str | None
    write: dict[str, Any] | None = None  # the object to create (create=True) or replace; None: write nothing
    create: bool = False


def _with_spec(release: Mapping[str, Any] | None, name: str, namespace: str, current: Pointer,
               history: list[Pointer], revision: int) -> dict[str, Any]:
    body = copy.deepcopy(dict(release)) if release else {
        "apiVersion": API_VERSION, "kind": "AdapterRelease", "metadata": {"name": name, "namespace": namespace},
        "spec": {}}
    spec = body.setdefault("spec", {})
    spec["current"] = current.to_spec()
    spec["history"] = [p.to_spec() for p in rules.bounded(history, history_limit_of(release))]
    spec["revision"] = revision
    return body


def plan_publish(release: Mapping[str, Any] | None, *, name: str, namespace: str, cycle: str,
                 decision: Mapping[str, Any], candidate_uri: str, candidate_digest: str,
                 evaluated: plan.Incumbent | None, evidence: Mapping[str, Any], now: str) -> PublishPlan:
    """What publishing `decision` does to `release` as it is now (None: it does not exist)."""
    rules.check_name(name)
    outcome = rules.outcome_of(decision)
    evaluated_digest = evaluated.digest if evaluated else None
    rules.check_publish(outcome, candidate_uri=candidate_uri, candidate_digest=candidate_digest,
                        evaluated_digest=evaluated_digest)
    current = current_of(release)
    verdict = rules.judge_publish(outcome, str(decision.get("reason", "")), current=current,
                                  revision=revision_of(release), cycle=cycle, candidate_digest=candidate_digest,
                                  evaluated_digest=evaluated_digest)
    reason = verdict.reason
    if not verdict.write:
        return PublishPlan(str(verdict.outcome), reason, verdict.revision, current.uri if current else None)
    pointer = Pointer(
        uri=candidate_uri, digest=candidate_digest, cycle=cycle, promoted_at=now, revision=verdict.revision,
        pass_at_1=_float(decision.get("candidate_pass_at_1")), passed=_int(decision.get("candidate_passed")),
        total=_int(decision.get("candidate_total")), suite=evidence.get("suite"), subset=evidence.get("subset"),
        p_value=_float(decision.get("p_value")), dataset_digest=evidence.get("dataset_digest"),
        imported_from=evidence.get("imported_from"), reason=reason)
    history = rules.history_after_publish(current, history_of(release), history_limit_of(release))
    body = _with_spec(release, name, namespace, pointer, history, verdict.revision)
    return PublishPlan(str(outcome), reason, verdict.revision, candidate_uri, body, create=release is None)


def plan_rollback(release: Mapping[str, Any] | None, *, name: str, reason: str, now: str) -> tuple[Pointer,
                                                                                                   dict[str, Any]]:
    """The pointer a rollback makes current (sigma0.release_rules.choose_rollback), and the object to replace
    `release` with."""
    rules.check_name(name)
    if release is None:
        raise ReleaseError(f"AdapterRelease {name!r} does not exist; nothing to roll back")
    choice = rules.choose_rollback(f"AdapterRelease {name!r}", current_of(release), history_of(release),
                                   revision_of(release), history_limit_of(release))
    pointer = replace(choice.target, promoted_at=now, revision=choice.revision,
                      reason=f"rollback: {reason}" if reason else "rollback")
    body = _with_spec(release, name, release["metadata"].get("namespace", ""), pointer, choice.history,
                      choice.revision)
    return pointer, body


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# The API side -----------------------------------------------------------------------------------------------------


class ClusterReleases:
    """AdapterReleases in one namespace, through kubernetes.client.CustomObjectsApi: the `Releases` interface
    (sigma0.release_rules) that the local store implements too, plus `get`, the object as it is."""

    def __init__(self, api: Any, namespace: str, *, timeout: tuple[float, float] = (5, 30), attempts: int = 8,
                 clock: Callable[[], str] = now_rfc3339) -> None:
        self.api = api
        self.namespace = namespace
        self.timeout = timeout
        self.attempts = attempts
        self.clock = clock

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        rules.check_name(name)
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, RELEASES, name,
                                                         _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def current(self, name: str) -> Pointer | None:
        return current_of(self.get(name))

    def history(self, name: str) -> list[Pointer]:
        return history_of(self.get(name))

    def incumbent(self, name: str) -> plan.Incumbent | None:
        return incumbent_of(self.get(name))

    def publish(self, name: str, *, cycle: str, decision: Mapping[str, Any], candidate_uri: str,
                candidate_digest: str, incumbent: plan.Incumbent | None,
                evidence: Mapping[str, Any]) -> dict[str, Any]:
        for _ in range(self.attempts):
            found = plan_publish(self.get(name), name=name, namespace=self.namespace, cycle=cycle,
                                 decision=decision, candidate_uri=candidate_uri, candidate_digest=candidate_digest,
                                 evaluated=incumbent, evidence=evidence, now=self.clock())
            if found.write is None or self._write(name, found.write, create=found.create):
                return {"outcome": found.outcome, "reason": found.reason, "revision": found.revision,
                        "uri": found.uri}
        raise ReleaseError(f"AdapterRelease {name!r} kept changing during {self.attempts} attempts to publish; "
                           "the cycle will try again")

    def rollback(self, name: str, *, reason: str = "") -> Pointer:
        for _ in range(self.attempts):
            pointer, body = plan_rollback(self.get(name), name=name, reason=reason, now=self.clock())
            if self._write(name, body, create=False):
                return pointer
        raise ReleaseError(f"AdapterRelease {name!r} kept changing during {self.attempts} attempts to roll back")

    def _write(self, name: str, body: dict[str, Any], *, create: bool) -> bool:
        """Create or replace (guarded by the resourceVersion in `body`); False on 409: read again and re-plan."""
        from kubernetes.client.exceptions import ApiException

        try:
            if create:
                self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, RELEASES, body,
                                                         _request_timeout=self.timeout)
            else:
                self.api.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, RELEASES, name, body,
                                                          _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True
