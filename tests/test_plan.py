"""The pure state machine: what runs next, in what order, with which command lines, and when a cycle ends."""

from __future__ import annotations

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
    assert " ".join(by_name["dataset"].argv).endswith("--base /manifests/base.jsonl")
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


def test_after_publishing_the_cycle_succeeds_with_the_published_outcome() -> None:
    steps = {name: plan.StepResult("succeeded", SUMMARIES.get(name, {}))
             for name in ("harvest", "verify", "dataset", "train", "generate", "score-candidate", "decide")}
    state = plan.CycleState(True, None, steps, {"outcome": "Stale", "reason": "release moved"})
    assert plan.next_action(spec(), state, LAYOUT) == plan.Finish("Succeeded", "Stale", "release moved")


@pytest.mark.parametrize("value", [10.0, 0.0002, 0.05, 1e-05, 3])
def test_numbers_on_command_lines_round_trip(value: float) -> None:
    assert float(plan._num(value)) == value


def test_every_eval_suite_is_excluded_from_harvest() -> None:
    cycle_spec = spec(eval={"suite": "humaneval", "reportSuites": ["heldout.jsonl"]},
                      harvest={"sources": [{"path": "c.jsonl"}], "excludeSuites": ["humaneval", "/abs/extra.jsonl"]})
    state = plan.CycleState(True, None, {})
    harvest = plan.steps(cycle_spec, state, LAYOUT)[0].argv
    excluded = [harvest[i + 1] for i, part in enumerate(harvest) if part == "--exclude-suite"]
    assert excluded == ["humaneval", "/abs/extra.jsonl", "/manifests/heldout.jsonl"]


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
