"""Bad input, without a cluster: every manifest of the catalogue (tests/badinput/manifests/catalogue.yaml) is refused
by `sigma0 validate` with exit 2, naming its field and saying what is wrong; corrupt stage inputs (harvest sources,
JSONL files, completions, a base model folder that is not a model, an adapter made for another base model) stop
`sigma0 stage ...` with exit 2 and a message that names the file (and line) and the problem; and nothing that a
previous run accepted is lost: outputs already written stay as they were.

Everything runs through the real CLI entry point (sigma0.cli.main) in this process; tests/cluster/test_bad_manifests.py
puts the same catalogue to the API server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from badinput.catalogue import RULES, Entry, entries, flat, names
from peft import LoraConfig, get_peft_model

from sigma0 import cli
from sigma0.io import JsonlError, append_jsonl, read_jsonl, read_records, resume_jsonl
from sigma0.ml.adapters import AdapterMismatch, adapter_problems, check_adapter_fits
from sigma0.ml.models import TinySpec, build_tiny, load_base_model
from sigma0.ml.qlora import save_adapter
from sigma0.spec import (
    CEL_RULES,
    DNS_LABEL,
    KINDS,
    TRANSITION_RULES,
    Checked,
    ManifestError,
    crd,
    load_manifest,
    validate_file,
)

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = entries()
EXIT_BAD_INPUT = 2


def validate(tmp_path: Path, documents: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    code = cli.main(["validate", str(path)])
    return code, flat(capsys.readouterr().out)


Run = Callable[..., tuple[int, dict[str, Any], str]]


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `sigma0 stage NAME ARGS...` in this process: (exit code, termination-message summary, stderr)."""
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("SIGMA0_TERMINATION_LOG", str(termination))

    def run(name: str, *argv: str | Path) -> tuple[int, dict[str, Any], str]:
        termination.unlink(missing_ok=True)
        code = cli.main(["stage", name, *map(str, argv)])
        summary = json.loads(termination.read_text()) if termination.exists() else {}
        return code, summary, flat(capsys.readouterr().err)

    return run


def refused(result: tuple[int, dict[str, Any], str], *phrases: str) -> str:
    """Assert a stage stopped on bad input (exit 2, an input error in its termination message) saying every phrase;
    returns the message."""
    code, summary, stderr = result
    assert code == EXIT_BAD_INPUT, (code, summary, stderr)
    assert summary.get("kind") == "input", summary
    message = flat(summary["error"])
    assert message in stderr
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    return message


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


# The manifest catalogue -----------------------------------------------------------------------------------------


def test_the_catalogue_covers_every_kind_of_bad_manifest() -> None:
    assert len(ENTRIES) >= 25
    assert len({entry.name for entry in ENTRIES}) == len(ENTRIES)
    assert all(DNS_LABEL.match(entry.name) and len(entry.name) <= 63 for entry in ENTRIES)  # they name objects
    assert {entry.kind for entry in ENTRIES} == set(KINDS)
    assert all(entry.rule in RULES or entry.rule == "cel" for entry in ENTRIES)
    assert all((entry.patch is None) != (entry.edit is None) for entry in ENTRIES)
    for rule in ("type", "required", "minimum", "maximum", "unknown", "pattern", "cel"):
        assert {entry.kind for entry in ENTRIES if entry.rule == rule} == set(KINDS), f"{rule}: both kinds"
    assert {entry.rule for entry in ENTRIES} >= {"enum", "exclusiveMinimum", "minItems", "maxItems", "minLength"}
    assert {entry.kind for entry in ENTRIES if entry.is_edit} == set(KINDS)
    assert any(entry.field == "spec.artifacts.uri" for entry in ENTRIES)


