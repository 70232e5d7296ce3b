"""GPU placements and weekly budgets on the real control plane (tests/cluster): `sigma0 operator` under its
ServiceAccount (manifests/10-rbac.yaml, which lets it keep the GPU ledgers in its own namespace), with the
administrator's budgets as its flags (BUDGETS), real Jobs on the one Node, which has `nvidia.com/gpu: 1`, and the
tiny CPU model.

The operator's clock is the real one plus an offset read from a file (`--clock-file`, test only, through
SIGMA0_CLOCK_FILE), so a test can move it a week ahead to let a budget free; stage pods' times stay real.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sigma0.kube import ledger as kube_ledger
from sigma0.placement import Usage, format_time, frees_at, gpu_hours, parse_time

from . import test_operator
from .cluster import Cluster
from .test_operator import (
    GROUP,
    VERSION,
    Platform,
    apply,
    condition,
    example,
    jobs_of,
    phase_is,
    status,
    table,
    wait_for,
)

pytestmark = pytest.mark.slow

# The operator and its namespaces, as tests/cluster/test_operator.py sets them up (a module-scoped operator of this
# module's own, started after `clock` below has set its clock file).
platform = test_operator.platform
ns = test_operator.ns

ENDED = ("Succeeded", "Failed")
# The administrator's budgets (--gpu-budget, through SIGMA0_GPU_BUDGETS): 0.36 GPU-seconds on metered, which one
# train step spends, and none at all on closed. The tenants' cycles ask for far more themselves (TENANT_ASKS).
BUDGETS = "metered=0.0001,closed=0"
TENANT_ASKS = 1000.0


def cycle(name: str, train: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """The example cycle with these train placements. Its generate step runs on the CPU, so the Node's one GPU
    is the train steps' alone; its sandbox steps run as plain processes in plain pods (the sandbox itself is
    tested in test_operator.py), so these tests are about placement only."""
    base = example()["spec"]
    return example(name, release=name, placement={"train": {"placements": train}, "eval": {"gpus": 0},
                                                   "sandbox": {"runtimeClassName": test_operator.PLAIN_RUNTIME_CLASS}},
                   verify={**base["verify"], "sandbox": "process"}, eval={**base["eval"], "sandbox": "process"},
                   **spec)


@pytest.fixture(scope="module", autouse=True)
def process_sandbox(cluster: Cluster) -> Iterator[str]:
    """The operator of this module allows sandbox steps in plain pods (set before `platform` starts it)."""
    with test_operator.process_sandbox_allowed(cluster) as runtime_class:
        yield runtime_class


@pytest.fixture(scope="module", autouse=True)
def budgets() -> Iterator[str]:
    """The administrator's budgets of the operator of this module (set before the `platform` fixture starts it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIGMA0_GPU_BUDGETS", BUDGETS)
        yield BUDGETS


@pytest.fixture(scope="module", autouse=True)
def clock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The offset file the operator of this module reads (set before the `platform` fixture starts it)."""
    path = tmp_path_factory.mktemp("clock") / "offset-seconds"
    path.write_text("0")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIGMA0_CLOCK_FILE", str(path))
        yield path


def stage_done(platform: Platform, namespace: str, name: str, step: str) -> Any:
    def check() -> dict[str, Any] | None:
        found = status(platform, namespace, name)
        stage = (found.get("stages") or {}).get(step) or {}
        if found.get("phase") == "Failed" or stage.get("state") == "failed":
            pytest.fail(f"{name} failed: {found.get('message')}", pytrace=False)
        return found if stage.get("state") == "succeeded" else None
    return check


def ledger_rows(platform: Platform, namespace: str) -> list[Usage]:
    """The namespace's ledger, where the operator keeps it: in its own namespace."""
    found = platform.core.read_namespaced_config_map(kube_ledger.name_for(namespace), kube_ledger.DEFAULT_NAMESPACE)
    return kube_ledger.parse(found.data[kube_ledger.KEY], "test")


