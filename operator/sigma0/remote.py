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
stage runs as the same user can read them neither from /proc/<pid>/environ nor from memory.

Stages that run untrusted code (verify, score) get no credentials at all on a cluster. A trusted step before each
(`sigma0 stage presign`, in a pod of its own with the credentials) writes a map of presigned URLs into the store:
a GET URL for every file the stage's command line names that exists (inputs, the journal beside each, what an
earlier attempt left), and a PUT URL for each of its own outputs and their journals alone (the copies under the
step's one output folder, plan.Step.writes), all expiring together. Its summary carries one presigned GET URL of
that map, which the plan gives the sandbox step (`--presigned URL`); `presigned_staged` then does what `staged`
does with plain HTTP: the same local paths, the same snapshot, and an upload only where the map has a PUT URL for
exactly that key. A stage that changed any other file fails, as does one whose URLs expired. S3 checks every
signature: a PUT URL writes its one key, a GET URL reads its one key; neither lists, deletes or reaches anything
else in the bucket.

An argument is remote when its scheme names an fsspec filesystem other than the local one; `tiny://llama` (a
built-in test model) and plain paths are left alone. `label=URI` arguments (`--adapter candidate=s3://...`) are
rewritten after the `=`.
"""

from __future__ import annotations

import ctypes
import json
import os
import posixpath
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
PRESIGNED_MAP_VERSION = 1
HTTP_TIMEOUT_SECONDS = 60


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
    return _inside(scratch / protocol.lower(), rest)


def _inside(folder: Path, relative: str) -> Path:
    """`folder`/`relative`, never outside `folder` (`..` and leading slashes are dropped)."""
    parts = [part for part in posixpath.normpath("/" + relative).split("/") if part not in ("", ".", "..")]
    return folder.joinpath(*parts)


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
    with _then_push(copies, lambda: push(copies.copies, before)) as local_argv:
        yield local_argv


@contextmanager
def _then_push(copies: Copies, push_back: Callable[[], list[str]]) -> Iterator[tuple[str, ...]]:
    """After the downloads: hold the credentials, run the stage on the local copies, and upload what it wrote, also
    when it failed (a resumable stage keeps its progress; the stage's own error is the one to report)."""
    hold_credentials()
    try:
        yield copies.argv
    except BaseException:
        try:
            push_back()
        except RemoteError as error:
            print(f"sigma0: {error}", file=sys.stderr)
        raise
    push_back()


# Presigned URLs: stages that run untrusted code hold no credentials ------------------------------------------------


def _is_under(uri: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return uri == folder or uri.startswith(folder + "/")


class CannotPresign(RemoteError):
    """The store, or the validity asked for, cannot give presigned URLs: bad input, which no retry mends."""


def presign(argv: Sequence[str], writes: str, expires_in: int, scratch: Path, map_uri: str) -> dict[str, Any]:
    """The presigned-URL map for a stage command line (`argv`, as the plan wrote it, remote URIs and all): a GET
    URL for every file of each remote argument that exists now (a folder's files by relative path, "." for a file)
    and for the journal beside it; a PUT URL, for the argument and its journal, only where the argument is under
    `writes` (the step's one output folder). `map_uri`, where the map goes, must be in a store that signs too.
    Runs where the credentials are (`sigma0 stage presign`)."""
    from sigma0.plan import MAX_PRESIGN_SECONDS, PRESIGNED_PROTOCOLS  # the rules (plan imports the schema: not here)

    if not 0 < expires_in <= MAX_PRESIGN_SECONDS:
        raise CannotPresign(f"presigned URLs last 1 to {MAX_PRESIGN_SECONDS} s, not {expires_in}")
    copies = plan_copies(argv, scratch).copies
    unsignable = [uri for uri in [*(copy.uri for copy in copies), map_uri]
                  if protocol_of(uri) not in PRESIGNED_PROTOCOLS]
    if unsignable:
        raise CannotPresign(f"cannot presign {', '.join(unsignable)}: only an s3:// store can hand a stage "
                            "presigned URLs, and a stage that runs untrusted code gets no credentials")
    entries: dict[str, dict[str, Any]] = {}
    for copy in copies:
        try:
            filesystem, path = _signer(copy.uri)

            def url(key: str, method: str = "get_object", _filesystem: Any = filesystem) -> str:
                return str(_filesystem.url(key, expires=expires_in, client_method=method))

            get: dict[str, str] = {}
            if filesystem.isdir(path):
                for remote_file in filesystem.find(path):
                    get[posixpath.relpath(remote_file, path)] = url(remote_file)
            elif filesystem.exists(path):
                get["."] = url(path)
            writable = _is_under(copy.uri, writes)
            entries[copy.uri] = {
                "get": get,
                "journal_get": url(path + JOURNAL) if filesystem.isfile(path + JOURNAL) else None,
                "put": url(path, "put_object") if writable else None,
                "journal_put": url(path + JOURNAL, "put_object") if writable else None,
            }
        except Exception as error:
            raise RemoteError(f"cannot presign {copy.uri}: {error}") from error
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    return {"version": PRESIGNED_MAP_VERSION, "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "writes": writes, "copies": entries}


def presign_map_url(uri: str, expires_in: int) -> str:
    """A presigned GET URL for the map `presign` wrote at `uri`: what the sandbox step is given."""
    filesystem, path = _signer(uri)
    return str(filesystem.url(path, expires=expires_in, client_method="get_object"))


def _signer(uri: str) -> tuple[Any, str]:
    """The filesystem that signs `uri`'s URLs, and the path in it: s3fs with SigV4 (botocore presigns with the
    legacy SigV2 by default, which S3 refuses in every region opened since 2014 and S3-compatible stores often do
    too), the credentials, endpoint and region from the environment as for any stage."""
    protocol = uri.partition("://")[0].lower()
    filesystem = fsspec.filesystem(protocol, config_kwargs={"signature_version": "s3v4"})
    return filesystem, filesystem._strip_protocol(uri)


def _http(url: str, what: str, data: Path | None = None, target: Path | None = None) -> bytes:
    """GET (into `target`, or returned) or PUT (`data`'s bytes) one presigned URL; any failure is a RemoteError
    naming `what`, never the URL (it is a capability)."""
    try:
        if data is not None:  # a sandbox step's outputs are reports and results: small enough to send at once
            request = urllib.request.Request(url, data=data.read_bytes(), method="PUT",  # not urllib's form type
                                             headers={"Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS):
                return b""
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            if target is None:
                return bytes(response.read())
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                shutil.copyfileobj(response, out)
            return b""
    except urllib.error.HTTPError as error:
        detail = "the URL expired or was refused" if error.code == 403 else error.reason
        raise RemoteError(f"cannot {'write' if data is not None else 'read'} {what}: HTTP {error.code} "
                          f"({detail})") from None
    except OSError as error:
        raise RemoteError(f"cannot {'write' if data is not None else 'read'} {what}: {error}") from None


def fetch_presigned_map(url: str) -> dict[str, Any]:
    found = json.loads(_http(url, "the presigned-URL map"))
    if not isinstance(found, dict) or found.get("version") != PRESIGNED_MAP_VERSION:
        raise RemoteError("the presigned-URL map is not one this version of sigma0 reads")
    return found


def _entry(entries: Mapping[str, Any], copy: Copy) -> Mapping[str, Any]:
    entry = entries.get(copy.uri)
    if entry is None:
        raise RemoteError(f"the presigned-URL map has no URLs for {copy.uri}: it was made for another command line")
    return entry


def pull_presigned(copies: Iterable[Copy], entries: Mapping[str, Any]) -> Snapshot:
    """`pull` through the map's GET URLs: the same local files, and their snapshot."""
    for copy in copies:
        entry = _entry(entries, copy)
        copy.local.parent.mkdir(parents=True, exist_ok=True)
        for relative, url in entry["get"].items():
            target = copy.local if relative == "." else _inside(copy.local, relative)
            _http(url, copy.uri if relative == "." else f"{copy.uri}/{relative}", target=target)
        if entry.get("journal_get"):
            _http(entry["journal_get"], copy.uri + JOURNAL, target=_journal(copy)[1])
    return snapshot(copies)


def push_presigned(copies: Iterable[Copy], before: Snapshot, presigned: Mapping[str, Any]) -> list[str]:
    """`push` through the map's PUT URLs: every new or changed file must have one (the step's own outputs and
    their journals), else the stage fails naming the file it may not write."""
    uploaded: list[str] = []
    entries = presigned.get("copies") or {}
    for copy in copies:
        entry = _entry(entries, copy)
        for file in _files(copy):
            stat = file.stat()
            if before.get(file) == (stat.st_size, stat.st_mtime_ns):
                continue
            if file == _journal(copy)[1]:
                uri, url = copy.uri + JOURNAL, entry.get("journal_put")
            elif file == copy.local:
                uri, url = copy.uri, entry.get("put")
            else:
                uri, url = f"{copy.uri}/{file.relative_to(copy.local).as_posix()}", None
            if not url:
                raise RemoteError(f"cannot write {uri}: this step may write only its own outputs, under "
                                  f"{presigned.get('writes') or 'its output folder'}")
            _http(url, uri, data=file)
            uploaded.append(uri)
    return uploaded


@contextmanager
def presigned_staged(argv: Sequence[str], scratch: Path, map_url: str) -> Iterator[tuple[str, ...]]:
    """`staged` for a stage that holds no credentials: its copies come and go through the presigned URLs of the
    map at `map_url` (made by `presign` for this very command line)."""
    copies = plan_copies(argv, scratch)
    presigned = fetch_presigned_map(map_url)
    before = pull_presigned(copies.copies, presigned.get("copies") or {})
    # no credentials to hold, but non-dumpable keeps the URLs in this process's memory out of a candidate's reach
    with _then_push(copies, lambda: push_presigned(copies.copies, before, presigned)) as local_argv:
        yield local_argv