def validate_file_of(tmp_path: Path, documents: list[dict[str, Any]]) -> list[Checked]:
    path = tmp_path / "documents.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return validate_file(path)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_each_entry_starts_from_a_valid_object_and_breaks_one_rule(entry: Entry, tmp_path: Path) -> None:
    (checked,) = validate_file_of(tmp_path, [entry.valid()])
    assert checked.kind == entry.kind
    if entry.is_edit:  # valid on its own: only the edit is wrong
        validate_file_of(tmp_path, [entry.manifest()])
    with pytest.raises(ManifestError) as caught:
        validate_file_of(tmp_path, entry.documents())
    (problem,) = caught.value.problems
    assert names(entry.field, problem), (entry.field, problem)
    assert re.search(entry.says("local"), problem), (entry.says("local"), problem)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_sigma0_validate_refuses_each_entry_naming_the_field(
    entry: Entry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = validate(tmp_path, entry.documents(), capsys)
    assert code == EXIT_BAD_INPUT, out
    assert f"invalid {entry.kind}" in out
    assert names(entry.field, out), (entry.field, out)
    assert re.search(entry.says("local"), out), (entry.says("local"), out)


def test_allowed_edits_and_valid_releases_pass(tmp_path: Path) -> None:
    cycle = yaml.safe_load((ROOT / "examples" / "cycle.yaml").read_text())
    resumed = {**cycle, "spec": {**cycle["spec"], "suspend": True, "deadlineSeconds": 120}}  # not immutable
    assert [item.describe() for item in validate_file_of(tmp_path, [cycle, resumed])] == [
        "TrainingCycle sample-coder-1 for release sample-coder"
    ] * 2
    release = next(entry.valid() for entry in ENTRIES if entry.kind == "AdapterRelease")
    promoted = json.loads(json.dumps(release))
    promoted["spec"]["revision"] = 4
    promoted["spec"]["current"]["passed"] = 90
    checked = validate_file_of(tmp_path, [release, promoted])
    assert [item.describe() for item in checked] == [
        f"AdapterRelease {release['metadata']['name']} at revision 3",
        f"AdapterRelease {release['metadata']['name']} at revision 4",
    ]
    assert checked[0].document["spec"]["historyLimit"] == 10
    sample = validate_file(ROOT / "manifests" / "samples" / "adapterrelease.yaml")
    assert [item.describe() for item in sample] == ["AdapterRelease sample-coder at revision 0"]  # defaulted


def test_every_cel_rule_of_the_crds_is_checked_by_sigma0_validate() -> None:
    def rules(schema: Any) -> Iterator[str]:
        if isinstance(schema, dict):
            yield from (rule["rule"] for rule in schema.get("x-kubernetes-validations", []))
            for value in schema.values():
                yield from rules(value)
        elif isinstance(schema, list):
            for value in schema:
                yield from rules(value)

    for kind in KINDS:
        found = {" ".join(rule.split()) for rule in rules(crd(kind))}
        transitions = {rule for rule in found if "oldSelf" in rule}
        assert transitions <= set(TRANSITION_RULES), kind
        assert found - transitions == set(CEL_RULES[kind]), kind


def test_other_kubernetes_objects_beside_a_cycle_are_left_alone(tmp_path: Path) -> None:
    cycle = yaml.safe_load((ROOT / "examples" / "cycle.yaml").read_text())
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump_all([config_map, cycle]))
    assert load_manifest(path).name == "sample-coder-1"
    path.write_text(yaml.safe_dump(config_map))  # alone, it is not a manifest of ours
    with pytest.raises(ManifestError, match="kind: must be one of TrainingCycle, AdapterRelease, got 'ConfigMap'"):
        validate_file(path)
    path.write_text(yaml.safe_dump_all([cycle, cycle]))  # valid, but `sigma0 run` needs exactly one cycle
    with pytest.raises(ManifestError, match="expected one TrainingCycle document, found 2"):
        load_manifest(path)


# JSONL files: one reader for every stage ----------------------------------------------------------------------


