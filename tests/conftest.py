"""Fixtures shared by more than one test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SIGMA0_MODEL_CACHE for the module: tiny models materialise here, never in the user's cache."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIGMA0_MODEL_CACHE", str(root))
        yield root
