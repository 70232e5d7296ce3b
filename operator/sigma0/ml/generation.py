"""Batched greedy generation that stops at HumanEval's stop sequences.

Prompts are left-padded so every row's continuation starts at the same column. A StoppingCriteria ends a row as soon
as its generated text holds a stop sequence, and the text is cut before it, as HumanEval's harness does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

HUMAN_EVAL_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the earliest stop sequence in it."""
    cut = min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=len(text))
    return text[:cut]


class StopOnSequences(StoppingCriteria):
    """Done for each row whose generated text (after the prompt) contains any stop sequence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


@dataclass(frozen=True)
class Completion:
    text: str  # cut at the first stop sequence
    tokens: int  # tokens the model generated for it, up to and including the one that ended it


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    stops: Sequence[str] = HUMAN_EVAL_STOP_SEQUENCES,
) -> list[Completion]:
    """One greedy completion per prompt, generated as one left-padded batch."""
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left").to(model.device)
    prompt_length = encoded["input_ids"].shape[1]
    eos_ids = _eos_token_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids),
    )
    with torch.inference_mode():
        output = model.generate(
            **encoded,
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([StopOnSequences(tokenizer, stops, prompt_length)]),
        )
    completions = []
    for row in output[:, prompt_length:].tolist():
        length = _generated_length(row, eos_ids, tokenizer.pad_token_id)
        text = tokenizer.decode(row[:length], skip_special_tokens=True)
        completions.append(Completion(truncate_at_stop(text, stops), length))
    return completions


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The model's end-of-sequence ids (some models have several), else the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    return set(configured) if isinstance(configured, list) else {configured}


def _generated_length(row: list[int], eos_ids: set[int], pad_token_id: int) -> int:
    """Tokens the model produced: through the first eos, or up to the padding that follows a stopped row."""
    for index, token in enumerate(row):
        if token in eos_ids:
            return index + 1
        if token == pad_token_id:
            return index
    return len(row)
