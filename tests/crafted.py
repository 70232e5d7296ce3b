"""Adapters made in code for tests that import one (spec.candidate): a LoRA on lm_head that makes the tiny model's
greedy next token after a given prompt a chosen character, so an imported adapter passes or fails a one-problem
suite by construction, not by luck.

The LoRA update of lm_head is B·A (scaled by alpha/r); with r=1, A = h/|h|² for the prompt's last hidden state h
(lm_head's input) and B = strength·e_t, the logit of token t grows by `strength` there and nothing else moves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from sigma0.ml.models import load_base_model

PROMPT = "def answer():\n    return "
SUITE_ROW = {
    "task_id": "Answer/0",
    "prompt": PROMPT,
    "canonical_solution": "7\n",
    "entry_point": "answer",
    "test": "def check(candidate):\n    assert candidate() == 7\n",
}


def write_suite(path: Path) -> Path:
    """The one-problem suite: `return 7` passes, any other single character fails."""
    path.write_text(json.dumps(SUITE_ROW) + "\n")
    return path


def crafted_adapter(base: str, char: str, folder: Path, strength: float = 1000.0) -> Path:
    """A LoRA adapter for `base` whose greedy completion of PROMPT starts with `char` (one byte-level token)."""
    loaded = load_base_model(base, quantization="none", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    seen: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: seen.append(args[0][0, -1].detach()))
    with torch.inference_mode():
        model(**tokenizer([PROMPT], return_tensors="pt"))
    hook.remove()
    hidden = seen[0].float()
    (token,) = tokenizer(char, add_special_tokens=False)["input_ids"]
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=["lm_head"]))
    layer = peft_model.base_model.model.lm_head
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_((hidden / hidden.dot(hidden)).unsqueeze(0))
        b = torch.zeros_like(layer.lora_B["default"].weight)
        b[token, 0] = strength
        layer.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    return folder
