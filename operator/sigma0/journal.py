"""The journal beside an append-only JSONL output (score's results, generate's completions): a resumed run reuses
only the rows it can prove an earlier run of the same step wrote.

A candidate that runs in a sandbox pod can write where that pod writes: it could plant a results file for a later
score step, or completions for generate, with rows that lower the incumbent's pass@1. So `<file>.journal`, rewritten
atomically after every append (or, with `every_seconds`, at most that often and at every `checkpoint`: score
journals once a second and when its run ends or is interrupted, so that a kill costs at most a second of verdicts),
holds the length of the file as the stage left it, the sha256 of those bytes (a running digest, updated as rows are
appended) and an HMAC of both under the step's resume key: random, made by the executor when the step first starts,
kept in the cycle's record and given to the stage as SIGMA0_RESUME_KEY, so no stage that ran before it can know it.
On resume, the file's first bytes must have the journal's digest and the HMAC must hold; whatever follows (a row cut
off by a kill, a row appended after the last journal write) is cut off. Any other file (no journal, another key,
other bytes) proves nothing: it is set aside as `<file>.untrusted`, for a person to look at, and the output is
started over.

A stage run by hand has no key: the HMAC's key is then empty, and the journal only shows that the file was not cut
short or edited by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from sigma0.io import JsonlError, JsonlRecord, atomic_writer, read_json, read_records, write_json_atomic

KEY_ENV = "SIGMA0_RESUME_KEY"
UNTRUSTED = ".untrusted"


def resume_key() -> bytes:
    """The step's resume key, from the environment the executor gave the stage (empty when run by hand)."""
    return os.environ.get(KEY_ENV, "").encode()


def mac(key: bytes, *parts: str) -> str:
    """HMAC-SHA256 of `parts` under `key`: what a journal, or train's note beside its adapter, is signed with."""
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def encode_row(row: dict[str, Any]) -> bytes:
    """One JSONL line, as sigma0.io.append_jsonl writes it."""
    return (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


class Journal:
    """`<path>.journal` for the JSONL file at `path`. Call `resume` once, then `append` rows (or `rewrite` them)."""

    def __init__(self, path: str | os.PathLike[str], key: bytes, every_seconds: float = 0.0) -> None:
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.key = key
        self.every_seconds = every_seconds  # 0: journal every append
        self._digest = hashlib.sha256()
        self._size = 0
        self._journaled_size = -1
        self._journaled_at = float("-inf")

    def _mac(self, size: int, digest: str) -> str:
        return mac(self.key, self.path.name, str(size), digest)

    def resume(self) -> tuple[list[JsonlRecord], str | None]:
        """The rows an earlier run of this step provably wrote (the file is cut back to them), and, when a file was
        there that proves nothing, why it was set aside."""
        self._digest, self._size = hashlib.sha256(), 0
        if not self.path.exists() and not self.path.is_symlink():
            self.journal.unlink(missing_ok=True)
            return [], None
        why = self._why_untrusted()
        if why is not None:
            self._set_aside()
            return [], why
        try:
            records = list(read_records(self.path))
        except JsonlError as error:  # cannot happen to bytes this stage wrote; the HMAC held, so a bug: say so
            raise RuntimeError(f"{self.path}: rows its journal vouches for do not read back: {error}") from error
        return records, None

    def _why_untrusted(self) -> str | None:
        if self.path.is_symlink() or not self.path.is_file():
            return f"{self.path} is not a plain file"
        try:
            entry = read_json(self.journal)
            size, digest, mac = int(entry["bytes"]), str(entry["digest"]), str(entry["mac"])
        except FileNotFoundError:
            return f"{self.path} has no journal: this step's earlier runs did not write it"
        except (OSError, ValueError, KeyError, TypeError):
            return f"{self.journal} is not a journal"
        if not hmac.compare_digest(mac, self._mac(size, digest)):
            return f"{self.journal} was not written by this step (its HMAC does not hold under the step's key)"
        with open(self.path, "rb") as handle:
            prefix = handle.read(size)
        if len(prefix) != size:
            return f"{self.path} is shorter than its journal says ({len(prefix)} of {size} bytes)"
        if "sha256:" + hashlib.sha256(prefix).hexdigest() != digest:
            return f"{self.path} is not what this step wrote: its bytes do not have the journal's digest"
        with open(self.path, "r+b") as handle:  # a row cut off mid-write, or written after the last journal entry
            handle.truncate(size)
        self._digest.update(prefix)
        self._size = size
        return None

    def _set_aside(self) -> None:
        aside = self.path.with_name(self.path.name + UNTRUSTED)
        try:
            os.replace(self.path, aside)
        except OSError:  # something in the way of the name: the file itself must go either way
            self.path.unlink()
        self.journal.unlink(missing_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row, and journal it (`checkpoint`) unless the last journal is younger than `every_seconds`."""
        line = encode_row(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            handle.write(line)
        self._digest.update(line)
        self._size += len(line)
        if time.monotonic() - self._journaled_at >= self.every_seconds:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the rows appended since the last journal to disk, then journal them: a resumed run keeps them."""
        if self._size == self._journaled_size:
            return
        with open(self.path, "ab") as handle:
            os.fsync(handle.fileno())
        self._write_journal()

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file with exactly these rows (atomically), and journal them: whatever else was written to
        the file while this run went on is gone."""
        lines = [encode_row(row) for row in rows]
        with atomic_writer(self.path) as handle:
            handle.write(b"".join(lines).decode("utf-8"))
        self._digest = hashlib.sha256(b"".join(lines))
        self._size = sum(len(line) for line in lines)
        self._write_journal()

    def _write_journal(self) -> None:
        digest = "sha256:" + self._digest.hexdigest()
        write_json_atomic(self.journal, {"bytes": self._size, "digest": digest, "mac": self._mac(self._size, digest)})
        self._journaled_size, self._journaled_at = self._size, time.monotonic()
