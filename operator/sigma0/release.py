"""The local release store: which adapter serving should load now, its history, and every promotion decision.

The cluster keeps the same facts in an AdapterRelease; this store is its local twin, with the same small
interface (current, publish, rollback, history). Layout under `root` (a workdir's `releases/`):

    <name>/adapters/<digest-hex>/  immutable copies of published adapters (copied to a temp sibling,
                                   digest-checked, made read-only, then renamed into place)
    <name>/current.json            the pointer {uri, digest, pass_at_1, cycle, time, revision} and `history`,
                                   the previous pointers, newest first, bounded; replaced with os.replace
    <name>/promotions.jsonl        one row per publish or rollback, with its evidence and final outcome
    <name>/.lock                   fcntl.flock: publishes and rollbacks of one release run one at a time

Order of writes in a promotion, and what the log may claim: the adapter copy and the pointer swap come
first; the log row carrying the final outcome (Bootstrapped/Promoted) is appended only after os.replace
succeeded. If anything fails before the swap, the row says Failed (with the error) and the old pointer stays
in place, so the log never claims a promotion that did not happen. If the process is killed between the swap
and the append, the log is one row short: current.json is the authority on what is live. An adapter copied
in before a failed swap stays in adapters/ (content-addressed, so a retry reuses it).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sigma0.gate import Decision, Outcome
from sigma0.io import append_jsonl, read_json, read_jsonl, tree_digest, write_json_atomic

# Outcomes that appear in promotions.jsonl besides the gate's own.
FAILED = "Failed"
ROLLED_BACK = "RolledBack"

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes object name, so it mirrors an AR
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ReleaseError(Exception):
    """A release operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class ReleasePointer:
    uri: str  # the adapter folder serving should load
    digest: str
    pass_at_1: float
    cycle: str  # the cycle that won it
    time: str  # when this pointer became current
    revision: int  # increases on every change of the release, rollbacks included
    rolled_back: bool = False  # in history only: this pointer was rolled back from, so rollback skips it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleasePointer:
        return cls(
            uri=str(data["uri"]),
            digest=str(data["digest"]),
            pass_at_1=float(data["pass_at_1"]),
            cycle=str(data["cycle"]),
            time=str(data["time"]),
            revision=int(data["revision"]),
            rolled_back=bool(data.get("rolled_back", False)),
        )


@dataclass(frozen=True)
class PublishResult:
    outcome: Outcome  # the decision's outcome, or Stale when the evaluated incumbent is no longer current
    revision: int  # the release's revision after the publish (unchanged unless it promoted; 0: no release)
    pointer: ReleasePointer | None  # the current pointer after the publish


