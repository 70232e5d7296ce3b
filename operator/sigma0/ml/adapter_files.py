"""A saved peft LoRA adapter's files, read without torch: what the import stage checks in the sandbox image (which
has no ML libraries) before any GPU step loads the adapter, and what sigma0.ml.adapters builds on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


class AdapterMismatch(ValueError):
    """The folder is not a LoRA adapter, or not one for this base model; the message says which and why."""


def read_adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterMismatch(f"{folder} is not a peft adapter: it has no {CONFIG}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterMismatch(f"{path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise AdapterMismatch(f"{path} must hold a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise AdapterMismatch(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters are supported")
    return config
