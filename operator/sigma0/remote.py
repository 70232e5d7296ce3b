"""Stage arguments that name remote artifacts: fsspec URIs such as `s3://bucket/sigma0/cycles/...`.

A cycle whose `spec.artifacts.uri` is set has no shared disk: its stage commands carry URIs where they would
carry paths (sigma0.kube.jobs.layout). `sigma0 stage` runs the stage on local copies instead:

    1. `plan_copies` maps every remote argument to a local path under a scratch folder (the same URI always to
       the same path, so a folder and a file inside it agree) and rewrites the command line;
    2. `pull` downloads whatever of those exists remotely: inputs, and outputs a previous attempt left (stages
       resume from them), each with its journal beside it (`<name>.journal`, sigma0.journal) if it has one;
    3. the stage runs on local files, as it does on a volume;
    4. `push` uploads every file that is new or changed under the mapped paths, also when the stage failed, so a
       resumable stage (score, generate) keeps its progress. A failed upload fails the stage: an output that did
       not reach the store was not produced.

Credentials come from the environment as the filesystem's library reads them (for s3fs: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...; the operator passes a Secret's keys to the pod). `hold_credentials`
then takes them out of the process environment and makes the process non-dumpable, so the untrusted code a
sandbox stage runs as the same user can read them neither from /proc/<pid>/environ nor from memory.

An argument is remote when its scheme names an fsspec filesystem other than the local one; `tiny://llama` (a
built-in test model) and plain paths are left alone. `label=URI` arguments (`--adapter candidate=s3://...`) are
rewritten after the `=`.
"""

from __future__ import annotations

import ctypes
import os
import posixpath
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.registry import known_implementations

LOCAL_PROTOCOLS = {"file", "local"}
# What s3fs (botocore) reads from the environment; removed once the filesystem holds them.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                        "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING",
                        "AZURE_STORAGE_SAS_TOKEN")
PR_SET_DUMPABLE = 4
JOURNAL = ".journal"  # sigma0.journal's suffix


class RemoteError(RuntimeError):
    """An artifact could not be read from or written to the store."""


def protocol_of(value: str) -> str | None:
    """The fsspec protocol of a remote URI, or None for a local path or a non-fsspec scheme such as tiny://."""
    scheme, sep, rest = value.partition("://")
    if not sep or not rest or not scheme.replace("+", "").replace("-", "").isalnum():
        return None
    protocol = scheme.lower()
    return None if protocol in LOCAL_PROTOCOLS or protocol not in known_implementations else protocol


@dataclass(frozen=True)
class Copy:
    """One remote location and where the stage sees it."""

    uri: str
    local: Path


@dataclass(frozen=True)
class Copies:
    argv: tuple[str, ...]
    copies: tuple[Copy, ...]


def local_path(uri: str, scratch: Path) -> Path:
    """`s3://bucket/a/b` → `<scratch>/s3/bucket/a/b`: deterministic, and never outside `scratch`."""
    protocol, _, rest = uri.partition("://")
    parts = [part for part in posixpath.normpath("/" + rest).split("/") if part not in ("", ".", "..")]
    return scratch.joinpath(protocol.lower(), *parts)


def plan_copies(argv: Sequence[str], scratch: Path) -> Copies:
    """The command line with every remote argument replaced by its local copy, and the copies to make."""
    rewritten: list[str] = []
    copies: dict[str, Copy] = {}
    for token in argv:
        label, sep, value = token.partition("=")
        if sep and not token.startswith("-") and "/" not in label and protocol_of(value):
            uri, prefix = value, f"{label}="
        elif protocol_of(token):
            uri, prefix = token, ""
        else:
            rewritten.append(token)
            continue
        uri = uri.rstrip("/")
        copy = copies.setdefault(uri, Copy(uri, local_path(uri, scratch)))
        rewritten.append(prefix + str(copy.local))
    return Copies(tuple(rewritten), tuple(copies.values()))


Snapshot = Mapping[Path, tuple[int, int]]


def _open(uri: str) -> tuple[Any, str]:
    """The filesystem for `uri` (fsspec caches instances, so `pull` and `push` share one) and the path in it."""
    return fsspec.core.url_to_fs(uri)


