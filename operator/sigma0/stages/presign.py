"""`sigma0 stage presign`: the presigned URLs a sandbox step of an object-store cycle uses instead of credentials.

    sigma0 stage presign --map URI --writes URI --expires-in SECONDS -- STAGE ARGS...

Runs in a trusted pod that holds the store's credentials, just before the sandbox step (verify, score) whose command
line follows `--`. Writes to `--map` a GET URL for every file that command names and that exists, and a PUT URL for
each of its arguments under `--writes` (the step's own output folder) and the journal beside each
(sigma0.remote.presign); its summary carries `url`, a presigned GET URL of that map, which the plan gives the sandbox
step as `--presigned URL`. The sandbox step's pod gets no credentials at all.

This stage reads and writes the store itself: its arguments are not downloaded first (sigma0.cli).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from sigma0 import remote
from sigma0.stages import StageInputError

HANDLES_STORE = True  # sigma0.cli: run it on its arguments as they are, not on local copies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--map", required=True, help="where to write the map of presigned URLs (a store URI)")
    parser.add_argument("--writes", required=True,
                        help="the step's output folder: only arguments under it get PUT URLs ('' for none)")
    parser.add_argument("--expires-in", type=int, required=True, help="how long every URL lasts, in seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the sandbox step's stage and arguments, as the plan wrote them")


def outputs(args: argparse.Namespace) -> list[str]:
    return []  # the map is a capability, not evidence: nothing downstream reads it but the step it is for


def run(args: argparse.Namespace) -> dict[str, Any]:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise StageInputError("no command to presign: give the sandbox step's stage and arguments after --")
    try:
        with tempfile.TemporaryDirectory(prefix="sigma0-presign-") as scratch:
            presigned = remote.presign(command, args.writes, args.expires_in, Path(scratch), args.map)
    except remote.CannotPresign as error:  # any other RemoteError is the store's, and a retry may mend it: exit 1
        raise StageInputError(str(error)) from error
    with fsspec.open(args.map, "w") as handle:
        json.dump(presigned, handle, indent=1, sort_keys=True)
    url = remote.presign_map_url(args.map, args.expires_in)
    copies = presigned["copies"].values()
    return {
        "url": url,
        "expires_at": presigned["expires_at"],
        "readable_files": sum(len(entry["get"]) + bool(entry["journal_get"]) for entry in copies),
        "writable": sorted(uri for uri, entry in presigned["copies"].items() if entry["put"]),
    }