GOOD_LINE = b'{"task_id": "T/0", "completion": "x"}\n'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"task_id": "T/1", "compl\n', "not valid JSON (Unterminated string starting at: column 20)"),
        (b"[1, 2]\n", "expected a JSON object, got an array"),
        (b'"just text"\n', "expected a JSON object, got a string"),
        (b'{"task_id": "caf\xe9"}\n', "not UTF-8 text (invalid continuation byte at byte 17 of the line)"),
        (b"\x00\x01\x02\xff\xfe\n", "not UTF-8 text"),
    ],
)
def test_a_bad_jsonl_line_is_named_by_file_and_line(tmp_path: Path, line: bytes, problem: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(GOOD_LINE + b"\n" + line + GOOD_LINE)
    with pytest.raises(JsonlError) as caught:
        list(read_records(path))
    assert str(caught.value).startswith(f"{path}:3: {problem}")
    assert caught.value.line == 3 and not caught.value.unfinished


def test_jsonl_lines_are_split_on_newlines_only(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    text = "\ufeff" + json.dumps({"a": "x\u2028y\x0cz"}, ensure_ascii=False) + "\r\n\n" + '{"b": 1}'
    path.write_text(text, encoding="utf-8", newline="")
    records = list(read_records(path))
    assert [(record.line, record.data) for record in records] == [(1, {"a": "x\u2028y\x0cz"}), (3, {"b": 1})]
    assert records[0].terminated and not records[1].terminated
    assert records[1].offset == len(text.encode()) - len('{"b": 1}')


def test_resuming_an_append_only_file_drops_only_a_line_cut_off_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(GOOD_LINE + b'{"task_id": "T/1", "pass')  # killed mid-write
    records, cut = resume_jsonl(path)
    assert [record.data["task_id"] for record in records] == ["T/0"] and cut is not None and cut.line == 2
    assert path.read_bytes() == GOOD_LINE

    path.write_bytes(GOOD_LINE + b'{"task_id": "T/1"}')  # complete, only its newline missing: kept
    records, cut = resume_jsonl(path)
    assert len(records) == 2 and cut is None
    append_jsonl(path, {"task_id": "T/2"})
    assert [record.data["task_id"] for record in read_records(path)] == ["T/0", "T/1", "T/2"]

    for broken in (GOOD_LINE + b"{oops\n" + GOOD_LINE, GOOD_LINE + b"{oops\n"):  # not a cut-off write: refused
        path.write_bytes(broken)
        with pytest.raises(JsonlError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
            resume_jsonl(path)
        assert path.read_bytes() == broken
    assert resume_jsonl(tmp_path / "absent.jsonl") == ([], None)


@pytest.mark.parametrize(
    ("stage_name", "argv"),
    [
        ("verify", ["--input", "{bad}", "--output", "{out}/verified.jsonl", "--report", "{out}/report.json"]),
        ("dataset", ["--verified", "{bad}", "--output", "{out}/train.jsonl", "--report", "{out}/report.json"]),
        ("dataset", ["--verified", "{good}", "--base", "{bad}", "--output", "{out}/train.jsonl",
                     "--report", "{out}/report.json"]),
        ("decide", ["--candidate", "{bad}", "--output", "{out}/decision.json"]),
        ("train", ["--base-model", "tiny://llama", "--dataset", "{bad}", "--output-dir", "{out}/adapter",
                   "--report", "{out}/report.json"]),
        ("score", ["--completions", "{bad}", "--output", "{out}/results.jsonl", "--report", "{out}/report.json",
                   "--suite", "{suite}", "--sandbox", "process"]),
    ],
)
def test_every_stage_names_the_file_and_line_of_a_corrupt_jsonl_input(
    stage: Run, tmp_path: Path, stage_name: str, argv: list[str]
) -> None:
    bad, good, suite, out = tmp_path / "bad.jsonl", tmp_path / "good.jsonl", tmp_path / "suite.jsonl", tmp_path / "out"
    # Line 1 is a good row for each of these stages; line 2 is cut short.
    row = {"id": "r1", "fn": "f", "instruction": "Return 0.", "code": "def f():\n    return 0\n", "prompt": "a",
           "completion": "b", "task_id": "T/0", "passed": True}
    bad.write_text(json.dumps(row) + '\n{"prompt": "tru\n')
    good.write_text("")
    suite.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    places = {"bad": bad, "good": good, "suite": suite, "out": out}
    refused(stage(stage_name, *(arg.format(**places) for arg in argv)), f"{bad}:2: not valid JSON")
    assert not out.exists() or not any(out.iterdir())  # nothing written


# Harvest sources --------------------------------------------------------------------------------------------------


TASK = {
    "task": "count vowels",
    "instruction": "Count the vowels in text.",
    "code": 'def fn(text):\n    return sum(1 for ch in text.lower() if ch in "aeiou")\n',
    "asserts": ['assert fn("Hello") == 2'],
}


@pytest.mark.parametrize(
    ("name", "content", "phrase"),
    [
        ("broken.json", b'[{"task": "x", "code": ', "not valid JSON (line 1, column 24"),
        ("rows-not-a-list.json", b'{"rows": 5}', "`rows` must be a list of rows, got int"),
        ("number.json", b"42", "expected a list of rows or an object with a `rows` list, got int"),
        ("arrays.jsonl", b"[1, 2]\n[3, 4]\n", "not valid JSON (line 2, column 1: Extra data)"),
        ("scalars.jsonl", b'"a row"\n42\n', "holds no task rows: none of its 2 row(s) is a JSON object with a code"),
        ("completions.jsonl", b'{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n',
         "holds no task rows"),
        ("text.jsonl", b"hello\nthis is not a corpus\n", "neither a JSON corpus nor JSON lines: none of its 2"),
        ("binary.jsonl", bytes(range(128, 256)) * 4, "is not UTF-8 text (invalid start byte at byte 0)"),
        ("latin-1.jsonl", json.dumps(TASK).replace("vowels", "voyelles é").encode("latin-1"), "is not UTF-8"),
        ("empty.jsonl", b"", "holds no rows: it is empty"),
        ("blank.json", b"\n  \n", "holds no rows: it is empty"),
    ],
)
def test_a_corrupt_harvest_source_stops_harvest_and_the_last_good_output_stays(
    stage: Run, tmp_path: Path, name: str, content: bytes, phrase: str
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(TASK) + "\n")
    output, report = tmp_path / "out" / "candidates.jsonl", tmp_path / "out" / "report.json"
    code, summary, _ = stage("harvest", "--source", good, "--output", output, "--report", report)
    assert code == 0 and summary["kept"] == 1
    before = snapshot(output, report)

    bad = tmp_path / name
    bad.write_bytes(content)
    refused(stage("harvest", "--source", good, "--source", bad, "--output", output, "--report", report),
            f"source {bad}", phrase)
    assert snapshot(output, report) == before
    assert bad.read_bytes() == content  # sources are only read


def test_bad_rows_among_good_ones_are_dropped_not_fatal(stage: Run, tmp_path: Path) -> None:
    """The line between a corrupt source and a source with some bad rows: the harvest gate drops rows with reasons."""
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(TASK) + "\n{broken\n[1]\n" + json.dumps({"task_id": "x", "completion": "y"}) + "\n")
    out = tmp_path / "out"
    code, summary, _ = stage("harvest", "--source", mixed, "--output", out / "c.jsonl", "--report", out / "r.json")
    assert code == 0
    assert summary["kept"] == 1 and summary["dropped"] == {"bad_json": 1, "missing_field": 1, "not_an_object": 1}


# Verify ---------------------------------------------------------------------------------------------------------


def test_a_corrupt_candidates_file_stops_verify_and_the_last_verified_rows_stay(stage: Run, tmp_path: Path) -> None:
    candidates = tmp_path / "candidates.jsonl"
    row = {"id": "r1", "fn": "inc", "code": "def inc(x):\n    return x + 1\n", "asserts": ["assert inc(1) == 2"]}
    candidates.write_text(json.dumps(row) + "\n")
    verified, report = tmp_path / "verified.jsonl", tmp_path / "report.json"
    argv = ["--input", candidates, "--output", verified, "--report", report, "--sandbox", "process"]
    code, summary, _ = stage("verify", *argv)
    assert code == 0 and summary["passed"] == 1
    before = snapshot(verified, report)

    for text, phrase in [
        (json.dumps(row) + "\n" + json.dumps(row)[:30], f"{candidates}:2: not valid JSON"),
        (json.dumps(row) + "\n" + json.dumps({**row, "code": 42}) + "\n", f"{candidates}:2: 'code' must be"),
    ]:
        candidates.write_text(text)
        refused(stage("verify", *argv), phrase)
        assert snapshot(verified, report) == before


# Score: completions ------------------------------------------------------------------------------------------------


PROBLEMS = [
    {"task_id": "T/0", "prompt": "def inc(x):\n", "canonical_solution": "    return x + 1\n", "entry_point": "inc",
     "test": "def check(candidate):\n    assert candidate(1) == 2\n"},
    {"task_id": "T/1", "prompt": "def neg(x):\n", "canonical_solution": "    return -x\n", "entry_point": "neg",
     "test": "def check(candidate):\n    assert candidate(1) == -1\n"},
]  # fmt: skip
COMPLETIONS = [
    {"task_id": "T/0", "completion": "    return x + 1\n"},  # right
    {"task_id": "T/1", "completion": "    return x\n"},  # wrong
]


@pytest.fixture
def scored(stage: Run, tmp_path: Path) -> dict[str, Path]:
    """A finished score run: its suite, completions, results and report."""
    files = {name: tmp_path / name for name in ("suite.jsonl", "completions.jsonl", "results.jsonl", "report.json")}
    files["suite.jsonl"].write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    files["completions.jsonl"].write_text("".join(json.dumps(row) + "\n" for row in COMPLETIONS))
    code, summary, _ = stage("score", *score_argv(files))
    assert code == 0 and (summary["passed"], summary["total"]) == (1, 2)
    return files


def score_argv(files: dict[str, Path]) -> list[Path | str]:
    return ["--completions", files["completions.jsonl"], "--output", files["results.jsonl"],
            "--report", files["report.json"], "--suite", files["suite.jsonl"], "--sandbox", "process"]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (json.dumps(COMPLETIONS[0]) + "\n" + json.dumps(COMPLETIONS[1])[:25],
         ":2: not valid JSON (Unterminated string starting at: column 20) "
         "(the last line, with no newline at its end: its write was cut off)"),
        (json.dumps(COMPLETIONS[0]) + "\n" + json.dumps({"task_id": "T/1"}) + "\n",
         ":2: the row needs a string task_id and completion"),
        (json.dumps(COMPLETIONS[0]) + "\n" + json.dumps({"task_id": "HumanEval/1", "completion": "x"}) + "\n",
         ":2: task_id 'HumanEval/1' is not a problem of suite"),
        (json.dumps(COMPLETIONS[0]) + "\n" + json.dumps({"task_id": 1, "completion": "x"}) + "\n",
         ":2: the row needs a string task_id and completion"),
        (json.dumps(COMPLETIONS[0]) + "\n" + json.dumps(COMPLETIONS[0]) + "\n", ":2: task 'T/0' has more than one"),
        ("[" + json.dumps(COMPLETIONS[0]) + "]\n", ":1: expected a JSON object, got an array"),
    ],
)
def test_corrupt_completions_stop_score_and_the_results_already_written_stay(
    stage: Run, scored: dict[str, Path], text: str, phrase: str
) -> None:
    before = snapshot(scored["results.jsonl"], scored["report.json"])
    scored["completions.jsonl"].write_text(text)
    refused(stage("score", *score_argv(scored)), f"{scored['completions.jsonl']}{phrase}")
    assert snapshot(scored["results.jsonl"], scored["report.json"]) == before


