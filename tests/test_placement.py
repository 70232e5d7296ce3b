"""GPU placements with weekly budgets: the pure policy (sigma0.placement), the manifest forms, the Jobs and status
they give, and the JobExecutor's fallback, waiting and GPU-hour ledger against an in-memory API (the real control
plane runs the same in tests/cluster/test_placement.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from test_kube_executor import FakeApi, Response

from sigma0 import placement, plan
from sigma0.executors.local import GPU_LEDGER, LocalExecutor, choose_cycle, local_gpu_hours
from sigma0.kube import executor, jobs, ledger, status
from sigma0.kube.metrics import OperatorMetrics
from sigma0.placement import Usage
from sigma0.spec import GpuPlacement, ManifestError, _strict, openapi_schema, parse_manifest

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def row(placement_name: str, start: datetime, end: datetime | None, gpus: int = 1, key: str | None = None) -> Usage:
    return Usage(key or f"{placement_name}-{start.isoformat()}", placement_name, "train", "c1", start, end, gpus)


def option(name: str, budget: float | None = None, **more: Any) -> GpuPlacement:
    return GpuPlacement(name=name, weekly_gpu_hours=budget, **more)


# The policy -------------------------------------------------------------------------------------------------------


def test_gpu_hours_count_gpus_times_the_part_of_each_row_inside_the_window() -> None:
    ledger = [
        row("a", NOW - 2 * HOUR, NOW - HOUR, gpus=2),  # 2 GPU-hours
        row("a", NOW - timedelta(days=7, hours=1), NOW - timedelta(days=6, hours=23), gpus=1),  # half inside: 1
        row("a", NOW - timedelta(days=9), NOW - timedelta(days=8)),  # outside
        row("a", NOW - timedelta(minutes=30), None, gpus=4),  # still running: 0.5 h x 4 so far
        row("b", NOW - 5 * HOUR, NOW),  # another placement
    ]
    assert placement.gpu_hours(ledger, "a", NOW) == pytest.approx(2 + 1 + 2)
    assert placement.gpu_hours(ledger, "b", NOW) == pytest.approx(5)
    assert placement.gpu_hours(ledger, "nowhere", NOW) == 0


def test_choose_skips_zero_and_spent_budgets_in_order_and_says_when_one_frees() -> None:
    spent_at = NOW - timedelta(days=2)
    ledger = [row("a100", spent_at, spent_at + 10 * HOUR)]
    options = [option("never", 0), option("a100", 10), option("t4", 5), option("free")]
    choice = placement.choose(options, ledger, NOW)
    assert choice.placement is not None and choice.placement.name == "t4"
    assert [(s.placement, s.reason) for s in choice.skipped] == [("never", "NoBudget"), ("a100", "BudgetSpent")]
    a100 = choice.skipped[1]
    # the 10 GPU-hours leave the window from spent_at + 7 days on; the budget frees when the first second goes
    assert a100.frees_at == spent_at + timedelta(days=7, seconds=1)
    assert "used 10 of 10 GPU-hours in the last 7 days" in a100.message
    assert placement.format_time(a100.frees_at) in a100.message
    # t4 stayed Unschedulable: excluded, the next one is used and t4 is not reported again
    choice = placement.choose(options, ledger, NOW, exclude={"t4"})
    assert choice.placement is not None and choice.placement.name == "free"
    assert [s.placement for s in choice.skipped] == ["never", "a100"]


def test_when_every_placement_is_exhausted_the_reason_names_each_and_the_earliest_time_a_budget_frees() -> None:
    ledger = [row("a", NOW - timedelta(days=3), NOW - timedelta(days=3) + 2 * HOUR),
              row("b", NOW - timedelta(days=5), NOW - timedelta(days=5) + HOUR)]
    choice = placement.choose([option("a", 1), option("b", 1), option("z", 0)], ledger, NOW)
    assert choice.placement is None
    assert choice.frees_at == NOW - timedelta(days=5) + timedelta(days=7, seconds=1)  # b's hour goes first
    reason = choice.reason("train")
    assert reason.startswith("every placement of train is exhausted (a: used 2 of 1 GPU-hours")
    assert "z: its weekly budget is 0 GPU-hours: never used" in reason
    assert reason.endswith(f"waiting until {placement.format_time(choice.frees_at)}, when the first budget frees")
    never = placement.choose([option("z", 0)], [], NOW)
    assert never.frees_at is None and "no budget will free" in never.reason("generate")


def test_the_administrators_budgets_parse_from_flags_and_a_namespace_entry_wins_over_the_default() -> None:
    budgets = placement.Budgets.parse(["a100=40", "team-a/a100=100", "t4=0", "team-b/h100=2.5"])
    assert (budgets.of("team-a", "a100"), budgets.of("team-z", "a100")) == (100, 40)
    assert (budgets.of("team-b", "h100"), budgets.of("team-a", "h100"), budgets.of("x", "t4")) == (2.5, None, 0)
    for bad in ("a100", "a100=", "a100=-1", "a100=lots", "=4", "/a100=4", "team-a/=4", "a100=inf"):
        with pytest.raises(ValueError, match="expected PLACEMENT=HOURS or NAMESPACE/PLACEMENT=HOURS"):
            placement.Budgets.parse([bad])


def test_a_tenant_can_lower_its_budget_in_its_own_spec_but_never_raise_the_administrators() -> None:
    budgets = placement.Budgets.parse(["a100=10", "team/t4=1"])
    options = [option("a100", 1000), option("t4", None), option("h100", 3), option("free", None),
               option("a100-own", 0)]
    found = {o.name: o.weekly_gpu_hours for o in placement.with_budgets(options, budgets, "team")}
    assert found == {"a100": 10, "t4": 1, "h100": 3, "free": None, "a100-own": 0}
    lower = placement.with_budgets([option("a100", 2)], budgets, "team")
    assert lower[0].weekly_gpu_hours == 2
    # another namespace gets the default entry, not team's own
    assert placement.with_budgets([option("t4", None)], budgets, "other")[0].weekly_gpu_hours is None


def test_a_running_pod_keeps_its_budget_spent() -> None:
    ledger = [row("a", NOW - 3 * HOUR, None)]
    assert placement.budget_skip(option("a", 2), ledger, NOW) is not None
    # counted as if it ended now: more than 1 of its 3 hours must leave the window first
    assert placement.frees_at(ledger, "a", 2, NOW) == NOW - 3 * HOUR + timedelta(days=7, hours=1, seconds=1)
    assert placement.frees_at(ledger, "a", 5, NOW) == NOW


def _ledgers() -> st.SearchStrategy[list[Usage]]:
    offsets = st.integers(min_value=-10 * 86400, max_value=0)

    def rows(draw_list: list[tuple[int, int, int, bool]]) -> list[Usage]:
        found = []
        for index, (start, length, gpus, open_) in enumerate(draw_list):
            begin = NOW + timedelta(seconds=start, microseconds=start % 997)
            end = None if open_ else min(NOW, begin + timedelta(seconds=length))
            found.append(Usage(f"k{index}", "p", "train", "c", begin, end, gpus))
        return found

    one = st.tuples(offsets, st.integers(0, 3 * 86400), st.integers(0, 8), st.booleans())
    return st.lists(one, max_size=8).map(rows)


@settings(max_examples=300, deadline=None)
@given(ledger=_ledgers(), budget=st.floats(min_value=0.001, max_value=500))
def test_frees_at_is_the_earliest_second_the_usage_is_below_the_budget(ledger: list[Usage], budget: float) -> None:
    cut = [u if u.end is not None else Usage(u.key, u.placement, u.stage, u.cycle, u.start, NOW, u.gpus)
           for u in ledger]
    when = placement.frees_at(ledger, "p", budget, NOW)
    assert when is not None and when >= NOW
    assert placement.gpu_hours(cut, "p", when) < budget
    if when == NOW:
        assert placement.gpu_hours(ledger, "p", NOW) < budget
        return
    earlier = max(NOW, when - timedelta(seconds=1))
    assert placement.gpu_hours(cut, "p", earlier) >= budget - 1e-9
    assert when <= max(u.end or NOW for u in cut) + placement.WINDOW


@settings(max_examples=300, deadline=None)
@given(ledger=_ledgers(), budgets=st.lists(st.one_of(st.none(), st.floats(0, 200)), min_size=1, max_size=5),
       excluded=st.sets(st.integers(0, 4)))
def test_choose_takes_the_first_allowed_placement_in_order(ledger: list[Usage], budgets: list[float | None],
                                                           excluded: set[int]) -> None:
    names = [f"p{i}" for i in range(len(budgets))]
    spread = [Usage(u.key, names[i % len(names)], u.stage, u.cycle, u.start, u.end, u.gpus)
              for i, u in enumerate(ledger)]
    options = [option(name, budget) for name, budget in zip(names, budgets, strict=True)]
    exclude = {f"p{i}" for i in excluded}
    choice = placement.choose(options, spread, NOW, exclude)

    def allowed(o: GpuPlacement) -> bool:
        budget = o.weekly_gpu_hours
        return o.name not in exclude and (budget is None or (budget > 0 and placement.gpu_hours(spread, o.name, NOW)
                                                              < budget))
    first = next((o for o in options if allowed(o)), None)
    assert choice.placement == first
    before = options if first is None else options[:options.index(first)]
    assert [s.placement for s in choice.skipped] == [o.name for o in before if o.name not in exclude]
    for skip in choice.skipped:
        assert (skip.frees_at is None) == (skip.reason == "NoBudget")


def test_the_ledger_merges_by_key_never_reopens_prunes_and_closes_vanished_pods() -> None:
    running = row("a", NOW - HOUR, None, key="pod-1")
    done = row("a", NOW - HOUR, NOW, key="pod-1")
    assert placement.merge([running], [done]) == [done]
    assert placement.merge([done], [running]) == [done]  # a late look at it running does not undo its end
    old = row("a", NOW - timedelta(days=9), NOW - timedelta(days=8, hours=1), key="old")
    assert placement.prune([old, done, running], NOW) == [done, running]
    closed = placement.close_vanished([running, row("a", NOW - HOUR, None, key="alive")], {"alive"}, NOW)
    assert closed[0].end == NOW and closed[1].end is None


@given(st.builds(Usage, key=st.text(min_size=1, max_size=8), placement=st.sampled_from(["a", "b-2"]),
                 stage=st.sampled_from(["train", "generate"]), cycle=st.just("c1"),
                 start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1),
                                    timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
                 end=st.none(), gpus=st.integers(0, 64)))
def test_ledger_rows_round_trip_through_json(usage: Usage) -> None:
    assert Usage.from_json(json.loads(json.dumps(usage.to_json()))) == usage
    assert ledger.parse(ledger.render([usage]), "here") == [usage]


def test_a_broken_ledger_line_is_named() -> None:
    with pytest.raises(ledger.LedgerError, match="line 2: not a GPU ledger row"):
        ledger.parse(ledger.render([row("a", NOW, NOW)]) + '{"key": "x"}\n', "ConfigMap team/sigma0-gpu-ledger")


def test_usage_report_has_used_for_every_placement_and_left_for_budgeted_ones() -> None:
    report = placement.usage_report([row("a", NOW - 2 * HOUR, NOW)], [option("a", 5), option("b", 1)], NOW)
    assert report == {"a": {"used": pytest.approx(2), "left": pytest.approx(3)}, "b": {"used": 0, "left": 1}}


# The manifest -----------------------------------------------------------------------------------------------------


def manifest(placement_spec: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    document = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
                "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                         "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}, **spec}}
    if placement_spec is not None:
        document["spec"]["placement"] = placement_spec
    return document


LIST = {"train": {"placements": [
    {"name": "a100", "gpus": 1, "nodeSelector": {"pool": "a100"}, "weeklyGPUHours": 40, "unschedulableSeconds": 60},
    {"name": "t4-spot", "tolerations": [{"key": "spot", "operator": "Exists"}],
     "priorityClassName": "low"},
]}}


def test_the_simple_form_is_one_placement_and_the_list_form_keeps_its_order() -> None:
    simple = parse_manifest(manifest({"train": {"resources": {"limits": {"nvidia.com/gpu": 1}}}})).spec
    (only,) = placement.options_for(simple, "train")
    assert only.name == "default" and only.resources.as_container_resources() == {"limits": {"nvidia.com/gpu": 1}}
    assert only.weekly_gpu_hours is None and only.unschedulable_seconds == 600
    named = parse_manifest(manifest({"eval": {"name": "pool", "weeklyGPUHours": 3}})).spec
    assert [(o.name, o.weekly_gpu_hours) for o in placement.options_for(named, "generate")] == [("pool", 3)]
    assert [o.name for o in placement.options_for(named, "train")] == ["default"]  # nothing said: the default
    listed = parse_manifest(manifest(LIST)).spec
    a100, t4 = placement.options_for(listed, "train")
    assert (a100.name, a100.gpus, a100.weekly_gpu_hours, a100.unschedulable_seconds) == ("a100", 1, 40, 60)
    assert (t4.name, t4.gpus, t4.priority_class_name, t4.weekly_gpu_hours) == ("t4-spot", None, "low", None)
    with pytest.raises(ValueError, match="not a GPU stage"):
        placement.options_for(listed, "verify")


@pytest.mark.parametrize("setting", [
    {"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "8"}, "requests": {"nvidia.com/gpu": "1"}}},
    {"resources": {"limits": {"nvidia.com/gpu": 4}}, "gpus": 1},  # gpus overrides what resources ask for
    {"gpuResource": "amd.com/gpu", "resources": {"limits": {"nvidia.com/gpu": 4, "amd.com/gpu": 0}}},
])
def test_one_gpu_or_none_is_accepted_however_it_is_asked_for(setting: dict[str, Any]) -> None:
    spec = parse_manifest(manifest({"train": setting})).spec
    (only,) = placement.options_for(spec, "train")
    assert placement.gpu_count(jobs.gpu_resources(only, spec), only.gpu_resource) <= 1  # what the pod holds


@pytest.mark.parametrize(("setting", "expected"), [
    ({"name": "x", "placements": [{"name": "a"}]}, "set one placement at this level or a list in placements, "
                                                   "not both (got name beside placements)"),
    ({"placements": [{"name": "a"}, {"name": "a"}]}, "spec.placement.train.placements: duplicate name(s) a"),
    ({"placements": []}, "spec.placement.train.placements: [] should be non-empty"),
    ({"placements": [{"gpus": 1}]}, "'name' is a required property"),
    ({"placements": [{"name": "A100"}]}, "spec.placement.train.placements[0].name: 'A100' does not match"),
    ({"weeklyGPUHours": -1}, "spec.placement.train.weeklyGPUHours: -1 is less than the minimum of 0"),
    ({"unschedulableSeconds": 0}, "spec.placement.train.unschedulableSeconds: 0 is less than the minimum of 1"),
    # train and generate are one process on one device: a second GPU would be held and never used
    ({"gpus": 2}, "spec.placement.train.gpus: 2 is greater than the maximum of 1"),
    ({"placements": [{"name": "a"}, {"name": "b", "gpus": 2}]},
     "spec.placement.train.placements[1].gpus: 2 is greater than the maximum of 1"),
    ({"placements": [{"name": "a", "budget": 1}]}, "unknown field(s) budget"),
    # nor through resources, in either part, of whichever resource is the GPU here, unless gpus overrides it
    ({"resources": {"limits": {"nvidia.com/gpu": 2}}}, "spec.placement.train: resources.limits asks for more than one"),
    ({"resources": {"requests": {"nvidia.com/gpu": "2"}}}, "spec.placement.train: resources.requests asks for more"),
    ({"placements": [{"name": "a"}, {"name": "b", "gpuResource": "amd.com/gpu",
                                     "resources": {"limits": {"amd.com/gpu": 8}}}]},
     "spec.placement.train.placements[1]: resources.limits asks for more than one GPU (gpuResource)"),
    ({"resources": {"limits": {"nvidia.com/gpu": 1}, "extra": {}}}, "unknown field(s) extra"),
])
def test_bad_placements_are_rejected_with_the_field_named(setting: dict[str, Any], expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(manifest({"train": setting}))
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


# Jobs -------------------------------------------------------------------------------------------------------------

REF = jobs.CycleRef(name="c1", namespace="team", uid="0123456789abcdef", release="coder")
SETTINGS = jobs.PodSettings(sandbox_image="reg/sandbox:1", trainer_image="reg/trainer:1")


def gpu_step(spec: Any, name: str = "train") -> plan.Step:
    layout = jobs.layout(REF, spec, SETTINGS)
    state = plan.CycleState(True, None, {"train": plan.StepResult("succeeded", {"adapter_digest": "sha256:x"})})
    return {s.name: s for s in plan.steps(spec, state, layout)}[name]


def test_a_gpu_job_runs_on_the_placement_it_was_given_and_says_so_in_its_labels() -> None:
    spec = parse_manifest(manifest(LIST)).spec
    _, t4 = placement.options_for(spec, "train")
    job = jobs.build_job(gpu_step(spec), cycle=REF, spec=spec, settings=SETTINGS, attempt=2,
                         active_deadline_seconds=60, placement=t4)
    pod = job["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists"}] and pod["priorityClassName"] == "low"
    assert "nodeSelector" not in pod
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for found in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert (found[jobs.LABEL_PLACEMENT], found[jobs.LABEL_GPUS]) == ("t4-spot", "1")
    first = jobs.build_job(gpu_step(spec), cycle=REF, spec=spec, settings=SETTINGS, attempt=1,
                           active_deadline_seconds=60)  # no placement given: the first one
    assert first["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a100"}
    assert first["metadata"]["labels"][jobs.LABEL_GPUS] == "1"
    assert jobs.LABEL_PLACEMENT not in jobs.build_job(gpu_step(spec, "score-candidate"), cycle=REF, spec=spec,
                                                      settings=SETTINGS, attempt=1,
                                                      active_deadline_seconds=60)["metadata"]["labels"]


def test_gpu_resources_count_and_kind() -> None:
    spec = parse_manifest(manifest()).spec
    cpu = parse_manifest(manifest(train={"device": "cpu"})).spec
    assert jobs.gpu_resources(GpuPlacement(), spec)["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "1"}
    assert "nvidia.com/gpu" not in json.dumps(jobs.gpu_resources(GpuPlacement(), cpu))
    amd = jobs.gpu_resources(GpuPlacement(gpus=4, gpu_resource="amd.com/gpu"), spec)
    assert amd["limits"] == {"memory": "32Gi", "amd.com/gpu": "4"}
    given_ = {"requests": {"cpu": "4", "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}}
    assert jobs.gpu_resources(GpuPlacement(resources=given_), spec) == given_  # as written, when gpus is unset
    assert jobs.gpu_resources(GpuPlacement(resources=given_, gpus=8), spec) == {
        "requests": {"cpu": "4"}, "limits": {"memory": "64Gi", "nvidia.com/gpu": "8"}}
    assert jobs.gpu_resources(GpuPlacement(resources={"limits": {"nvidia.com/gpu": 1}}, gpus=0), spec) == {}
    assert placement.gpu_count(given_, "nvidia.com/gpu") == 1 and placement.gpu_count({}, "nvidia.com/gpu") == 0


def gpu_pod(name: str, state: dict[str, Any] | None, placement_name: str = "t4", gpus: int = 2,
            created: str = "2026-03-02T11:00:00Z", kind: str = "gpu", **status_: Any) -> dict[str, Any]:
    labels = {jobs.MANAGED_BY[0]: jobs.MANAGED_BY[1], jobs.LABEL_KIND: kind, jobs.LABEL_STEP: "train",
              jobs.LABEL_CYCLE: "c1", jobs.LABEL_PLACEMENT: placement_name, jobs.LABEL_GPUS: str(gpus)}
    statuses = [{"name": jobs.CONTAINER, "state": state}] if state is not None else []
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": labels, "creationTimestamp": created},
            "status": {"phase": "Running", "containerStatuses": statuses, **status_}}


def test_a_gpu_pods_row_comes_from_its_containers_real_start_and_end() -> None:
    running = gpu_pod("p1", {"running": {"startedAt": "2026-03-02T11:00:05Z"}})
    assert jobs.gpu_usage(running) == Usage("uid-p1", "t4", "train", "c1", datetime(2026, 3, 2, 11, 0, 5, tzinfo=UTC),
                                            None, 2)
    done = gpu_pod("p1", {"terminated": {"startedAt": "2026-03-02T11:00:05Z", "finishedAt": "2026-03-02T12:00:05Z",
                                         "exitCode": 0}})
    assert jobs.gpu_usage(done).end == datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)  # type: ignore[union-attr]
    assert jobs.gpu_usage(gpu_pod("p2", None)) is None  # never started: nothing used
    assert jobs.gpu_usage(gpu_pod("p3", {"waiting": {"reason": "ContainerCreating"}})) is None
    assert jobs.gpu_usage(gpu_pod("p4", {"running": {"startedAt": "2026-03-02T11:00:05Z"}}, kind="sandbox")) is None


def test_an_unschedulable_pod_is_observed_with_the_time_it_was_created() -> None:
    job = {"metadata": {"name": "c1-train-1"}, "spec": {}, "status": {}}
    pending = gpu_pod("c1-train-1-x", None, created="2026-03-02T11:59:00Z", phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}])
    seen = jobs.observe(job, [pending])
    assert seen.unschedulable_since == "2026-03-02T11:59:00Z"
    assert seen.waiting is not None and "Insufficient nvidia.com/gpu" in seen.waiting[1]
    pending["status"]["conditions"][0]["reason"] = "SchedulerError"
    assert jobs.observe(job, [pending]).unschedulable_since is None


# Status -----------------------------------------------------------------------------------------------------------

STATUS_SCHEMA = jsonschema.Draft4Validator(_strict(openapi_schema("TrainingCycle")["properties"]["status"]))
DONE = {"harvest": {"harvested": 3, "kept": 3, "excluded": 0}, "verify": {"total": 3, "passed": 3},
        "dataset": {"rows": 3}}


def test_a_cycle_waiting_for_a_budget_says_so_in_its_phase_conditions_and_placement_wait() -> None:
    spec = parse_manifest(manifest(LIST)).spec
    record = status.CycleRecord(admitted=True, incumbent_resolved=True, stages={
        name: status.StageRecord(f"c1-{name}-1", 1, "succeeded", summary=summary) for name, summary in DONE.items()})
    wait = status.PlacementWait("train", "GPUBudgetExhausted", "every placement of train is exhausted (...)",
                                "2026-03-09T12:00:01Z")
    layout = jobs.layout(REF, spec, SETTINGS)
    found = status.render(spec, record, layout, status.Situation(placement_wait=wait), generation=1, now="t")
    assert found["phase"] == "Waiting" and found["message"] == wait.message
    assert found["placementWait"] == {"step": "train", "reason": "GPUBudgetExhausted", "message": wait.message,
                                      "until": "2026-03-09T12:00:01Z"}
    conditions = {c["type"]: c for c in found["conditions"]}
    assert (conditions["Trained"]["status"], conditions["Trained"]["reason"]) == ("Unknown", "GPUBudgetExhausted")
    assert conditions["Ready"]["reason"] == "GPUBudgetExhausted" and conditions["Evaluated"]["reason"] == "NotStarted"
    assert not list(STATUS_SCHEMA.iter_errors(found))


def test_the_placement_and_skips_of_a_step_survive_the_status_and_show_in_the_wide_column() -> None:
    skip = placement.Skip("a100", "BudgetSpent", "used 41 of 40 GPU-hours", NOW).to_status(NOW)
    train = status.StageRecord("c1-train-2", 2, "succeeded", placement="t4-spot", skipped=(
        {"placement": "big", "reason": "Unschedulable", "message": "pod stayed", "time": "2026-03-02T12:00:00Z"},
        skip))
    record = status.CycleRecord(admitted=True, incumbent_resolved=True, stages={
        **{n: status.StageRecord(f"c1-{n}-1", 1, "succeeded", summary=s) for n, s in DONE.items()}, "train": train,
        "generate": status.StageRecord("c1-generate-1", 1, "running", placement="default")})
    spec = parse_manifest(manifest(LIST)).spec
    found = status.render(spec, record, jobs.layout(REF, spec, SETTINGS), status.Situation(), generation=1, now="t")
    assert found["placement"] == "train=t4-spot,generate=default"
    assert found["stages"]["train"]["skipped"][1] == {"placement": "a100", "reason": "BudgetSpent",
                                                      "message": "used 41 of 40 GPU-hours",
                                                      "time": "2026-03-02T12:00:00Z", "freesAt": "2026-03-02T12:00:00Z"}
    assert status.read_record(found) == record and train.fallbacks == 1
    assert not list(STATUS_SCHEMA.iter_errors(found))


# The executor: fallback, budgets, waiting, the ledger -------------------------------------------------------------


class LedgerApi(FakeApi):
    """FakeApi plus ConfigMaps (with resourceVersions) and Job deletion that leaves the Job's pods behind."""

    def __init__(self) -> None:
        super().__init__()
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) →
        self.forbidden = False
        self.writes = 0

    def read_namespaced_config_map(self, name, ns, **kwargs):
        if self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        if (ns, name) not in self.configmaps:
            raise ApiException(status=404)
        return Response(self.configmaps[ns, name])

    def create_namespaced_config_map(self, ns, body, **kwargs):
        if (ns, body["metadata"]["name"]) in self.configmaps:
            raise ApiException(status=409)
        self.writes += 1
        self.configmaps[ns, body["metadata"]["name"]] = self._bump(copy.deepcopy(body))

    def replace_namespaced_config_map(self, name, ns, body, **kwargs):
        if body["metadata"]["resourceVersion"] != self.configmaps[ns, name]["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self.writes += 1
        self.configmaps[ns, name] = self._bump(copy.deepcopy(body))

    def put_ledger(self, rows: list[Usage], tenant: str = "team") -> None:
        name = ledger.name_for(tenant)
        self.configmaps[ledger.DEFAULT_NAMESPACE, name] = self._bump({"metadata": {"name": name},
                                                                     "data": {ledger.KEY: ledger.render(rows)}})

    def rows(self, tenant: str = "team") -> list[Usage]:
        # the team's hours are kept in the operator's namespace, in a ConfigMap named after the team
        assert set(self.configmaps) <= {(ledger.DEFAULT_NAMESPACE, ledger.name_for(t)) for t in ("team", "other")}
        return ledger.parse(self.configmaps[ledger.DEFAULT_NAMESPACE, ledger.name_for(tenant)]["data"][ledger.KEY],
                            "test")

    def schedule(self, job_name: str, state: dict[str, Any] | None, created: str = "2026-03-02T11:59:00Z",
                 **pod_status: Any) -> None:
        """The pod of a Job as the scheduler and kubelet left it (replacing an earlier look at it)."""
        job = self.jobs[job_name]
        self.pods = [p for p in self.pods if p["metadata"]["name"] != f"{job_name}-x"]
        self.pods.append({"metadata": {"name": f"{job_name}-x", "uid": f"uid-{job_name}-x",
                                       "creationTimestamp": created, "labels": job["metadata"]["labels"],
                                       "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
                          "status": {"containerStatuses": [{"name": "stage", "state": state}] if state else [],
                                     **pod_status}})

    def unschedulable(self, job_name: str, created: str) -> None:
        self.schedule(job_name, None, created=created, phase="Pending", conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}])


