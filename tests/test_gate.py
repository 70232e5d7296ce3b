"""The promotion decision (sigma0.gate) and the `decide` stage that applies it to result files."""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sigma0.gate import Decision, Outcome, Policy, decide, mcnemar_p_value
from sigma0.stages import StageInputError
from sigma0.stages import decide as decide_stage

# --- strategies ---------------------------------------------------------------------------------------------

pairs = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
policies = st.builds(
    Policy,
    margin=st.one_of(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.25]), unit),
    min_pass_at_1=st.one_of(st.just(0.0), unit),
    significance=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=0.999999)),
)


def split(rows: list[tuple[bool, bool]]) -> tuple[dict[str, bool], dict[str, bool]]:
    candidate = {f"T/{i}": cand for i, (cand, _) in enumerate(rows)}
    incumbent = {f"T/{i}": inc for i, (_, inc) in enumerate(rows)}
    return candidate, incumbent


def results(*passed: bool) -> dict[str, bool]:
    return {f"T/{i}": value for i, value in enumerate(passed)}


# --- properties ---------------------------------------------------------------------------------------------


@given(pairs, policies)
def test_never_promotes_a_tie_or_a_regression(rows, policy):
    candidate, incumbent = split(rows)
    decision = decide(candidate, incumbent, policy)
    if sum(candidate.values()) <= sum(incumbent.values()):
        assert decision.outcome is Outcome.REJECTED


@given(pairs, policies)
def test_never_promotes_below_incumbent_plus_margin(rows, policy):
    candidate, incumbent = split(rows)
    decision = decide(candidate, incumbent, policy)
    n = len(rows)
    gain = Fraction(sum(candidate.values()), n) - Fraction(sum(incumbent.values()), n)
    if gain < Fraction(repr(policy.margin)):
        assert decision.outcome is Outcome.REJECTED
    if decision.outcome is Outcome.PROMOTED:
        assert decision.candidate_pass_at_1 > decision.incumbent_pass_at_1
        assert decision.candidate_pass_at_1 >= policy.min_pass_at_1 - 1e-12
        if policy.significance is not None:
            assert decision.p_value < policy.significance


@given(pairs, policies, st.data())
def test_an_extra_candidate_pass_never_turns_a_promotion_into_a_rejection(rows, policy, data):
    policy = Policy(margin=policy.margin, min_pass_at_1=policy.min_pass_at_1)  # significance off
    candidate, incumbent = split(rows)
    failing = [task for task, passed in candidate.items() if not passed]
    if not failing:
        return
    better = candidate | {data.draw(st.sampled_from(failing)): True}
    if decide(candidate, incumbent, policy).outcome is Outcome.PROMOTED:
        assert decide(better, incumbent, policy).outcome is Outcome.PROMOTED


@given(pairs, policies)
def test_records_figures_and_p_value_whenever_there_is_an_incumbent(rows, policy):
    candidate, incumbent = split(rows)
    decision = decide(candidate, incumbent, policy)
    b = sum(1 for (cand, inc) in rows if cand and not inc)
    c = sum(1 for (cand, inc) in rows if inc and not cand)
    assert (decision.candidate_only, decision.incumbent_only) == (b, c)
    assert decision.p_value == float(mcnemar_p_value(b, c))
    assert decision.candidate_total == decision.incumbent_total == len(rows)
    assert decision.outcome in (Outcome.PROMOTED, Outcome.REJECTED)
    assert decision.reason


@given(pairs, policies)
def test_without_incumbent_bootstraps_exactly_when_the_floor_is_met(rows, policy):
    candidate, _ = split(rows)
    decision = decide(candidate, None, policy)
    at_floor = Fraction(sum(candidate.values()), len(rows)) >= Fraction(repr(policy.min_pass_at_1))
    assert decision.outcome is (Outcome.BOOTSTRAPPED if at_floor else Outcome.REJECTED)
    assert decision.p_value is None and decision.incumbent_pass_at_1 is None


