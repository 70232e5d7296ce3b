"""The pure state machine: what runs next, in what order, with which command lines, and when a cycle ends."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sigma0 import plan
from sigma0.spec import parse_manifest

LAYOUT = plan.Layout(cycle_dir="/art/cycles/c1", input_dir="/manifests", leaderboard="/art/leaderboard.jsonl")
INCUMBENT = plan.Incumbent(digest="sha256:" + "a" * 64, uri="/art/releases/r/adapters/aaa", pass_at_1=0.2, revision=3)


def spec(**overrides: Any):
    document = {
        "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
        "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                 "harvest": {"sources": [{"path": "corpus.jsonl"}, {"path": "/abs/agent.json"}]},
                 "dataset": {"base": "base.jsonl"}, **overrides},
    }
    return parse_manifest(document).spec


SUMMARIES = {
    "dataset": {"rows": 12, "dataset_digest": "sha256:d"},
    "train": {"adapter_digest": "sha256:" + "c" * 64, "steps": 30},
    "decide": {"outcome": "Promoted", "reason": "better"},
}


def summary_of(step: str, incumbent: plan.Incumbent | None) -> dict[str, Any]:
    if step == "generate":  # the adapters it loaded: the trained one and the release's
        adapters = {"candidate": SUMMARIES["train"]["adapter_digest"]}
        return {"adapters": adapters | ({"incumbent": incumbent.digest} if incumbent else {})}
    return SUMMARIES.get(step, {})


def drive(cycle_spec, incumbent: plan.Incumbent | None) -> tuple[list[str], plan.Action]:
    """Run the machine to its end, with every step succeeding; returns the steps run and the last action."""
    state = plan.CycleState()
    ran: list[str] = []
    for _ in range(50):
        action = plan.next_action(cycle_spec, state, LAYOUT)
        if isinstance(action, plan.ResolveIncumbent):
            state = plan.CycleState(incumbent_resolved=True, incumbent=incumbent)
        elif isinstance(action, plan.RunStep):
            ran.append(action.step.name)
            result = plan.StepResult("succeeded", summary_of(action.step.name, incumbent))
            state = plan.CycleState(True, incumbent, {**state.steps, action.step.name: result}, None)
        else:
            return ran, action
    raise AssertionError("the machine did not converge")


def test_first_cycle_has_no_incumbent_eval() -> None:
    ran, last = drive(spec(), None)
    assert ran == ["harvest", "verify", "dataset", "train", "generate", "score-candidate", "decide"]
    assert isinstance(last, plan.Publish)
    assert last.candidate_uri == "/art/cycles/c1/train/adapter"
    assert last.candidate_digest == SUMMARIES["train"]["adapter_digest"]


def test_with_an_incumbent_both_are_generated_and_scored_in_the_same_cycle() -> None:
    cycle_spec = spec(eval={"reportSuites": ["heldout.jsonl"]})
    ran, _ = drive(cycle_spec, INCUMBENT)
    assert ran == ["harvest", "verify", "dataset", "train", "generate", "score-candidate", "score-incumbent",
                   "score-candidate-report0", "decide"]
    state = plan.CycleState(True, INCUMBENT, {"train": plan.StepResult("succeeded", SUMMARIES["train"])})
    by_name = {s.name: s for s in plan.steps(cycle_spec, state, LAYOUT)}
    generate = by_name["generate"].argv
    assert "candidate=/art/cycles/c1/train/adapter" in generate
    assert f"incumbent={INCUMBENT.uri}" in generate
    assert "report0=/manifests/heldout.jsonl" in generate
    incumbent_score = by_name["score-incumbent"].argv
    assert incumbent_score[incumbent_score.index("--adapter-digest") + 1] == INCUMBENT.digest
    decide = by_name["decide"].argv
    assert decide[decide.index("--incumbent") + 1] == "/art/cycles/c1/eval/results/incumbent-gate/results.jsonl"
    # the report-only suite never reaches the decision
    assert not any("report0" in part for part in decide)


def _written(step: plan.Step) -> list[str]:
    """The paths a step's command line names for it to write."""
    argv = step.argv
    return [argv[i + 1] for i, part in enumerate(argv) if part in ("--output", "--report", "--leaderboard")]


