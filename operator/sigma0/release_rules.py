"""The release rules, once: what a publish may write, when it is Stale, which adapter a rollback goes back to.

A release is written in two places: a folder on this machine (sigma0.release.LocalReleaseStore, behind
sigma0.local_release.LocalReleases) and an AdapterRelease on a cluster (sigma0.kube.releases.ClusterReleases).
They differ in how they hold a lock (fcntl.flock / the resourceVersion precondition), where adapters live and how
a pointer is serialised; they must not differ in what they accept. So every rule lives here, pure (no files, no
API calls), and both stores call it:

- names: a release is named as a Kubernetes object is, so a local release mirrors an AdapterRelease;
- digests: an adapter digest is `sha256:<64 lower-case hex digits>` (the AdapterRelease schema's pattern);
- a publish's arguments agree with its decision (`check_publish`): a Bootstrapped decision had no incumbent, a
  Promoted one had, a promoting one names its candidate, and nobody but the store says Stale;
- the stale check (`judge_publish`): a promoting decision writes only if the incumbent that was evaluated is still
  the current one; the same cycle's adapter already current is a publish that already happened (a store killed
  after the write, before its caller recorded it), recognised rather than called Stale;
- every change increases the revision by one; history is the previous pointers, newest first, bounded by a limit
  between 1 and MAX_HISTORY_LIMIT;
- rollback (`choose_rollback`): back to the newest earlier pointer that was not itself rolled back from; the one
  rolled back from goes to the front of history, marked rolled_back.

`Releases` is the one interface both stores implement, with the same signatures: what the executors (local and
operator) and `sigma0 release` use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from sigma0.gate import Outcome
from sigma0.io import DIGEST
from sigma0.plan import Incumbent

# Used with fullmatch: Python's `$` also matches before a final newline, which the API server's patterns do not.
# DIGEST (sigma0.io) is the digest format, shared with the evidence record.
NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a Kubernetes object name (RFC 1123 subdomain)
DEFAULT_HISTORY_LIMIT = 10
MAX_HISTORY_LIMIT = 50  # the AdapterRelease schema's maximum for spec.historyLimit and spec.history
PROMOTING = (Outcome.BOOTSTRAPPED, Outcome.PROMOTED)


def short_digest(digest: str) -> str:
    """`sha256:0123456789ab`, the first 12 hex digits: enough to tell adapters apart in `kubectl get adapterreleases`
    (the CRD's `shortDigest`, checked against `digest` by the API server) and on the dashboard."""
    algorithm, _, value = digest.partition(":")
    return f"{algorithm}:{value[:12]}" if value else digest[:19]


class ReleaseError(Exception):
    """A release operation that cannot be done; the message says why and what to do."""


class InvalidRelease(ReleaseError, ValueError):
    """Arguments that break a release rule (a malformed digest, a decision that contradicts its incumbent...):
    a bug in the caller, refused before anything is read or written."""


class Pointer(Protocol):
    """What both stores' pointers say (sigma0.release.ReleasePointer, sigma0.kube.releases.Pointer): a frozen
    dataclass naming one adapter, the revision that made it current, and whether it was rolled back from."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def uri(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def cycle(self) -> str: ...

    @property
    def revision(self) -> int: ...

    @property
    def pass_at_1(self) -> float | None: ...

    @property
    def promoted_at(self) -> str: ...

    @property
    def rolled_back(self) -> bool: ...


P = TypeVar("P", bound=Pointer)


@runtime_checkable
class Releases(Protocol):
    """Wherever releases live: a folder on this machine or AdapterReleases in a namespace."""

    def current(self, name: str) -> Pointer | None:
        """The pointer serving should load now; None: the release has no adapter yet."""
        ...

    def history(self, name: str) -> Sequence[Pointer]:
        """The previous pointers, newest first (the current one is not included)."""
        ...

    def incumbent(self, name: str) -> Incumbent | None:
        """The current adapter as a cycle records it when it starts: the one its candidate must beat."""
        ...

    def publish(self, name: str, *, cycle: str, decision: Mapping[str, Any], candidate_uri: str,
                candidate_digest: str, incumbent: Incumbent | None, evidence: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the gate's decision (its JSON form): a promoting one becomes current only if `incumbent`, the
        adapter it was evaluated against, is still current (otherwise the outcome is Stale and nothing changes).
        Returns {outcome, reason, revision, uri}: the outcome and revision after the publish, the current uri."""
        ...

    def rollback(self, name: str, *, reason: str = "") -> Pointer:
        """Point the release back at the newest earlier adapter not rolled back from already; returns it."""
        ...


# Names, digests, limits ------------------------------------------------------------------------------------------


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRelease(f"invalid release name {name!r}: use lower-case letters, digits, '-' and '.', "
                             "starting and ending with a letter or digit (a Kubernetes object name)")
    return name


def check_digest(digest: object, label: str = "adapter") -> str:
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise InvalidRelease(f"{label} digest must look like 'sha256:<64 hex digits>', got {digest!r}")
    return digest


def check_history_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise InvalidRelease(f"history_limit must be between 1 and {MAX_HISTORY_LIMIT}, got {limit!r}")
    return limit


def next_revision(revision: int) -> int:
    """Every change of a release, a rollback included, increases its revision by one."""
    return revision + 1


def bounded(history: Sequence[P], limit: int) -> list[P]:
    """History as a store keeps it: newest first, at most `limit` pointers."""
    return list(history[: check_history_limit(limit)])


# Publishing ------------------------------------------------------------------------------------------------------


def outcome_of(decision: Mapping[str, Any]) -> Outcome:
    """The outcome of a gate decision in its JSON form (decision.json, or the decide step's summary)."""
    try:
        return Outcome(str(decision.get("outcome")))
    except (ValueError, AttributeError) as error:
        got = decision.get("outcome") if isinstance(decision, Mapping) else decision
        raise InvalidRelease(f"not a gate decision: outcome {got!r}") from error


def check_publish(outcome: Outcome, *, candidate_uri: object, candidate_digest: object,
                  evaluated_digest: object) -> None:
    """Refuse a publish whose arguments contradict its decision, whatever the decision (a rejection too)."""
    if outcome is Outcome.STALE:
        raise InvalidRelease("a decision cannot be Stale before it is published; pass the gate's decision")
    check_digest(candidate_digest, "candidate")
    if evaluated_digest is not None:
        check_digest(evaluated_digest, "incumbent")
    if outcome is Outcome.BOOTSTRAPPED and evaluated_digest is not None:
        raise InvalidRelease("a Bootstrapped decision was made without an incumbent, but an incumbent digest "
                             "was given")
    if outcome is Outcome.PROMOTED and evaluated_digest is None:
        raise InvalidRelease("a Promoted decision needs the digest of the incumbent it was compared with")
    if outcome in PROMOTING and not candidate_uri:
        raise InvalidRelease("a promoting decision needs the candidate adapter folder")


@dataclass(frozen=True)
class Verdict:
    """What a publish does to the release as it is now."""

    outcome: Outcome  # the decision's, or Stale
    reason: str
    revision: int  # the release's revision after the publish
    write: bool  # make the candidate current (at `revision`); False: change nothing


def judge_publish(outcome: Outcome, reason: str, *, current: Pointer | None, revision: int, cycle: str,
                  candidate_digest: str, evaluated_digest: str | None) -> Verdict:
    """The stale check. `current`/`revision`: the release as read under the store's lock or precondition;
    `evaluated_digest`: the incumbent the decision was made against (None: there was no release)."""
    if outcome not in PROMOTING:
        return Verdict(outcome, reason, revision, write=False)
    if current is not None and current.cycle == cycle and current.digest == candidate_digest:
        return Verdict(outcome, reason, revision, write=False)  # this publish happened already
    current_digest = current.digest if current else None
    if current_digest != evaluated_digest:
        return Verdict(Outcome.STALE, stale_reason(evaluated_digest, current_digest), revision, write=False)
    return Verdict(outcome, reason, next_revision(revision), write=True)


def stale_reason(evaluated_digest: str | None, current_digest: str | None) -> str:
    return (f"the release changed since the incumbent was evaluated (evaluated {evaluated_digest}, now "
            f"{current_digest}); nothing was written: evaluate against the current one")


def history_after_publish(current: P | None, history: Sequence[P], limit: int) -> list[P]:
    """The pointer replaced goes to the front of history."""
    return bounded(([current] if current is not None else []) + list(history), limit)


# Rolling back ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackChoice(Generic[P]):
    target: P  # the earlier pointer to make current again (as stored: the store stamps its time and revision)
    history: list[P]  # the history after the rollback
    revision: int  # the release's revision after the rollback


def choose_rollback(label: str, current: P | None, history: Sequence[P], revision: int,
                    limit: int) -> RollbackChoice[P]:
    """Back to the newest earlier pointer that was not itself rolled back from. `label` names the release in the
    error (`release 'coder'`, `AdapterRelease 'coder'`)."""
    if current is None:
        raise ReleaseError(f"{label} has no current adapter; nothing to roll back")
    index = next((i for i, old in enumerate(history) if not old.rolled_back), None)
    if index is None:
        why = "all earlier ones were rolled back from already" if history else "it has had only one"
        raise ReleaseError(f"{label} has no earlier adapter to roll back to ({why}); publish a new adapter instead")
    rest = [*history[:index], *history[index + 1 :]]
    return RollbackChoice(target=history[index], history=bounded([replace(current, rolled_back=True), *rest], limit),
                          revision=next_revision(revision))
