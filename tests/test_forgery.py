"""Forged evidence (tests/hostile/forgery.py) against both sandboxes: no vacuous, forged, patched or same-type lie
passes, and the honest rows beside them do.

Each sandbox runs every case as one batch (module-scoped fixture), with the honest rows mixed in, so that a forgery
that disturbed the worker would show as an honest row failing."""

from __future__ import annotations

import collections
import shutil

import pytest
from hostile.forgery import CATEGORIES, FORGERIES, HONEST, Forgery

from sigma0.sandbox import Limits, Reason, Verdict, run_programs

SANDBOXES = [
    "process",
    pytest.param("gvisor", marks=pytest.mark.skipif(not shutil.which("runsc"), reason="runsc is not on PATH")),
]
LIMITS = Limits(memory_mb=512, cpu_seconds=5, file_size_mb=1, max_processes=16, output_bytes=64 * 1024)
ALL = {case.id: case for case in [*FORGERIES, *HONEST]}


@pytest.fixture(scope="module", params=SANDBOXES)
def verdicts(request: pytest.FixtureRequest) -> dict[str, Verdict]:
    programs = [case.program() for case in ALL.values()]
    found = {v.id: v for v in run_programs(programs, sandbox=request.param, workers=2, timeout=5.0, limits=LIMITS)}
    assert set(found) == set(ALL)
    return found


def test_every_category_has_several_variants() -> None:
    counts = collections.Counter(case.category for case in FORGERIES)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 5, counts


@pytest.mark.parametrize("case", FORGERIES, ids=lambda case: f"{case.category}-{case.id}")
def test_no_forgery_passes(verdicts: dict[str, Verdict], case: Forgery) -> None:
    verdict = verdicts[case.id]
    assert not verdict.passed, verdict
    if case.reason is not None:
        assert verdict.reason is case.reason, verdict


@pytest.mark.parametrize("case", HONEST, ids=lambda case: case.id)
def test_honest_rows_pass_beside_them(verdicts: dict[str, Verdict], case: Forgery) -> None:
    assert verdicts[case.id].reason is Reason.PASSED, verdicts[case.id]