@pytest.fixture
def api() -> LedgerApi:
    fake = LedgerApi()
    fake.cycles["c1"] = fake._bump({
        "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle",
        "metadata": {"name": "c1", "namespace": "team", "uid": "cycle-uid-1", "generation": 1,
                     "creationTimestamp": "2026-03-02T11:00:00Z"},
        "spec": manifest({"train": {"placements": [
            {"name": "big", "nodeSelector": {"pool": "big"}, "unschedulableSeconds": 60},
            {"name": "metered", "weeklyGPUHours": 1},
            {"name": "spare"},
        ]}}, deadlineSeconds=86400)["spec"]})
    return fake


def reconcile(api: LedgerApi, now: datetime, metrics: Any = None,
              budgets: placement.Budgets = placement.NO_BUDGETS) -> executor.Result | None:
    clients = executor.Clients(api, api, api)
    return executor.JobExecutor(clients, jobs.PodSettings(), metrics=metrics, clock=lambda: now,
                                budgets=budgets).reconcile("team", "c1")


def to_train(api: LedgerApi, now: datetime = NOW) -> None:
    """Run harvest, verify and dataset to success, so the next reconcile starts train."""
    for step, summary in DONE.items():
        reconcile(api, now)
        api.finish(f"c1-{step}-1", summary)
    reconcile(api, now)


