"""Makes the `cluster` and `namespace` fixtures (tests/cluster/fixtures.py) available here.

If a top-level conftest already loads them with `pytest_plugins = ["tests.cluster.fixtures"]`,
nothing is registered twice, so the whole session shares one cluster.
"""

from __future__ import annotations

import pytest

from . import fixtures


def pytest_configure(config: pytest.Config) -> None:
    pm = config.pluginmanager
    if not any(getattr(p, "__file__", None) == fixtures.__file__ for p in pm.get_plugins()):
        pm.register(fixtures, "tests.cluster.fixtures")
