"""A base model that is not built in: a local folder, or a hub id read from the model cache, through the same stage
commands as tiny://, in fresh processes (huggingface_hub reads HF_HUB_OFFLINE and HF_HOME when it is imported).

The attack on "the cache is on the model volume": HOME and TMPDIR point at folders that must stay empty, so a
library that falls back to ~/.cache or a temp file (a download, a lock, a modules cache) is caught.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sigma0.ml.models import TinySpec, hub_cache, materialise_tiny

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "sigma0-tests/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"
PROBLEMS = [{"task_id": f"T/{i}", "prompt": f"def f{i}():\n", "canonical_solution": "    return 0\n",
             "test": "def check(candidate):\n    assert candidate() == 0\n", "entry_point": f"f{i}"} for i in range(2)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model and its tokenizer as save_pretrained writes them: what a user's own model folder holds."""
    built = materialise_tiny(TinySpec(layers=1),  # hidden 64: bitsandbytes packs nf4 on the CPU in blocks of 64
                             tmp_path_factory.mktemp("built"))  # fmt: skip
    folder = tmp_path_factory.mktemp("saved") / "my-model"
    shutil.copytree(built, folder)
    return folder


def populate_hub_cache(hub: Path, saved: Path) -> None:
    """The layout huggingface_hub leaves after a download: refs/main names a snapshot holding the files."""
    repo = hub / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(saved, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def stage(name: str, argv: list[Any], env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    termination = tmp_path / f"{name}.termination"
    done = subprocess.run([sys.executable, "-m", "sigma0", "stage", name, *map(str, argv)], capture_output=True,
                          text=True, check=False, env={**env, "SIGMA0_TERMINATION_LOG": str(termination)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(termination.read_text())


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment less every cache setting, with HOME and TMPDIR in watched, empty folders."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "XDG_", "SIGMA0_"))}  # fmt: skip
    for folder in ("home", "tmp"):
        (tmp_path / folder).mkdir()
    paths = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return {**env, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": paths, **extra}


def untouched(tmp_path: Path) -> list[str]:
    return [str(path) for folder in ("home", "tmp") for path in (tmp_path / folder).rglob("*")]


def train_and_generate(base_model: str, env: dict[str, str], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    dataset, suite = tmp_path / "train.jsonl", tmp_path / "suite.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p["canonical_solution"]}) + "\n"
                               for p in PROBLEMS))  # fmt: skip
    suite.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    adapter = tmp_path / "out" / "adapter"
    trained = stage("train", ["--base-model", base_model, "--dataset", dataset, "--output-dir", adapter,
                              "--report", tmp_path / "out" / "train.json", "--device", "cpu", "--steps", "2",
                              "--batch-size", "2", "--lora-r", "2"], env, tmp_path)  # fmt: skip
    generated = stage("generate", ["--base-model", base_model, "--adapter", f"candidate={adapter}",
                                   "--adapter", "base=none", "--suite", f"mini={suite}", "--output-dir",
                                   tmp_path / "out" / "completions", "--report", tmp_path / "out" / "generate.json",
                                   "--device", "cpu", "--max-new-tokens", "4"], env, tmp_path)  # fmt: skip
    manifest = json.loads((adapter / "sigma0-adapter.json").read_text())
    assert manifest["base_model"] == base_model  # as the user named it, not a cache path
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == base_model
    return trained, generated


def test_a_local_model_folder_trains_and_generates_through_the_stage_commands(saved: Path, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, SIGMA0_MODEL_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    trained, generated = train_and_generate(str(saved), env, tmp_path)
    assert trained["steps"] == 2 and trained["adapter_digest"] == generated["adapters"]["candidate"]
    assert generated["results"]["candidate/mini"]["generated"] == len(PROBLEMS)
    assert untouched(tmp_path) == []
    assert not (tmp_path / "cache").exists()  # nothing to cache: the folder is read where it is


@pytest.mark.parametrize("told", ["SIGMA0_MODEL_CACHE", "HF_HOME"])
def test_a_hub_id_resolves_offline_from_the_cache_the_stage_is_told_and_writes_nowhere_else(
        saved: Path, tmp_path: Path, told: str) -> None:
    cache = tmp_path / "cache"
    # SIGMA0_MODEL_CACHE alone (a local run), or with HF_HOME=<it>/hf beside it (what a GPU pod gets): one folder
    extra = {"HF_HOME": str(cache / "hf")} if told == "HF_HOME" else {}
    env = isolated_env(tmp_path, SIGMA0_MODEL_CACHE=str(cache), HF_HUB_OFFLINE="1", **extra)
    populate_hub_cache(cache / "hf" / "hub", saved)
    before = sorted(str(path) for path in cache.rglob("*"))
    trained, generated = train_and_generate(HUB_ID, env, tmp_path)
    assert trained["steps"] == 2 and generated["results"]["candidate/mini"]["generated"] == len(PROBLEMS)
    assert untouched(tmp_path) == []
    assert sorted(str(path) for path in cache.rglob("*") if ".no_exist" not in path.parts) == before


def test_a_hub_id_missing_from_the_cache_fails_offline_naming_it(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, SIGMA0_MODEL_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "def f():\n", "completion": "    return 0\n"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "sigma0", "stage", "train", "--base-model", HUB_ID, "--dataset",
                           tmp_path / "train.jsonl", "--output-dir", tmp_path / "adapter", "--report",
                           tmp_path / "report.json", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert f"base model '{HUB_ID}' (a hub id, cached in {tmp_path / 'cache' / 'hf' / 'hub'}) cannot be loaded" in (
        done.stderr)
    assert untouched(tmp_path) == []


def test_the_hub_cache_is_huggingface_hubs_own_when_set_else_under_the_model_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HF_HUB_CACHE", "HF_HOME", "SIGMA0_MODEL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    assert hub_cache() is None
    monkeypatch.setenv("SIGMA0_MODEL_CACHE", str(tmp_path))
    assert hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    assert hub_cache() is None  # from_pretrained reads HF_HOME itself