def _journal(copy: Copy) -> tuple[str, Path]:
    """The journal beside a copy (sigma0.journal: score's results, train's adapter): it travels with the copy."""
    return f"{copy.uri}{JOURNAL}", copy.local.with_name(copy.local.name + JOURNAL)


def pull(copies: Iterable[Copy]) -> Snapshot:
    """Download every copy that exists in the store (a file, or a folder with everything under it, and the journal
    beside it); return the (size, mtime) of each local file afterwards, which `push` compares against."""
    for copy in copies:
        try:
            filesystem, path = _open(copy.uri)
            journal_local = _journal(copy)[1]
            if filesystem.isfile(path + JOURNAL):
                journal_local.parent.mkdir(parents=True, exist_ok=True)
                filesystem.get_file(path + JOURNAL, str(journal_local))
            if filesystem.isdir(path):
                for remote_file in filesystem.find(path):
                    relative = posixpath.relpath(remote_file, path)
                    target = copy.local / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    filesystem.get_file(remote_file, str(target))
            elif filesystem.exists(path):
                copy.local.parent.mkdir(parents=True, exist_ok=True)
                filesystem.get_file(path, str(copy.local))
            else:
                copy.local.parent.mkdir(parents=True, exist_ok=True)
        except Exception as error:  # botocore's connection errors are not OSErrors
            raise RemoteError(f"cannot read {copy.uri}: {error}") from error
    return snapshot(copies)


def _files(copy: Copy) -> list[Path]:
    journal = [_journal(copy)[1]] if _journal(copy)[1].is_file() else []
    if copy.local.is_dir():
        return sorted(p for p in copy.local.rglob("*") if p.is_file()) + journal
    return ([copy.local] if copy.local.is_file() else []) + journal


def snapshot(copies: Iterable[Copy]) -> dict[Path, tuple[int, int]]:
    found: dict[Path, tuple[int, int]] = {}
    for copy in copies:
        for file in _files(copy):
            stat = file.stat()
            found[file] = (stat.st_size, stat.st_mtime_ns)
    return found


def push(copies: Iterable[Copy], before: Snapshot) -> list[str]:
    """Upload the files that are new or changed since `before`; return their URIs."""
    uploaded: list[str] = []
    for copy in copies:
        filesystem, path = _open(copy.uri)
        for file in _files(copy):
            stat = file.stat()
            if before.get(file) == (stat.st_size, stat.st_mtime_ns):
                continue
            if file == _journal(copy)[1]:
                uri, target = f"{copy.uri}{JOURNAL}", f"{path}{JOURNAL}"
            else:
                relative = file.relative_to(copy.local).as_posix()
                uri, target = (copy.uri, path) if relative == "." else (f"{copy.uri}/{relative}", f"{path}/{relative}")
            try:
                filesystem.put_file(str(file), target)
            except Exception as error:
                raise RemoteError(f"cannot write {uri}: {error}") from error
            uploaded.append(uri)
    return uploaded


def hold_credentials(environ: dict[str, str] | None = None) -> None:
    """Call after `pull`, whose requests made the filesystems read their credentials (they keep what they read):
    remove the credentials from the environment and make this process non-dumpable. The children a sandbox stage
    starts get a scrubbed environment anyway; non-dumpable keeps a same-user process from reading
    /proc/<this pid>/environ (the environment as the process started with it) or this process's memory."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    for name in CREDENTIAL_VARIABLES:
        environ.pop(name, None)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise RemoteError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")


@contextmanager
def staged(argv: Sequence[str], scratch: Path) -> Iterator[tuple[str, ...]]:
    """Run a stage on local copies of its remote arguments: yields the rewritten command line; uploads what the
    stage wrote when the block ends, whether it succeeded or not. Without remote arguments, a no-op."""
    copies = plan_copies(argv, scratch)
    if not copies.copies:
        yield tuple(argv)
        return
    before = pull(copies.copies)
    hold_credentials()
    try:
        yield copies.argv
    except BaseException:
        try:  # keep a resumable stage's progress; the stage's own error is the one to report
            push(copies.copies, before)
        except RemoteError as error:
            print(f"sigma0: {error}", file=sys.stderr)
        raise
    push(copies.copies, before)
