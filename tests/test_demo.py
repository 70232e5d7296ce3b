"""The demo (`make demo`): three real cycles against one release, Bootstrapped → Promoted (significant) → Rejected.

Every figure comes from the stages themselves: tiny://coder (built once per machine in the user's model cache, as
the demo builds it), LoRA trained, completions generated, scored in the sandbox. The data files are what
examples/demo/make_demo.py writes, and the gate suite shares no function with any harvest.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from sigma0.io import read_jsonl
from sigma0.release import LocalReleaseStore

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMO / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_data_is_what_make_demo_writes() -> None:
    for name, rows in _load("make_demo").build().items():
        assert list(read_jsonl(DEMO / name)) == rows, f"{name} is stale: run python examples/demo/make_demo.py"


def test_gate_suite_shares_no_function_with_any_harvest() -> None:
    gate = {row["entry_point"]: row for row in read_jsonl(DEMO / "gate.jsonl")}
    assert len(gate) == 48
    for harvest in sorted(DEMO.glob("harvest-*.jsonl")):
        names = {row["fn"] for row in read_jsonl(harvest)}
        assert not names & set(gate), harvest.name
        bodies = {row["code"].split("\n", 1)[1] for row in read_jsonl(harvest)}
        assert not bodies & {row["canonical_solution"] for row in gate.values()}, harvest.name


def test_every_demo_cycle_excludes_the_gate_and_humaneval_and_asks_for_significance() -> None:
    for manifest in _load("run_demo").manifests():
        spec = yaml.safe_load(manifest.read_text())["spec"]
        assert (spec["eval"]["suite"], spec["eval"]["reportSuites"]) == ("gate.jsonl", ["humaneval"])
        assert spec["promote"]["significance"] == 0.05 and spec["promote"]["margin"] >= 0.15


@pytest.mark.slow
def test_demo_bootstraps_promotes_on_a_significant_win_then_rejects_a_worse_candidate(tmp_path: Path) -> None:
    run_demo = _load("run_demo")
    workdir = tmp_path / "work"
    assert run_demo.main(["--workdir", str(workdir)]) == 0
    states = [json.loads((workdir / "cycles" / run_demo.cycle_name(m) / "state.json").read_text())
              for m in run_demo.manifests()]  # fmt: skip
    assert [state["finished"]["outcome"] for state in states] == ["Bootstrapped", "Promoted", "Rejected"]

    def summary(state: dict[str, Any], step: str) -> dict[str, Any]:
        return dict(state["steps"][step]["summary"])

    first, second, third = states
    # Cycle 2: new verified rows, and a win of at least 0.15 on at least 40 problems, McNemar p < 0.05.
    verified = summary(second, "verify")
    assert verified["passed"] >= 30 and verified["passed"] < verified["total"]  # the verify gate dropped some
    decision = summary(second, "decide")
    assert decision["candidate_total"] >= 40
    assert decision["candidate_pass_at_1"] - decision["incumbent_pass_at_1"] >= 0.15
    assert decision["p_value"] < 0.05
    assert decision["candidate_pass_at_1"] < 1.0  # a real curve, not a saturated one
    assert summary(second, "score-incumbent")["pass_at_1"] == summary(first, "score-candidate")["pass_at_1"]
    # Cycle 3: most rows fail their own asserts; its candidate is worse, and the release stays on cycle 2's adapter.
    assert summary(third, "verify")["passed"] <= summary(third, "verify")["total"] // 4
    assert summary(third, "decide")["candidate_pass_at_1"] < summary(third, "decide")["incumbent_pass_at_1"]
    release = LocalReleaseStore(workdir / "releases").current("demo-coder")
    assert release is not None and release.revision == 2 and release.cycle == second["name"]
    assert release.digest == summary(second, "train")["adapter_digest"]
    # HumanEval is measured and reported, never gated.
    assert summary(second, "score-candidate-report0")["suite"] == "humaneval"

    listed = subprocess.run([sys.executable, "-m", "sigma0", "release", "history", "demo-coder", "--workdir",
                             str(workdir), "-o", "json"], capture_output=True, text=True, check=True)  # fmt: skip
    history = json.loads(listed.stdout)
    assert [(row["revision"], row["cycle"]) for row in history] == [(2, second["name"]), (1, first["name"])]
    assert history[0]["passAt1"] == decision["candidate_pass_at_1"]
    table = run_demo.closing_table(states)
    assert table.row_count == 3