def status_of(api: LedgerApi) -> dict[str, Any]:
    return api.cycles["c1"]["status"]


def reasons(api: LedgerApi) -> list[str]:
    return [e["reason"] for e in api.events]


def test_an_unschedulable_pod_falls_back_to_the_next_placement_after_its_patience(api: LedgerApi) -> None:
    to_train(api)
    assert [j for j in api.jobs if "train" in j] == ["c1-train-1"]
    assert api.jobs["c1-train-1"]["metadata"]["labels"][jobs.LABEL_PLACEMENT] == "big"
    api.unschedulable("c1-train-1", created="2026-03-02T11:59:30Z")
    reconcile(api, NOW)  # 30 s of 60: keeps waiting, and says why
    assert "c1-train-2" not in api.jobs and status_of(api)["phase"] == "Training"
    assert "Insufficient nvidia.com/gpu" in status_of(api)["message"]
    registry = CollectorRegistry()
    reconcile(api, NOW + timedelta(seconds=31), OperatorMetrics(registry))
    assert "c1-train-1" not in api.jobs, "the unschedulable Job is deleted"
    job = api.jobs["c1-train-2"]
    assert job["metadata"]["labels"][jobs.LABEL_PLACEMENT] == "metered"
    train = status_of(api)["stages"]["train"]
    assert (train["job"], train["attempt"], train["placement"]) == ("c1-train-2", 2, "metered")
    (skip,) = train["skipped"]
    assert (skip["placement"], skip["reason"]) == ("big", "Unschedulable")
    assert skip["message"].startswith("its pod stayed Unschedulable for 61 s: pod c1-train-1-x is Pending: 0/1 nodes")
    fallback = next(e for e in api.events if e["reason"] == "PlacementFallback")
    assert fallback["type"] == "Warning" and "trying placement metered" in fallback["message"]
    assert registry.get_sample_value("sigma0_placement_skips_total",
                                     {"step": "train", "placement": "big", "reason": "Unschedulable"}) == 1
    assert status_of(api)["placement"] == "train=metered"


