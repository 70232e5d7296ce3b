"""The AdapterRelease (pure planning): publish with the Stale check, idempotent re-publish, history, rollback.

The API side (resourceVersion precondition, 409 → re-read and decide again) runs against the real API server in
tests/cluster/test_operator.py."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from sigma0 import plan
from sigma0.kube import releases
from sigma0.spec import _strict, check_documents, openapi_schema

A, B, C = ("sha256:" + x * 64 for x in "abc")
NOW = "2026-01-01T00:00:00Z"
EVIDENCE = {"suite": "humaneval", "subset": "first:3", "dataset_digest": "sha256:d"}
SPEC_SCHEMA = jsonschema.Draft4Validator(_strict(openapi_schema("AdapterRelease")["properties"]["spec"]))


def decision(outcome: str, passed: int = 2) -> dict[str, Any]:
    return {"outcome": outcome, "reason": f"{outcome} because", "candidate_pass_at_1": passed / 4,
            "candidate_passed": passed, "candidate_total": 4, "p_value": 0.5}


def publish(release: dict[str, Any] | None, outcome: str, digest: str, evaluated: plan.Incumbent | None,
            cycle: str = "c2") -> releases.PublishPlan:
    return releases.plan_publish(release, name="coder", namespace="team", cycle=cycle, decision=decision(outcome),
                                 candidate_uri=f"/artifacts/{cycle}/adapter", candidate_digest=digest,
                                 evaluated=evaluated, evidence=EVIDENCE, now=NOW)


def stored(body: dict[str, Any], resource_version: str = "7") -> dict[str, Any]:
    """What the API server would hand back: the body with defaults and a resourceVersion."""
    body = {**body, "metadata": {**body["metadata"], "resourceVersion": resource_version}}
    body["spec"].setdefault("historyLimit", 10)
    errors = [e.message for e in SPEC_SCHEMA.iter_errors(body["spec"])]
    assert not errors, errors
    return body


def test_bootstrap_creates_the_release() -> None:
    found = publish(None, "Bootstrapped", A, None, cycle="c1")
    assert found.outcome == "Bootstrapped" and found.create and found.revision == 1
    release = stored(found.write)
    assert release["metadata"] == {"name": "coder", "namespace": "team", "resourceVersion": "7"}
    current = release["spec"]["current"]
    assert current["digest"] == A and current["cycle"] == "c1" and current["passAt1"] == 0.5
    assert current["passed"] == 2 and current["total"] == 4 and current["suite"] == "humaneval"
    assert current["revision"] == 1 and current["promotedAt"] == NOW
    assert releases.incumbent_of(release) == plan.Incumbent(A, "/artifacts/c1/adapter", 0.5, 1)


def test_promotion_replaces_the_read_object_and_keeps_history() -> None:
    first = stored(publish(None, "Bootstrapped", A, None, cycle="c1").write)
    incumbent = releases.incumbent_of(first)
    found = publish(first, "Promoted", B, incumbent)
    assert found.outcome == "Promoted" and not found.create and found.revision == 2
    assert found.write["metadata"]["resourceVersion"] == "7"  # the precondition: replace what was read
    second = stored(found.write, "8")
    assert second["spec"]["current"]["digest"] == B
    assert [p["digest"] for p in second["spec"]["history"]] == [A]


def test_a_changed_incumbent_makes_the_publish_stale_and_writes_nothing() -> None:
    first = stored(publish(None, "Bootstrapped", A, None, cycle="c1").write)
    evaluated = releases.incumbent_of(first)
    moved = stored(publish(first, "Promoted", B, evaluated, cycle="c2").write, "8")
    found = publish(moved, "Promoted", C, evaluated, cycle="c3")
    assert found.outcome == "Stale" and found.write is None and found.revision == 2
    assert A in found.reason and B in found.reason
    # a bootstrap that lost the race to create the release is Stale too
    assert publish(first, "Bootstrapped", C, None, cycle="c3").outcome == "Stale"


def test_rejections_write_nothing() -> None:
    first = stored(publish(None, "Bootstrapped", A, None, cycle="c1").write)
    found = publish(first, "Rejected", B, releases.incumbent_of(first))
    assert (found.outcome, found.write, found.revision) == ("Rejected", None, 1)
    assert publish(None, "Rejected", B, None).write is None


def test_publishing_again_after_a_restart_is_recognised() -> None:
    first = stored(publish(None, "Bootstrapped", A, None, cycle="c1").write)
    again = publish(first, "Bootstrapped", A, None, cycle="c1")
    assert (again.outcome, again.write, again.revision) == ("Bootstrapped", None, 1)


def test_history_is_bounded_by_the_limit() -> None:
    release = stored(publish(None, "Bootstrapped", A, None, cycle="c0").write)
    release["spec"]["historyLimit"] = 2
    for index in range(4):
        digest = "sha256:" + f"{index + 1:x}" * 64
        found = publish(release, "Promoted", digest, releases.incumbent_of(release), cycle=f"c{index + 1}")
        release = stored(found.write)
        release["spec"]["historyLimit"] = 2
    assert release["spec"]["revision"] == 5 and len(release["spec"]["history"]) == 2


def test_bad_decisions_are_refused() -> None:
    with pytest.raises(releases.ReleaseError, match="Stale before"):
        publish(None, "Stale", A, None)
    with pytest.raises(releases.ReleaseError, match="needs the digest of the incumbent"):
        publish(None, "Promoted", A, None)
    with pytest.raises(releases.ReleaseError, match="without an incumbent"):
        publish(None, "Bootstrapped", A, plan.Incumbent(B, "/x"))
    with pytest.raises(releases.ReleaseError, match="digest"):
        publish(None, "Bootstrapped", "sha256:short", None)


def test_rollback_goes_back_and_never_to_a_pointer_rolled_back_from() -> None:
    release = stored(publish(None, "Bootstrapped", A, None, cycle="c1").write)
    release = stored(publish(release, "Promoted", B, releases.incumbent_of(release)).write)
    pointer, body = releases.plan_rollback(release, name="coder", reason="regression in prod", now=NOW)
    assert pointer.digest == A and pointer.revision == 3 and "regression in prod" in pointer.reason
    body = stored(body)
    assert body["spec"]["revision"] == 3 and body["spec"]["current"]["digest"] == A
    assert body["spec"]["history"][0]["digest"] == B and body["spec"]["history"][0]["rolledBack"] is True
    with pytest.raises(releases.ReleaseError, match="no earlier adapter"):
        releases.plan_rollback(body, name="coder", reason="", now=NOW)
    with pytest.raises(releases.ReleaseError, match="does not exist"):
        releases.plan_rollback(None, name="coder", reason="", now=NOW)


def test_pointers_round_trip() -> None:
    pointer = releases.Pointer(uri="/a", digest=A, cycle="c1", promoted_at=NOW, revision=3, pass_at_1=0.5,
                               passed=2, total=4, rolled_back=True)
    assert releases.Pointer.from_spec(pointer.to_spec()) == pointer


def test_a_pointer_carries_its_short_digest_for_the_adapter_column() -> None:
    pointer = releases.Pointer(uri="/a", digest=A, cycle="c1", promoted_at=NOW, revision=1)
    spec = pointer.to_spec()
    assert spec["shortDigest"] == A[:19] == "sha256:" + A.removeprefix("sha256:")[:12]
    check_documents([{"apiVersion": "sigma0.dev/v1alpha1", "kind": "AdapterRelease", "metadata": {"name": "r"},
                      "spec": {"current": spec}}], "r")  # what sigma0 writes passes its own schema and rules


def test_a_zero_pass_at_1_is_kept_not_taken_for_an_absent_one() -> None:
    pointer = releases.Pointer(uri="/a", digest=A, cycle="c1", promoted_at=NOW, revision=1, pass_at_1=0.0,
                               passed=0, total=3)
    spec = pointer.to_spec()
    assert (spec["passAt1"], spec["passed"], spec["total"]) == (0.0, 0, 3)  # `kubectl get ar` shows PASS@1 0
    assert "rolledBack" not in spec and releases.Pointer.from_spec(spec) == pointer


def test_an_imported_adapter_says_where_it_came_from_and_keeps_it_through_history() -> None:
    imported = {"suite": "humaneval", "subset": "all", "imported_from": "s3://team/adapters/long-run",
                "imported_digest": B}
    first = stored(publish(None, "Bootstrapped", A, None, cycle="c1").write)
    found = releases.plan_publish(first, name="coder", namespace="team", cycle="c2", decision=decision("Promoted"),
                                  candidate_uri="/artifacts/c2/import/adapter", candidate_digest=B,
                                  evaluated=releases.incumbent_of(first), evidence=imported, now=NOW)
    release = stored(found.write)
    current = release["spec"]["current"]
    assert current["importedFrom"] == "s3://team/adapters/long-run" and "datasetDigest" not in current
    assert current["digest"] == B and current["uri"] == "/artifacts/c2/import/adapter"
    assert releases.current_of(release).imported_from == "s3://team/adapters/long-run"
    assert "importedFrom" not in release["spec"]["history"][0]  # the trained one before it
