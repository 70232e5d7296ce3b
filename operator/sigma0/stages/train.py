"""`sigma0 stage train`: QLoRA-train a LoRA adapter on the dataset's prompt/completion rows.

Writes the adapter folder (adapter_config.json, adapter_model.safetensors, sigma0-adapter.json with the base model,
dataset digest and hyper-parameters) atomically, and reports its content digest. Beside it, `<folder>.journal`
vouches for that digest under the step's resume key (sigma0.journal). Run again with the same inputs after the
adapter was written, it reuses the adapter instead of training twice, if the journal vouches for it; a folder
holding anything else (an adapter planted by a candidate in an earlier sandbox pod, say, with a manifest made to
match) is refused, since adapters are immutable.

Every `--checkpoint-every` steps the run's state goes to `<folder>.checkpoint.pt`, vouched for by
`<folder>.checkpoint.json` under the same key; a run started again (a preempted pod) continues from the last one, if
the journal vouches for it and it was made for the same training (the adapter's manifest), and ends with the same
adapter as a run that was never stopped. A checkpoint nobody vouches for is set aside and training starts over. Both
files go once the adapter is written.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sigma0 import journal
from sigma0.io import JsonlError, file_digest, read_json, read_records, tree_digest, write_json_atomic
from sigma0.ml.models import DEVICES, QUANTIZATIONS, library_versions, load_base_model, peak_memory, pick_device
from sigma0.ml.qlora import LR_SCHEDULERS, TrainConfig, TrainingState, encode_example, save_adapter, train_adapter
from sigma0.stages import StageInputError

MANIFEST = "sigma0-adapter.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument(
        "--base-model", required=True, help="a model folder, a hub id, or tiny://llama?layers=2&hidden=64&seed=0"
    )
    parser.add_argument("--dataset", required=True, help="train.jsonl with {prompt, completion} rows")
    parser.add_argument("--output-dir", required=True, help="the adapter folder to create")
    parser.add_argument("--report", required=True, help="where to write the training report (JSON)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--max-seq-length", type=int, default=defaults.max_seq_length)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation)
    parser.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=defaults.lr_scheduler,
                        help="the learning rate after warmup: constant, or decaying linearly or on a cosine to 0")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps,
                        help="steps of linear warmup from 0 to --learning-rate")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="save the run's state every N steps, to resume from if the run is stopped (0: never)")
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r)
    parser.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    parser.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    parser.add_argument(
        "--target-modules", default=",".join(defaults.target_modules), help="comma-separated module names to adapt"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4")
    parser.add_argument("--device", choices=DEVICES, default="auto")



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): the adapter folder (one digest, its
    tree_digest, the adapter_digest of the summary) and the report."""
    return [args.output_dir, args.report]


def run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    config = _config(args)
    rows = read_rows(args.dataset)
    try:
        device = pick_device(args.device)
    except ValueError as error:
        raise StageInputError(str(error)) from error
    manifest = {
        "base_model": args.base_model,
        "dataset": {"digest": file_digest(args.dataset), "rows": len(rows)},
        "hyperparameters": asdict(config),
        "quantization": args.quantization,
        "device": device.type,
        "versions": library_versions(),
    }
    output_dir = Path(args.output_dir)
    reused = _reuse(output_dir, Path(args.report), manifest)
    if reused is not None:
        return reused

    try:
        loaded = load_base_model(args.base_model, args.quantization, args.device)
    except ValueError as error:
        raise StageInputError(f"--base-model {args.base_model}: {error}") from error
    examples = [
        encode_example(loaded.tokenizer, row["prompt"], row["completion"], config.max_seq_length) for row in rows
    ]
    resume = _resume_from(output_dir, manifest)
    result = train_adapter(loaded, examples, config, resume=resume, checkpoint_every=args.checkpoint_every,
                           on_checkpoint=lambda state: _save_checkpoint(output_dir, manifest, state))  # fmt: skip
    digest = save_adapter(result.model, output_dir, args.base_model, manifest)
    for leftover in _checkpoint_files(output_dir):
        leftover.unlink(missing_ok=True)
    write_json_atomic(_journal(output_dir), {"adapter_digest": digest,
                                             "mac": journal.mac(journal.resume_key(), output_dir.name, digest)})
    summary = {
        "rows": len(rows),
        "rows_truncated": sum(example.truncated for example in examples),
        "steps": config.steps,
        "loss_first": round(result.losses[0], 4),
        "loss_last": round(result.losses[-1], 4),
        "tokens": result.tokens,
        "tokens_per_second": round(result.tokens / result.seconds, 1),
        "seconds": round(result.seconds, 2),
        "total_seconds": round(time.perf_counter() - began, 2),
        "device": device.type,
        "quantization": args.quantization,
        "adapter_digest": digest,
        **peak_memory(device),
    }
    if resume is not None:
        summary["resumed_from_step"] = resume.step
    write_json_atomic(args.report, {**summary, "losses": [round(loss, 4) for loss in result.losses]})
    return summary