def test_only_gpu_steps_fall_back(api: LedgerApi) -> None:
    reconcile(api, NOW)
    api.unschedulable("c1-harvest-1", created="2026-03-02T11:00:00Z")
    reconcile(api, NOW)
    assert list(api.jobs) == ["c1-harvest-1"] and status_of(api)["phase"] == "Harvesting"
    assert "Insufficient nvidia.com/gpu" in status_of(api)["message"]


def test_the_last_usable_placement_keeps_waiting_instead_of_falling_back(api: LedgerApi) -> None:
    spec = api.cycles["c1"]["spec"]
    spec["placement"]["train"]["placements"] = [{"name": "big", "nodeSelector": {"pool": "big"},
                                                 "unschedulableSeconds": 60},
                                                {"name": "never", "weeklyGPUHours": 0}]
    to_train(api)
    api.unschedulable("c1-train-1", created="2026-03-02T11:00:00Z")
    reconcile(api, NOW)
    assert list(j for j in api.jobs if "train" in j) == ["c1-train-1"]
    assert "no other placement to fall back to: never: its weekly budget is 0 GPU-hours" in status_of(api)["message"]


def test_a_cycle_stored_before_gpus_was_capped_at_one_runs_as_made_and_counts_every_gpu_it_held(
        api: LedgerApi) -> None:
    # The API server keeps what it accepted (and lets status change beside a field a later schema refuses); the
    # operator reads a stored spec with the typed model, so an upgrade neither strands such a cycle nor undercounts
    # the GPUs its pod held.
    api.cycles["c1"]["spec"]["placement"]["train"]["placements"] = [{"name": "old", "gpus": 2}]
    to_train(api)
    job = api.jobs["c1-train-1"]
    assert job["metadata"]["labels"][jobs.LABEL_GPUS] == "2"
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    api.schedule("c1-train-1", {"terminated": {"startedAt": "2026-03-02T10:00:00Z",
                                               "finishedAt": "2026-03-02T11:00:00Z", "exitCode": 0}})
    reconcile(api, NOW)
    (row,) = api.rows()
    assert (row.placement, row.gpus) == ("old", 2)
    assert placement.gpu_hours(api.rows(), "old", NOW) == pytest.approx(2)