def events(platform: Platform, namespace: str, name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in platform.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items:
        found.setdefault(event.reason, []).append(event.message)
    return found


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def pod_times(platform: Platform, namespace: str, job: str) -> tuple[datetime, datetime]:
    (pod,) = platform.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    terminated = pod.status.container_statuses[0].state.terminated
    return terminated.started_at, terminated.finished_at


def test_a_pod_asking_for_a_gpu_the_node_lacks_falls_back_to_the_next_placement(platform: Platform,
                                                                                  ns: str) -> None:
    # the API server holds the two forms apart and the names unique, as `sigma0 validate` does
    both = cycle("bad", [{"name": "a"}])
    both["spec"]["placement"]["train"]["gpus"] = 1
    answer = apply(platform, ns, both)
    assert answer.returncode != 0 and "set one placement at this level or a list in placements" in answer.stderr
    answer = apply(platform, ns, cycle("bad", [{"name": "a"}, {"name": "a", "gpus": 1}]))
    assert answer.returncode != 0 and "spec.placement.train.placements[1]: Duplicate value" in answer.stderr
    # one process trains on one device: a second GPU is refused, not held idle
    answer = apply(platform, ns, cycle("bad", [{"name": "a"}, {"name": "b", "gpus": 2}]))
    assert answer.returncode != 0 and "spec.placement.train.placements[1].gpus" in answer.stderr

    # the node has nvidia.com/gpu only: a pod asking for another kind of GPU stays Unschedulable

    placements = [{"name": "big", "gpuResource": "example.com/gpu", "unschedulableSeconds": 5},
                  {"name": "small", "gpus": 1}]
    assert apply(platform, ns, cycle("fits", placements)).returncode == 0
    found = wait_for(platform, ns, "the cycle to end", phase_is(platform, ns, "fits", *ENDED), timeout=400)
    assert found["phase"] == "Succeeded", found.get("message")

    train = found["stages"]["train"]
    assert (train["job"], train["attempt"], train["placement"]) == ("fits-train-2", 2, "small")
    (skip,) = train["skipped"]
    assert (skip["placement"], skip["reason"]) == ("big", "Unschedulable")
    assert "Insufficient example.com/gpu" in skip["message"]  # the scheduler's own words
    assert found["placement"] == "train=small,generate=default"
    fallback = events(platform, ns, "fits")["PlacementFallback"]
    assert len(fallback) == 1 and "stayed Unschedulable on placement big" in fallback[0]
    assert "trying placement small" in fallback[0]

    # the Job on big was deleted; the one on small says where it ran and with how many GPUs
    train_jobs = {j.metadata.name: j for j in jobs_of(platform, ns, "fits") if "-train-" in j.metadata.name}
    wait_for(platform, ns, "the Job on big to be gone", lambda: "fits-train-1" not in {
        j.metadata.name for j in jobs_of(platform, ns, "fits")}, timeout=60)
    labels = train_jobs["fits-train-2"].metadata.labels
    assert (labels["sigma0.dev/placement"], labels["sigma0.dev/gpus"]) == ("small", "1")
    limits = train_jobs["fits-train-2"].spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1"

    # kubectl get tc -o wide adds the placement
    (row,) = table(platform.cluster.kubectl("get", "tc", "fits", "-n", ns, "-o", "wide").stdout)
    assert row["PLACEMENT"] == "train=small,generate=default"
    assert "PLACEMENT" not in table(platform.cluster.kubectl("get", "tc", "fits", "-n", ns).stdout)[0]

    # its hours are in the namespace's ledger, from the pod's real start and end
    start, end = pod_times(platform, ns, "fits-train-2")
    (small,) = [r for r in ledger_rows(platform, ns) if r.placement == "small"]
    assert (small.stage, small.cycle, small.gpus) == ("train", "fits", 1)
    assert (small.start, small.end) == (start.astimezone(UTC), end.astimezone(UTC))
    text = platform.operator.metrics()
    assert metric(text, "sigma0_placement_skips_total", placement="big", reason="Unschedulable", step="train") == 1
    used = metric(text, "sigma0_gpu_hours_used", namespace=ns, placement="small")
    assert used is not None and used == pytest.approx((end - start).total_seconds() / 3600, rel=1e-6)


def test_budgets_survive_a_restart_a_spent_one_is_skipped_and_with_none_left_the_cycle_waits_until_one_frees(
        platform: Platform, ns: str, clock: Path) -> None:
    # the tenant gives itself 1000 GPU-hours on metered: the administrator's 0.36 GPU-seconds hold all the same
    metered = {"name": "metered", "weeklyGPUHours": TENANT_ASKS}
    budget = 0.0001
    placements = [metered, {"name": "spare"}]

    # 1. the first cycle trains on metered, whose budget it spends
    assert apply(platform, ns, cycle("spend", placements)).returncode == 0
    spent = wait_for(platform, ns, "the first cycle to end", phase_is(platform, ns, "spend", *ENDED), timeout=400)
    assert spent["phase"] == "Succeeded", spent.get("message")
    assert spent["stages"]["train"]["placement"] == "metered" and "skipped" not in spent["stages"]["train"]
    (row,) = [r for r in ledger_rows(platform, ns) if r.placement == "metered"]
    assert row.end is not None and gpu_hours([row], "metered", row.end) > budget

    # 2. its pods go (the cycle is deleted) and the operator restarts: only the ledger remembers the hours
    platform.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "spend")
    wait_for(platform, ns, "the first cycle's pods to go", lambda: not platform.core.list_namespaced_pod(
        ns, label_selector="sigma0.dev/cycle=spend").items, timeout=90)
    platform.operator.kill()
    platform.operator.start()

    # 3. a cycle with the same placements skips metered and trains on spare; one with no other usable placement waits
    starving = [metered, {"name": "closed", "weeklyGPUHours": TENANT_ASKS}]
    assert apply(platform, ns, cycle("after", placements)).returncode == 0
    assert apply(platform, ns, cycle("starved", starving, deadlineSeconds=30 * 86400)).returncode == 0
    after = wait_for(platform, ns, "the second cycle to end", phase_is(platform, ns, "after", *ENDED), timeout=400)
    assert after["phase"] == "Succeeded", after.get("message")
    train = after["stages"]["train"]
    assert train["placement"] == "spare"
    (skip,) = train["skipped"]
    assert (skip["placement"], skip["reason"]) == ("metered", "BudgetSpent")
    assert "PlacementSkipped" in events(platform, ns, "after")

    waiting = wait_for(platform, ns, "the third cycle to wait for a budget",
                       phase_is(platform, ns, "starved", "Waiting"))
    expected = frees_at([row], "metered", budget, datetime.now(UTC))
    assert expected is not None and row.start.timestamp() + 7 * 86400 < expected.timestamp() <= \
        row.end.timestamp() + 7 * 86400 + 1
    assert waiting["placementWait"] == {"step": "train", "reason": "GPUBudgetExhausted",
                                        "message": waiting["message"], "until": format_time(expected)}
    assert "metered: used" in waiting["message"] and "closed: its weekly budget is 0 GPU-hours" in waiting["message"]
    trained = condition(waiting, "Trained")
    assert (trained["status"], trained["reason"]) == ("Unknown", "GPUBudgetExhausted")
    assert not [j for j in jobs_of(platform, ns, "starved") if "-train-" in j.metadata.name]
    text = platform.operator.metrics()
    assert metric(text, "sigma0_gpu_hours_left", namespace=ns, placement="metered") == 0
    assert metric(text, "sigma0_gpu_hours_left", namespace=ns, placement="closed") == 0

    # 4. a week later (the operator's clock moves; nothing else does) the budget has freed and the cycle trains
    clock.write_text(str((parse_time(waiting["placementWait"]["until"]) - datetime.now(UTC)).total_seconds() + 2))
    try:
        trained_now = wait_for(platform, ns, "the third cycle's train step",
                               stage_done(platform, ns, "starved", "train"), timeout=300)
    finally:
        clock.write_text("0")
    assert trained_now["stages"]["train"]["placement"] == "metered"
    assert "placementWait" not in trained_now
    assert "PhaseWaiting" in events(platform, ns, "starved")
    platform.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "starved")