def test_each_sandbox_step_writes_only_into_a_folder_of_its_own() -> None:
    """What lets its pod mount that one folder read-write and everything else read-only (sigma0.kube.jobs): no
    sandbox step writes where another step writes, and every path it writes lies in its own folder."""
    cycle_spec = spec(eval={"reportSuites": ["heldout.jsonl"]})
    state = plan.CycleState(True, INCUMBENT, {"train": plan.StepResult("succeeded", SUMMARIES["train"])})
    for layout in (LAYOUT, plan.Layout("/art/cycles/c1", "/art", leaderboard="")):
        steps = plan.steps(cycle_spec, state, layout)
        sandboxed = [s for s in steps if s.kind == "sandbox"]
        assert [s.name for s in sandboxed] == ["verify", "score-candidate", "score-incumbent",
                                               "score-candidate-report0"]
        folders = [s.writes for s in sandboxed]
        assert all(folders) and len(set(folders)) == len(folders)
        for step in sandboxed:
            for path in _written(step):
                if path != layout.leaderboard:
                    assert path.startswith(f"{step.writes}/"), (step.name, path)
            others = [f for f in folders if f != step.writes]
            assert not any(f.startswith(f"{step.writes}/") or step.writes.startswith(f"{f}/") for f in others)
    # with no shared leaderboard (a volume that sandbox pods mount read-only), each score keeps its row itself
    by_name = {s.name: s for s in plan.steps(cycle_spec, state, plan.Layout("/art/cycles/c1", "/art", ""))}
    score = by_name["score-incumbent"].argv
    assert score[score.index("--leaderboard") + 1] == "/art/cycles/c1/eval/results/incumbent-gate/leaderboard.jsonl"


def test_commands_carry_the_manifest_settings() -> None:
    cycle_spec = spec(train={"steps": 7, "learningRate": 0.001, "lora": {"r": 8, "targetModules": ["q_proj"]}},
                      verify={"sandbox": "gvisor", "timeoutSeconds": 3},
                      promote={"margin": 0.05, "significance": 0.1})
    state = plan.CycleState(True, None, {})
    by_name = {s.name: s for s in plan.steps(cycle_spec, state, LAYOUT)}
    assert by_name["harvest"].argv[:3] == ("sigma0", "stage", "harvest")
    harvest = by_name["harvest"].argv
    assert "/manifests/corpus.jsonl" in harvest and "/abs/agent.json" in harvest
    train = " ".join(by_name["train"].argv)
    assert "--steps 7" in train and "--learning-rate 0.001" in train and "--lora-r 8" in train
    assert "--target-modules q_proj" in train and "--quantization nf4" in train
    verify = " ".join(by_name["verify"].argv)
    assert "--sandbox gvisor" in verify and "--timeout 3" in verify
    decide = " ".join(by_name["decide"].argv)
    assert "--margin 0.05" in decide and "--significance 0.1" in decide and "--incumbent" not in decide
    dataset = " ".join(by_name["dataset"].argv)
    assert "--base /manifests/base.jsonl" in dataset and "--exclude-suite humaneval" in dataset
    kinds = {s.name: s.kind for s in plan.steps(cycle_spec, state, LAYOUT)}
    assert kinds["verify"] == kinds["score-candidate"] == "sandbox"
    assert kinds["train"] == kinds["generate"] == "gpu"


def test_resumes_at_the_first_unfinished_step_and_awaits_a_running_one() -> None:
    cycle_spec = spec()
    done = {name: plan.StepResult("succeeded", SUMMARIES.get(name, {})) for name in ("harvest", "verify", "dataset")}
    state = plan.CycleState(True, None, done)
    action = plan.next_action(cycle_spec, state, LAYOUT)
    assert isinstance(action, plan.RunStep) and action.step.name == "train"
    running = plan.CycleState(True, None, {**done, "train": plan.StepResult("running")})
    action = plan.next_action(cycle_spec, running, LAYOUT)
    assert isinstance(action, plan.AwaitStep) and action.step.name == "train"
    assert plan.phase_of(cycle_spec, running, LAYOUT) == "Training"