def test_a_results_file_score_did_not_write_is_set_aside_as_it_was_and_scored_again(
    stage: Run, scored: dict[str, Path]
) -> None:
    """Only rows the journal vouches for are resumed (tests/test_score.py); a file with any other line is not
    what score wrote: it is kept, byte for byte, as results.jsonl.untrusted, and every problem is scored again."""
    results = scored["results.jsonl"]
    honest = list(read_jsonl(results))
    first, second = results.read_text().splitlines(keepends=True)
    for broken in (first + "{oops\n" + second, first + second[:-1] + "}\n"):
        results.write_text(broken)
        code, summary, stderr = stage("score", *score_argv(scored))
        assert code == 0 and summary["resumed"] == 0 and "set aside" in stderr, (code, summary, stderr)
        assert (results.parent / "results.jsonl.untrusted").read_text() == broken
        assert sorted(map(json.dumps, read_jsonl(results))) == sorted(map(json.dumps, honest))


# Base models that are not models, adapters for another base ------------------------------------------------------


MODEL_A = "tiny://llama?layers=2&hidden=64&seed=0"


pytestmark = pytest.mark.usefixtures("model_cache")


def not_a_model(folder: Path, case: str) -> None:
    folder.mkdir()
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
              "intermediate_size": 128, "vocab_size": 300}  # fmt: skip
    contents = {
        "empty": None,
        "junk-config": "this is not json {",
        "config-without-model-type": json.dumps({"hidden_size": 64}),
        "unknown-model-type": json.dumps({"model_type": "no-such-architecture"}),
        "config-without-weights": json.dumps(config),
    }[case]
    if contents is not None:
        (folder / "config.json").write_text(contents)