class LocalReleaseStore:
    def __init__(self, root: str | os.PathLike[str], *, history_limit: int = 10) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        self.root = Path(root).absolute()  # pointers carry absolute adapter paths
        self.history_limit = history_limit

    def current(self, name: str) -> ReleasePointer | None:
        return self._read_state(name)[0]

    def history(self, name: str) -> list[ReleasePointer]:
        """The previous pointers, newest first (the current one is not included)."""
        return self._read_state(name)[1]

    def promotions(self, name: str) -> list[dict[str, Any]]:
        """Every row of the promotion log, oldest first."""
        path = self._folder(name) / "promotions.jsonl"
        return list(read_jsonl(path)) if path.exists() else []

    def publish(
        self,
        name: str,
        *,
        decision: Decision,
        candidate_adapter_dir: str | os.PathLike[str] | None,
        candidate_digest: str,
        evaluated_incumbent_digest: str | None,
        cycle: str,
        evidence: dict[str, Any],
    ) -> PublishResult:
        """Log the decision; if it promotes and the evaluated incumbent is still current, make it live.

        evidence: what the decision rests on, logged as given (dataset digest, both results-file digests).
        evaluated_incumbent_digest: the adapter the candidate was compared with (None: there was no release).
        """
        _check_publish_arguments(
            decision, candidate_adapter_dir, candidate_digest, evaluated_incumbent_digest
        )
        json.dumps(evidence)  # fail on unloggable evidence before anything changes
        row: dict[str, Any] = {
            "release": name,
            "cycle": cycle,
            "decision": decision.to_dict(),
            "candidate_digest": candidate_digest,
            "incumbent_digest": evaluated_incumbent_digest,
            "evidence": evidence,
        }
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked(folder):
            current, history = self._read_state(name)
            revision = current.revision if current else 0
            if not decision.promotes:
                self._log(folder, row, decision.outcome, revision)
                return PublishResult(decision.outcome, revision, current)
            current_digest = current.digest if current else None
            if current_digest != evaluated_incumbent_digest:
                row["current_digest"] = current_digest
                row["reason"] = (
                    "the release changed since the incumbent was evaluated (evaluated "
                    f"{evaluated_incumbent_digest}, now {current_digest}); evaluate against the current one"
                )
                self._log(folder, row, Outcome.STALE, revision)
                return PublishResult(Outcome.STALE, revision, current)
            try:
                uri = _install_adapter(folder / "adapters", candidate_adapter_dir, candidate_digest)
                pointer = ReleasePointer(
                    uri=str(uri),
                    digest=candidate_digest,
                    pass_at_1=decision.candidate_pass_at_1,
                    cycle=cycle,
                    time=_now(),
                    revision=revision + 1,
                )
                self._write_state(folder, name, pointer, ([current] if current else []) + history)
            except BaseException as error:
                self._log(folder, row | {"error": f"{type(error).__name__}: {error}"}, FAILED, revision)
                raise
            self._log(folder, row, decision.outcome, pointer.revision)
            return PublishResult(decision.outcome, pointer.revision, pointer)

    def rollback(self, name: str, *, reason: str = "") -> ReleasePointer:
        """Point the release back at the newest earlier adapter that was not itself rolled back from.

        The revision still increases; the pointer rolled back from goes into history, marked rolled_back.
        """
        folder = self._folder(name)
        if not folder.is_dir():
            raise ReleaseError(f"release {name!r} does not exist under {self.root}; nothing to roll back")
        with self._locked(folder):
            current, history = self._read_state(name)
            if current is None:
                raise ReleaseError(f"release {name!r} has no current adapter; nothing to roll back")
            index = next((i for i, old in enumerate(history) if not old.rolled_back), None)
            if index is None:
                why = "all earlier ones were rolled back from already" if history else "it has had only one"
                raise ReleaseError(
                    f"release {name!r} has no earlier adapter to roll back to ({why}); publish a new adapter"
                )
            target = history[index]
            if not Path(target.uri).is_dir():
                raise ReleaseError(f"cannot roll back {name!r}: the adapter folder {target.uri} is missing")
            pointer = replace(target, time=_now(), revision=current.revision + 1)
            rest = history[:index] + history[index + 1 :]
            self._write_state(folder, name, pointer, [replace(current, rolled_back=True), *rest])
            row = {"release": name, "from": current.to_dict(), "to": pointer.to_dict(), "reason": reason}
            self._log(folder, row, ROLLED_BACK, pointer.revision)
            return pointer

    def _folder(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ReleaseError(
                f"invalid release name {name!r}: use lower-case letters, digits, '-' and '.', "
                "starting and ending with a letter or digit"
            )
        return self.root / name

    def _read_state(self, name: str) -> tuple[ReleasePointer | None, list[ReleasePointer]]:
        path = self._folder(name) / "current.json"
        if not path.exists():
            return None, []
        try:
            data = read_json(path)
            return ReleasePointer.from_dict(data), [
                ReleasePointer.from_dict(old) for old in data.get("history", [])
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ReleaseError(
                f"{path} is not a valid release pointer ({error}); restore it from a backup"
            ) from error

    def _write_state(
        self, folder: Path, name: str, pointer: ReleasePointer, history: list[ReleasePointer]
    ) -> None:
        state = {"release": name, **pointer.to_dict()}
        state["history"] = [old.to_dict() for old in history[: self.history_limit]]
        write_json_atomic(folder / "current.json", state)

    def _log(self, folder: Path, row: dict[str, Any], outcome: str, revision: int) -> None:
        append_jsonl(
            folder / "promotions.jsonl",
            {"time": _now(), **row, "outcome": str(outcome), "revision": revision},
        )

    @staticmethod
    @contextmanager
    def _locked(folder: Path) -> Iterator[None]:
        with open(folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _check_publish_arguments(
    decision: Decision,
    adapter_dir: str | os.PathLike[str] | None,
    candidate_digest: str,
    incumbent_digest: str | None,
) -> None:
    if decision.outcome is Outcome.STALE:
        raise ValueError("a decision cannot be Stale before it is published; pass the gate's decision")
    for label, digest in (("candidate", candidate_digest), ("incumbent", incumbent_digest)):
        if digest is not None and not _DIGEST.match(digest):
            raise ValueError(f"{label} digest must look like 'sha256:<64 hex digits>', got {digest!r}")
    if decision.outcome is Outcome.BOOTSTRAPPED and incumbent_digest is not None:
        raise ValueError(
            "a Bootstrapped decision was made without an incumbent, but an incumbent digest was given"
        )
    if decision.outcome is Outcome.PROMOTED and incumbent_digest is None:
        raise ValueError("a Promoted decision needs the digest of the incumbent it was compared with")
    if decision.promotes and adapter_dir is None:
        raise ValueError("a promoting decision needs the candidate adapter folder")


def _install_adapter(adapters: Path, source: str | os.PathLike[str] | None, digest: str) -> Path:
    """Copy the adapter to adapters/<digest-hex>/ unless it is there; the copy must match the digest."""
    target = adapters / digest.removeprefix("sha256:")
    if target.is_dir():
        return target  # content-addressed and read-only: the same adapter, published before
    if source is None or not Path(source).is_dir():
        raise ReleaseError(f"candidate adapter folder {source} does not exist")
    adapters.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=adapters))
    try:
        shutil.copytree(source, temp, dirs_exist_ok=True)
        copied = tree_digest(temp)
        if copied != digest:
            raise ReleaseError(
                f"adapter folder {source} has digest {copied}, not the evaluated {digest}; "
                "only the adapter that was evaluated can be published"
            )
        _make_read_only(temp)
        os.rename(temp, target)
    except BaseException:
        _remove_tree(temp)
        raise
    return target


def _make_read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        path.chmod(0o555)
    folder.chmod(0o555)


def _remove_tree(folder: Path) -> None:
    """rmtree that also works on a folder already made read-only (for a non-root user)."""
    if not folder.exists():
        return
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    shutil.rmtree(folder)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