@given(st.integers(0, 300), st.integers(0, 300))
def test_p_value_is_symmetric_and_a_probability(b, c):
    p = mcnemar_p_value(b, c)
    assert p == mcnemar_p_value(c, b)
    assert 0 < p <= 1
    if b == c:
        assert p == 1


@given(st.integers(0, 60), st.integers(0, 60))
def test_p_value_matches_the_binomial_tail_in_floating_point(b, c):
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) * 0.5**n for i in range(k + 1))
    assert float(mcnemar_p_value(b, c)) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


@given(st.integers(0, 40), st.integers(0, 40))
def test_p_value_shrinks_as_the_wins_grow(b, c):
    if b >= c:
        assert mcnemar_p_value(b + 1, c) <= mcnemar_p_value(b, c)


# --- exact values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (10, 0, Fraction(2, 1024)),
        (0, 10, Fraction(2, 1024)),
        (0, 0, Fraction(1)),
        (1, 0, Fraction(1)),
        (5, 0, Fraction(1, 16)),
        (6, 1, Fraction(1, 8)),  # 2·(1 + 7)/2^7
        (12, 2, Fraction(212, 16384)),  # 2·(1 + 14 + 91)/2^14
        (3, 3, Fraction(1)),
    ],
)
def test_known_p_values(b, c, p):
    assert mcnemar_p_value(b, c) == p


def test_p_value_rejects_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_p_value(-1, 2)


# --- every branch, by example -------------------------------------------------------------------------------


def test_bootstraps_the_first_release():
    decision = decide(results(True, True, False, False), None, Policy(min_pass_at_1=0.5))
    assert decision.outcome is Outcome.BOOTSTRAPPED  # exactly at the floor counts
    assert decision.candidate_pass_at_1 == 0.5
    assert (decision.candidate_passed, decision.candidate_total) == (2, 4)
    assert "first release" in decision.reason


def test_rejects_a_first_release_below_the_floor():
    decision = decide(results(True, False, False), None, Policy(min_pass_at_1=0.5))
    assert decision.outcome is Outcome.REJECTED
    assert "below the minimum pass@1 0.5" in decision.reason


@pytest.mark.parametrize("incumbent", [None, results(True)])
def test_rejects_empty_candidate_results(incumbent):
    decision = decide({}, incumbent, Policy())
    assert decision.outcome is Outcome.REJECTED
    assert "no results" in decision.reason


@pytest.mark.parametrize(
    ("candidate", "incumbent", "says"),
    [
        ({"a": True, "b": True}, {"a": False}, "1 task(s) only in the candidate's results (b)"),
        ({"a": True}, {"a": False, "b": False}, "1 task(s) only in the incumbent's results (b)"),
        ({"a": True, "b": True}, {"a": False, "c": False}, "only in the candidate's results (b); 1 task"),
        ({"a": True}, {}, "only in the candidate's results (a)"),
    ],
)
def test_never_promotes_on_mismatched_evidence(candidate, incumbent, says):
    decision = decide(candidate, incumbent, Policy())
    assert decision.outcome is Outcome.REJECTED
    assert decision.reason.startswith("results are not comparable: ")
    assert says in decision.reason
    assert decision.p_value is None


def test_mismatch_reason_stays_short_for_many_ids():
    candidate = {f"HumanEval/{i}": True for i in range(500)}
    decision = decide(candidate, {"other": False}, Policy())
    assert "500 task(s) only in the candidate's results" in decision.reason
    assert len(decision.reason) < 400


def test_rejects_a_tie():
    decision = decide(results(True, False), results(False, True), Policy())
    assert decision.outcome is Outcome.REJECTED
    assert "ties" in decision.reason
    assert (decision.candidate_only, decision.incumbent_only, decision.p_value) == (1, 1, 1.0)


def test_rejects_a_regression():
    decision = decide(results(True, False, False), results(True, True, False), Policy())
    assert decision.outcome is Outcome.REJECTED
    assert "regresses" in decision.reason


def test_rejects_a_win_below_the_margin():
    decision = decide(
        results(True, True, False, False), results(True, False, False, False), Policy(margin=0.3)
    )
    assert decision.outcome is Outcome.REJECTED
    assert "below the required margin 0.3" in decision.reason