def test_a_failed_step_ends_the_cycle_failed_with_its_reason() -> None:
    state = plan.CycleState(True, None, {"harvest": plan.StepResult("succeeded"),
                                         "verify": plan.StepResult("failed", {}, "exit code 1: boom")})
    action = plan.next_action(spec(), state, LAYOUT)
    assert action == plan.Finish("Failed", None, "verify failed: exit code 1: boom")


def test_nothing_to_train_on_ends_rejected_without_training() -> None:
    state = plan.CycleState(True, None, {"harvest": plan.StepResult("succeeded"),
                                         "verify": plan.StepResult("succeeded"),
                                         "dataset": plan.StepResult("succeeded", {"rows": 0})})
    action = plan.next_action(spec(), state, LAYOUT)
    assert isinstance(action, plan.Finish) and action.outcome == "Rejected" and "no training rows" in action.reason


def test_base_rows_all_excluded_as_eval_overlap_end_rejected_saying_so() -> None:
    state = plan.CycleState(True, None, {"harvest": plan.StepResult("succeeded"),
                                         "verify": plan.StepResult("succeeded"),
                                         "dataset": plan.StepResult("succeeded", {"rows": 0, "excluded": 4})})
    action = plan.next_action(spec(), state, LAYOUT)
    assert isinstance(action, plan.Finish) and action.outcome == "Rejected"
    assert "every base row (4) overlaps an eval suite" in action.reason


def test_after_publishing_the_cycle_succeeds_with_the_published_outcome() -> None:
    steps = {name: plan.StepResult("succeeded", SUMMARIES.get(name, {}))
             for name in ("harvest", "verify", "dataset", "train", "generate", "score-candidate", "decide")}
    state = plan.CycleState(True, None, steps, {"outcome": "Stale", "reason": "release moved"})
    assert plan.next_action(spec(), state, LAYOUT) == plan.Finish("Succeeded", "Stale", "release moved")


@pytest.mark.parametrize("value", [10.0, 0.0002, 0.05, 1e-05, 3])
def test_numbers_on_command_lines_round_trip(value: float) -> None:
    assert float(plan._num(value)) == value


def excluded_by(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, part in enumerate(argv) if part == "--exclude-suite"]


def test_every_eval_suite_is_excluded_from_harvest_and_from_the_base_rows() -> None:
    cycle_spec = spec(eval={"suite": "humaneval", "reportSuites": ["heldout.jsonl"]},
                      harvest={"sources": [{"path": "c.jsonl"}], "excludeSuites": ["humaneval", "/abs/extra.jsonl"]})
    state = plan.CycleState(True, None, {})
    by_name = {step.name: step.argv for step in plan.steps(cycle_spec, state, LAYOUT)}
    assert excluded_by(by_name["harvest"]) == ["humaneval", "/abs/extra.jsonl", "/manifests/heldout.jsonl"]
    assert excluded_by(by_name["dataset"]) == excluded_by(by_name["harvest"])


def test_the_base_rows_are_checked_against_humaneval_by_default() -> None:
    dataset = {step.name: step.argv for step in plan.steps(spec(), plan.CycleState(True, None, {}), LAYOUT)}["dataset"]
    assert excluded_by(dataset) == ["humaneval"]
    assert "--base" in dataset


def test_on_an_artifacts_uri_every_path_is_a_well_formed_uri() -> None:
    layout = plan.Layout(cycle_dir="s3://bucket/sigma0/cycles/c1", input_dir="s3://bucket/sigma0",
                         leaderboard="s3://bucket/sigma0/leaderboard.jsonl")
    state = plan.CycleState(incumbent_resolved=True, incumbent=INCUMBENT)
    tokens = [token.partition("=")[2] or token for step in plan.steps(spec(), state, layout) for token in step.argv]
    uris = [token for token in tokens if "://" in token and not token.startswith("tiny://")]
    assert "s3://bucket/sigma0/corpus.jsonl" in uris and "s3://bucket/sigma0/cycles/c1/train/adapter" in uris
    assert "s3://bucket/sigma0/cycles/c1/eval/completions/candidate/gate/completions.jsonl" in uris
    assert all(uri.startswith("s3://bucket/sigma0/") for uri in uris), uris


