"""Two operator replicas on the real control plane: kopf peering lets only the one with the higher priority act;
kill it mid-cycle and the other takes over within the peering lifetime, adopts the running Job, and finishes the
cycle, with exactly one Job per step (Job names are deterministic: a second create is a 409, adopted)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from . import test_operator
from .cluster import Cluster
from .test_operator import ROOT, Operator, Platform, apply, example, jobs_of, phase_is, release, wait_for

pytestmark = pytest.mark.slow

PEERING = ("--peering", "sigma0", "--peering-lifetime", "10")
PEERING_MANIFESTS = ROOT / "manifests" / "peering"


@pytest.fixture(scope="module")
def platform(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    cluster.kubectl("apply", "-f", str(PEERING_MANIFESTS / "10-crds.yaml"))
    cluster.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev",
                    "crd/kopfpeerings.kopf.dev")
    cluster.kubectl("apply", "-f", str(PEERING_MANIFESTS / "20-peering.yaml"), "-f",
                    str(PEERING_MANIFESTS / "30-rbac.yaml"))
    with test_operator.started_platform(cluster, tmp_path_factory, (*PEERING, "--priority", "2")) as found:
        yield found


ns = test_operator.ns


def test_the_standby_takes_over_a_cycle_when_the_active_replica_dies(platform: Platform, ns: str) -> None:
    active = platform.operator
    standby = Operator(platform.kubeconfig, active.log.with_name("standby.log"), active.run_as_user,
                       (*PEERING, "--priority", "1"))
    standby.start()
    try:
        assert apply(platform, ns, example("failover", release="failover")).returncode == 0
        wait_for(platform, ns, "the first Job", lambda: jobs_of(platform, ns, "failover"))
        active.kill()  # SIGKILL: no goodbye in the peering object; the standby waits out the lifetime
        killed_at = time.monotonic()
        found = wait_for(platform, ns, "the standby to finish the cycle",
                         phase_is(platform, ns, "failover", "Succeeded", "Failed"), timeout=400)
        assert found["phase"] == "Succeeded", found.get("message")
        assert found["decision"]["outcome"] == "Bootstrapped"
        assert release(platform, ns, "failover") is not None
        created = jobs_of(platform, ns, "failover")
        steps = [job.metadata.labels["sigma0.dev/step"] for job in created]
        assert len(steps) == len(set(steps)), f"a step got two Jobs: {sorted(steps)}"
        assert {job.metadata.labels["sigma0.dev/attempt"] for job in created} == {"1"}
        assert time.monotonic() - killed_at < 400
        assert "peering sigma0" in standby.log.read_text()
    finally:
        standby.stop()
        active.start()  # the module's platform fixture stops it at the end


def test_with_both_alive_only_the_higher_priority_replica_acts(platform: Platform, ns: str) -> None:
    """The standby (priority 1) is alive and paused: the cycle's events and status come from the active one."""
    standby = Operator(platform.kubeconfig, platform.operator.log.with_name("standby2.log"),
                       platform.operator.run_as_user, (*PEERING, "--priority", "1"))
    standby.start()
    try:
        assert apply(platform, ns, example("both", release="both")).returncode == 0
        found = wait_for(platform, ns, "the cycle to end", phase_is(platform, ns, "both", "Succeeded", "Failed"),
                         timeout=400)
        assert found["phase"] == "Succeeded", found.get("message")
        steps = [job.metadata.labels["sigma0.dev/step"] for job in jobs_of(platform, ns, "both")]
        assert len(steps) == len(set(steps))
        paused = standby.log.read_text()
        assert "both" not in paused.split("priority 1", 1)[-1], "the paused standby reconciled the cycle"
    finally:
        standby.stop()
