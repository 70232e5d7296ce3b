"""pytest fixtures for tests that need the real test cluster.

    cluster    (session) a started tests.cluster.cluster.Cluster; torn down at the end of the session,
               whatever the tests did. Fails (never skips) if the binaries are not built.
    namespace  (function) a fresh namespace name, ready for pods; deleted after the test.

tests/cluster/conftest.py registers this module for the tests under tests/cluster. Other test folders
use it by naming it once in the top-level tests/conftest.py:

    pytest_plugins = ["tests.cluster.fixtures"]
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .cluster import Cluster
from .controlplane import ClusterError


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster(die_with_parent=True)
    try:
        c.start()
    except ClusterError as e:
        pytest.fail(f"test cluster did not start: {e}", pytrace=False)
    try:
        yield c
    finally:
        c.stop(keep_workdir=bool(os.environ.get("SIGMA0_KEEP_CLUSTER")))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = cluster.create_namespace(request.node.name)
    try:
        yield name
    finally:
        cluster.delete_namespace(name)
