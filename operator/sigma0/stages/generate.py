"""`sigma0 stage generate`: greedy completions for every adapter and suite, from one base model loaded once.

Writes DIR/<adapter>/<suite>/completions.jsonl (rows `{task_id, completion}`), appended and flushed per row, so an
interrupted run resumes where it stopped: from the rows its journal proves an earlier run of this step wrote
(sigma0.journal; a file it does not vouch for, planted by a candidate in an earlier sandbox pod say, is set aside
and generated again). Beside it, generation.json records what the completions were made with, and a resumed run
with different inputs is refused rather than mixing two models' completions. The completions are text only: the
score stage runs them in the sandbox.

`--adapter LABEL=none` evaluates the base model itself (e.g. the first cycle's incumbent).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from peft import PeftModel

from sigma0.io import file_digest, read_json, tree_digest, write_json_atomic
from sigma0.journal import Journal, resume_key
from sigma0.ml.adapters import AdapterMismatch, check_adapter_fits
from sigma0.ml.generation import HUMAN_EVAL_STOP_SEQUENCES, generate_completions
from sigma0.ml.models import DEVICES, QUANTIZATIONS, LoadedModel, load_base_model, peak_memory
from sigma0.stages import StageInputError
from sigma0.suites import Problem, Subset, load_suite, suite_path

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NO_ADAPTER = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-model", required=True, help="a model folder, a hub id, or tiny://llama?layers=2&hidden=64&seed=0"
    )
    parser.add_argument(
        "--adapter",
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="an adapter folder to evaluate (repeatable); PATH 'none' means the base model alone",
    )
    parser.add_argument(
        "--suite",
        action="append",
        required=True,
        metavar="LABEL=SUITE",
        help="'humaneval' or a problems file in its format (repeatable)",
    )
    parser.add_argument("--subset", default=None, help="all (default), first:N, or tasks:A,B")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--report", required=True, help="where to write the generation report (JSON)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4")



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): the report and one folder per adapter
    and suite (its completions, their journal and generation.json), which is what a score step reads."""
    root = args.output_dir.rstrip("/")  # a path or a URI: pathlib would turn s3:// into s3:/
    folders = [f"{root}/{adapter}/{suite}"
               for adapter in _labelled(args.adapter, "--adapter") for suite in _labelled(args.suite, "--suite")]
    return [args.report, *folders]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise StageInputError("--max-new-tokens and --batch-size must be at least 1")
    adapters = _adapters(args.adapter)
    suites = _suites(args.suite, args.subset)
    digests = {label: tree_digest(path) if path else None for label, path in adapters.items()}
    try:
        loaded = load_base_model(args.base_model, args.quantization, args.device)
    except ValueError as error:
        raise StageInputError(f"--base-model {args.base_model}: {error}") from error
    for label, path in adapters.items():
        if path is not None:
            try:
                check_adapter_fits(loaded.model, path)
            except AdapterMismatch as error:
                raise StageInputError(f"--adapter {label}: {error}; --base-model is {args.base_model}") from error
    model = _attach_adapters(loaded, adapters)
    model.eval()

    results: dict[str, dict[str, Any]] = {}
    for label, path in adapters.items():
        for suite_label, (suite, problems) in suites.items():
            folder = Path(args.output_dir) / label / suite_label
            settings = {
                "base_model": args.base_model,
                "adapter_digest": digests[label],
                "suite_digest": file_digest(suite_path(suite)),
                "max_new_tokens": args.max_new_tokens,
                "quantization": args.quantization,
                "stop_sequences": list(HUMAN_EVAL_STOP_SEQUENCES),
            }
            with _active(model, label if path else None):
                results[f"{label}/{suite_label}"] = _generate_suite(
                    model, loaded, problems, folder, settings, args.batch_size, args.max_new_tokens
                )
    summary = {
        "device": loaded.device.type,
        "quantization": args.quantization,
        "adapters": digests,
        "results": results,
        **peak_memory(loaded.device),
    }
    write_json_atomic(args.report, summary)
    return summary


