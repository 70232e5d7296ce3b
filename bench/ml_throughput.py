"""Throughput of the ML stages: `sigma0 stage train` against a plain transformers + peft loop, and `sigma0 stage
generate`, on the same base model and data.

    python bench/ml_throughput.py                          # CPU, tiny://llama, 3 repeats
    python bench/ml_throughput.py --device cuda            # GPU, a larger tiny model (GPU_MODEL below)
    python bench/ml_throughput.py --base-model PATH --repeats 5 --json results.json

Every measurement runs in a fresh Python process, so peak memory (process peak RSS on the CPU, peak allocated CUDA
memory on a GPU) belongs to that measurement alone. Training data: HumanEval's prompts with their canonical solutions
(a realistic length mix of Python); generation: the first --problems HumanEval prompts. The random tiny model rarely
writes a stop sequence, so generation mostly runs to --max-new-tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CPU_MODEL = "tiny://llama?layers=2&hidden=64"
# About 0.54 B parameters, shaped like a small code model (hidden 2048, GQA 16/4, MLP 5632).
GPU_MODEL = "tiny://llama?layers=12&hidden=2048&heads=16&kv_heads=4&intermediate=5632"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--base-model", help=f"default: {CPU_MODEL} on the CPU, {GPU_MODEL} on CUDA")
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--problems", type=int, default=16, help="HumanEval prompts to complete per generate run")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--generate-batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.base_model = args.base_model or (GPU_MODEL if args.device == "cuda" else CPU_MODEL)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args, Path(args.workdir))))
        return
    run_benchmark(args)


# Workers: each runs in its own process and prints one JSON object -------------------------------------------------


def train_stage(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sigma0.stages import train

    output = workdir / f"adapter-{time.time_ns()}"
    argv = flags(
        base_model=args.base_model,
        dataset=workdir / "train.jsonl",
        output_dir=output,
        report=f"{output}.json",
        steps=args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        quantization=args.quantization,
        device=args.device,
    )
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    began = time.perf_counter()
    summary = train.run(parser.parse_args(argv))
    return {
        "tokens": summary["tokens"],
        "loop_seconds": summary["seconds"],
        "total_seconds": time.perf_counter() - began,
        "peak_memory_mb": summary["peak_memory_mb"],
        "loss_last": summary["loss_last"],
        "adapter": str(output),
        "adapter_digest": summary["adapter_digest"],
    }


def train_plain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The baseline: the loop the peft docs show, written out with no sigma0 code in the training path."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from sigma0.ml.models import peak_memory, resolve_base_model  # the tiny model's folder; the device's peak

    began = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = resolve_base_model(args.base_model)
    quantization = None
    if args.quantization == "nf4":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=dtype, device_map={"": str(device)}
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    if args.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    rows = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    texts = [row["prompt"] + row["completion"] + tokenizer.eos_token for row in rows]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    model.train()
    tokens = 0
    loop_began = time.perf_counter()
    for step in range(args.steps):
        start = step * args.batch_size % len(texts)
        batch = tokenizer(
            [texts[i] for i in order[start : start + args.batch_size]],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=args.max_seq_length,
        ).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = model(**batch, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
        last = loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    loop_seconds = time.perf_counter() - loop_began
    model.save_pretrained(workdir / f"plain-{time.time_ns()}")
    return {
        "tokens": tokens,
        "loop_seconds": loop_seconds,
        "total_seconds": time.perf_counter() - began,
        "peak_memory_mb": peak_memory(device)["peak_memory_mb"],
        "loss_last": last,
    }


def generate_stage(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sigma0.stages import generate

    output = workdir / f"completions-{time.time_ns()}"
    argv = flags(
        base_model=args.base_model,
        adapter=f"candidate={workdir / 'adapter'}",
        suite="humaneval=humaneval",
        subset=f"first:{args.problems}",
        output_dir=output,
        report=output / "report.json",
        max_new_tokens=args.max_new_tokens,
        batch_size=args.generate_batch_size,
        device=args.device,
        quantization=args.quantization,
    )
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    began = time.perf_counter()
    summary = generate.run(parser.parse_args(argv))
    result = summary["results"]["candidate/humaneval"]
    return {
        "tokens": result["tokens_generated"],
        "loop_seconds": result["seconds"],
        "total_seconds": time.perf_counter() - began,
        "peak_memory_mb": summary["peak_memory_mb"],
    }


WORKERS = {"train-stage": train_stage, "train-plain": train_plain, "generate-stage": generate_stage}


# The driver -------------------------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> None:
    from sigma0.ml.models import resolve_base_model

    with tempfile.TemporaryDirectory(prefix="sigma0-bench-") as folder:
        workdir = Path(folder)
        write_training_data(workdir / "train.jsonl")
        resolve_base_model(args.base_model)  # build a tiny model once, outside the timings
        # A first, unrecorded training warms the disk cache (and CUDA's caches) for everything after it, and
        # gives the adapter the generate runs load.
        os.rename(run_worker("train-stage", args, workdir)["adapter"], workdir / "adapter")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in WORKERS}
        for _ in range(args.repeats):
            for name in ("train-stage", "train-plain"):  # interleaved, so drift hits both alike
                runs[name].append(run_worker(name, args, workdir))
        for _ in range(args.repeats):
            runs["generate-stage"].append(run_worker("generate-stage", args, workdir))
    report = {"machine": machine(args.device), "settings": settings(args), "runs": runs}
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def write_training_data(path: Path) -> None:
    from sigma0.suites import load_suite

    rows = [{"prompt": p.prompt, "completion": p.canonical_solution} for p in load_suite("humaneval")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_worker(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, *flags(worker=name, workdir=workdir, **settings(args))]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["tokens_per_second"] = result["tokens"] / result["loop_seconds"]
    return result


def flags(**options: Any) -> list[str]:
    """Command-line flags: flags(output_dir=d) == ["--output-dir", str(d)]."""
    return [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "device",
        "base_model",
        "quantization",
        "steps",
        "batch_size",
        "max_seq_length",
        "problems",
        "max_new_tokens",
        "generate_batch_size",
    )
    return {key: getattr(args, key) for key in keys}


def machine(device: str) -> dict[str, Any]:
    import bitsandbytes
    import peft
    import torch
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as handle:
        cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_report(report: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{key} {value}" for key, value in report["machine"].items()))
    print("settings: " + ", ".join(f"{key} {value}" for key, value in report["settings"].items()))
    print()
    header = f"{'what':<16}{'metric':<22}{'min':>12}{'median':>12}{'max':>12}"
    print(header)
    print("-" * len(header))
    metrics = (
        ("tokens_per_second", "tokens/s (loop)"),
        ("loop_seconds", "loop seconds"),
        ("total_seconds", "total seconds"),
        ("peak_memory_mb", "peak memory MiB"),
    )
    labels = {"train-stage": "train stage", "train-plain": "plain loop", "generate-stage": "generate stage"}
    for name, runs in report["runs"].items():
        for key, label in metrics:
            values = [run[key] for run in runs]
            print(
                f"{labels[name]:<16}{label:<22}{min(values):>12.2f}{statistics.median(values):>12.2f}"
                f"{max(values):>12.2f}"
            )
    print()
    stage, plain = report["runs"]["train-stage"], report["runs"]["train-plain"]
    for key, label in (
        ("tokens_per_second", "tokens/s (loop)"),
        ("total_seconds", "total seconds"),
        ("peak_memory_mb", "peak memory"),
    ):
        ratio = statistics.median(run[key] for run in stage) / statistics.median(run[key] for run in plain)
        print(f"train stage / plain loop, median {label}: {ratio:.2f}")
    digests = {run["adapter_digest"] for run in stage}
    same = "identical" if len(digests) == 1 else f"{len(digests)} different"
    print(f"train stage adapter digests over {len(stage)} repeats (same seed): {same}")


if __name__ == "__main__":
    main()
