"""tiny://coder, the demo's base model, and generation as a SentencePiece tokenizer needs it.

The model tests use `tiny://coder` itself, built once per machine in the user's model cache as the demo builds it
(pretraining takes about a minute the first time); the builder's own tests build small variants in a temp cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sigma0.io import tree_digest
from sigma0.ml import coder as coder_module
from sigma0.ml.corpus import COMMON, FAMILIES, RARE_SEEN, pretraining_functions
from sigma0.ml.generation import continuation_text, generate_completions
from sigma0.ml.models import CoderSpec, LoadedModel, load_base_model, materialise_tiny, parse_tiny
from sigma0.suites import load_suite

SMALL = "tiny://coder?layers=1&hidden=32&intermediate=64&steps=3&batch_size=4"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coder() -> LoadedModel:
    return load_base_model("tiny://coder", "none", "cpu")


def test_coder_spec_parses_and_rejects_bad_parameters() -> None:
    assert parse_tiny("tiny://coder") == CoderSpec()
    assert parse_tiny("tiny://coder?seed=3&steps=10") == CoderSpec(seed=3, steps=10)
    with pytest.raises(ValueError, match="unknown parameter 'context'"):
        parse_tiny("tiny://coder?context=8")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        parse_tiny("tiny://coder?steps=0")
    with pytest.raises(ValueError, match="unknown tiny model"):
        parse_tiny("tiny://gpt2")


def test_coder_is_built_deterministically_and_cached_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = parse_tiny(SMALL)
    first, second = materialise_tiny(spec, tmp_path / "a"), materialise_tiny(spec, tmp_path / "b")
    assert first.name.startswith("tiny-coder-") and tree_digest(first) == tree_digest(second)
    assert materialise_tiny(spec, tmp_path / "a") == first  # built once, then reused
    assert materialise_tiny(parse_tiny(SMALL + "&seed=1"), tmp_path / "a") != first
    # Another corpus is another model: the cache key covers what it is pretrained on, not only the spec.
    texts = coder_module.corpus_texts()
    monkeypatch.setattr(coder_module, "corpus_texts", lambda: texts[:-1])
    assert materialise_tiny(spec, tmp_path / "a") != first
    monkeypatch.undo()
    # So is another builder (a changed tokenizer or pretraining setting in sigma0.ml.coder).
    edited = tmp_path / "coder.py"
    edited.write_text(Path(coder_module.__file__).read_text() + "\nVOCAB_SIZE = 1024\n")
    monkeypatch.setattr(coder_module, "__file__", str(edited))
    assert materialise_tiny(spec, tmp_path / "c").name != first.name


def test_corpus_sees_rare_families_a_little_and_new_ones_never() -> None:
    names = [function.name.split("_")[0] for function in pretraining_functions()]
    assert {name: names.count(name) for name in RARE_SEEN} == {name: len(seen) for name, seen in RARE_SEEN.items()}
    assert not {"clamp", "rsub"} & set(names) and {"clamp", "rsub"} <= set(FAMILIES)


def test_tokenizer_is_sentencepiece_style_and_decoding_keeps_the_first_lines_indentation(coder: LoadedModel) -> None:
    tokenizer = coder.tokenizer
    function = COMMON["add"].function(47)
    prompt = tokenizer(function.prompt)["input_ids"]
    body = tokenizer(function.body, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(body)[:4] == ["▁", "▁", "▁", "▁return"]
    assert "47" in tokenizer.convert_ids_to_tokens(body)  # a number is one token, as in the name
    # The attack: decoded on its own, the continuation loses a space, and the program no longer compiles.
    alone = tokenizer.decode(body, skip_special_tokens=True)
    assert alone == function.body[1:]
    with pytest.raises(IndentationError):
        compile(function.prompt + alone, "f", "exec")
    assert continuation_text(tokenizer, prompt, body) == function.body


def test_coder_writes_the_bodies_of_its_common_families(coder: LoadedModel) -> None:
    functions = [
        COMMON[name].function(constant)
        for name, constant in (("add", 7), ("sub", 31), ("mul", 12), ("div", 5), ("max", 40), ("min", 2))
    ]
    completions = generate_completions(coder.model, coder.tokenizer, [f.prompt for f in functions], 24)
    assert [completion.text for completion in completions] == [function.body for function in functions]


def test_batched_generation_matches_unbatched_token_for_token(coder: LoadedModel) -> None:
    humaneval = load_suite("humaneval")[2].prompt  # long, and with characters the tokenizer never saw
    prompts = [
        FAMILIES["clamp"].function(3, 9).prompt,
        COMMON["mul"].function(12).prompt,
        humaneval,
        FAMILIES["mod"].function(7).prompt,
    ]
    batched = generate_completions(coder.model, coder.tokenizer, prompts, 24)
    alone = [generate_completions(coder.model, coder.tokenizer, [prompt], 24)[0] for prompt in prompts]
    assert [completion.token_ids for completion in batched] == [completion.token_ids for completion in alone]
    assert [completion.text for completion in batched] == [completion.text for completion in alone]
    assert len({len(completion.token_ids) for completion in batched}) > 1  # rows ended at different steps


def test_stop_strings_end_generation_with_a_sentencepiece_tokenizer(coder: LoadedModel) -> None:
    function = COMMON["add"].function(7)
    (full,) = generate_completions(coder.model, coder.tokenizer, [function.prompt], 24, stops=())
    (stopped,) = generate_completions(coder.model, coder.tokenizer, [function.prompt], 24, stops=(" + ",))
    assert full.text == function.body
    assert stopped.text == "    return x"
    assert stopped.tokens < full.tokens  # generation ended at the stop, not at eos
