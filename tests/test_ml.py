"""The ML stages on the CPU with the tiny model: 4-bit nf4 QLoRA training, greedy generation with stop sequences."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from sigma0.io import read_jsonl, tree_digest
from sigma0.journal import Journal, resume_key
from sigma0.ml.generation import HUMAN_EVAL_STOP_SEQUENCES, truncate_at_stop
from sigma0.ml.models import TinySpec, byte_tokenizer, load_base_model, materialise_tiny
from sigma0.ml.qlora import IGNORE_INDEX, TrainConfig, encode_example, train_adapter
from sigma0.stages import StageInputError, generate, train

TINY = "tiny://llama?layers=2&hidden=64&seed=0"
# The tiny model learns this completion in 40 steps at lr 1e-2; "\ndef" is a HumanEval stop sequence.
COMPLETION = "    return 0\n\ndef helper():\n    pass\n"
EXPECTED = "    return 0\n"


pytestmark = pytest.mark.usefixtures("model_cache")


def _stage(module: Any, argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train(dataset: Path, output: Path, *extra: str) -> dict[str, Any]:
    return _stage(
        train,
        [
            "--base-model",
            TINY,
            "--dataset",
            str(dataset),
            "--output-dir",
            str(output),
            "--report",
            str(output.parent / f"{output.name}.report.json"),
            "--device",
            "cpu",
            "--steps",
            "40",
            "--learning-rate",
            "1e-2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    _write_jsonl(
        folder / "train.jsonl",
        [{"prompt": f"def f{i}():\n", "completion": COMPLETION, "source": "test"} for i in range(8)],
    )
    _write_jsonl(
        folder / "suite.jsonl",
        [
            {
                "task_id": f"T/{i}",
                "prompt": f"def f{i}():\n",
                "canonical_solution": EXPECTED,
                "test": "def check(candidate):\n    assert candidate() == 0\n",
                "entry_point": f"f{i}",
            }
            for i in range(5)
        ],
    )
    return folder


@pytest.fixture(scope="module")
def trained(data: Path) -> dict[str, Any]:
    return _train(data / "train.jsonl", data / "adapter")


# The tiny model -----------------------------------------------------------------------------------------------------


def test_tiny_spec_parses_parameters_and_rejects_bad_ones() -> None:
    assert TinySpec.parse("tiny://llama") == TinySpec()
    spec = TinySpec.parse("tiny://llama?layers=3&hidden=128&heads=8&seed=7")
    assert (spec.layers, spec.hidden, spec.heads, spec.intermediate, spec.seed) == (3, 128, 8, 512, 7)
    with pytest.raises(ValueError, match="unknown parameter 'depth'"):
        TinySpec.parse("tiny://llama?depth=2")
    with pytest.raises(ValueError, match="not a non-negative integer"):
        TinySpec.parse("tiny://llama?layers=two")
    with pytest.raises(ValueError, match="heads"):
        TinySpec.parse("tiny://llama?hidden=64&heads=5")
    with pytest.raises(ValueError, match="unknown tiny model"):
        TinySpec.parse("tiny://gpt2")


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    spec = TinySpec.parse(TINY)
    first, second = materialise_tiny(spec, tmp_path / "a"), materialise_tiny(spec, tmp_path / "b")
    assert {p.name for p in first.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert tree_digest(first) == tree_digest(second)
    assert materialise_tiny(spec, tmp_path / "a") == first  # built once, then reused
    other = materialise_tiny(TinySpec.parse(TINY.replace("seed=0", "seed=1")), tmp_path / "a")
    assert other != first
    weights = load_file(first / "model.safetensors")
    other_weights = load_file(other / "model.safetensors")
    assert not torch.equal(
        weights["model.layers.0.self_attn.q_proj.weight"], other_weights["model.layers.0.self_attn.q_proj.weight"]
    )


def test_byte_tokenizer_round_trips_any_source() -> None:
    tokenizer = byte_tokenizer()
    source = 'def f(x: str) -> str:\n\treturn x + "é✓\\n"  # ünïcode 🐍\n'
    ids = tokenizer(source)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == 1 + len(source.encode("utf-8"))  # one token per byte, no merges
    assert tokenizer.decode(ids, skip_special_tokens=True) == source


def test_base_model_loads_in_4bit_nf4_on_the_cpu() -> None:
    loaded = load_base_model(TINY, "nf4", "cpu")
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    plain = load_base_model(TINY, "none", "cpu")
    assert isinstance(plain.model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    with pytest.raises(ValueError, match="does not exist"):
        load_base_model("./no/such/model", "nf4", "cpu")


# Training -----------------------------------------------------------------------------------------------------------


def test_encode_example_masks_the_prompt_and_keeps_the_completion_when_truncating() -> None:
    tokenizer = byte_tokenizer()
    example = encode_example(tokenizer, "ab", "cd", max_seq_length=100)
    assert example.input_ids == [tokenizer.bos_token_id, 97, 98, 99, 100, tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * 3 + [99, 100, tokenizer.eos_token_id]
    assert not example.truncated
    short = encode_example(tokenizer, "abcdef", "xy", max_seq_length=5)
    assert short.input_ids == [101, 102, 120, 121, tokenizer.eos_token_id]  # the prompt lost its start
    assert short.labels[2:] == [120, 121, tokenizer.eos_token_id] and short.truncated
    only = encode_example(tokenizer, "abc", "vwxyz", max_seq_length=3)
    assert only.input_ids == [118, 119, 120] and IGNORE_INDEX not in only.labels


def test_qlora_step_on_the_cpu_changes_the_lora_weights() -> None:
    loaded = load_base_model(TINY, "nf4", "cpu")
    tokenizer = loaded.tokenizer
    examples = [encode_example(tokenizer, f"def f{i}():\n", COMPLETION, 64) for i in range(4)]
    result = train_adapter(loaded, examples, TrainConfig(steps=3, batch_size=2, learning_rate=1e-2))
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    lora_b = [p for name, p in result.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # peft starts B at zero
    assert not any(p.requires_grad for name, p in result.model.named_parameters() if "lora_" not in name)
    assert result.tokens == sum(len(example.input_ids) for example in examples) * 3 // 2


def test_train_stage_writes_a_reproducible_adapter(data: Path, trained: dict[str, Any]) -> None:
    adapter = data / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "sigma0-adapter.json",
    }
    assert not list(data.glob(".adapter.*"))  # no staging folder left behind
    assert trained["adapter_digest"] == tree_digest(adapter)
    assert trained["rows"] == 8 and trained["steps"] == 40 and trained["device"] == "cpu"
    assert trained["loss_last"] < trained["loss_first"] / 4
    assert trained["tokens_per_second"] > 0 and trained["peak_memory_mb"] > 0
    manifest = json.loads((adapter / "sigma0-adapter.json").read_text())
    assert manifest["base_model"] == TINY and manifest["hyperparameters"]["lora_r"] == 16
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY
    # peft holds target_modules as a set; unsorted, its order (so the digest) would change with PYTHONHASHSEED.
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in key for key in weights) and all(torch.isfinite(w).all() for w in weights.values())
    report = json.loads((data / "adapter.report.json").read_text())
    assert len(report["losses"]) == 40 and report["adapter_digest"] == trained["adapter_digest"]

    again = _train(data / "train.jsonl", data / "adapter-again")
    assert again["adapter_digest"] == trained["adapter_digest"]  # same seed, same bytes (bitsandbytes CPU)
    other_seed = _train(data / "train.jsonl", data / "adapter-seed1", "--seed", "1")
    assert other_seed["adapter_digest"] != trained["adapter_digest"]


def test_train_stage_reuses_its_own_adapter_and_refuses_a_foreign_folder(data: Path, trained: dict[str, Any]) -> None:
    rerun = _train(data / "train.jsonl", data / "adapter")  # as after a kill between the write and the summary
    assert rerun["reused"] is True and rerun["adapter_digest"] == trained["adapter_digest"]
    with pytest.raises(StageInputError, match="not this training's adapter"):
        _train(data / "train.jsonl", data / "adapter", "--seed", "5")
    foreign = data / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StageInputError, match="immutable"):
        _train(data / "train.jsonl", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # The very adapter, manifest and all, planted where this step will write (by a candidate in a sandbox pod that
    # ran before it): no journal of this step vouches for it, so it is refused, not reused.
    planted = data / "planted"
    shutil.copytree(data / "adapter", planted)
    with pytest.raises(StageInputError, match="did not write"):
        _train(data / "train.jsonl", planted)


class Preempted(Exception):
    """What a preempted pod's training looks like from inside: it stops between two steps."""