def test_spent_budgets_are_skipped_and_hours_are_counted_from_real_pod_times_across_restarts(api: LedgerApi) -> None:
    api.cycles["c1"]["spec"]["placement"]["train"]["placements"].pop(0)  # metered, spare
    to_train(api)
    assert api.jobs["c1-train-1"]["metadata"]["labels"][jobs.LABEL_PLACEMENT] == "metered"
    api.schedule("c1-train-1", {"running": {"startedAt": "2026-03-02T10:00:00Z"}})
    reconcile(api, NOW)
    (running,) = api.rows()
    assert (running.placement, running.gpus, running.end) == ("metered", 1, None)
    writes = api.writes
    reconcile(api, NOW)  # nothing new: the ledger is not written again
    assert api.writes == writes
    api.schedule("c1-train-1", {"terminated": {"startedAt": "2026-03-02T10:00:00Z",
                                               "finishedAt": "2026-03-02T11:30:00Z", "exitCode": 0}})
    reconcile(api, NOW)
    (done,) = api.rows()
    assert done.end == datetime(2026, 3, 2, 11, 30, tzinfo=UTC)
    assert placement.gpu_hours(api.rows(), "metered", NOW) == pytest.approx(1.5)

    # a second cycle, reconciled by a new operator process (nothing in memory): metered is spent, spare is used
    second = copy.deepcopy(api.cycles["c1"])
    api.cycles.clear()
    second["metadata"] |= {"uid": "cycle-uid-2"}
    second.pop("status")
    api.cycles["c1"] = api._bump(second)
    api.jobs.clear()
    api.pods.clear()
    events = len(api.events)
    to_train(api)
    assert api.jobs["c1-train-1"]["metadata"]["labels"][jobs.LABEL_PLACEMENT] == "spare"
    (skip,) = status_of(api)["stages"]["train"]["skipped"]
    assert (skip["placement"], skip["reason"]) == ("metered", "BudgetSpent")
    assert skip["freesAt"] == "2026-03-09T10:30:01Z"  # 7 days after the first half hour of the 1.5 h
    assert "PlacementSkipped" in reasons(api)[events:]
    # what the resync does: the ledger brought up to date, and the figures per placement
    registry = CollectorRegistry()
    clients = executor.Clients(api, api, api)
    executor.JobExecutor(clients, jobs.PodSettings(), metrics=OperatorMetrics(registry),
                         clock=lambda: NOW).refresh_ledgers([api.cycles["c1"]])
    figures = {(p, kind): registry.get_sample_value(f"sigma0_gpu_hours_{kind}", {"namespace": "team", "placement": p})
               for p in ("metered", "spare") for kind in ("used", "left")}
    assert figures == {("metered", "used"): pytest.approx(1.5), ("metered", "left"): 0,
                       ("spare", "used"): 0, ("spare", "left"): None}


