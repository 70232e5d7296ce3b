"""Evidence: every stage output's digest, recorded when the stage ends and checked before anything reads it.

Stage pods cannot be trusted to leave the shared artifacts alone: verify and score run untrusted code, and that
code can write where its stage writes. So a file is only believed on the cycle's record, which no stage pod writes:

    recorded  when a stage ends, `sigma0 stage` digests each of its outputs (a file: file_digest; a folder such as
              an adapter: tree_digest; sigma0.io.path_digest either way) and reports them in its summary under
              "outputs" (`{"root": DIR, "digests": {PATH under DIR: DIGEST}}`, small enough for a termination
              message). The executor moves them into the record: state.json's `steps.<step>.outputs` locally,
              the TrainingCycle's `status.stages.<step>.outputs` on a cluster.
    checked   the plan gives every step `--expect DIGEST=PATH` for each input an earlier step wrote, with the digest
              that step recorded (`unrecorded=PATH` when it recorded none, which fails as well). `sigma0 stage`
              checks them after any download and before the stage reads anything, in both executors alike. A
              mismatch fails the stage with `evidence_tampered`; the cycle fails and the release is untouched.
    resumed   a stage that resumes from its own partial output (generate's completions, score's results) reuses
              only rows its journal proves it wrote (sigma0.journal); anything else is set aside and redone.

`DIGEST=PATH` rather than `PATH=DIGEST`: sigma0.remote rewrites a `LABEL=URI` argument to its local copy, so an
expectation about an s3:// input is checked against the very copy the stage reads.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from sigma0.io import DIGEST, path_digest
from sigma0.stages import StageInputError

OUTPUTS = "outputs"  # the summary key
UNRECORDED = "unrecorded"
TAMPERED = "evidence_tampered"
MISSING = "evidence_missing"


class EvidenceTampered(StageInputError):
    """An input is not what the stage that wrote it recorded (or nothing was recorded for it)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


# Recording ---------------------------------------------------------------------------------------------------------


def _split_uri(name: str) -> tuple[str, str]:
    scheme, sep, rest = name.partition("://")
    return (f"{scheme}://", rest) if sep else ("", name)


def _join(root: str, relative: str) -> str:
    scheme, rest = _split_uri(root)
    return scheme + posixpath.join(rest, relative) if relative != "." else root


def record(outputs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The summary entry for a stage's outputs: `(name, path)` pairs, where name is the output as the plan named it
    (a path or a URI) and path where this process wrote it (the same, or a local copy of a remote output). Outputs
    that were not written are left out."""
    digests = {name: path_digest(path) for name, path in outputs if posixpath.exists(path)}
    if not digests:
        return {"root": "", "digests": {}}
    schemes = {_split_uri(name)[0] for name in digests}
    parents = [posixpath.dirname(_split_uri(name)[1]) for name in digests]
    try:
        root_scheme, common = (schemes.pop(), posixpath.commonpath(parents)) if len(schemes) == 1 else ("", "")
    except ValueError:  # absolute and relative paths together: no common root
        root_scheme, common = "", ""
    root = root_scheme + common if common else ""
    relative = {(posixpath.relpath(_split_uri(name)[1], common) if root else name): digest
                for name, digest in digests.items()}
    return {"root": root, "digests": dict(sorted(relative.items()))}


def expand(entry: Any) -> dict[str, str]:
    """`record`'s entry as {name: digest}; anything malformed (an older stage, a cut message) counts as nothing."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("digests"), Mapping):
        return {}
    root = str(entry.get("root") or "")
    return {(_join(root, str(name)) if root else str(name)): digest
            for name, digest in entry["digests"].items() if isinstance(digest, str) and DIGEST.fullmatch(digest)}


def split(summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A stage's summary without its outputs entry, and the outputs it recorded as {name: digest}."""
    rest = {key: value for key, value in summary.items() if key != OUTPUTS}
    return rest, expand(summary.get(OUTPUTS))


# Checking ----------------------------------------------------------------------------------------------------------


def find(recorded: Mapping[str, str], path: str) -> tuple[str, str] | None:
    """The recorded output that holds `path`: the path itself, or a folder above it (generate records each of its
    adapter/suite folders, score reads one file in one). (name, digest), or None."""
    if path in recorded:
        return path, recorded[path]
    for name in sorted(recorded, key=len, reverse=True):
        if path.startswith(name.rstrip("/") + "/"):
            return name, recorded[name]
    return None


def expect_args(recorded: Mapping[str, str], paths: Sequence[str]) -> list[str]:
    """`--expect DIGEST=PATH` for each input path, naming the recorded output that holds it."""
    args: list[str] = []
    for path in paths:
        found = find(recorded, path)
        args += ["--expect", f"{found[1]}={found[0]}" if found else f"{UNRECORDED}={path}"]
    return args


def check(expectations: Sequence[str]) -> None:
    """Raise EvidenceTampered unless every `DIGEST=PATH` holds: the file or folder at PATH has that digest now."""
    for expectation in expectations:
        digest, sep, path = expectation.partition("=")
        if not sep or not path:
            raise StageInputError(f"--expect {expectation!r}: expected DIGEST=PATH")
        if digest == UNRECORDED:
            raise EvidenceTampered(MISSING, f"no digest was recorded for {path} when the stage that wrote it "
                                   "ended, so nothing shows it is that stage's output; the release is untouched")
        if not posixpath.exists(path):
            raise EvidenceTampered(TAMPERED, f"{path} is gone; its writer recorded {digest}; the release is "
                                   "untouched")
        found = path_digest(path)
        if found != digest:
            raise EvidenceTampered(TAMPERED, f"{path} has digest {found}, but the stage that wrote it recorded "
                                   f"{digest}: it changed after that stage ended; the release is untouched")
