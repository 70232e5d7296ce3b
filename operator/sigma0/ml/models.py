"""Base models: a local folder, a hub id, or a tiny model built in code; loaded in 4-bit nf4 or unquantized.

Two tiny kinds: `tiny://llama?...`, randomly initialised with a byte-level tokenizer (for tests of the plumbing),
and `tiny://coder?...`, pretrained here on synthetic functions with a trained subword tokenizer (sigma0.ml.coder:
the demo's base model, one that can learn something in a minute). A tiny model is built deterministically from its
parameters, saved once into a cache folder named by the digest of everything it is built from, and from then on
loaded through the same `from_pretrained` + `BitsAndBytesConfig` path as a real model, so tests and the CPU demo
exercise the code that runs on a GPU. A hub id is cached where huggingface_hub is told (HF_HOME, HF_HUB_CACHE), else
under SIGMA0_MODEL_CACHE (hub_cache), so a pod keeps its downloads on the model volume, and HF_HUB_OFFLINE=1 loads
them from there (tests/test_base_models.py).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from sigma0.io import text_digest

QUANTIZATIONS = ("nf4", "none")
DEVICES = ("auto", "cpu", "cuda")
TINY_SCHEME = "tiny://"
# Bump when the tiny builder changes what it writes, so old cache folders are not reused.
TINY_FORMAT = 1
CODER_FORMAT = 1  # the same for tiny://coder; its builder's own source is in its cache key too
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def _parse_tiny(cls: type[Any], name: str, family: str) -> Any:
    """`tiny://FAMILY?key=value&...` with non-negative integer values for the fields of `cls`."""
    url = urlsplit(name)
    if url.scheme != "tiny" or url.netloc != family or url.path not in ("", "/"):
        raise ValueError(f"unknown tiny model {name!r}: the tiny models are tiny://llama?layers=2&hidden=64&... "
                         "and tiny://coder?seed=0&...")
    known = {field.name for field in fields(cls)}
    values: dict[str, int] = {}
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        if key not in known:
            raise ValueError(f"tiny model {name!r}: unknown parameter {key!r}; known: {', '.join(sorted(known))}")
        if not value.isdigit():
            raise ValueError(f"tiny model {name!r}: {key}={value!r} is not a non-negative integer")
        values[key] = int(value)
    if "intermediate" in known:
        values.setdefault("intermediate", 4 * values.get("hidden", cls.hidden))
    return cls(**values)


def _check_shape(layers: int, hidden: int, heads: int, kv_heads: int, **positive: int) -> None:
    for key, value in {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, **positive}.items():
        if value < 1:
            raise ValueError(f"tiny model: {key} must be at least 1")
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"tiny model: hidden={hidden} must split into {heads} heads of even size")
    if heads % kv_heads:
        raise ValueError(f"tiny model: heads={heads} must be a multiple of kv_heads={kv_heads}")


@dataclass(frozen=True)
class TinySpec:
    """The parameters of a tiny Llama-shaped model: `tiny://llama?layers=2&hidden=64&seed=0`."""

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    context: int = 4096
    seed: int = 0

    @classmethod
    def parse(cls, name: str) -> TinySpec:
        """Parse a `tiny://llama?key=value&...` name; `intermediate` defaults to 4 * hidden."""
        spec: TinySpec = _parse_tiny(cls, name, "llama")
        spec.validate()
        return spec

    def validate(self) -> None:
        _check_shape(self.layers, self.hidden, self.heads, self.kv_heads,
                     intermediate=self.intermediate, context=self.context)

    def digest(self) -> str:
        return text_digest(json.dumps({**asdict(self), "format": TINY_FORMAT}, sort_keys=True))


@dataclass(frozen=True)
class CoderSpec:
    """`tiny://coder?seed=0&steps=300&...`: the shape and pretraining run of a sigma0.ml.coder model."""

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    steps: int = 300
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def parse(cls, name: str) -> CoderSpec:
        spec: CoderSpec = _parse_tiny(cls, name, "coder")
        _check_shape(spec.layers, spec.hidden, spec.heads, spec.kv_heads,
                     intermediate=spec.intermediate, steps=spec.steps, batch_size=spec.batch_size)
        return spec

    def digest(self) -> str:
        """Keyed by content: the spec, the corpus it is pretrained on, and the source of the builder (sigma0.ml.coder:
        tokenizer, model and pretraining settings), so a change to any of them builds a new model."""
        from sigma0.ml import coder

        corpus = text_digest("\n\0".join(coder.corpus_texts()))
        builder = text_digest(Path(coder.__file__).read_text(encoding="utf-8"))
        return text_digest(json.dumps({**asdict(self), "format": CODER_FORMAT, "corpus": corpus,
                                       "builder": builder}, sort_keys=True))

    def build(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from sigma0.ml.coder import pretrain

        return pretrain(self.layers, self.hidden, self.heads, self.kv_heads, self.intermediate, self.steps,
                        self.batch_size, self.seed)


def parse_tiny(name: str) -> TinySpec | CoderSpec:
    """The spec a `tiny://...` name stands for."""
    if urlsplit(name).netloc == "coder":
        return CoderSpec.parse(name)
    return TinySpec.parse(name)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with the 256 byte tokens and no merges (ids 0-255 are the bytes), plus <s>, </s>, <pad>.

    It encodes any text losslessly, and needs no download.
    """
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    vocab.update({token: 256 + index for index, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    # Like Llama's tokenizer: a sequence starts with <s>.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which the ByteLevel pre-tokenizer speaks."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def build_tiny(spec: TinySpec) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The tiny model and its tokenizer, with the same weights every time for the same spec."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Fan-in scale rather than Llama's 0.02: with hidden=64 a 0.02 lm_head caps every logit near 1, and LoRA on
        # the attention layers could never make the tiny model confident about anything.
        initializer_range=spec.hidden**-0.5,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def model_cache_root() -> Path:
    return Path(os.environ.get("SIGMA0_MODEL_CACHE") or Path.home() / ".cache" / "sigma0" / "models")


def materialise_tiny(spec: TinySpec | CoderSpec, cache_root: Path | None = None) -> Path:
    """Save the tiny model once under the cache, atomically (build in a temp sibling, then rename), and return it."""
    root = cache_root or model_cache_root()
    kind = "coder" if isinstance(spec, CoderSpec) else "llama"
    folder = root / f"tiny-{kind}-{spec.digest().removeprefix('sha256:')[:16]}"
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        model, tokenizer = spec.build() if isinstance(spec, CoderSpec) else build_tiny(spec)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "sigma0-tiny.json").write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent builder winning the race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def hub_cache() -> Path | None:
    """Where a hub id's files are cached: huggingface_hub's own folder when HF_HUB_CACHE or HF_HOME says where
    (None: from_pretrained finds it), else `hf/hub` under SIGMA0_MODEL_CACHE (the model volume in a pod, where
    HF_HOME=<cache>/hf names the same folder), else huggingface_hub's default (None)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or not os.environ.get("SIGMA0_MODEL_CACHE"):
        return None
    return Path(os.environ["SIGMA0_MODEL_CACHE"]) / "hf" / "hub"


def resolve_base_model(name: str) -> str:
    """What `from_pretrained` should load for `--base-model NAME`: a folder path or a hub id."""
    if name.startswith(TINY_SCHEME):
        return str(materialise_tiny(parse_tiny(name)))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", "./", "../", "~")):
        raise ValueError(f"base model folder {name!r} does not exist")
    return name  # a hub id, e.g. Qwen/Qwen2.5-Coder-0.5B


def check_model_folder(folder: Path) -> None:
    """ValueError unless `folder` looks like a saved transformers model; transformers' own errors for an empty
    folder or a broken config.json talk about hub repositories and a missing `model_type`."""
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"base model folder {folder} is not a model: it has no config.json")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"base model folder {folder}: its config.json is not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(
            f"base model folder {folder} is not a model: its config.json has no model_type (not a transformers config)"
        )


def pick_device(requested: str) -> torch.device:
    if requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; use one of {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it (fp16 on older ones), float32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    quantization: str


def load_base_model(name: str, quantization: str = "nf4", device: str = "auto") -> LoadedModel:
    """Load the base model and its tokenizer: 4-bit nf4 with double quantization (QLoRA), or plain weights."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
    path = resolve_base_model(name)
    local = Path(path).is_dir()
    if local:
        check_model_folder(Path(path))
    target = pick_device(device)
    dtype = compute_dtype(target)
    quantization_config = None
    if quantization == "nf4":
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    cache = None if local else hub_cache()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quantization_config, dtype=dtype, device_map={"": str(target)}, cache_dir=cache
        )
        tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=cache)
    except (OSError, ValueError) as error:
        if not local:  # a hub id: the hub's own error (not found, no network, offline) with what it looked for
            from huggingface_hub import constants

            folder = cache or constants.HF_HUB_CACHE
            raise OSError(f"base model {name!r} (a hub id, cached in {folder}) cannot be loaded: {error}") from error
        raise ValueError(f"base model folder {path} cannot be loaded as a causal language model: {error}") from error
    # What the user named, not a cache folder: peft writes it into the adapter's files.
    model.name_or_path = model.config.name_or_path = name
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name, model, tokenizer, target, dtype, quantization)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory in MiB: allocated CUDA memory since the last reset, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return {
            "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_memory_kind": "cuda_max_allocated",
        }
    return {
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_memory_kind": "process_max_rss",
    }


def library_versions() -> dict[str, str]:
    import bitsandbytes
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }
