"""Small file helpers every stage shares: JSONL streams, atomic writes, content digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A line of a JSONL file that is not one JSON object. The message names `file:line` and what is wrong.

    `unfinished` is true for a last line without its newline: what a write cut off by a kill leaves behind.
    `offset` is the byte offset where the line starts (to cut such a line off).
    """

    def __init__(self, path: str | os.PathLike[str], line: int, offset: int, problem: str, unfinished: bool) -> None:
        self.path, self.line, self.offset, self.problem, self.unfinished = str(path), line, offset, problem, unfinished
        cut = " (the last line, with no newline at its end: its write was cut off)" if unfinished else ""
        super().__init__(f"{path}:{line}: {problem}{cut}")


@dataclass(frozen=True)
class JsonlRecord:
    line: int  # 1-based line number in the file
    offset: int  # byte offset where the line starts
    text: str  # the line as written, without its line ending
    data: dict[str, Any]
    terminated: bool  # the line ends with a newline (only the last line of a file can lack one)


def read_records(path: str | os.PathLike[str]) -> Iterator[JsonlRecord]:
    """Yield one record per non-blank line of a JSONL file, in order.

    A line that is not UTF-8, not JSON, or JSON but not an object raises JsonlError naming `path:line`. Lines are
    split on `\\n` only (JSON text may hold a raw U+2028, which `str.splitlines` would split on); a UTF-8 byte
    order mark and `\\r\\n` endings are accepted. A missing file raises FileNotFoundError, as `open` does.
    """
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            terminated = raw.endswith(b"\n")
            try:
                text, data = _parse_line(raw, first=number == 1)
            except ValueError as failure:
                raise JsonlError(path, number, start, str(failure), unfinished=not terminated) from None
            if data is not None:
                yield JsonlRecord(number, start, text, data, terminated)


def _parse_line(raw: bytes, first: bool) -> tuple[str, dict[str, Any] | None]:
    """(the line's text, its object, None for a blank line); ValueError saying what is wrong with it."""
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8").rstrip("\r\n")
    except UnicodeDecodeError as failure:
        raise ValueError(f"not UTF-8 text ({failure.reason} at byte {failure.start + 1} of the line)") from None
    if not text.strip():
        return text, None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as failure:
        raise ValueError(f"not valid JSON ({failure.msg}: column {failure.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(data)}")
    return text, data


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield one object per non-blank line; a bad line raises JsonlError (a ValueError) naming `path:line`."""
    for record in read_records(path):
        yield record.data


def resume_jsonl(path: str | os.PathLike[str]) -> tuple[list[JsonlRecord], JsonlError | None]:
    """The records of an append-only JSONL file (see append_jsonl) that an interrupted run left behind, and the
    last line it removed, if any.

    A last line cut off mid-write (unreadable, no newline at its end) is removed from the file; a complete last
    line that only lacks its newline gets one, so the next append starts a line of its own. Any other bad line
    raises JsonlError and leaves the file as it is: rows already accepted are never dropped. No file: no records.
    """
    if not os.path.exists(path):
        return [], None
    records: list[JsonlRecord] = []
    try:
        records.extend(read_records(path))
    except JsonlError as error:
        if not error.unfinished:
            raise
        with open(path, "r+b") as handle:
            handle.truncate(error.offset)
        return records, error
    if records and not records[-1].terminated:
        with open(path, "ab") as handle:
            handle.write(b"\n")
    return records, None


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows to a temporary file beside `path`, then rename it into place. Returns the row count."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one row and flush it to disk, so an interrupted run keeps every finished row."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_writer(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class atomic_writer:
    """`with atomic_writer(path) as f:` writes to a temp file and renames it over `path` only on success.

    The file is 0644, as `open` makes it under the usual umask, not mkstemp's 0600: the next stage that reads it may
    run as another user (a sandbox pod runs as root inside gVisor, without CAP_DAC_OVERRIDE, and reads what the
    non-root pods wrote; they read what it wrote)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.fchmod(fd, 0o644)
        self._handle = os.fdopen(fd, "w", encoding="utf-8")
        return self._handle

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            os.unlink(self._tmp)


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""The format of every digest sigma0 writes (files, folders, adapters; the AdapterRelease schema's pattern): match
it with `fullmatch`, so that nothing may follow it, a newline included."""


def file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def tree_digest(folder: str | os.PathLike[str]) -> str:
    """A content digest of a folder: relative paths and bytes of every file, in sorted order."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix().encode()
        digest.update(len(relative).to_bytes(8, "big") + relative)
        digest.update(bytes.fromhex(file_digest(path).removeprefix("sha256:")))
    return "sha256:" + digest.hexdigest()


def path_digest(path: str | os.PathLike[str]) -> str:
    """The digest of a stage output: a folder's tree_digest, a file's file_digest."""
    return tree_digest(path) if Path(path).is_dir() else file_digest(path)


def text_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