def test_train_stage_resumes_from_its_checkpoint_to_the_same_adapter(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule = ("--steps", "6", "--lr-scheduler", "cosine", "--warmup-steps", "2", "--gradient-accumulation", "2")
    whole = _train(data / "train.jsonl", tmp_path / "whole", *schedule, "--checkpoint-every", "2")
    assert "resumed_from_step" not in whole and not list(tmp_path.glob("whole.checkpoint*"))  # gone once written

    save = train._save_checkpoint

    def preempted_after_step_4(output_dir: Path, manifest: dict[str, Any], state: Any) -> None:
        save(output_dir, manifest, state)
        if state.step == 4:
            raise Preempted

    monkeypatch.setattr(train, "_save_checkpoint", preempted_after_step_4)
    with pytest.raises(Preempted):
        _train(data / "train.jsonl", tmp_path / "stopped", *schedule, "--checkpoint-every", "2")
    monkeypatch.undo()
    assert (tmp_path / "stopped.checkpoint.pt").is_file() and not (tmp_path / "stopped").exists()
    resumed = _train(data / "train.jsonl", tmp_path / "stopped", *schedule, "--checkpoint-every", "2")
    assert resumed["resumed_from_step"] == 4
    assert resumed["adapter_digest"] == whole["adapter_digest"]  # the same adapter as the run never stopped
    assert resumed["loss_last"] == whole["loss_last"]

    # A checkpoint this step's journal does not vouch for (planted, or its entry forged without the key): set aside.
    monkeypatch.setattr(train, "_save_checkpoint", preempted_after_step_4)
    with pytest.raises(Preempted):
        _train(data / "train.jsonl", tmp_path / "planted", *schedule, "--checkpoint-every", "2")
    monkeypatch.undo()
    entry = tmp_path / "planted.checkpoint.json"
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "mac": "0" * 64}))
    fresh = _train(data / "train.jsonl", tmp_path / "planted", *schedule, "--checkpoint-every", "2")
    assert "resumed_from_step" not in fresh and fresh["adapter_digest"] == whole["adapter_digest"]
    # Another training's checkpoint (other settings) is not resumed either.
    monkeypatch.setattr(train, "_save_checkpoint", preempted_after_step_4)
    with pytest.raises(Preempted):
        _train(data / "train.jsonl", tmp_path / "other", *schedule, "--checkpoint-every", "2", "--seed", "3")
    monkeypatch.undo()
    other = _train(data / "train.jsonl", tmp_path / "other", *schedule, "--checkpoint-every", "2")
    assert "resumed_from_step" not in other and other["adapter_digest"] == whole["adapter_digest"]


