"""The local release store: which adapter serving should load now, its history, and every promotion decision.

The cluster keeps the same facts in an AdapterRelease; this store is its local twin, and both apply the same
rules (sigma0.release_rules: digests, the stale check, history, rollback); sigma0.local_release puts this store
behind the `Releases` interface that the AdapterRelease store implements too. Layout under `root` (a workdir's
`releases/`):

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
and the append, the log is one row short until the same cycle publishes again: that publish is recognised
(the cycle's adapter is current already), writes nothing, and appends the row if it is missing. current.json is
the authority on what is live. An adapter copied in before a failed swap stays in adapters/ (content-addressed,
so a retry reuses it).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sigma0 import release_rules as rules
from sigma0.gate import Decision, Outcome
from sigma0.io import append_jsonl, read_json, read_jsonl, tree_digest, write_json_atomic
from sigma0.release_rules import ReleaseError

# Outcomes that appear in promotions.jsonl besides the gate's own.
FAILED = "Failed"
ROLLED_BACK = "RolledBack"


@dataclass(frozen=True)
class ReleasePointer:
    uri: str  # the adapter folder serving should load
    digest: str
    pass_at_1: float
    cycle: str  # the cycle that won it
    time: str  # when this pointer became current
    revision: int  # increases on every change of the release, rollbacks included
    rolled_back: bool = False  # in history only: this pointer was rolled back from, so rollback skips it

    @property
    def promoted_at(self) -> str:
        """`time` under the name the AdapterRelease's pointer uses (sigma0.release_rules.Pointer)."""
        return self.time

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
    reason: str = ""  # the decision's reason, or why it is Stale


class LocalReleaseStore:
    def __init__(self, root: str | os.PathLike[str], *, history_limit: int = rules.DEFAULT_HISTORY_LIMIT) -> None:
        self.root = Path(root).absolute()  # pointers carry absolute adapter paths
        self.history_limit = rules.check_history_limit(history_limit)

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
        rules.check_publish(
            decision.outcome,
            candidate_uri=candidate_adapter_dir,
            candidate_digest=candidate_digest,
            evaluated_digest=evaluated_incumbent_digest,
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
            verdict = rules.judge_publish(
                decision.outcome,
                decision.reason,
                current=current,
                revision=revision,
                cycle=cycle,
                candidate_digest=candidate_digest,
                evaluated_digest=evaluated_incumbent_digest,
            )
            if verdict.outcome is Outcome.STALE:
                row["current_digest"] = current.digest if current else None
                row["reason"] = verdict.reason
                self._log(folder, row, Outcome.STALE, revision)
                return PublishResult(Outcome.STALE, revision, current, verdict.reason)
            if not verdict.write:  # a rejection, or this cycle's adapter is current already (published before)
                if not decision.promotes or not self._logged(name, cycle, candidate_digest, decision.outcome):
                    self._log(folder, row, decision.outcome, revision)
                return PublishResult(decision.outcome, revision, current, verdict.reason)
            try:
                uri = _install_adapter(folder / "adapters", candidate_adapter_dir, candidate_digest)
                pointer = ReleasePointer(
                    uri=str(uri),
                    digest=candidate_digest,
                    pass_at_1=decision.candidate_pass_at_1,
                    cycle=cycle,
                    time=_now(),
                    revision=verdict.revision,
                )
                history = rules.history_after_publish(current, history, self.history_limit)
                self._write_state(folder, name, pointer, history)
            except BaseException as error:
                self._log(folder, row | {"error": f"{type(error).__name__}: {error}"}, FAILED, revision)
                raise
            self._log(folder, row, decision.outcome, pointer.revision)
            return PublishResult(decision.outcome, pointer.revision, pointer, verdict.reason)

    def rollback(self, name: str, *, reason: str = "") -> ReleasePointer:
        """Point the release back at the newest earlier adapter that was not itself rolled back from
        (sigma0.release_rules.choose_rollback), if its folder is still there.

        The revision still increases; the pointer rolled back from goes into history, marked rolled_back.
        """
        folder = self._folder(name)
        if not folder.is_dir():
            raise ReleaseError(f"release {name!r} does not exist under {self.root}; nothing to roll back")
        with self._locked(folder):
            current, history = self._read_state(name)
            revision = current.revision if current else 0
            choice = rules.choose_rollback(f"release {name!r}", current, history, revision, self.history_limit)
            assert current is not None  # choose_rollback refuses a release without one
            if not Path(choice.target.uri).is_dir():
                raise ReleaseError(f"cannot roll back {name!r}: the adapter folder {choice.target.uri} is missing")
            pointer = replace(choice.target, time=_now(), revision=choice.revision)
            self._write_state(folder, name, pointer, choice.history)
            row = {"release": name, "from": current.to_dict(), "to": pointer.to_dict(), "reason": reason}
            self._log(folder, row, ROLLED_BACK, pointer.revision)
            return pointer

    def _folder(self, name: str) -> Path:
        return self.root / rules.check_name(name)

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
        state["history"] = [old.to_dict() for old in rules.bounded(history, self.history_limit)]
        write_json_atomic(folder / "current.json", state)

    def _logged(self, name: str, cycle: str, digest: str, outcome: Outcome) -> bool:
        """Whether the log already has the row for this cycle's promotion of this adapter."""
        return any(
            (row.get("cycle"), row.get("candidate_digest"), row.get("outcome")) == (cycle, digest, str(outcome))
            for row in self.promotions(name)
        )

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