@pytest.mark.parametrize("label", ["candidate", "incumbent"])
def test_an_adapter_that_changed_before_generate_loaded_it_fails_the_cycle(label: str) -> None:
    steps = {name: plan.StepResult("succeeded", summary_of(name, INCUMBENT))
             for name in ("harvest", "verify", "dataset", "train")}
    generated = summary_of("generate", INCUMBENT)
    generated["adapters"][label] = "sha256:" + "f" * 64
    state = plan.CycleState(True, INCUMBENT, {**steps, "generate": plan.StepResult("succeeded", generated)})
    action = plan.next_action(spec(), state, LAYOUT)
    assert isinstance(action, plan.Finish) and action.phase == "Failed"
    assert f"generate loaded a {label} adapter with digest sha256:ffff" in action.reason
    assert "the release is untouched" in action.reason


def digest(char: str) -> str:
    return "sha256:" + char * 64


OUTPUTS = {  # what each step records when it ends (sigma0.evidence), as the stage commands report it
    "harvest": {LAYOUT.at("harvest", "candidates.jsonl"): digest("1")},
    "verify": {LAYOUT.at("verify", "verified.jsonl"): digest("2")},
    "dataset": {LAYOUT.at("dataset", "train.jsonl"): digest("3")},
    "train": {LAYOUT.at("train", "adapter"): SUMMARIES["train"]["adapter_digest"]},
    "generate": {LAYOUT.at("eval", "completions", "candidate", "gate"): digest("5"),
                 LAYOUT.at("eval", "completions", "incumbent", "gate"): digest("6")},
    "score-candidate": {LAYOUT.at("eval", "results", "candidate-gate", "results.jsonl"): digest("7")},
    "score-incumbent": {LAYOUT.at("eval", "results", "incumbent-gate", "results.jsonl"): digest("8")},
    "decide": {LAYOUT.at("decide", "decision.json"): digest("9")},
}


def expected(step: plan.Step) -> list[str]:
    return [step.argv[i + 1] for i, token in enumerate(step.argv) if token == "--expect"]


def test_every_step_is_held_to_the_digests_its_inputs_writers_recorded() -> None:
    results = {name: plan.StepResult("succeeded", summary_of(name, INCUMBENT), outputs=outputs)
               for name, outputs in OUTPUTS.items()}
    state = plan.CycleState(True, INCUMBENT, results)
    by_name = {s.name: s for s in plan.steps(spec(), state, LAYOUT)}
    assert expected(by_name["harvest"]) == []
    assert expected(by_name["verify"]) == [f"{digest('1')}={LAYOUT.at('harvest', 'candidates.jsonl')}"]
    assert expected(by_name["dataset"]) == [f"{digest('2')}={LAYOUT.at('verify', 'verified.jsonl')}"]
    assert expected(by_name["train"]) == [f"{digest('3')}={LAYOUT.at('dataset', 'train.jsonl')}"]
    assert expected(by_name["generate"]) == [f"{SUMMARIES['train']['adapter_digest']}={LAYOUT.at('train', 'adapter')}",
                                             f"{INCUMBENT.digest}={INCUMBENT.uri}"]
    # score reads one file of the folder generate recorded: it is held to the folder's digest
    assert expected(by_name["score-incumbent"]) == [
        f"{digest('6')}={LAYOUT.at('eval', 'completions', 'incumbent', 'gate')}"]
    assert by_name["score-incumbent"].reads == (
        LAYOUT.at("eval", "completions", "incumbent", "gate", "completions.jsonl"),)
    assert expected(by_name["decide"]) == [
        f"{digest('7')}={LAYOUT.at('eval', 'results', 'candidate-gate', 'results.jsonl')}",
        f"{digest('8')}={LAYOUT.at('eval', 'results', 'incumbent-gate', 'results.jsonl')}"]
    action = plan.next_action(spec(), state, LAYOUT)
    assert isinstance(action, plan.Publish) and action.decision_digest == digest("9")