def _generate_suite(
    model: Any,
    loaded: LoadedModel,
    problems: Sequence[Problem],
    folder: Path,
    settings: dict[str, Any],
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Complete the problems not yet in folder/completions.jsonl, one batch at a time."""
    journal = Journal(folder / "completions.jsonl", resume_key())
    done, untrusted = completed_task_ids(journal)
    if done:
        _check_settings(folder / "generation.json", settings)
    else:  # nothing to resume: the settings are this run's, whatever the folder held
        write_json_atomic(folder / "generation.json", settings)
    todo = [problem for problem in problems if problem.task_id not in done]
    # Longest prompts first: similar lengths share a batch (less padding), and running out of memory shows early.
    todo.sort(key=lambda problem: len(problem.prompt), reverse=True)
    tokens = 0
    start = time.perf_counter()
    for index in range(0, len(todo), batch_size):
        batch = todo[index : index + batch_size]
        completions = generate_completions(
            model, loaded.tokenizer, [problem.prompt for problem in batch], max_new_tokens
        )
        for problem, completion in zip(batch, completions, strict=True):
            journal.append({"task_id": problem.task_id, "completion": completion.text})
        tokens += sum(completion.tokens for completion in completions)
    seconds = time.perf_counter() - start
    result = {
        "problems": len(problems),
        "generated": len(todo),
        "resumed": len(problems) - len(todo),
        "tokens_generated": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
        "seconds": round(seconds, 2),
    }
    return result | ({"set_aside": untrusted} if untrusted else {})


def completed_task_ids(journal: Journal) -> tuple[set[str], str | None]:
    """Task ids an earlier run of this step completed (sigma0.journal: a row cut off by a kill is dropped from the
    file), and why a file that was there was set aside instead, if one was."""
    records, untrusted = journal.resume()
    if untrusted is not None:
        print(f"generate: {untrusted}; set aside, generating it again", file=sys.stderr)
    done: set[str] = set()
    for record in records:
        task_id = record.data.get("task_id")
        if not isinstance(task_id, str):
            raise StageInputError(
                f"{journal.path}:{record.line}: a row without a string task_id; remove the file to generate again"
            )
        done.add(task_id)
    return done, untrusted


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if not path.is_file():
        write_json_atomic(path, settings)
        return
    previous = read_json(path)
    if previous != settings:
        changed = sorted(key for key in settings.keys() | previous.keys() if previous.get(key) != settings.get(key))
        raise StageInputError(
            f"{path.parent} holds completions made with other settings (differs in "
            f"{', '.join(changed)}); use a new --output-dir or remove that folder"
        )


def _adapters(values: Sequence[str]) -> dict[str, str | None]:
    adapters: dict[str, str | None] = {}
    for label, path in _labelled(values, "--adapter").items():
        if path == NO_ADAPTER:
            adapters[label] = None
        elif not (Path(path) / "adapter_config.json").is_file():
            raise StageInputError(f"--adapter {label}={path}: no adapter_config.json there (not a peft adapter)")
        else:
            adapters[label] = path
    return adapters


def _suites(values: Sequence[str], subset_text: str | None) -> dict[str, tuple[str, list[Problem]]]:
    subset = Subset.parse(subset_text)
    suites = {}
    for label, suite in _labelled(values, "--suite").items():
        try:
            problems = load_suite(suite, subset)
        except (ValueError, KeyError, OSError) as error:
            raise StageInputError(f"--suite {label}={suite}: {error}") from error
        if not problems:
            raise StageInputError(f"--suite {label}={suite} with subset {subset.describe()} has no problems")
        suites[label] = (suite, problems)
    return suites


def _labelled(values: Sequence[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        label, separator, target = value.partition("=")
        if not separator or not target:
            raise StageInputError(f"{option} {value!r}: expected LABEL=VALUE")
        if not LABEL.match(label):
            raise StageInputError(f"{option} {value!r}: a label is letters, digits, '.', '_' and '-' only")
        if label in pairs:
            raise StageInputError(f"{option}: label {label!r} is given twice")
        pairs[label] = target
    return pairs


def _attach_adapters(loaded: LoadedModel, adapters: dict[str, str | None]) -> Any:
    """The base model with every adapter loaded under its label (peft switches between them), or the bare base."""
    model: Any = loaded.model
    for label, path in adapters.items():
        if path is None:
            continue
        if isinstance(model, PeftModel):
            model.load_adapter(path, adapter_name=label)
        else:
            model = PeftModel.from_pretrained(model, path, adapter_name=label)
    return model


def _active(model: Any, label: str | None) -> AbstractContextManager[Any]:
    """Make one adapter the active one; None: the base model alone."""
    if not isinstance(model, PeftModel):
        return nullcontext()
    if label is None:
        return model.disable_adapter()
    model.set_adapter(label)
    return nullcontext()
