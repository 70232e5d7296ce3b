"""TrainingCycle status (pure): record ⇔ CycleState, conditions, printer columns; and the release queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from sigma0 import plan
from sigma0.kube import jobs, queue, status
from sigma0.spec import _strict, crd, openapi_schema, parse_manifest

REF = jobs.CycleRef(name="c1", namespace="team", uid="0123456789abcdef", release="coder")
SPEC = parse_manifest({
    "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
    "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
             "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}, "promote": {"significance": 0.5}},
}).spec
LAYOUT = jobs.layout(REF, SPEC, jobs.PodSettings())
NOW = "2026-01-01T00:10:00Z"
INCUMBENT = plan.Incumbent(digest="sha256:" + "a" * 64, uri="/artifacts/x/adapter", pass_at_1=0.25, revision=4)
CANDIDATE = "sha256:" + "c" * 64

SUMMARIES = {
    "harvest": {"harvested": 40, "kept": 30, "excluded": 1, "duplicates": 3, "dropped": {"syntax": 2, "bad_json": 1}},
    "verify": {"total": 30, "passed": 24, "sandbox": "process", "dropped": {"assertion": 4, "syntax": 2}},
    "dataset": {"rows": 30, "dataset_digest": "sha256:d"},
    "train": {"adapter_digest": CANDIDATE, "steps": 20},
    "generate": {},
    "score-candidate": {"pass_at_1": 0.5, "passed": 2, "total": 4},
    "score-incumbent": {"pass_at_1": 0.25, "passed": 1, "total": 4},
    "decide": {"outcome": "Promoted", "reason": "candidate 2/4 vs incumbent 1/4", "p_value": 1.0},
}
ORDER = ["harvest", "verify", "dataset", "train", "generate", "score-candidate", "score-incumbent", "decide"]


def record_after(done: list[str], running: str | None = None, **extra: Any) -> status.CycleRecord:
    stages = {name: status.StageRecord(f"c1-{name}-1", 1, "succeeded", "2026-01-01T00:00:00Z",
                                       "2026-01-01T00:01:00Z", SUMMARIES[name]) for name in done}
    if running:
        stages[running] = status.StageRecord(f"c1-{running}-1", 1, "running", "2026-01-01T00:02:00Z")
    return status.CycleRecord(admitted=True, incumbent_resolved=True, incumbent=INCUMBENT, stages=stages, **extra)


def rendered(record: status.CycleRecord, situation: status.Situation | None = None,
             previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return status.render(SPEC, record, LAYOUT, situation or status.Situation(), generation=3, now=NOW,
                         previous=previous)


def by_type(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in found["conditions"]}


STATUS_SCHEMA = jsonschema.Draft4Validator(_strict(openapi_schema("TrainingCycle")["properties"]["status"]))


def assert_fits_the_crd(found: dict[str, Any]) -> None:
    """Every field the operator writes is in the CRD's status schema: a pruned field would never converge."""
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in STATUS_SCHEMA.iter_errors(found)]
    assert not errors, errors


def test_the_record_survives_a_round_trip_through_the_status() -> None:
    published = {"outcome": "Promoted", "reason": "better", "revision": 5, "uri": "/artifacts/c/adapter"}
    record = record_after(ORDER, published=published)
    found = rendered(record)
    assert status.read_record(found) == record
    assert status.read_record(found).state() == record.state()
    assert_fits_the_crd(found)
    failed = status.CycleRecord(failure=("DeadlineExceeded", "too slow"))
    assert status.read_record(rendered(failed)) == failed


def test_complete_and_suspended_conditions_follow_a_jobs_convention() -> None:
    """Complete (True once the cycle succeeded, for good) and Suspended (True while spec.suspend holds it), as a
    batch/v1 Job and a JobSet report them, beside Ready, Failed and the stage conditions."""
    def conditions_of(record: status.CycleRecord, situation: status.Situation | None = None) -> dict[str, Any]:
        found = rendered(record, situation)
        assert_fits_the_crd(found)
        return {kind: (c["status"], c["reason"]) for kind, c in by_type(found).items()
                if kind in ("Complete", "Suspended", "Failed")}

    published = {"outcome": "Rejected", "reason": "a tie", "revision": 4, "uri": "/artifacts/c/adapter"}
    assert conditions_of(record_after(ORDER, published=published)) == {
        "Complete": ("True", "Rejected"), "Suspended": ("False", "NotSuspended"), "Failed": ("False", "NoFailure")}
    running = conditions_of(record_after(ORDER[:3], running="train"))
    assert running["Complete"][0] == "False" and running["Suspended"] == ("False", "NotSuspended")
    suspended = conditions_of(record_after(ORDER[:3], running="train"), status.Situation(suspended=True))
    assert suspended["Suspended"] == ("True", "Suspended") and suspended["Complete"][0] == "False"
    failed = conditions_of(status.CycleRecord(failure=("DeadlineExceeded", "too slow")))
    assert failed == {"Complete": ("False", "DeadlineExceeded"), "Suspended": ("False", "NotSuspended"),
                      "Failed": ("True", "DeadlineExceeded")}


