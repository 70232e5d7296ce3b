"""`sigma0 run` end to end on this machine: the real stage commands, the tiny model, the real sandbox.

A small cycle (a few training steps, three HumanEval problems, short completions) keeps this fast on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sigma0.io import read_json
from sigma0.release import LocalReleaseStore
from sigma0.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "corpus"

pytestmark = pytest.mark.slow


def manifest(tmp_path: Path, name: str | None = None, **spec_overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "release": "coder",
        "baseModel": {"name": "tiny://llama"},
        "harvest": {"sources": [{"path": str(CORPUS / "agent_corpus.json")}, {"path": str(CORPUS / "tasks.jsonl")}]},
        "verify": {"timeoutSeconds": 5},
        "dataset": {"base": str(CORPUS / "base_train.jsonl")},
        "train": {"steps": 2, "batchSize": 2, "maxSeqLength": 128},
        "eval": {"subset": "first:3", "maxNewTokens": 16, "batchSize": 3},
    }
    spec.update(spec_overrides)
    metadata = {"name": name} if name else {"generateName": "cycle-"}
    document = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": metadata, "spec": spec}
    path = tmp_path / f"{name or 'generated'}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def sigma0(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sigma0", *args], capture_output=True, text=True, check=False,
                          timeout=900, **kwargs)


def state_of(workdir: Path, name: str) -> dict[str, Any]:
    return read_json(workdir / "cycles" / name / "state.json")


def test_two_cycles_bootstrap_then_decide_against_the_release(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    # the demo's base rows and one that is HumanEval/0 verbatim: the dataset step must leave that one out
    humaneval = next(problem for problem in load_suite("humaneval") if problem.task_id == "HumanEval/0")
    leak = {"prompt": humaneval.prompt, "completion": humaneval.canonical_solution, "id": "base-leak"}
    base = tmp_path / "base.jsonl"
    base.write_text((CORPUS / "base_train.jsonl").read_text() + json.dumps(leak) + "\n")
    cycle = manifest(tmp_path, dataset={"base": str(base)})

    first = sigma0("run", str(cycle), "--workdir", str(workdir))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Bootstrapped" in first.stdout
    (cycle_dir,) = (workdir / "cycles").iterdir()
    dataset = state_of(workdir, cycle_dir.name)["steps"]["dataset"]["summary"]
    assert (dataset["base_rows"], dataset["excluded"]) == (6, 1)
    assert "--exclude-suite humaneval" in (cycle_dir / "logs" / "dataset.log").read_text()
    assert "base-leak" not in (cycle_dir / "dataset" / "train.jsonl").read_text()
    store = LocalReleaseStore(workdir / "releases")
    release = store.current("coder")
    assert release is not None and release.revision == 1

    second = sigma0("run", str(cycle), "--workdir", str(workdir))
    assert second.returncode == 0, second.stdout + second.stderr
    (first_dir, second_dir) = sorted((workdir / "cycles").iterdir(), key=lambda p: p.stat().st_mtime)
    state = state_of(workdir, second_dir.name)
    assert state["incumbent"]["digest"] == release.digest
    assert "score-incumbent" in state["steps"], "the incumbent must be evaluated live in the second cycle"
    outcome = state["finished"]["outcome"]
    assert outcome in ("Promoted", "Rejected")
    assert outcome in second.stdout
    log = store.promotions("coder")
    assert [row["cycle"] for row in log] == [first_dir.name, second_dir.name]
    leaderboard = [json.loads(line) for line in (workdir / "leaderboard.jsonl").read_text().splitlines()]
    assert len(leaderboard) == 3  # candidate, then candidate + incumbent
    after = store.current("coder")
    assert after is not None
    if outcome == "Rejected":
        assert after == release, "a rejected candidate must leave the release untouched"
    else:
        assert after.revision == 2


def test_a_killed_run_resumes_without_redoing_finished_stages(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    cycle = manifest(tmp_path, name="resumable", train={"steps": 40, "batchSize": 2, "maxSeqLength": 128})
    process = subprocess.Popen([sys.executable, "-m", "sigma0", "run", str(cycle), "--workdir", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state_file = workdir / "cycles" / "resumable" / "state.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if state_file.exists() and read_json(state_file)["steps"].get("train", {}).get("state") == "running":
                break
            assert process.poll() is None, "the run ended before training started"
            time.sleep(0.2)
        else:
            pytest.fail("training never started")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    killed = state_of(workdir, "resumable")
    assert killed["steps"]["train"]["state"] == "running"
    assert killed["finished"] is None

    resumed = sigma0("run", str(cycle), "--workdir", str(workdir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    logs = workdir / "cycles" / "resumable" / "logs"
    for stage in ("harvest", "verify", "dataset"):
        invocations = (logs / f"{stage}.log").read_text().count("$ sigma0 stage")
        assert invocations == 1, f"{stage} ran {invocations} times"
    assert (logs / "train.log").read_text().count("$ sigma0 stage train") == 2
    assert state_of(workdir, "resumable")["finished"]["phase"] == "Succeeded"

    again = sigma0("run", str(cycle), "--workdir", str(workdir))
    assert again.returncode == 0 and "already finished" in again.stdout


def test_an_invalid_manifest_exits_2_before_any_stage(tmp_path: Path) -> None:
    cycle = manifest(tmp_path, name="bad", train={"steps": 0})
    workdir = tmp_path / "work"
    result = sigma0("run", str(cycle), "--workdir", str(workdir))
    assert result.returncode == 2
    assert "spec.train.steps" in result.stdout
    assert not (workdir / "cycles").exists()
    validate = sigma0("validate", str(cycle))
    assert validate.returncode == 2 and "spec.train.steps: 0 is less than the minimum of 1" in validate.stdout


def test_a_failing_stage_fails_the_cycle_and_leaves_the_release_untouched(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    cycle = manifest(tmp_path, name="fails", baseModel={"name": str(broken)})
    result = sigma0("run", str(cycle), "--workdir", str(workdir))
    assert result.returncode == 1, result.stdout + result.stderr
    state = state_of(workdir, "fails")
    assert state["finished"]["phase"] == "Failed"
    assert state["finished"]["reason"].startswith("train failed")
    assert LocalReleaseStore(workdir / "releases").current("coder") is None


class Planter:
    """A reporter that, when `after` ends, changes `path` (relative to the cycle folder) as a candidate running in
    that sandbox step could have: the next step must refuse it."""

    def __init__(self, cycle_dir: Path, after: str, path: str, change: Any) -> None:
        self.cycle_dir, self.after, self.path, self.change = cycle_dir, after, path, change
        self.ran: list[str] = []

    def step_started(self, step: Any, resumed: bool) -> None:
        self.ran.append(step.name)

    def step_finished(self, step: Any, result: Any, seconds: float) -> None:
        if step.name == self.after:
            self.change(self.cycle_dir / self.path)

    def step_skipped(self, step: Any, result: Any) -> None:
        pass


def test_a_row_planted_in_verified_jsonl_after_verify_stops_the_cycle_before_dataset_reads_it(
    tmp_path: Path,
) -> None:
    from sigma0.executors.local import LocalExecutor, choose_cycle
    from sigma0.local_release import LocalReleases
    from sigma0.spec import load_manifest

    workdir = tmp_path / "work"
    path = manifest(tmp_path, name="planted")
    cycle = load_manifest(str(path))
    run = choose_cycle(cycle, workdir)

    def plant(verified: Path) -> None:
        row = {"id": "planted", "fn": "f", "instruction": "Return 1.", "code": "def f():\n    return 1\n"}
        with verified.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    planter = Planter(run.cycle_dir, "verify", "verify/verified.jsonl", plant)
    done = LocalExecutor(cycle, workdir, LocalReleases(workdir / "releases"), planter, tmp_path).run(run)

    assert planter.ran == ["harvest", "verify", "dataset"]
    assert done.finished is not None and done.finished["phase"] == "Failed"
    assert "dataset failed" in done.finished["reason"] and "evidence_tampered" in done.finished["reason"]
    state = state_of(workdir, "planted")
    verified = str(run.cycle_dir.resolve() / "verify" / "verified.jsonl")
    assert verified in state["steps"]["verify"]["outputs"]
    assert not (run.cycle_dir / "dataset" / "train.jsonl").exists()
    assert LocalReleaseStore(workdir / "releases").current("coder") is None, "the release is untouched"


def test_a_stage_past_its_timeout_is_stopped_and_fails_the_cycle(tmp_path: Path) -> None:
    from sigma0.executors.local import LocalExecutor, choose_cycle
    from sigma0.local_release import LocalReleases
    from sigma0.spec import StageTimeouts, load_manifest

    workdir = tmp_path / "work"
    cycle = load_manifest(str(manifest(tmp_path, name="slow")))
    # the schema's floor is 60 s; a second here (past validation) keeps the test short: train cannot even load torch
    cycle = cycle.model_copy(update={"spec": cycle.spec.model_copy(update={"stage_timeouts": StageTimeouts(train=1)})})
    run = choose_cycle(cycle, workdir)
    planter = Planter(run.cycle_dir, "none", "none", lambda _: None)
    started = time.monotonic()
    done = LocalExecutor(cycle, workdir, LocalReleases(workdir / "releases"), planter, tmp_path).run(run)
    assert planter.ran == ["harvest", "verify", "dataset", "train"]
    assert done.finished is not None and done.finished["phase"] == "Failed"
    assert done.finished["reason"].startswith("train failed: StageTimeout: train ran longer than "
                                              "spec.stageTimeouts.train=1 s"), done.finished
    assert not (run.cycle_dir / "train" / "adapter").exists()
    assert LocalReleaseStore(workdir / "releases").current("coder") is None, "the release is untouched"
    assert time.monotonic() - started < 120


def test_a_stage_stopped_at_its_timeout_gets_to_clean_up_first(tmp_path: Path) -> None:
    from sigma0.executors.local import _run_stage

    cleaned = tmp_path / "cleaned"
    code = (f"import time\ntry:\n    time.sleep(60)\nfinally:\n    open({str(cleaned)!r}, 'w').write('yes')\n")
    with open(tmp_path / "log", "wb") as log:
        started = time.monotonic()
        assert _run_stage([sys.executable, "-c", code], log, dict(os.environ), 1) is None
        assert _run_stage([sys.executable, "-c", "pass"], log, dict(os.environ), 30) == 0
    assert cleaned.read_text() == "yes"  # SIGINT first: its finally ran, as on Ctrl-C
    assert time.monotonic() - started < 20
