"""`sigma0 run` with the two other ways into the loop: an adapter trained elsewhere (spec.candidate) and a dry run
(spec.stopAfter). The real stage commands, the tiny model, the real sandbox.

The imported adapters are made in code (tests/crafted.py): each makes the tiny model answer a one-problem suite
with a chosen character, so whether it passes is known before the cycle runs.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from crafted import crafted_adapter, write_suite
from test_run_local import CORPUS, manifest, sigma0, state_of

from sigma0.io import file_digest, tree_digest
from sigma0.release import LocalReleaseStore

pytestmark = pytest.mark.slow


def import_manifest(folder: Path, name: str, adapter: Path, digest: str | None = None, **spec: Any) -> Path:
    document = {
        "apiVersion": "sigma0.dev/v1alpha1",
        "kind": "TrainingCycle",
        "metadata": {"name": name},
        "spec": {
            "release": "coder",
            "baseModel": {"name": "tiny://llama"},
            "candidate": {"uri": adapter.name, "digest": digest or tree_digest(adapter)},
            "eval": {"suite": "answer.jsonl", "maxNewTokens": 1, "batchSize": 1},
            **spec,
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A folder with the suite and four adapters: `wrong` answers 8 (fails), `right` and `right-too` answer 7
    (pass; different weights, so different digests), `other-model` is for another base model."""
    folder = tmp_path_factory.mktemp("imports")
    write_suite(folder / "answer.jsonl")
    crafted_adapter("tiny://llama", "8", folder / "wrong")
    crafted_adapter("tiny://llama", "7", folder / "right")
    crafted_adapter("tiny://llama", "7", folder / "right-too", strength=2000.0)
    crafted_adapter("tiny://llama?hidden=32&heads=2&kv_heads=1", "7", folder / "other-model")
    return folder


def test_an_imported_adapter_that_wins_is_promoted_one_that_ties_is_rejected_and_rollback_works(
    adapters: Path, tmp_path: Path, model_cache: Path
) -> None:
    workdir = tmp_path / "work"
    store = LocalReleaseStore(workdir / "releases")
    outcomes = {}
    for name, adapter in (("first", "wrong"), ("winner", "right"), ("tie", "right-too")):
        result = sigma0("run", str(import_manifest(adapters, name, adapters / adapter)), "--workdir", str(workdir))
        assert result.returncode == 0, result.stdout + result.stderr
        state = state_of(workdir, name)
        assert set(state["steps"]) == {"import", "generate", "decide", "score-candidate"} | (
            {"score-incumbent"} if name != "first" else set()
        )
        outcomes[name] = state["finished"]["outcome"]
    assert outcomes == {"first": "Bootstrapped", "winner": "Promoted", "tie": "Rejected"}

    current = store.current("coder")
    assert current is not None and current.digest == tree_digest(adapters / "right") and current.cycle == "winner"
    # copied into the release's store by digest, read-only, like a trained adapter
    assert Path(current.uri).parent == workdir.resolve() / "releases" / "coder" / "adapters"
    assert Path(current.uri).name == current.digest.removeprefix("sha256:")
    assert tree_digest(current.uri) == current.digest
    assert not stat.S_IMODE(Path(current.uri, "adapter_config.json").stat().st_mode) & 0o222

    rows = {row["cycle"]: row for row in store.promotions("coder")}
    for name, adapter in (("winner", "right"), ("tie", "right-too")):
        evidence = rows[name]["evidence"]
        results = evidence.pop("results")  # the store adds both result sets' digests, as for a trained candidate
        assert set(results) == {"candidate", "incumbent"}
        assert evidence == {
            "imported_from": adapter,
            "imported_digest": tree_digest(adapters / adapter),
            "suite": "answer.jsonl",
            "subset": "all",
        }
        assert rows[name]["incumbent_digest"] is not None  # evaluated against the live incumbent
    assert rows["winner"]["decision"]["candidate_pass_at_1"] == 1.0
    assert rows["winner"]["decision"]["incumbent_pass_at_1"] == 0.0
    assert rows["tie"]["decision"]["candidate_pass_at_1"] == rows["tie"]["decision"]["incumbent_pass_at_1"] == 1.0

    rolled = sigma0("release", "rollback", "coder", "--workdir", str(workdir))
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    back = store.current("coder")
    assert back is not None and back.digest == tree_digest(adapters / "wrong") and back.cycle == "first"


