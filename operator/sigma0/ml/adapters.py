"""Does a saved LoRA adapter fit a base model? Checked before peft loads it, because peft does not always say.

peft refuses a weight of the wrong shape, but an adapter for a deeper model loads onto a shallower one with its
extra layers silently dropped, and one for a shallower model onto a deeper one with the missing layers left at
zero (a warning at most): either way the completions would come from a model nobody trained. So every LoRA weight
in the adapter must have a module of matching shape in the base, and every module the adapter's config targets in
the base must have its weights in the adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from sigma0.ml.adapter_files import WEIGHTS, AdapterMismatch, read_adapter_config

PREFIX = "base_model.model."  # how peft names the wrapped model's modules in a saved adapter
SHOWN = 3  # problems spelled out in a message; the rest are counted


def check_adapter_fits(model: nn.Module, folder: str | Path) -> None:
    """Raise AdapterMismatch unless the adapter in `folder` fits `model` (the base, before any adapter is attached)."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    shapes = _weight_shapes(folder)
    problems = adapter_problems(_linear_shapes(model), shapes, config.get("target_modules"),
                                whole_model=not (config.get("layers_to_transform") or config.get("exclude_modules")))
    if problems:
        made_for = config.get("base_model_name_or_path")
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise AdapterMismatch(
            f"{folder} is an adapter for another base model"
            + (f" ({made_for})" if made_for else "")
            + f": {'; '.join(problems[:SHOWN])}{more}"
        )


def adapter_problems(
    base: Mapping[str, tuple[int, int]],
    weights: Mapping[str, tuple[int, ...]],
    target_modules: Any,
    whole_model: bool = True,
) -> list[str]:
    """What does not fit, one line each. `base`: module name → (inputs, outputs) of its linear layers; `weights`:
    the adapter's tensor names → shapes; `target_modules`: the adapter config's (a list of names, or a regex)."""
    problems = []
    adapted: set[str] = set()
    for key, shape in sorted(weights.items()):
        module, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            continue  # biases, DoRA magnitudes, saved embeddings: nothing that names a shape to check here
        adapted.add(module)
        if module not in base:
            problems.append(f"it has weights for {module}, which the base model does not have")
            continue
        inputs, outputs = base[module]
        if part == "A.weight" and shape[-1] != inputs:
            problems.append(f"{module} takes {inputs} inputs in the base model, {shape[-1]} in the adapter")
        if part == "B.weight" and shape[0] != outputs:
            problems.append(f"{module} gives {outputs} outputs in the base model, {shape[0]} in the adapter")
    if not adapted:
        problems.append("it holds no LoRA weights")
    elif whole_model and isinstance(target_modules, list):
        missing = sorted(name for name in _targeted(base, target_modules) if name not in adapted)
        problems += [f"it has no weights for {name}, a module it targets in the base model" for name in missing]
    return list(dict.fromkeys(problems))  # a module missing from the base is named once, not for A and B


def _targeted(base: Iterable[str], targets: list[str]) -> list[str]:
    """The modules peft would adapt for a list of target names: the name itself or its dotted suffix."""
    return [name for name in base if any(name == target or name.endswith(f".{target}") for target in targets)]


def _linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Module name → (in_features, out_features) for every linear-like module (bitsandbytes' 4-bit ones too)."""
    shapes = {}
    for name, module in model.named_modules():
        inputs, outputs = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(inputs, int) and isinstance(outputs, int):
            shapes[name] = (inputs, outputs)
    return shapes


def _weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    path = folder / WEIGHTS
    if not path.is_file():
        raise AdapterMismatch(f"{folder} is not a complete adapter: it has no {WEIGHTS}")
    try:
        with safe_open(str(path), framework="pt") as weights:
            return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as error:
        raise AdapterMismatch(f"{path} is not a readable safetensors file ({error})") from None
