"""TRL's SFTTrainer against sigma0's own training loop (sigma0.ml.qlora), side by side: same rows, model, LoRA,
steps, batch, learning-rate schedule and seed (issue 15: "use SFTTrainer with completion-only loss unless a
side-by-side run shows it slower or heavier than the own loop").

    python bench/sft_vs_loop.py                              # tiny://coder, nf4 (the train stage's default), 3 repeats
    python bench/sft_vs_loop.py --quantization none --repeats 5 --json results.json

Needs trl (pip install trl): it is not one of sigma0's dependencies. Each run is a fresh Python process, as a train
stage is, so its wall and CPU time include importing its libraries, and its peak RSS is its own. The two methods
take turns within each repeat, and the 1-minute load average is printed beside every run: on a shared machine a
load spike can still land on one of them. The loss is the last step's and the mean of the last 10 steps': both see
the rows in the same order in the first epoch, then each shuffles its own way, so single steps differ. Both load
the model through sigma0.ml.models.load_base_model, the path every stage uses.

Masking: the loss must skip the prompt in both. For every row, the labels each method builds are compared: the
count of rows whose labels are identical, and, for each method, the rows where the tokens it trains on are exactly
the completion and the end-of-sequence token (nothing of the prompt, nothing of the completion masked). The own loop
tokenizes prompt and completion apart; SFTTrainer tokenizes them together and starts the completion where the two
tokenizations diverge, so a subword merged across the boundary makes the two differ on that row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ("own-loop", "sft-trainer")
IGNORE_INDEX = -100
# What sigma0 sets when it is imported (see BENCHMARKS.md, item 4), set here before either method imports torch.
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "HF_HUB_OFFLINE": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="tiny://coder")
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--max-seq-length", type=int, default=512,
                        help="rows longer than this (in either tokenization) are left out, so neither truncates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        began = time.perf_counter()
        result = WORKERS[args.worker](args, Path(args.workdir), began)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    run_benchmark(args)


# Workers: each runs in its own process and prints one JSON object -------------------------------------------------


def own_loop(args: argparse.Namespace, workdir: Path, began: float) -> dict[str, Any]:
    from sigma0.ml.models import load_base_model
    from sigma0.ml.qlora import TrainConfig, encode_example, train_adapter

    imported = time.perf_counter()
    rows = read_rows(workdir)
    loaded = load_base_model(args.base_model, args.quantization, "cpu")
    config = TrainConfig(steps=args.steps, learning_rate=args.learning_rate, max_seq_length=args.max_seq_length,
                         batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
                         warmup_steps=args.warmup_steps, seed=args.seed)  # fmt: skip
    examples = [encode_example(loaded.tokenizer, row["prompt"], row["completion"], config.max_seq_length)
                for row in rows]  # fmt: skip
    ready = time.perf_counter()
    result = train_adapter(loaded, examples, config)
    return {"import_s": imported - began, "setup_s": ready - imported, "train_s": time.perf_counter() - ready,
            "losses": result.losses}  # fmt: skip


def sft_trainer(args: argparse.Namespace, workdir: Path, began: float) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from sigma0.ml.models import load_base_model
    from sigma0.ml.qlora import MAX_GRAD_NORM, TrainConfig, encode_example

    imported = time.perf_counter()
    rows = read_rows(workdir)
    loaded = load_base_model(args.base_model, args.quantization, "cpu")
    defaults = TrainConfig()
    lora = LoraConfig(r=defaults.lora_r, lora_alpha=defaults.lora_alpha, lora_dropout=defaults.lora_dropout,
                      target_modules=list(defaults.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    config = SFTConfig(
        output_dir=str(workdir / f"sft-{time.time_ns()}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant_with_warmup",  # the own loop's "constant" after its warmup
        warmup_steps=args.warmup_steps,
        max_grad_norm=MAX_GRAD_NORM,
        weight_decay=0.01,  # torch.optim.AdamW's default, which the own loop uses
        optim="adamw_torch",
        max_length=args.max_seq_length,
        completion_only_loss=True,
        # the own loop: float32 on the CPU; gradient checkpointing from prepare_model_for_kbit_training under nf4
        bf16=False,
        fp16=False,
        gradient_checkpointing=args.quantization == "nf4",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=loaded.tokenizer, peft_config=lora)  # fmt: skip
    ready = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    # The labels both build, row by row (outside the timings).
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_token_id
    same = own_exact = sft_exact = 0
    for row, built in zip(rows, trainer.train_dataset, strict=True):
        own = encode_example(tokenizer, row["prompt"], row["completion"], args.max_seq_length)
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [eos]
        same += own.labels == list(built["labels"])
        own_exact += [label for label in own.labels if label != IGNORE_INDEX] == completion
        sft_trained = [label for label in built["labels"] if label != IGNORE_INDEX]
        sft_exact += tokenizer.decode(sft_trained) == tokenizer.decode(completion)
    return {"import_s": imported - began, "setup_s": ready - imported, "train_s": trained - ready, "losses": losses,
            "labels_identical": same, "own_trains_on_exactly_the_completion": own_exact,
            "sft_trains_on_exactly_the_completion": sft_exact, "rows": len(rows)}  # fmt: skip


WORKERS = {"own-loop": own_loop, "sft-trainer": sft_trainer}


def read_rows(workdir: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]


# The driver ---------------------------------------------------------------------------------------------------------


def write_rows(path: Path, base_model: str, max_seq_length: int) -> tuple[int, int]:
    """HumanEval's prompts with their canonical solutions (a realistic mix of Python), less the rows that either
    tokenization would truncate; returns (rows kept, rows in all)."""
    from transformers import AutoTokenizer

    from sigma0.ml.models import resolve_base_model
    from sigma0.suites import load_suite

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base_model))  # builds a tiny model once, untimed
    rows = [{"prompt": p.prompt, "completion": p.canonical_solution} for p in load_suite("humaneval")]
    kept = [row for row in rows if max(
        len(tokenizer(row["prompt"])["input_ids"]) + len(tokenizer(row["completion"], add_special_tokens=False)
                                                         ["input_ids"]) + 1,
        len(tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"])) <= max_seq_length]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return len(kept), len(rows)


def run_worker(method: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", method, "--workdir", str(workdir)]
    for key in ("base_model", "quantization", "steps", "batch_size", "gradient_accumulation", "learning_rate",
                "warmup_steps", "max_seq_length", "seed"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=ENV)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{method} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result |= {"method": method, "wall_s": wall, "load_1min": load,
               "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}
    return result


def run_benchmark(args: argparse.Namespace) -> None:
    import peft
    import torch
    import transformers
    import trl

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "trl": trl.__version__}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sigma0-sft-") as folder:
        workdir = Path(folder)
        kept, total = write_rows(workdir / "train.jsonl", args.base_model, args.max_seq_length)
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores; "
              + ", ".join(f"{name} {version}" for name, version in versions.items()))
        print(f"{args.base_model}, {args.quantization}, {kept} of {total} HumanEval rows (<= {args.max_seq_length} "
              f"tokens), {args.steps} steps of {args.batch_size} x {args.gradient_accumulation}, lr "
              f"{args.learning_rate} after {args.warmup_steps} warmup steps, seed {args.seed}")
        print()
        print(f"{'repeat':<8}{'method':<13}{'load':>6}{'wall s':>9}{'CPU s':>9}{'import s':>10}{'train s':>9}"
              f"{'peak RSS MiB':>14}{'final loss':>12}{'last 10':>9}")
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            order = METHODS if repeat % 2 == 0 else METHODS[::-1]  # take turns: neither always goes first
            for method in order:
                run = run_worker(method, args, workdir)
                runs.append(run | {"repeat": repeat})
                print(f"{repeat + 1:<8}{method:<13}{run['load_1min']:>6.1f}{run['wall_s']:>9.1f}{run['cpu_s']:>9.1f}"
                      f"{run['import_s']:>10.1f}{run['train_s']:>9.1f}{run['peak_rss_mb']:>14.0f}"
                      f"{run['losses'][-1]:>12.4f}{statistics.mean(run['losses'][-10:]):>9.4f}", flush=True)
    print()
    keys = ("load_1min", "wall_s", "cpu_s", "import_s", "train_s", "peak_rss_mb")
    medians = {method: {key: statistics.median(run[key] for run in runs if run["method"] == method) for key in keys}
               for method in METHODS}  # fmt: skip
    for method in METHODS:
        row = medians[method]
        print(f"{'median':<8}{method:<13}{row['load_1min']:>6.1f}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}"
              f"{row['import_s']:>10.1f}{row['train_s']:>9.1f}{row['peak_rss_mb']:>14.0f}")
    ratio = {key: medians["sft-trainer"][key] / medians["own-loop"][key] for key in keys}
    print(f"{'SFTTrainer / own loop':<27}{ratio['wall_s']:>9.2f}{ratio['cpu_s']:>9.2f}{ratio['import_s']:>10.2f}"
          f"{ratio['train_s']:>9.2f}{ratio['peak_rss_mb']:>14.2f}")
    sft = next(run for run in runs if run["method"] == "sft-trainer")
    print(f"labels: identical on {sft['labels_identical']} of {sft['rows']} rows; the own loop trains on exactly "
          f"the completion + eos on {sft['own_trains_on_exactly_the_completion']}, SFTTrainer on "
          f"{sft['sft_trains_on_exactly_the_completion']} (the prompt masked in both)")
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "settings": vars(args), "runs": runs},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