def test_train_config_refuses_a_bad_schedule(data: Path, tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="warmup_steps must be between 0 and steps"):
        _train(data / "train.jsonl", tmp_path / "a", "--steps", "4", "--warmup-steps", "5")
    with pytest.raises(StageInputError, match="checkpoint-every"):
        _train(data / "train.jsonl", tmp_path / "b", "--checkpoint-every", "-1")


def test_train_stage_rejects_an_empty_or_malformed_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(StageInputError, match="no rows"):
        _train(empty, tmp_path / "adapter")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "completion": "y"}, {"prompt": "x"}])
    with pytest.raises(StageInputError, match="row 2 needs string 'prompt' and 'completion'"):
        _train(bad, tmp_path / "adapter")
    with pytest.raises(StageInputError, match="does not exist"):
        _train(tmp_path / "missing.jsonl", tmp_path / "adapter")
    with pytest.raises(StageInputError, match="steps must be at least 1"):
        _train(
            _write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "x", "completion": "y"}]), tmp_path / "a", "--steps", "0"
        )
    assert not (tmp_path / "adapter").exists()


# Generation ---------------------------------------------------------------------------------------------------------


def test_truncate_at_stop_cuts_at_the_earliest_stop() -> None:
    stops = HUMAN_EVAL_STOP_SEQUENCES
    assert truncate_at_stop("    return 1\n\nif __name__:\n", stops) == "    return 1\n"
    assert truncate_at_stop("    x = 1\n# note\ndef g():", stops) == "    x = 1"
    assert truncate_at_stop("    return 1\n", stops) == "    return 1\n"
    assert truncate_at_stop("    if x:\n        print(1)\n", stops) == "    if x:\n        print(1)\n"


def _generate(data: Path, output: Path, *adapters: str, max_new_tokens: int = 48) -> dict[str, Any]:
    argv = [
        "--base-model",
        TINY,
        "--suite",
        f"mini={data / 'suite.jsonl'}",
        "--output-dir",
        str(output),
        "--report",
        str(output / "report.json"),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--max-new-tokens",
        str(max_new_tokens),
    ]
    for adapter in adapters:
        argv += ["--adapter", adapter]
    return _stage(generate, argv)


def test_generate_stops_at_stop_sequences_and_resumes(data: Path, trained: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "completions"
    summary = _generate(data, output, f"candidate={data / 'adapter'}", "base=none")
    assert summary["adapters"] == {"candidate": trained["adapter_digest"], "base": None}
    result = summary["results"]["candidate/mini"]
    assert (result["problems"], result["generated"], result["resumed"]) == (5, 5, 0)
    rows = list(read_jsonl(output / "candidate" / "mini" / "completions.jsonl"))
    assert sorted(row["task_id"] for row in rows) == [f"T/{i}" for i in range(5)]
    assert all(row["completion"] == EXPECTED for row in rows)
    # Stopped at "\ndef" (17 byte tokens: "    return 0\n\ndef"), not at --max-new-tokens.
    assert result["tokens_generated"] == 5 * len("    return 0\n\ndef")
    base_rows = list(read_jsonl(output / "base" / "mini" / "completions.jsonl"))
    assert len(base_rows) == 5 and all(row["completion"] != EXPECTED for row in base_rows)
    assert summary["results"]["base/mini"]["tokens_generated"] <= 5 * 48

    # An interrupted run: two rows written (and journaled: sigma0.journal), the third cut off mid-line.
    completions = output / "candidate" / "mini" / "completions.jsonl"
    lines = completions.read_text().splitlines(keepends=True)
    Journal(completions, resume_key()).rewrite([json.loads(line) for line in lines[:2]])
    with completions.open("a") as handle:
        handle.write(lines[2][:10])
    resumed = _generate(data, output, f"candidate={data / 'adapter'}")["results"]["candidate/mini"]
    assert (resumed["generated"], resumed["resumed"]) == (3, 2)
    rows = list(read_jsonl(completions))
    assert sorted(row["task_id"] for row in rows) == [f"T/{i}" for i in range(5)]
    assert all(row["completion"] == EXPECTED for row in rows)
    done = _generate(data, output, f"candidate={data / 'adapter'}")["results"]["candidate/mini"]
    assert (done["generated"], done["resumed"], done["tokens_generated"]) == (0, 5, 0)

    with pytest.raises(StageInputError, match=r"other settings .*max_new_tokens"):
        _generate(data, output, f"candidate={data / 'adapter'}", max_new_tokens=8)


def test_generate_rejects_bad_arguments(data: Path, tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match=r"no adapter_config\.json"):
        _generate(data, tmp_path, f"candidate={tmp_path}")
    with pytest.raises(StageInputError, match="LABEL=VALUE"):
        _generate(data, tmp_path, "candidate")
    with pytest.raises(StageInputError, match="given twice"):
        _generate(data, tmp_path, "a=none", "a=none")
    with pytest.raises(StageInputError, match="letters, digits"):
        _generate(data, tmp_path, "../up=none")
