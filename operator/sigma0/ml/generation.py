"""Batched greedy generation that stops at HumanEval's stop sequences.

Prompts are left-padded so every row's continuation starts at the same column; transformers' own
`GenerationConfig(stop_strings=...)` ends a row once its text ends in a stop sequence, and the text is cut before
the first one, as HumanEval's harness does.

A continuation is decoded together with its prompt, and the prompt's decoded text is cut off the front: decoded on
its own, a SentencePiece continuation (Llama's, CodeLlama's, tiny://coder's) loses the space its first piece starts
with, and with it a level of the first line's indentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

HUMAN_EVAL_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the earliest stop sequence in it."""
    cut = min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=len(text))
    return text[:cut]


@dataclass(frozen=True)
class Completion:
    text: str  # cut at the first stop sequence
    token_ids: tuple[int, ...]  # what the model generated, up to and including the token that ended it

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


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
        stop_strings=list(stops) or None,
    )
    with torch.inference_mode():
        output = model.generate(**encoded, generation_config=config, tokenizer=tokenizer)
    completions = []
    for prompt_ids, mask, row in zip(
        encoded["input_ids"].tolist(),
        encoded["attention_mask"].tolist(),
        output[:, prompt_length:].tolist(),
        strict=True,
    ):
        length = _generated_length(row, eos_ids, tokenizer.pad_token_id)
        prompt = [token for token, keep in zip(prompt_ids, mask, strict=True) if keep]
        text = continuation_text(tokenizer, prompt, row[:length])
        completions.append(Completion(truncate_at_stop(text, stops), tuple(row[:length])))
    return completions


def continuation_text(tokenizer: PreTrainedTokenizerBase, prompt: list[int], generated: list[int]) -> str:
    """The text `generated` adds after `prompt`: decode both together, cut the prompt's own decoding off the front.

    Decoding concatenates for the tokenizers this serves (byte-level BPE, SentencePiece); if one ever does not (the
    whole does not start with the prompt's text), the continuation is decoded on its own rather than cut wrongly.
    """
    options = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    head = tokenizer.decode(prompt, **options)
    whole = tokenizer.decode(prompt + generated, **options)
    if whole.startswith(head):
        return whole[len(head) :]
    return tokenizer.decode(generated, **options)


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