def test_an_input_nobody_recorded_is_expected_as_unrecorded_and_a_failed_writer_records_nothing() -> None:
    """An older stage image that reports no digests, or a step that failed: the reader is still given an
    expectation, `unrecorded`, which its stage refuses (evidence_missing) rather than reading an unproven file."""
    outputs = OUTPUTS["harvest"]
    state = plan.CycleState(True, None, {"harvest": plan.StepResult("succeeded", {})})
    action = plan.next_action(spec(), state, LAYOUT)
    assert isinstance(action, plan.RunStep) and action.step.name == "verify"
    assert expected(action.step) == [f"unrecorded={LAYOUT.at('harvest', 'candidates.jsonl')}"]
    failed = plan.CycleState(True, None, {"harvest": plan.StepResult("failed", {}, "x", outputs=outputs)})
    verify = {s.name: s for s in plan.steps(spec(), failed, LAYOUT)}["verify"]
    assert expected(verify) == [f"unrecorded={LAYOUT.at('harvest', 'candidates.jsonl')}"]


# Two more ways in: an adapter trained elsewhere (spec.candidate), and a dry run (spec.stopAfter) ------------------

IMPORTED = digest("e")


def import_spec(**overrides: Any):
    document = {
        "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
        "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                 "candidate": {"uri": "adapters/colleague", "digest": IMPORTED}, **overrides},
    }
    return parse_manifest(document).spec


def drive_recording(cycle_spec, incumbent: plan.Incumbent | None,
                    summaries: dict[str, dict[str, Any]]) -> tuple[list[plan.Step], plan.Action, bool]:
    """Like drive, with the steps themselves, the given summaries, and whether the release was ever read."""
    state = plan.CycleState()
    ran: list[plan.Step] = []
    resolved = False
    for _ in range(50):
        action = plan.next_action(cycle_spec, state, LAYOUT)
        if isinstance(action, plan.ResolveIncumbent):
            resolved = True
            state = plan.CycleState(incumbent_resolved=True, incumbent=incumbent)
        elif isinstance(action, plan.RunStep):
            ran.append(action.step)
            result = plan.StepResult("succeeded", summaries.get(action.step.name, {}))
            state = replace(state, steps={**state.steps, action.step.name: result})
        else:
            return ran, action, resolved
    raise AssertionError("the machine did not converge")


def test_an_imported_candidate_is_checked_before_any_gpu_step_and_then_gated_like_a_trained_one() -> None:
    summaries = {"import": {"adapter_digest": IMPORTED},
                 "generate": {"adapters": {"candidate": IMPORTED, "incumbent": INCUMBENT.digest}},
                 "decide": {"outcome": "Promoted", "reason": "better"}}
    ran, last, resolved = drive_recording(import_spec(), INCUMBENT, summaries)
    assert [s.name for s in ran] == ["import", "generate", "score-candidate", "score-incumbent", "decide"]
    first = ran[0]
    assert first.kind == "plain" and all(s.kind != "gpu" for s in ran[:1])  # the digest check needs no GPU
    argv = " ".join(first.argv)
    assert f"--source /manifests/adapters/colleague --digest {IMPORTED}" in argv
    assert f"--output-dir {LAYOUT.at('import', 'adapter')}" in argv
    generate = ran[1].argv
    assert f"candidate={LAYOUT.at('import', 'adapter')}" in generate and f"incumbent={INCUMBENT.uri}" in generate
    score = ran[2].argv
    assert score[score.index("--adapter-digest") + 1] == IMPORTED
    assert resolved  # evaluated against the live incumbent, read when the cycle starts
    assert isinstance(last, plan.Publish)
    assert last.candidate_uri == LAYOUT.at("import", "adapter") and last.candidate_digest == IMPORTED
    assert last.evidence == {"imported_from": "adapters/colleague", "imported_digest": IMPORTED,
                             "suite": "humaneval", "subset": "all"}
    assert set(plan.skipped(import_spec())) == {"harvest", "verify", "dataset", "train"}


def test_the_imported_copy_is_what_generate_is_held_to() -> None:
    results = {"import": plan.StepResult("succeeded", {"adapter_digest": IMPORTED},
                                         outputs={LAYOUT.at("import", "adapter"): IMPORTED})}
    state = plan.CycleState(True, None, results)
    action = plan.next_action(import_spec(), state, LAYOUT)
    assert isinstance(action, plan.RunStep) and action.step.name == "generate"
    assert expected(action.step) == [f"{IMPORTED}={LAYOUT.at('import', 'adapter')}"]


