"""The eval gate: the one place that says yes to a new adapter.

`decide(candidate, incumbent, policy)` is a pure function of two per-problem result sets (task_id → passed)
and the policy. It never promotes on a tie, a regression, a win smaller than the margin, or results that do
not cover the same problems. Whether the incumbent it was given is still the current release is checked
later, when the release store publishes (outcome Stale); see sigma0.release.

Comparisons are exact: pass@1 figures are fractions of the same total, and policy numbers are read as the
decimals a person wrote (0.05 means 1/20, not the nearest binary float), so a win of exactly the margin
counts as meeting it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

Results = Mapping[str, bool]


class Outcome(StrEnum):
    BOOTSTRAPPED = "Bootstrapped"  # no release existed; the candidate becomes the first one
    PROMOTED = "Promoted"
    REJECTED = "Rejected"
    STALE = "Stale"  # set by the release store only: the evaluated incumbent is no longer the current release


@dataclass(frozen=True)
class Policy:
    """margin: the pass@1 a candidate must gain over the incumbent (0 still requires a strict win).
    min_pass_at_1: the floor any new release must reach, the first one included.
    significance: if set, a promotion also needs the exact McNemar p-value below it."""

    margin: float = 0.0
    min_pass_at_1: float = 0.0
    significance: float | None = None

    def __post_init__(self) -> None:
        _check_number("margin", self.margin, low=0.0, high=1.0, closed=True)
        _check_number("min_pass_at_1", self.min_pass_at_1, low=0.0, high=1.0, closed=True)
        if self.significance is not None:
            _check_number("significance", self.significance, low=0.0, high=1.0, closed=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        return cls(
            margin=data.get("margin", 0.0),
            min_pass_at_1=data.get("min_pass_at_1", 0.0),
            significance=data.get("significance"),
        )


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    policy: Policy
    candidate_pass_at_1: float
    candidate_passed: int
    candidate_total: int
    incumbent_pass_at_1: float | None = None
    incumbent_passed: int | None = None
    incumbent_total: int | None = None
    p_value: float | None = None
    candidate_only: int | None = None  # b: problems only the candidate passes
    incumbent_only: int | None = None  # c: problems only the incumbent passes

    @property
    def promotes(self) -> bool:
        return self.outcome in (Outcome.BOOTSTRAPPED, Outcome.PROMOTED)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        data["policy"] = self.policy.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """Read a decision back from its JSON form (decision.json, whose other keys are ignored)."""
        fields = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        try:
            fields["outcome"] = Outcome(fields["outcome"])
            fields["policy"] = Policy.from_dict(fields["policy"])
            return cls(**fields)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a decision: {error}") from error


def decide(candidate: Results, incumbent: Results | None, policy: Policy) -> Decision:
    """The promotion decision for the candidate's results against the incumbent's (None: no release yet)."""
    cand_passed, total = sum(bool(v) for v in candidate.values()), len(candidate)
    figures: dict[str, Any] = {
        "policy": policy,
        "candidate_pass_at_1": _ratio(cand_passed, total),
        "candidate_passed": cand_passed,
        "candidate_total": total,
    }
    cand = Fraction(cand_passed, total) if total else Fraction(0)
    floor = _exact(policy.min_pass_at_1)

    if incumbent is None:
        if total == 0:
            return Decision(
                Outcome.REJECTED, "the candidate has no results; run the evaluation first", **figures
            )
        if cand < floor:
            reason = (
                f"candidate {_show(cand_passed, total)} is below the minimum pass@1 {policy.min_pass_at_1:g} "
                "required for a first release; train a stronger adapter or lower min_pass_at_1"
            )
            return Decision(Outcome.REJECTED, reason, **figures)
        reason = f"no release exists yet; candidate {_show(cand_passed, total)} becomes the first release"
        return Decision(Outcome.BOOTSTRAPPED, reason, **figures)

    inc_passed = sum(bool(v) for v in incumbent.values())
    figures |= {
        "incumbent_pass_at_1": _ratio(inc_passed, len(incumbent)),
        "incumbent_passed": inc_passed,
        "incumbent_total": len(incumbent),
    }
    if total == 0:
        return Decision(Outcome.REJECTED, "the candidate has no results; run the evaluation first", **figures)
    mismatch = _mismatch(candidate, incumbent)
    if mismatch:
        reason = f"results are not comparable: {mismatch}; evaluate both adapters on the same problems"
        return Decision(Outcome.REJECTED, reason, **figures)

    b = sum(1 for task, passed in candidate.items() if passed and not incumbent[task])
    c = sum(1 for task, passed in candidate.items() if not passed and incumbent[task])
    p_value = mcnemar_p_value(b, c)
    figures |= {"p_value": float(p_value), "candidate_only": b, "incumbent_only": c}
    inc = Fraction(inc_passed, total)
    versus = f"candidate {_show(cand_passed, total)} vs incumbent {_show(inc_passed, total)}"

    if cand <= inc:
        verdict = "ties" if cand == inc else "regresses"
        reason = f"{versus}: the candidate {verdict}, and only a strict improvement is promoted"
        return Decision(Outcome.REJECTED, reason, **figures)
    if cand < inc + _exact(policy.margin):
        reason = (
            f"{versus}: the gain of {float(cand - inc):.4f} is below the required margin {policy.margin:g}; "
            "keep the incumbent"
        )
        return Decision(Outcome.REJECTED, reason, **figures)
    if cand < floor:
        reason = f"{versus}: the candidate is below the minimum pass@1 {policy.min_pass_at_1:g} for a release"
        return Decision(Outcome.REJECTED, reason, **figures)
    if policy.significance is not None and p_value >= _exact(policy.significance):
        reason = (
            f"{versus}: the gain is not significant (McNemar p = {float(p_value):.4g} ≥ "
            f"{policy.significance:g}, {b} problems won vs {c} lost); evaluate on more problems or relax "
            "significance"
        )
        return Decision(Outcome.REJECTED, reason, **figures)
    significance = f", McNemar p = {float(p_value):.4g}" if policy.significance is not None else ""
    reason = (
        f"{versus}: the candidate wins by {float(cand - inc):.4f} (margin {policy.margin:g}{significance})"
    )
    return Decision(Outcome.PROMOTED, reason, **figures)


def mcnemar_p_value(b: int, c: int) -> Fraction:
    """Exact two-sided McNemar test on the discordant pairs: min(1, 2·P[X ≤ min(b, c)]), X ~ Bin(b+c, ½)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(Fraction(1), Fraction(2 * tail, 2**n))


