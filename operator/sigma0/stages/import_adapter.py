"""`sigma0 stage import`: bring an adapter trained elsewhere into the cycle, only if it is the one the spec names.

A cycle with `spec.candidate` trains nothing: this step copies the named adapter folder (a path, or an fsspec URI
that sigma0.remote downloads first) into the cycle's `import/adapter/`, and refuses it (exit 2,
`digest_mismatch`) unless its content digest (sigma0.io.tree_digest, what `sigma0 digest FOLDER` prints) is the
one the spec names, and unless it is a peft LoRA adapter (its config says LORA and it has its weights file). It
runs before any GPU step; from here on the copy is the candidate, held to its recorded digest like a trained one
(sigma0.evidence). Whether its weights fit the base model is checked where the base model is loaded: generate
refuses an adapter for another model before it generates anything (sigma0.ml.adapters).

Run again with an output folder that already holds an adapter with that digest, it reuses it (the digest is the
adapter's identity); any other content there is refused, since adapters are immutable.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sigma0.io import DIGEST, tree_digest, write_json_atomic
from sigma0.ml.adapter_files import WEIGHTS, AdapterMismatch, read_adapter_config
from sigma0.stages import StageInputError


class DigestMismatch(StageInputError):
    """The adapter found is not the one the manifest names."""

    kind = "digest_mismatch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="the adapter folder to import (a path or an fsspec URI)")
    parser.add_argument("--digest", required=True, help="the digest it must have (sha256:...)")
    parser.add_argument("--output-dir", required=True, help="the cycle's copy of it, to create")
    parser.add_argument("--report", required=True, help="where to write the import report (JSON)")


def outputs(args: argparse.Namespace) -> list[str]:
    """What this stage writes: the adapter's copy (its digest is the candidate's) and the report."""
    return [args.output_dir, args.report]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not DIGEST.fullmatch(args.digest):
        raise StageInputError(f"--digest {args.digest!r}: expected sha256:<64 hex digits>")
    source, output = Path(args.source), Path(args.output_dir)
    if output.exists() and any(output.iterdir()):
        found = tree_digest(output)
        if found != args.digest:
            raise StageInputError(
                f"{output} already holds an adapter with digest {found}, not {args.digest}; "
                "adapters are immutable: choose a new --output-dir or remove that folder"
            )
        return _summary(output, args, reused=True)
    if not source.is_dir():
        raise StageInputError(f"--source {args.source}: there is no adapter folder there")
    check(source, args.digest)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        copy = staging / "adapter"
        shutil.copytree(source, copy)
        check(copy, args.digest)  # the copy is what the cycle evaluates: it must be the adapter named too
        if output.exists():
            output.rmdir()  # empty (checked above)
        copy.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _summary(output, args, reused=False)


def check(folder: Path, digest: str) -> None:
    """Refuse a folder that is not the adapter the manifest names, or not a LoRA adapter at all."""
    found = tree_digest(folder)
    if found != digest:
        raise DigestMismatch(
            f"the adapter at {folder} has digest {found}, but spec.candidate.digest is {digest}: "
            "it is not the adapter the manifest names; nothing was imported or evaluated and the "
            "release is untouched"
        )
    try:
        read_adapter_config(folder)
    except AdapterMismatch as error:
        raise StageInputError(str(error)) from None
    if not (folder / WEIGHTS).is_file():
        raise StageInputError(f"{folder} is not a complete adapter: it has no {WEIGHTS}")


def _summary(output: Path, args: argparse.Namespace, *, reused: bool) -> dict[str, Any]:
    files = [p for p in output.rglob("*") if p.is_file()]
    summary = {"adapter_digest": args.digest, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    write_json_atomic(args.report, {**summary, "source": args.source})
    return summary | ({"reused": True} if reused else {})
