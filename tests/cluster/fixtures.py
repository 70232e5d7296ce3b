"""pytest fixtures for tests that need the real test cluster.

    cluster    (session) a started tests.cluster.cluster.Cluster; torn down at the end of the session,
               whatever the tests did. Fails (never skips) if the binaries are not built.
    namespace  (function) a fresh namespace name, ready for pods; deleted after the test.

tests/cluster/conftest.py registers this module for the tests under tests/cluster. Other test folders
use it by naming it once in the top-level tests/conftest.py:

    pytest_plugins = ["tests.cluster.fixtures"]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from .cluster import Cluster
from .controlplane import ClusterError


@contextlib.contextmanager
def running(c: Cluster, what: str) -> Iterator[Cluster]:
    """`c` started, failing (never skipping) the tests that need it if it cannot start; stopped afterwards, its
    workdir kept when SIGMA0_KEEP_CLUSTER is set."""
    try:
        c.start()
    except ClusterError as e:
        pytest.fail(f"{what} did not start: {e}", pytrace=False)
    try:
        yield c
    finally:
        c.stop(keep_workdir=bool(os.environ.get("SIGMA0_KEEP_CLUSTER")))


@contextlib.contextmanager
def fresh_namespace(c: Cluster, test: str) -> Iterator[str]:
    """A namespace of its own for `test`, deleted afterwards."""
    name = c.create_namespace(test)
    try:
        yield name
    finally:
        c.delete_namespace(name)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with running(Cluster(die_with_parent=True), "test cluster") as c:
        yield c


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(cluster, request.node.name) as name:
        yield name