def test_a_win_of_exactly_the_margin_is_promoted():
    # 0.05 is not exact in binary; the gate reads it as the decimal 1/20.
    candidate = results(*([True] * 11 + [False] * 9))
    incumbent = results(*([True] * 10 + [False] * 10))
    assert decide(candidate, incumbent, Policy(margin=0.05)).outcome is Outcome.PROMOTED
    assert decide(candidate, incumbent, Policy(margin=0.051)).outcome is Outcome.REJECTED


def test_rejects_a_win_below_the_floor():
    decision = decide(results(True, False, False), results(False, False, False), Policy(min_pass_at_1=0.5))
    assert decision.outcome is Outcome.REJECTED
    assert "below the minimum pass@1 0.5" in decision.reason


def test_rejects_a_win_that_is_not_significant():
    decision = decide(results(True, True, False), results(False, False, False), Policy(significance=0.05))
    assert decision.outcome is Outcome.REJECTED
    assert "not significant" in decision.reason
    assert decision.p_value == 0.5  # b=2, c=0: 2·(1/4)


def test_promotes_a_significant_win():
    candidate = results(*([True] * 10 + [False] * 2))
    incumbent = results(*([False] * 12))
    decision = decide(candidate, incumbent, Policy(margin=0.1, significance=0.05))
    assert decision.outcome is Outcome.PROMOTED
    assert decision.p_value == 2 / 1024
    assert "McNemar p = 0.001953" in decision.reason


def test_promotes_a_plain_win_and_records_everything():
    decision = decide(results(True, True, False), results(True, False, False), Policy())
    assert decision.outcome is Outcome.PROMOTED
    assert decision.promotes
    assert (decision.candidate_passed, decision.incumbent_passed, decision.incumbent_total) == (2, 1, 3)
    assert decision.incumbent_pass_at_1 == pytest.approx(1 / 3)
    assert decision.p_value == 1.0  # recorded even when significance is off
    assert "candidate 2/3 (66.7%) vs incumbent 1/3 (33.3%)" in decision.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"margin": -0.1},
        {"margin": 1.5},
        {"margin": float("nan")},
        {"margin": True},
        {"margin": "0.1"},
        {"min_pass_at_1": 1.01},
        {"min_pass_at_1": float("inf")},
        {"significance": 0.0},
        {"significance": 1.0},
        {"significance": -0.5},
    ],
)
def test_policy_rejects_values_out_of_range(kwargs):
    with pytest.raises(ValueError, match="policy"):
        Policy(**kwargs)


def test_policy_accepts_the_edges():
    assert Policy(margin=1.0, min_pass_at_1=1.0, significance=0.999) == Policy(1.0, 1.0, 0.999)
    assert Policy(margin=0, min_pass_at_1=0).significance is None


def test_decision_round_trips_through_json():
    decision = decide(results(True, True, False), results(True, False, False), Policy(0.1, 0.2, 0.5))
    again = Decision.from_dict(json.loads(json.dumps(decision.to_dict())))
    assert again == decision
    assert again.outcome is Outcome.REJECTED  # b=1, c=0: p = 1, not below 0.5


@pytest.mark.parametrize("data", [{}, {"outcome": "Maybe"}, {"outcome": "Promoted", "policy": []}])
def test_decision_from_bad_json_says_so(data):
    with pytest.raises(ValueError):
        Decision.from_dict(data)


# --- the decide stage ---------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    decide_stage.add_arguments(parser)
    return parser.parse_args(list(argv))


