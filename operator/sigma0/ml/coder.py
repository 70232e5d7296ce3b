"""`tiny://coder`: a small Llama-shaped code model pretrained here, in code, deterministically.

The base model the demo can actually teach something: a 2-layer Llama (hidden 128) pretrained for a fixed number of
steps on the synthetic functions of sigma0.ml.corpus, with a subword tokenizer trained on the same text by
`tokenizers`. The tokenizer is SentencePiece-shaped as Llama's and CodeLlama's are: spaces become `▁` and start a
piece, and decoding drops the `▁` at the start of the text, so decoding a continuation on its own loses a space
of its first line's indentation (sigma0.ml.generation decodes prompt + continuation for that reason). Digit runs
are pieces of their own, so a number in a function's name is the same token as in its body, which is what lets a
model this small learn to copy it.

Same spec, same corpus, same code: the same weights on the same machine (fixed seed and steps, one thread order);
on another CPU the floats may differ in the last bits, never in what the model has learned.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sigma0.ml.corpus import pretraining_functions

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
SPACE = "▁"  # SentencePiece's word-boundary mark
VOCAB_SIZE = 512
LEARNING_RATE = 3e-3
IGNORE_INDEX = -100


def corpus_texts() -> list[str]:
    return [function.prompt + function.body for function in pretraining_functions()]


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on `texts`, SentencePiece-style (Metaspace), with <s> before every sequence."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True),
            pre_tokenizers.Digits(individual_digits=False),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="first", split=True)
    alphabet = sorted(set(string.printable.replace(" ", SPACE)) - set(string.whitespace) | {"\n", "\t"})
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def pretrain(
    layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, steps: int, batch_size: int, seed: int
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build the model and tokenizer and pretrain on the corpus: `steps` AdamW steps of `batch_size` functions drawn
    with a seeded generator, linear warmup then linear decay."""
    texts = corpus_texts()
    tokenizer = train_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    encoded = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / steps)
        )
        model.train()
        for _ in range(steps):
            picked = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
            batch = _pad([encoded[index] for index in picked], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model, tokenizer


def _pad(rows: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    return {
        "input_ids": torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
        "labels": torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in rows]),
    }