def _config(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig(
        steps=args.steps,
        learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=tuple(name.strip() for name in args.target_modules.split(",") if name.strip()),
        seed=args.seed,
    )
    try:
        config.validate()
    except ValueError as error:
        raise StageInputError(str(error)) from error
    if args.checkpoint_every < 0:
        raise StageInputError(f"--checkpoint-every must be 0 (never) or more, got {args.checkpoint_every}")
    return config


def read_rows(path: str) -> list[dict[str, Any]]:
    """The dataset's rows; each needs string `prompt` and `completion` fields. None at all is an input error."""
    if not Path(path).is_file():
        raise StageInputError(f"dataset {path} does not exist; run the dataset stage first")
    rows: list[dict[str, Any]] = []
    try:
        for record in read_records(path):
            row = record.data
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
                raise StageInputError(
                    f"dataset {path}:{record.line}: row {record.line} needs string 'prompt' and 'completion' fields"
                )
            rows.append(row)
    except JsonlError as error:
        raise StageInputError(f"dataset {error}") from error
    if not rows:
        raise StageInputError(f"dataset {path} has no rows: there is nothing to train on")
    return rows


def _journal(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".journal")


def _checkpoint_files(output_dir: Path) -> tuple[Path, Path]:
    """The checkpoint and the journal entry that vouches for it."""
    return (output_dir.with_name(output_dir.name + ".checkpoint.pt"),
            output_dir.with_name(output_dir.name + ".checkpoint.json"))  # fmt: skip


def _save_checkpoint(output_dir: Path, manifest: dict[str, Any], state: TrainingState) -> None:
    """Write the state atomically, then the entry vouching for its digest (killed in between: set aside later)."""
    path, entry = _checkpoint_files(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    torch.save({"manifest": json.dumps(manifest, sort_keys=True), **state.to_dict()}, staging)
    os.replace(staging, path)
    digest = file_digest(path)
    write_json_atomic(entry, {"digest": digest, "mac": journal.mac(journal.resume_key(), path.name, digest)})


def _resume_from(output_dir: Path, manifest: dict[str, Any]) -> TrainingState | None:
    """The state of an earlier run of this very training, if it left a checkpoint this step's journal vouches for."""
    path, entry = _checkpoint_files(output_dir)
    if not path.is_file():
        return None
    digest = file_digest(path)
    try:
        vouched = read_json(entry)
    except (OSError, ValueError):
        vouched = {}
    expected = journal.mac(journal.resume_key(), path.name, digest)
    if not (isinstance(vouched, dict) and vouched.get("digest") == digest
            and hmac.compare_digest(str(vouched.get("mac")), expected)):  # fmt: skip
        print(f"train: {path} is not vouched for by this step's journal; set aside, training from the start",
              file=sys.stderr)  # fmt: skip
        return None
    data = torch.load(path, weights_only=True)
    if data.get("manifest") != json.dumps(manifest, sort_keys=True):
        print(f"train: {path} is from another training (other data or settings); training from the start",
              file=sys.stderr)  # fmt: skip
        return None
    return TrainingState.from_dict(data)


def _vouched(output_dir: Path, digest: str) -> bool:
    try:
        entry = read_json(_journal(output_dir))
    except (OSError, ValueError):
        return False
    expected = journal.mac(journal.resume_key(), output_dir.name, digest)
    return isinstance(entry, dict) and entry.get("adapter_digest") == digest and hmac.compare_digest(
        str(entry.get("mac")), expected)


def _reuse(output_dir: Path, report: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier run's summary if output_dir already holds this very adapter; None if output_dir is free."""
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return None
    marker = output_dir / MANIFEST
    if not marker.is_file() or read_json(marker) != json.loads(json.dumps(manifest)):
        raise StageInputError(
            f"{output_dir} already holds files that are not this training's adapter; adapters "
            "are immutable: choose a new --output-dir or remove that folder"
        )
    digest = tree_digest(output_dir)
    if not _vouched(output_dir, digest):
        raise StageInputError(
            f"{output_dir} holds an adapter that this step did not write (no journal vouches for it under the "
            "step's key); adapters are immutable: choose a new --output-dir or remove that folder"
        )
    previous = read_json(report) if report.is_file() else {}
    if previous.get("adapter_digest") == digest:
        summary = {key: value for key, value in previous.items() if key != "losses"}
    else:  # killed after the adapter was written but before the report was
        summary = {
            "rows": manifest["dataset"]["rows"],
            "steps": manifest["hyperparameters"]["steps"],
            "device": manifest["device"],
            "quantization": manifest["quantization"],
            "adapter_digest": digest,
        }
        write_json_atomic(report, summary)
    return {**summary, "reused": True}