def test_a_tenant_with_admin_rights_in_its_namespace_cannot_touch_its_gpu_ledger(platform: Platform, ns: str,
                                                                                 tmp_path: Path) -> None:
    """The ledger holds the hours the administrator's budgets count: a tenant who could edit or delete it would
    give itself a fresh week. Kept in the operator's namespace, it is out of reach of the tenant's own admin role
    (the built-in `admin` ClusterRole bound in its namespace, which may write any ConfigMap there)."""
    from kubernetes import client, config

    from .test_operator import _kubeconfig

    cluster = platform.cluster
    platform.core.create_namespaced_service_account(ns, {"metadata": {"name": "tenant"}})
    client.RbacAuthorizationV1Api(cluster.api_client()).create_namespaced_role_binding(ns, {
        "metadata": {"name": "tenant-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]})
    kubeconfig = _kubeconfig(cluster, cluster.service_account_token(ns, "tenant"), tmp_path / "tenant.kubeconfig")
    tenant = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    name = kube_ledger.name_for(ns)
    body = {"metadata": {"name": name}, "data": {kube_ledger.KEY: ""}}
    # the tenant is an admin at home (the check could fail): it may write ConfigMaps in its own namespace
    tenant.create_namespaced_config_map(ns, {"metadata": {"name": "mine"}})
    for attempt in (lambda: tenant.read_namespaced_config_map(name, kube_ledger.DEFAULT_NAMESPACE),
                    lambda: tenant.create_namespaced_config_map(kube_ledger.DEFAULT_NAMESPACE, body),
                    lambda: tenant.delete_namespaced_config_map(name, kube_ledger.DEFAULT_NAMESPACE)):
        with pytest.raises(client.ApiException) as refused:
            attempt()
        assert refused.value.status == 403