MODEL_CASES = {
    "empty": "is not a model: it has no config.json",
    "junk-config": "its config.json is not valid JSON",
    "config-without-model-type": "is not a model: its config.json has no model_type",
    "unknown-model-type": "cannot be loaded as a causal language model",
    "config-without-weights": "cannot be loaded as a causal language model",
}


@pytest.mark.parametrize("case", MODEL_CASES)
@pytest.mark.parametrize("stage_name", ["train", "generate"])
def test_a_base_model_folder_that_is_not_a_model_is_bad_input(
    stage: Run, tmp_path: Path, stage_name: str, case: str
) -> None:
    folder, out = tmp_path / "model", tmp_path / "out"
    not_a_model(folder, case)
    dataset, suite = tmp_path / "train.jsonl", tmp_path / "suite.jsonl"
    dataset.write_text(json.dumps({"prompt": "def f():\n", "completion": "    return 0\n"}) + "\n")
    suite.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    common = ["--base-model", folder, "--device", "cpu", "--report", out / "report.json"]
    if stage_name == "train":
        argv = [*common, "--dataset", dataset, "--output-dir", out / "adapter", "--steps", "1"]
    else:
        argv = [*common, "--adapter", "base=none", "--suite", f"mini={suite}", "--output-dir", out]
    refused(stage(stage_name, *argv), f"--base-model {folder}", MODEL_CASES[case])
    assert not out.exists()