def test_a_digest_mismatch_fails_the_cycle_before_any_gpu_step(
    adapters: Path, tmp_path: Path, model_cache: Path
) -> None:
    workdir = tmp_path / "work"
    path = import_manifest(adapters, "mismatch", adapters / "right", digest=tree_digest(adapters / "wrong"))
    result = sigma0("run", str(path), "--workdir", str(workdir))
    assert result.returncode == 1, result.stdout + result.stderr
    state = state_of(workdir, "mismatch")
    assert set(state["steps"]) == {"import"}
    assert state["steps"]["import"]["summary"]["kind"] == "digest_mismatch"
    reason = state["finished"]["reason"]
    assert reason.startswith("import failed") and "is not the adapter the manifest names" in reason
    assert not (workdir / "gpu-ledger.jsonl").exists(), "no GPU step may start"
    assert not (workdir / "cycles" / "mismatch" / "import" / "adapter").exists()
    assert LocalReleaseStore(workdir / "releases").current("coder") is None


def test_an_adapter_for_another_base_model_is_refused_with_the_reason(
    adapters: Path, tmp_path: Path, model_cache: Path
) -> None:
    workdir = tmp_path / "work"
    result = sigma0(
        "run", str(import_manifest(adapters, "misfit", adapters / "other-model")), "--workdir", str(workdir)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    reason = state_of(workdir, "misfit")["finished"]["reason"]
    assert reason.startswith("generate failed") and "is an adapter for another base model" in reason
    assert "takes 64 inputs in the base model, 32 in the adapter" in reason
    assert LocalReleaseStore(workdir / "releases").current("coder") is None


@pytest.mark.parametrize("stop", ["verify", "dataset"])
def test_a_dry_run_reports_what_would_train_and_trains_nothing(stop: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = sigma0("run", str(manifest(tmp_path, name="dry", stopAfter=stop)), "--workdir", str(workdir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DryRun" in result.stdout
    state = state_of(workdir, "dry")
    assert set(state["steps"]) == {"harvest", "verify", "dataset"} - ({"dataset"} if stop == "verify" else set())
    finished = state["finished"]
    assert (finished["phase"], finished["outcome"]) == ("Succeeded", "DryRun")
    report = finished["report"]
    harvest, verify = state["steps"]["harvest"]["summary"], state["steps"]["verify"]["summary"]
    assert report["harvested"] == harvest["harvested"] > 0 and report["verified"] == verify["passed"] > 0
    sources = {str(CORPUS / "agent_corpus.json"), str(CORPUS / "tasks.jsonl")}
    assert set(report["bySource"]) == sources
    assert sum(counts["harvested"] for counts in report["bySource"].values()) == harvest["harvested"]
    assert sum(counts.get("verified", 0) for counts in report["bySource"].values()) == verify["passed"]
    assert sum(report["dropped"].values()) == harvest["harvested"] - harvest["kept"] - harvest["excluded"] + sum(
        verify["dropped"].values()
    )
    cycle_dir = workdir / "cycles" / "dry"
    if stop == "dataset":
        train = cycle_dir / "dataset" / "train.jsonl"
        assert report["dataset"]["digest"] == file_digest(train)
        assert report["dataset"]["bytes"] == train.stat().st_size
        assert report["dataset"]["rows"] == len(train.read_text().splitlines())
        assert "would train on" in finished["reason"]
    else:
        assert "dataset" not in report and not (cycle_dir / "dataset").exists()
    assert not (cycle_dir / "train").exists() and not (cycle_dir / "eval").exists()
    assert not (workdir / "gpu-ledger.jsonl").exists(), "a dry run never asks for a GPU"
    assert not (workdir / "releases").exists() or not any((workdir / "releases").iterdir())
    assert json.dumps(report) in json.dumps(state_of(workdir, "dry")["finished"])