def write_results(path, passed: dict[str, bool]) -> str:
    rows = [
        {"task_id": task, "passed": value, "reason": "ok" if value else "AssertionError"}
        for task, value in passed.items()
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_stage_writes_the_decision_and_input_digests(tmp_path):
    candidate = write_results(tmp_path / "cand.jsonl", results(True, True, False))
    incumbent = write_results(tmp_path / "inc.jsonl", results(True, False, False))
    output = tmp_path / "out" / "decision.json"
    summary = decide_stage.run(
        parse("--candidate", candidate, "--incumbent", incumbent, "--output", str(output), "--margin", "0.1")
    )
    assert summary["outcome"] == "Promoted"
    assert summary["candidate_pass_at_1"] == pytest.approx(2 / 3)
    assert (summary["candidate_passed"], summary["incumbent_passed"], summary["incumbent_total"]) == (2, 1, 3)
    assert summary["p_value"] == 1.0
    written = json.loads(output.read_text())
    assert Decision.from_dict(written).policy == Policy(margin=0.1)  # decision.json reads back as is
    assert written["inputs"]["candidate"]["path"] == candidate
    assert written["inputs"]["candidate"]["digest"].startswith("sha256:")
    assert written["inputs"]["incumbent"]["digest"] != written["inputs"]["candidate"]["digest"]
    assert len(json.dumps(summary)) < 3000


def test_stage_bootstraps_without_an_incumbent(tmp_path):
    candidate = write_results(tmp_path / "cand.jsonl", results(True, False))
    output = tmp_path / "decision.json"
    summary = decide_stage.run(
        parse("--candidate", candidate, "--output", str(output), "--min-pass-at-1", "0.5")
    )
    assert summary["outcome"] == "Bootstrapped"
    assert summary["incumbent_pass_at_1"] is None
    assert json.loads(output.read_text())["inputs"]["incumbent"] is None


def test_stage_summary_stays_small_for_a_large_mismatch(tmp_path):
    candidate = write_results(
        tmp_path / "cand.jsonl", {f"HumanEval/{i}/{'x' * 200}": True for i in range(300)}
    )
    incumbent = write_results(tmp_path / "inc.jsonl", {"HumanEval/0": True})
    summary = decide_stage.run(
        parse("--candidate", candidate, "--incumbent", incumbent, "--output", str(tmp_path / "d.json"))
    )
    assert summary["outcome"] == "Rejected"
    assert len(json.dumps(summary)) < 3000


def test_stage_skips_blank_lines(tmp_path):
    path = tmp_path / "cand.jsonl"
    path.write_text('\n{"task_id": "a", "passed": true}\n\n{"task_id": "b", "passed": false}\n')
    assert decide_stage.read_results(str(path)) == {"a": True, "b": False}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"task_id": "a", "passed": true}', "{not json"], ":2: not valid JSON"),
        (['["a", true]'], ":1: expected a JSON object"),
        (['{"passed": true}'], ":1: task_id must be a non-empty string"),
        (['{"task_id": "", "passed": true}'], ":1: task_id must be a non-empty string"),
        (['{"task_id": "a", "passed": 1}'], ":1: passed must be true or false, got 1"),
        (['{"task_id": "a"}'], ":1: passed must be true or false, got None"),
        (
            ['{"task_id": "a", "passed": true}', "", '{"task_id": "a", "passed": false}'],
            ":3: task 'a' appears again",
        ),
    ],
)
def test_stage_names_the_malformed_line(tmp_path, lines, message):
    path = tmp_path / "cand.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StageInputError, match=message):
        decide_stage.run(parse("--candidate", str(path), "--output", str(tmp_path / "d.json")))
    assert not (tmp_path / "d.json").exists()


def test_stage_reports_a_missing_or_binary_file(tmp_path):
    with pytest.raises(StageInputError, match="does not exist; run the score stage first"):
        decide_stage.run(
            parse("--candidate", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "d.json"))
        )
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StageInputError, match="not UTF-8"):
        decide_stage.read_results(str(binary))


@pytest.mark.parametrize(
    "flags", [["--margin", "2"], ["--significance", "0"], ["--min-pass-at-1", "nan"], ["--margin", "-0.1"]]
)
def test_stage_rejects_a_bad_policy(tmp_path, flags):
    candidate = write_results(tmp_path / "cand.jsonl", results(True))
    with pytest.raises(StageInputError, match="policy"):
        decide_stage.run(parse("--candidate", candidate, "--output", str(tmp_path / "d.json"), *flags))