@pytest.fixture(scope="module")
def adapter_a(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A LoRA adapter created (peft's initial weights; nothing here needs training) for MODEL_A, saved as the train
    stage saves one."""
    model, _ = build_tiny(TinySpec.parse(MODEL_A))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    folder = tmp_path_factory.mktemp("adapters") / "a"
    save_adapter(get_peft_model(model, lora), folder, MODEL_A, {"base_model": MODEL_A})
    return folder


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_an_adapter_fits_the_base_model_it_was_made_for(adapter_a: Path, quantization: str) -> None:
    check_adapter_fits(load_base_model(MODEL_A, quantization, "cpu").model, adapter_a)


@pytest.mark.parametrize(
    ("base", "phrases"),
    [
        ("tiny://llama?layers=2&hidden=32", ["model.layers.0.self_attn.k_proj takes 32 inputs in the base model, "
                                             "64 in the adapter", "(and "]),
        ("tiny://llama?layers=1&hidden=64", ["it has weights for model.layers.1.self_attn.k_proj, which the base "
                                             "model does not have"]),
        ("tiny://llama?layers=3&hidden=64", ["it has no weights for model.layers.2.self_attn.k_proj, a module it "
                                             "targets in the base model"]),
    ],
    ids=["narrower", "shallower", "deeper"],
)
def test_an_adapter_for_another_base_model_stops_generate(
    stage: Run, tmp_path: Path, adapter_a: Path, base: str, phrases: list[str]
) -> None:
    suite, out = tmp_path / "suite.jsonl", tmp_path / "out"
    suite.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    result = stage("generate", "--base-model", base, "--adapter", f"candidate={adapter_a}", "--suite",
                   f"mini={suite}", "--output-dir", out, "--report", out / "report.json", "--device", "cpu")
    refused(result, f"--adapter candidate: {adapter_a} is an adapter for another base model ({MODEL_A})",
            f"--base-model is {base}", *phrases)
    assert not out.exists()  # not one completion from a model nobody trained


def test_a_broken_adapter_folder_is_bad_input(adapter_a: Path, tmp_path: Path) -> None:
    model = build_tiny(TinySpec.parse(MODEL_A))[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterMismatch, match=r"adapter_config\.json is not valid JSON"):
        check_adapter_fits(model, broken)
    (broken / "adapter_config.json").write_text((adapter_a / "adapter_config.json").read_text())
    with pytest.raises(AdapterMismatch, match=r"it has no adapter_model\.safetensors"):
        check_adapter_fits(model, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterMismatch, match="is not a readable safetensors file"):
        check_adapter_fits(model, broken)
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(AdapterMismatch, match="only LoRA adapters are supported"):
        check_adapter_fits(model, broken)


def test_adapter_problems_is_a_pure_comparison_of_shapes() -> None:
    base = {"m.q": (8, 8), "m.v": (8, 4), "head": (8, 100)}
    fits = {"base_model.model.m.q.lora_A.weight": (2, 8), "base_model.model.m.q.lora_B.weight": (8, 2),
            "base_model.model.m.v.lora_A.weight": (2, 8), "base_model.model.m.v.lora_B.weight": (4, 2)}
    assert adapter_problems(base, fits, ["q", "v"]) == []
    assert adapter_problems(base, {**fits, "base_model.model.m.v.lora_B.weight": (8, 2)}, ["q", "v"]) == [
        "m.v gives 4 outputs in the base model, 8 in the adapter"]
    only_q = {key: value for key, value in fits.items() if ".m.q." in key}
    assert adapter_problems(base, only_q, ["q", "v"]) == ["it has no weights for m.v, a module it targets in the "
                                                          "base model"]
    assert adapter_problems(base, only_q, ["q", "v"], whole_model=False) == []  # layers_to_transform: a part
    assert adapter_problems(base, {}, ["q"]) == ["it holds no LoRA weights"]


def test_a_completions_file_generate_did_not_write_is_set_aside_as_it_was(stage: Run, tmp_path: Path) -> None:
    suite, out = tmp_path / "suite.jsonl", tmp_path / "out"
    suite.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    completions = out / "base" / "mini" / "completions.jsonl"
    completions.parent.mkdir(parents=True)
    broken = json.dumps(COMPLETIONS[0]) + "\n{oops\n"
    completions.write_text(broken)
    code, summary, stderr = stage("generate", "--base-model", MODEL_A, "--adapter", "base=none", "--suite",
                                  f"mini={suite}", "--output-dir", out, "--report", out / "report.json", "--device",
                                  "cpu", "--max-new-tokens", "4")
    assert code == 0 and "set aside" in stderr, (code, summary, stderr)
    assert summary["results"]["base/mini"]["resumed"] == 0
    assert (completions.parent / "completions.jsonl.untrusted").read_text() == broken
    assert len(list(read_jsonl(completions))) == len(PROBLEMS)