def _mismatch(candidate: Results, incumbent: Results) -> str:
    """An empty string when both cover the same task ids, else what differs (a few ids as examples)."""
    only_candidate = sorted(set(candidate) - set(incumbent))
    only_incumbent = sorted(set(incumbent) - set(candidate))
    parts = []
    if only_candidate:
        parts.append(
            f"{len(only_candidate)} task(s) only in the candidate's results ({_examples(only_candidate)})"
        )
    if only_incumbent:
        parts.append(
            f"{len(only_incumbent)} task(s) only in the incumbent's results ({_examples(only_incumbent)})"
        )
    return "; ".join(parts)


def _examples(ids: list[str], limit: int = 3) -> str:
    shown = ", ".join(task[:60] for task in ids[:limit])
    return shown + (", …" if len(ids) > limit else "")


def _ratio(passed: int, total: int) -> float:
    return passed / total if total else 0.0


def _show(passed: int, total: int) -> str:
    return f"{passed}/{total} ({100 * _ratio(passed, total):.1f}%)"


def _exact(value: float) -> Fraction:
    """The decimal a person wrote (repr is the shortest decimal that round-trips), as an exact fraction."""
    return Fraction(repr(value))


def _check_number(name: str, value: object, *, low: float, high: float, closed: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"policy {name} must be a number, got {value!r}")
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise ValueError(f"policy {name} must be in {bounds}, got {value!r}")
