"""QLoRA training: LoRA adapters on a frozen (4-bit) base, loss on the completion tokens only.

A plain loop over peft and transformers: prepare_model_for_kbit_training, get_peft_model, AdamW, and
transformers' learning-rate schedules (constant, linear or cosine decay, each after a linear warmup), with gradient
accumulation. Every `checkpoint_every` steps the loop hands a `TrainingState` (LoRA weights, optimizer, schedule, RNG,
step) to its caller, and a run given one continues from it exactly: the same micro-batches, the same dropout, the
same adapter as a run that was never interrupted (the train stage keeps it beside the adapter, so a preempted pod
resumes). The adapter is saved with peft's save_pretrained into a temp sibling and renamed into place, so a killed
run never leaves a half adapter that looks finished.

Why not TRL's SFTTrainer, which the issue prefers: side by side on the same rows, model, LoRA, steps and seed
(bench/sft_vs_loop.py, BENCHMARKS.md item 7) it built the same completion-only labels on every row and reached the
same loss, but took 1.15-1.25x the CPU time and 1.08-1.26x the peak memory of this loop on the CPU, beyond the ~10 %
the issue allows, and it would own the checkpoints that the train stage's resume relies on.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from transformers import PreTrainedTokenizerBase, get_scheduler, set_seed

from sigma0.io import tree_digest, write_json_atomic
from sigma0.ml.models import LoadedModel

IGNORE_INDEX = -100  # label value that transformers' loss skips
MAX_GRAD_NORM = 1.0
LR_SCHEDULERS = ("constant", "linear", "cosine")  # after `warmup_steps` of linear warmup


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 30
    learning_rate: float = 2e-4
    max_seq_length: int = 512
    batch_size: int = 4
    gradient_accumulation: int = 1
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    seed: int = 0

    def validate(self) -> None:
        for key in ("steps", "max_seq_length", "batch_size", "gradient_accumulation", "lora_r"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be between 0 and steps ({self.steps}), got {self.warmup_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_seq_length: int) -> Example:
    """prompt + completion + eos, with the prompt's labels masked.

    Past max_seq_length the completion keeps its head and the prompt loses its start, so every example still
    trains on completion tokens.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    kept_completion = completion_ids[:max_seq_length]
    room = max_seq_length - len(kept_completion)
    kept_prompt = prompt_ids[len(prompt_ids) - room :] if room < len(prompt_ids) else prompt_ids
    truncated = len(kept_prompt) + len(kept_completion) < len(prompt_ids) + len(completion_ids)
    return Example(
        input_ids=kept_prompt + kept_completion,
        labels=[IGNORE_INDEX] * len(kept_prompt) + kept_completion,
        truncated=truncated,
    )


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and loss."""
    width = max(len(example.input_ids) for example in examples)
    input_ids, labels, attention_mask = [], [], []
    for example in examples:
        pad = width - len(example.input_ids)
        input_ids.append(example.input_ids + [pad_token_id] * pad)
        labels.append(example.labels + [IGNORE_INDEX] * pad)
        attention_mask.append([1] * len(example.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(attention_mask),
    }


def micro_batches(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless micro-batches of example indexes: a fresh seeded shuffle every epoch, the last partial batch kept."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count, batch_size):
            yield order[start : start + batch_size]


@dataclass
class TrainingState:
    """Where a run is after `step` optimizer steps: enough to continue it as if it had not stopped."""

    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    losses: list[float] = field(default_factory=list)
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "lora": self.lora, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "rng": self.rng, "losses": self.losses, "tokens": self.tokens}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        return cls(**{key: data[key] for key in ("step", "lora", "optimizer", "scheduler", "rng", "losses", "tokens")})


@dataclass
class TrainResult:
    model: PeftModel
    losses: list[float]
    tokens: int
    seconds: float


def train_adapter(
    loaded: LoadedModel,
    examples: Sequence[Example],
    config: TrainConfig,
    resume: TrainingState | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
) -> TrainResult:
    """Train LoRA adapters on loaded.model for config.steps optimizer steps; the same seed gives the same run.

    `resume`: a state an earlier run of the same training handed out; this run continues from it. Every
    `checkpoint_every` steps (0: never) before the last, `on_checkpoint` gets the current state."""
    if not examples:
        raise ValueError("no training examples")
    set_seed(config.seed)  # LoRA initialisation and dropout
    model = loaded.model
    if loaded.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    trainable = [parameter for parameter in peft_model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    # transformers' "constant" has no warmup; its "constant_with_warmup" is the same schedule with one.
    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    pad_token_id = loaded.tokenizer.pad_token_id
    batches = micro_batches(len(examples), config.batch_size, config.seed)
    device = loaded.device
    losses: list[float] = []
    tokens = 0
    first = 0
    if resume is not None:
        set_peft_model_state_dict(peft_model, {key: value.to(device) for key, value in resume.lora.items()})
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        torch.set_rng_state(resume.rng)
        for _ in range(resume.step * config.gradient_accumulation):  # the micro-batches the earlier run used
            next(batches)
        first, losses, tokens = resume.step, list(resume.losses), resume.tokens
    peft_model.train()
    start = time.perf_counter()
    for step in range(first, config.steps):
        step_loss = 0.0
        for _ in range(config.gradient_accumulation):
            batch = {
                key: value.to(device)
                for key, value in collate([examples[index] for index in next(batches)], pad_token_id).items()
            }
            # Like Trainer's bf16=True: activations in the compute dtype on a GPU; LoRA weights stay float32.
            with torch.autocast(device.type, dtype=loaded.dtype, enabled=device.type == "cuda"):
                loss = peft_model(**batch, use_cache=False).loss
            (loss / config.gradient_accumulation).backward()
            step_loss += loss.item() / config.gradient_accumulation
            tokens += int(batch["attention_mask"].sum())
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training diverged: loss is {step_loss} at step {step + 1}")
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        done = step + 1
        if on_checkpoint is not None and checkpoint_every and done % checkpoint_every == 0 and done < config.steps:
            lora_weights = get_peft_model_state_dict(peft_model)
            weights = {key: value.detach().cpu().clone() for key, value in lora_weights.items()}
            on_checkpoint(TrainingState(done, weights, optimizer.state_dict(), scheduler.state_dict(),
                                        torch.get_rng_state(), list(losses), tokens))  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TrainResult(peft_model, losses, tokens, time.perf_counter() - start)


def save_adapter(model: PeftModel, output_dir: Path, base_model: str, manifest: dict[str, Any]) -> str:
    """Write the adapter and its manifest into output_dir atomically; return the folder's content digest.

    The adapter records `base_model` as the name it was given (not a cache path), so the digest depends only on
    what was trained.
    """
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} already holds files; adapters are immutable, write to a new folder")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_model
            if isinstance(config.target_modules, set):  # peft keeps a set; saved as is, its order varies by process
                config.target_modules = sorted(config.target_modules)
        model.save_pretrained(staging, save_embedding_layers=False)  # only LoRA weights are trained
        write_json_atomic(staging / "sigma0-adapter.json", manifest)
        for path in staging.iterdir():
            _fsync(path)
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked above
        staging.rename(output_dir)
        _fsync(output_dir.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree_digest(output_dir)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