def test_with_every_budget_spent_the_cycle_waits_until_the_earliest_frees_then_runs(api: LedgerApi) -> None:
    api.cycles["c1"]["spec"]["placement"]["train"]["placements"] = [
        {"name": "metered", "weeklyGPUHours": 1}, {"name": "never", "weeklyGPUHours": 0}]
    api.cycles["c1"]["spec"]["deadlineSeconds"] = 30 * 86400
    used = [row("metered", NOW - timedelta(days=1), NOW - timedelta(days=1) + 2 * HOUR, key="old-pod")]
    api.put_ledger(used)
    to_train(api)
    found = status_of(api)
    assert found["phase"] == "Waiting" and not [j for j in api.jobs if "train" in j]
    until = NOW - timedelta(days=1) + timedelta(days=7, hours=1, seconds=1)
    assert found["placementWait"]["until"] == placement.format_time(until)
    assert "metered: used 2 of 1 GPU-hours" in found["message"]
    assert "never: its weekly budget is 0 GPU-hours" in found["message"]
    assert {c["type"]: c for c in found["conditions"]}["Trained"]["reason"] == "GPUBudgetExhausted"
    assert "PhaseWaiting" in reasons(api)
    reconcile(api, until - timedelta(seconds=1))
    assert not [j for j in api.jobs if "train" in j]
    reconcile(api, until)
    assert api.jobs["c1-train-1"]["metadata"]["labels"][jobs.LABEL_PLACEMENT] == "metered"
    assert status_of(api)["phase"] == "Training" and "placementWait" not in status_of(api)