def test_an_import_that_failed_its_digest_check_fails_the_cycle_before_generate() -> None:
    state = plan.CycleState(True, INCUMBENT, {"import": plan.StepResult(
        "failed", {"kind": "digest_mismatch"}, "exit code 2: the adapter ... has digest sha256:0, but ...")})
    action = plan.next_action(import_spec(), state, LAYOUT)
    assert isinstance(action, plan.Finish) and action.phase == "Failed" and action.reason.startswith("import failed")


def test_generate_loading_another_adapter_than_the_imported_copy_fails_the_cycle() -> None:
    generated = {"adapters": {"candidate": digest("f")}}
    state = plan.CycleState(True, None, {"import": plan.StepResult("succeeded", {"adapter_digest": IMPORTED}),
                                         "generate": plan.StepResult("succeeded", generated)})
    action = plan.next_action(import_spec(), state, LAYOUT)
    assert isinstance(action, plan.Finish) and action.phase == "Failed"
    assert "which the import step copied" in action.reason


DRY_SUMMARIES = {
    "harvest": {"harvested": 10, "kept": 6, "excluded": 2, "duplicates": 1, "dropped": {"no_asserts": 1},
                "by_source": {"/manifests/corpus.jsonl": {"harvested": 7, "kept": 4},
                              "/abs/agent.json": {"harvested": 3, "kept": 2}}},
    "verify": {"total": 6, "passed": 4, "dropped": {"assert_failed": 2},
               "passed_by_source": {"/manifests/corpus.jsonl": 3, "/abs/agent.json": 1}},
    "dataset": {"rows": 9, "base_rows": 5, "verified_rows": 4, "excluded": 1, "bytes": 1234,
                "dataset_digest": digest("d")},
}


@pytest.mark.parametrize("stop", ["verify", "dataset"])
def test_a_dry_run_stops_after_its_stage_reads_no_release_and_reports_what_would_train(stop: str) -> None:
    ran, last, resolved = drive_recording(spec(stopAfter=stop), INCUMBENT, DRY_SUMMARIES)
    assert [s.name for s in ran] == ["harvest", "verify", "dataset"][: 2 if stop == "verify" else 3]
    assert all(s.kind != "gpu" for s in ran)
    assert not resolved  # it does not compete for the release: nothing reads or writes it
    assert isinstance(last, plan.Finish) and (last.phase, last.outcome) == ("Succeeded", "DryRun")
    report = last.report
    assert report is not None and report["stoppedAfter"] == stop
    assert report["bySource"] == {"/manifests/corpus.jsonl": {"harvested": 7, "kept": 4, "verified": 3},
                                  "/abs/agent.json": {"harvested": 3, "kept": 2, "verified": 1}}
    assert report["dropped"] == {"assert_failed": 2, "duplicate": 1, "no_asserts": 1}
    assert report["harvested"] == 10 and report["verified"] == 4
    if stop == "dataset":
        assert report["evalOverlap"] == {"harvested": 2, "base": 1}
        assert report["dataset"] == {"rows": 9, "baseRows": 5, "verifiedRows": 4, "bytes": 1234,
                                     "digest": digest("d")}
        assert "would train on 9 rows" in last.reason and digest("d") in last.reason
    else:
        assert report["evalOverlap"] == {"harvested": 2} and "dataset" not in report
    assert "the release is untouched" in last.reason
    assert not plan.holds_release(spec(stopAfter=stop)) and plan.holds_release(spec())
    assert "train" in plan.skipped(spec(stopAfter=stop)) and "decide" in plan.skipped(spec(stopAfter=stop))


def test_a_dry_run_with_no_training_rows_still_reports_rather_than_rejecting() -> None:
    summaries = {**DRY_SUMMARIES, "dataset": {**DRY_SUMMARIES["dataset"], "rows": 0}}
    _, last, _ = drive_recording(spec(stopAfter="dataset"), None, summaries)
    assert isinstance(last, plan.Finish) and last.outcome == "DryRun" and last.report["dataset"]["rows"] == 0


def test_a_trained_cycle_publishes_its_dataset_digest_as_evidence() -> None:
    _, last = drive(spec(), INCUMBENT)
    assert isinstance(last, plan.Publish)
    assert last.evidence == {"dataset_digest": "sha256:d", "suite": "humaneval", "subset": "all"}
    assert plan.skipped(spec()) == {}