def test_a_finished_promotion_shows_every_figure_the_columns_need() -> None:
    published = {"outcome": "Promoted", "reason": "candidate wins", "revision": 5, "uri": "/artifacts/c/adapter"}
    found = rendered(record_after(ORDER, published=published))
    assert found["phase"] == "Succeeded"
    assert found["counts"] == {"harvested": 40, "excluded": 1, "verified": 24, "verifiedOfHarvested": "24/40",
                               "dropped": {"assertion": 4, "bad_json": 1, "duplicate": 3, "syntax": 4}}
    assert found["candidate"] == {"digest": CANDIDATE, "passAt1": 0.5, "passed": 2, "total": 4,
                                  "passAt1Display": "0.500 (2/4)"}
    assert found["incumbent"]["passAt1Display"] == "0.250 (1/4)"
    assert found["decision"] == {"outcome": "Promoted", "reason": "candidate wins", "pValue": 1.0}
    assert found["releaseRevision"] == 5
    conditions = by_type(found)
    assert [c["type"] for c in found["conditions"]] == list(status.CONDITION_TYPES)
    assert all(conditions[kind]["status"] == "True" for kind in status.GROUPS)
    assert conditions["Decided"]["reason"] == "Promoted"
    assert conditions["Ready"]["status"] == "True" and conditions["Failed"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == NOW for c in found["conditions"])
    assert found["completionTime"] == NOW
    # the printer columns read exactly these fields
    (version,) = crd("TrainingCycle")["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    obj = {"spec": {"release": "coder"}, "status": found, "metadata": {"creationTimestamp": NOW}}
    shown = {name: lookup(obj, path) for name, path in columns.items()}
    assert shown == {"Release": "coder", "Phase": "Succeeded", "Reason": "Promoted", "Verified": "24/40",
                     "Candidate": "0.500 (2/4)", "Incumbent": "0.250 (1/4)", "Decision": "Promoted", "Age": NOW,
                     "Placement": None}  # -o wide only; these stage records name no GPU placement


def lookup(obj: dict[str, Any], path: str) -> Any:
    for part in path.strip(".").split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def test_a_stale_publish_is_the_decision_shown() -> None:
    published = {"outcome": "Stale", "reason": "the release changed", "revision": 6}
    found = rendered(record_after(ORDER, published=published))
    assert found["decision"]["outcome"] == "Stale"
    assert by_type(found)["Decided"]["reason"] == "Stale"
    assert found["phase"] == "Succeeded"


def test_a_first_release_shows_no_incumbent() -> None:
    record = status.CycleRecord(admitted=True, incumbent_resolved=True, incumbent=None)
    found = rendered(record)
    assert found["incumbent"] == {"passAt1Display": "none"}
    assert found["phase"] == "Harvesting"


def test_waiting_for_the_scheduler_is_said_in_the_condition_of_the_stage() -> None:
    why = ("Unschedulable", "pod c1-train-1-x is Pending: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    found = rendered(record_after(["harvest", "verify", "dataset"], running="train"),
                     status.Situation(waiting=why))
    conditions = by_type(found)
    assert found["phase"] == "Training"
    assert conditions["Trained"]["status"] == "Unknown" and conditions["Trained"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in conditions["Trained"]["message"]
    assert conditions["Ready"]["reason"] == "Unschedulable" and found["message"] == why[1]
    assert conditions["Verified"]["status"] == "True" and "24 of 30 passed" in conditions["Verified"]["message"]
    assert conditions["Evaluated"]["reason"] == "NotStarted"
    assert_fits_the_crd(found)


def test_a_failed_stage_fails_the_cycle_with_its_reason() -> None:
    record = record_after(["harvest"])
    failed = status.StageRecord("c1-verify-1", 1, "failed", message="exit code 2: no input")
    record = record.with_stage("verify", failed)
    found = rendered(record)
    conditions = by_type(found)
    assert found["phase"] == "Failed"
    assert conditions["Verified"]["status"] == "False" and "no input" in conditions["Verified"]["message"]
    assert conditions["Failed"]["status"] == "True" and conditions["Failed"]["reason"] == "StageFailed"
    assert "verify failed: exit code 2: no input" in conditions["Failed"]["message"]
    assert conditions["Trained"]["reason"] == "Skipped"
    assert conditions["Ready"]["status"] == "False"
    assert "decision" not in found


def test_an_input_that_is_not_what_its_writer_recorded_fails_the_cycle_as_evidence_tampered() -> None:
    record = record_after(["harvest", "verify"])
    said = "evidence_tampered: /artifacts/x/verify/verified.jsonl has digest sha256:1, but the stage that wrote it..."
    failed = status.StageRecord("c1-dataset-1", 1, "failed", summary={"kind": "evidence_tampered", "error": said},
                                message=f"exit code 2: {said}")
    found = rendered(record.with_stage("dataset", failed))
    conditions = by_type(found)
    assert found["phase"] == "Failed" and conditions["Failed"]["reason"] == "EvidenceTampered"
    assert "dataset failed: exit code 2: evidence_tampered: /artifacts/x/verify/verified.jsonl" in found["message"]
    assert "decision" not in found and "releaseRevision" not in found
    assert_fits_the_crd(found)


def test_the_recorded_digests_and_resume_key_fit_the_crd_and_survive_a_round_trip() -> None:
    outputs = {"/artifacts/x/harvest/candidates.jsonl": "sha256:" + "1" * 64}
    record = record_after(["harvest"]).with_stage("harvest", status.StageRecord(
        "c1-harvest-1", 1, "succeeded", summary=SUMMARIES["harvest"], outputs=outputs, resume_key="k" * 64))
    found = rendered(record)
    assert found["stages"]["harvest"]["outputs"] == outputs and found["stages"]["harvest"]["resumeKey"] == "k" * 64
    assert status.read_record(found) == record
    assert status.read_record(found).state().steps["harvest"].outputs == outputs
    assert_fits_the_crd(found)


def test_a_deadline_is_a_failure_outside_the_plan() -> None:
    record = replace_failure(record_after(["harvest"], running="verify"), ("DeadlineExceeded", "too slow"))
    found = rendered(record)
    assert found["phase"] == "Failed" and by_type(found)["Failed"]["reason"] == "DeadlineExceeded"


def replace_failure(record: status.CycleRecord, failure: tuple[str, str]) -> status.CycleRecord:
    return status.CycleRecord(record.admitted, record.incumbent_resolved, record.incumbent, record.stages,
                              record.published, failure)


def test_queued_and_suspended_say_why() -> None:
    found = rendered(status.CycleRecord(), status.Situation(queued_behind="waiting for c0"))
    assert found["phase"] == "Queued" and found["message"] == "waiting for c0"
    assert by_type(found)["Harvested"]["reason"] == "Queued"
    assert "startTime" not in found
    suspended = rendered(record_after(["harvest"]), status.Situation(suspended=True))
    assert suspended["phase"] == "Suspended" and "before verify" in suspended["message"]
    assert rendered(status.CycleRecord(), status.Situation(suspended=True))["phase"] == "Suspended"


def test_an_early_rejection_needs_no_publish() -> None:
    stages = {"harvest": SUMMARIES["harvest"], "verify": SUMMARIES["verify"], "dataset": {"rows": 0}}
    record = status.CycleRecord(True, True, None, {n: status.StageRecord(f"c1-{n}-1", 1, "succeeded", summary=s)
                                                   for n, s in stages.items()})
    found = rendered(record)
    assert found["phase"] == "Succeeded" and found["decision"]["outcome"] == "Rejected"
    assert by_type(found)["Trained"]["reason"] == "Skipped"


def test_transition_times_move_only_when_a_condition_changes() -> None:
    first = rendered(record_after(["harvest"], running="verify"))
    later = status.render(SPEC, record_after(["harvest", "verify"], running="dataset"), LAYOUT, status.Situation(),
                          generation=3, now="2026-01-01T01:00:00Z", previous=first)
    before, after = by_type(first), by_type(later)
    assert after["Harvested"]["lastTransitionTime"] == before["Harvested"]["lastTransitionTime"] == NOW
    assert after["Verified"]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert later["startTime"] == first["startTime"] == NOW
    # the same facts render the same status: a reconcile that learned nothing writes nothing
    again = status.render(SPEC, record_after(["harvest", "verify"], running="dataset"), LAYOUT, status.Situation(),
                          generation=3, now="2026-01-01T02:00:00Z", previous=later)
    assert status.same_status(later, again)


# The queue --------------------------------------------------------------------------------------------------------


def entry(name: str, created: str, *, admitted: bool = False, finished: bool = False,
          suspended: bool = False) -> queue.Entry:
    return queue.Entry(name, created, admitted, finished, suspended)


def test_the_first_created_cycle_goes_first_and_the_rest_wait_in_order() -> None:
    entries = [entry("b", "2026-01-01T00:00:02Z"), entry("a", "2026-01-01T00:00:01Z"),
               entry("c", "2026-01-01T00:00:03Z")]
    assert queue.admission("a", entries).admit
    waiting = queue.admission("c", entries)
    assert not waiting.admit and waiting.ahead == ("a", "b")
    assert "ahead in the queue: a, b" in waiting.message("coder")


def test_an_admitted_cycle_holds_the_release_until_it_ends() -> None:
    entries = [entry("early", "2026-01-01T00:00:01Z"), entry("active", "2026-01-01T00:00:05Z", admitted=True)]
    assert not queue.admission("early", entries).admit  # admitted first wins, whatever the order
    assert queue.admission("active", entries).admit
    done = [entry("early", "2026-01-01T00:00:01Z"),
            entry("active", "2026-01-01T00:00:05Z", admitted=True, finished=True)]
    assert queue.admission("early", done).admit


def test_same_second_ties_break_by_name_and_suspended_cycles_do_not_block() -> None:
    entries = [entry("y", "2026-01-01T00:00:01Z"), entry("x", "2026-01-01T00:00:01Z")]
    assert queue.admission("x", entries).admit and not queue.admission("y", entries).admit
    entries = [entry("x", "2026-01-01T00:00:01Z", suspended=True), entry("y", "2026-01-01T00:00:02Z")]
    assert queue.admission("y", entries).admit


def test_a_cycle_missing_from_the_list_is_never_admitted() -> None:
    assert not queue.admission("ghost", []).admit


def test_entries_from_objects() -> None:
    obj = {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:01Z"}, "spec": {"suspend": True},
           "status": {"admitted": True, "phase": "Failed"}}
    assert queue.Entry.of(obj) == queue.Entry("a", "2026-01-01T00:00:01Z", True, True, True)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_phases_free_the_release(phase: str) -> None:
    obj = {"metadata": {"name": "a", "creationTimestamp": "t1"}, "status": {"admitted": True, "phase": phase}}
    assert queue.admission("b", [queue.Entry.of(obj), entry("b", "t2")]).admit


# Cycles that import their candidate, and dry runs ----------------------------------------------------------------

IMPORTED = "sha256:" + "e" * 64


def spec_with(**fields: Any):
    base = {"release": "coder", "baseModel": {"name": "tiny://llama"}}
    return parse_manifest({"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
                           "spec": {**base, **fields}}).spec


def stage(name: str, summary: dict[str, Any]) -> status.StageRecord:
    return status.StageRecord(f"c1-{name}-1", 1, "succeeded", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", summary)


def test_an_imported_candidate_shows_what_was_skipped_and_why_and_its_digest() -> None:
    spec = spec_with(candidate={"uri": "adapters/colleague", "digest": IMPORTED})
    stages = {"import": stage("import", {"adapter_digest": IMPORTED}), "generate": stage("generate", {}),
              "score-candidate": stage("score-candidate", SUMMARIES["score-candidate"]),
              "score-incumbent": stage("score-incumbent", SUMMARIES["score-incumbent"]),
              "decide": stage("decide", SUMMARIES["decide"])}
    record = status.CycleRecord(admitted=True, incumbent_resolved=True, incumbent=INCUMBENT, stages=stages,
                                published={"outcome": "Promoted", "reason": "better", "revision": 5})
    found = status.render(spec, record, LAYOUT, status.Situation(), generation=1, now=NOW)
    assert_fits_the_crd(found)
    conditions = by_type(found)
    for kind in ("Harvested", "Verified", "Trained"):
        assert (conditions[kind]["status"], conditions[kind]["reason"]) == ("False", "Skipped"), kind
        assert "an adapter trained elsewhere (adapters/colleague" in conditions[kind]["message"]
    assert "import succeeded" in conditions["Trained"]["message"]
    assert conditions["Decided"]["reason"] == "Promoted"
    assert found["candidate"]["digest"] == IMPORTED and found["decision"]["outcome"] == "Promoted"


def test_an_imported_adapter_with_the_wrong_digest_fails_as_digest_mismatch() -> None:
    spec = spec_with(candidate={"uri": "adapters/colleague", "digest": IMPORTED})
    failed = status.StageRecord("c1-import-1", 1, "failed", summary={"kind": "digest_mismatch"},
                                message="exit code 2: not the adapter the manifest names")
    record = status.CycleRecord(admitted=True, incumbent_resolved=True, stages={"import": failed})
    found = status.render(spec, record, LAYOUT, status.Situation(), generation=1, now=NOW)
    assert found["phase"] == "Failed" and by_type(found)["Failed"]["reason"] == "DigestMismatch"
    assert by_type(found)["Trained"]["reason"] == "StageFailed"


def test_a_dry_run_shows_dry_run_as_its_decision_with_its_report() -> None:
    spec = spec_with(harvest={"sources": [{"path": "corpus/tasks.jsonl"}]}, stopAfter="verify")
    stages = {name: stage(name, SUMMARIES[name]) for name in ("harvest", "verify")}
    record = status.CycleRecord(admitted=True, stages=stages)
    found = status.render(spec, record, LAYOUT, status.Situation(), generation=1, now=NOW)
    assert_fits_the_crd(found)
    assert found["phase"] == "Succeeded" and found["decision"]["outcome"] == "DryRun"
    assert found["dryRun"]["stoppedAfter"] == "verify" and found["dryRun"]["verified"] == 24
    assert "incumbent" not in found  # the release was never read
    conditions = by_type(found)
    assert (conditions["Verified"]["status"], conditions["Harvested"]["status"]) == ("True", "True")
    for kind in ("Trained", "Evaluated"):
        assert conditions[kind]["reason"] == "Skipped" and "a dry run" in conditions[kind]["message"]
    assert (conditions["Decided"]["status"], conditions["Decided"]["reason"]) == ("True", "DryRun")
    assert conditions["Ready"]["reason"] == "DryRun" and "24 of 40" in conditions["Ready"]["message"]


def dry_run(name: str, created: str, **status_fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"}, "stopAfter": "verify",
                     "harvest": {"sources": [{"path": "a.jsonl"}]}},
            "status": status_fields}


def test_a_dry_run_never_queues_and_never_holds_a_release_up() -> None:
    running_dry = queue.Entry.of(dry_run("dry-early", "t0", admitted=True))
    waiting_dry = queue.Entry.of(dry_run("dry-first", "t1"))
    real = entry("real", "t2")
    assert not running_dry.queues and not waiting_dry.waiting
    # a real cycle created after two dry runs, one of them running, is admitted at once
    assert queue.admission("real", [running_dry, waiting_dry, real]).admit
    # a dry run is admitted while a real cycle holds the release, and ahead of it nothing waits on its account
    active = entry("active", "t0", admitted=True)
    assert queue.admission("dry-first", [active, waiting_dry, entry("next", "t3")]).admit
    later = entry("next", "t3")
    assert queue.admission("next", [waiting_dry, later]).admit
    # every unfinished dry run is worth a reconcile, and none of them is the head of its release's queue
    moved = queue.movable([dry_run("d", "t1"), {"metadata": {"name": "r", "creationTimestamp": "t2"},
                                                "spec": {"release": "coder", "deadlineSeconds": 10 ** 9}}],
                          now=datetime(2026, 1, 1, tzinfo=UTC))
    assert [c["metadata"]["name"] for c in moved] == ["d", "r"]


def test_every_waiting_or_failed_cycle_has_a_reason_for_the_reason_column() -> None:
    waiting = ("ImagePullBackOff", "pod c1-train-1-x: ImagePullBackOff: Back-off pulling image")
    failed = status.CycleRecord(admitted=True, failure=("DeadlineExceeded", "the cycle did not finish"))
    cases = {
        "Queued": rendered(status.CycleRecord(), status.Situation(queued_behind="waiting for c0")),
        "Suspended": rendered(record_after(["harvest"]), status.Situation(suspended=True)),
        "ImagePullBackOff": rendered(record_after(["harvest", "verify", "dataset"], running="train"),
                                     status.Situation(waiting=waiting)),
        "DeadlineExceeded": rendered(failed),
    }
    for expected, found in cases.items():
        assert found["reason"] == expected, (expected, found["phase"], found["message"])
        assert found["message"]