def test_a_cycle_that_gives_itself_a_bigger_budget_still_waits_when_the_administrators_is_spent(
        api: LedgerApi) -> None:
    # The attack: the tenant writes weeklyGPUHours: 1000 into its own cycle; the budget is the operator's flag.
    api.cycles["c1"]["spec"]["placement"]["train"]["placements"] = [{"name": "metered", "weeklyGPUHours": 1000}]
    api.put_ledger([row("metered", NOW - timedelta(days=1), NOW - timedelta(days=1) + 2 * HOUR, key="old-pod")])
    budgets = placement.Budgets.parse(["metered=1"])
    for step, summary in DONE.items():
        reconcile(api, NOW, budgets=budgets)
        api.finish(f"c1-{step}-1", summary)
    reconcile(api, NOW, budgets=budgets)
    found = status_of(api)
    assert found["phase"] == "Waiting" and not [j for j in api.jobs if "train" in j]
    assert "metered: used 2 of 1 GPU-hours" in found["message"]
    # without the administrator's budget the same cycle trains: its own 1000 hours are far from spent
    reconcile(api, NOW)
    assert api.jobs["c1-train-1"]["metadata"]["labels"][jobs.LABEL_PLACEMENT] == "metered"


def test_a_gpu_pod_that_vanished_is_closed_when_noticed_and_a_ledger_that_cannot_be_used_stops_gpu_steps(
        api: LedgerApi) -> None:
    api.put_ledger([row("metered", NOW - HOUR, None, key="gone-pod")])
    api.forbidden = True
    to_train(api)
    found = status_of(api)
    assert found["phase"] == "Training" and "c1-train-1" not in api.jobs
    assert {c["type"]: c for c in found["conditions"]}["Ready"]["reason"] == "GPULedgerUnavailable"
    assert "403 Forbidden" in found["message"] and "configmaps" in found["message"]
    api.forbidden = False
    reconcile(api, NOW)
    assert "c1-train-1" in api.jobs
    (gone,) = api.rows()
    assert gone.end == NOW  # its pod is not there: counted until it was noticed


# Locally: placement `local`, the same ledger rows -----------------------------------------------------------------


class Quiet:
    def step_started(self, step: plan.Step, resumed: bool) -> None:
        pass

    def step_finished(self, step: plan.Step, result: plan.StepResult, seconds: float) -> None:
        pass

    def step_skipped(self, step: plan.Step, result: plan.StepResult) -> None:
        pass


def test_a_local_gpu_step_is_recorded_on_placement_local_and_an_interrupted_one_is_closed(tmp_path: Path) -> None:
    cycle = parse_manifest(manifest(LIST))
    workdir = tmp_path / "work"
    local = LocalExecutor(cycle, workdir, releases=None, reporter=Quiet(), input_dir=tmp_path)  # type: ignore[arg-type]
    run = choose_cycle(cycle, workdir)
    run.cycle_dir.mkdir(parents=True)
    train = gpu_step(cycle.spec)
    started = local._gpu_started(run, train)
    assert started is not None and started.placement == "local" and started.end is None
    assert local._gpu_started(run, gpu_step(cycle.spec, "decide")) is None
    assert run.placements == {"train": "local"}
    (log := run.cycle_dir / "logs" / "train.log").parent.mkdir()
    log.write_text("killed mid-step\n")
    local._close_interrupted(run)  # what resuming the cycle does first
    (closed,) = placement.read_ledger(workdir / GPU_LEDGER)
    assert (closed.key, closed.start) == (started.key, started.start) and closed.end is not None
    assert closed.end >= closed.start
    assert set(local_gpu_hours(workdir)) == {"local"}
    assert len((workdir / GPU_LEDGER).read_text().splitlines()) == 2  # the start, then the end


@pytest.mark.slow
def test_sigma0_run_accounts_its_gpu_steps_on_placement_local(tmp_path: Path) -> None:
    """The whole local cycle with a placements list in the manifest: it runs, and train and generate are rows."""
    import subprocess
    import sys

    import yaml

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    document = manifest(LIST, harvest={"sources": [{"path": str(corpus / "tasks.jsonl")}]},
                        dataset={"base": str(corpus / "base_train.jsonl")}, verify={"timeoutSeconds": 5},
                        train={"steps": 2, "batchSize": 2, "maxSeqLength": 128},
                        eval={"subset": "first:2", "maxNewTokens": 8, "batchSize": 2})
    path = tmp_path / "cycle.yaml"
    path.write_text(yaml.safe_dump(document))
    workdir = tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "sigma0", "run", str(path), "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = placement.read_ledger(workdir / GPU_LEDGER)
    assert [(r.placement, r.stage, r.cycle) for r in rows] == [("local", "train", "c1"), ("local", "generate", "c1")]
    assert all(r.end is not None and r.end >= r.start and r.gpus == 0 for r in rows)  # this machine has no GPU
    state = json.loads((workdir / "cycles" / "c1" / "state.json").read_text())
    assert state["placements"] == {"train": "local", "generate": "local"}
