"""The janitor on the real control plane (sigma0.kube.janitor): finished cycles past their release's history limit,
or past their own ttlSecondsAfterFinished, go with their files, but for the adapter the release points at; a
running cycle and a failed one that no limit covers stay.

The cycles are dry runs whose harvest and verify pods say their summary at once (tests/cluster/faults.py), so
that they finish in seconds; their folders are then filled as a trained cycle's would be, and the AdapterRelease
is made to point at the oldest one's adapter (as a publish would have): what the janitor keeps or deletes
depends only on that pointer and the folders, not on how they came to be. The cleanup itself is the operator's
real Job, run by the pod executor as root on the shared artifacts folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from . import test_operator
from .cluster import Cluster
from .faults import FAKE_SUMMARIES, StageFaults, hooked
from .test_operator import GROUP, NOWHERE, VERSION, Platform, apply, example, jobs_of, phase_is, status, wait_for

platform = test_operator.platform
ns = test_operator.ns

DIGEST = "sha256:" + "d" * 64
FILES = ("harvest/candidates.jsonl", "verify/verified.jsonl", "train/adapter/adapter_model.safetensors",
         "train/adapter/adapter_config.json", "train/report.json", "eval/results/candidate-gate/results.jsonl")


@pytest.fixture(scope="module")
def faults(cluster: Cluster) -> Iterator[StageFaults]:
    with hooked(cluster) as found:
        yield found


def dry_run(faults: StageFaults, name: str, release: str, **spec: Any) -> dict[str, Any]:
    for step in ("harvest", "verify"):
        faults.fake(name, step, FAKE_SUMMARIES[step])
    return example(name, release=release, stopAfter="verify", **spec)


def exists(platform: Platform, namespace: str, name: str) -> bool:
    try:
        platform.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingcycles", name)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def folder_of(platform: Platform, namespace: str, name: str) -> Path:
    uid = platform.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingcycles",
                                                       name)["metadata"]["uid"]
    return platform.artifacts / "cycles" / namespace / f"{name}-{uid[:8]}"


def fill(folder: Path) -> None:
    """What a trained cycle leaves (a dry run writes no adapter)."""
    for relative in FILES:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(relative)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_history_limit_and_ttl_delete_finished_cycles_and_their_files_but_the_adapter_the_release_points_at(
        platform: Platform, ns: str, faults: StageFaults) -> None:
    # a failed cycle and three succeeded ones of release "kept", one at a time; the release exists, with no limits
    platform.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "adapterreleases", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AdapterRelease", "metadata": {"name": "kept"}, "spec": {}})
    failing = example("failed-1", release="kept", harvest={"sources": [{"path": "corpus/missing.json"}]})
    assert apply(platform, ns, failing).returncode == 0
    wait_for(platform, ns, "failed-1 to fail", phase_is(platform, ns, "failed-1", "Failed"), timeout=120)
    succeeded = ["old-1", "mid-2", "new-3"]
    for name in succeeded:
        assert apply(platform, ns, dry_run(faults, name, "kept")).returncode == 0
        found = wait_for(platform, ns, f"{name} to finish", phase_is(platform, ns, name, "Succeeded", "Failed"),
                         timeout=120)
        assert found["phase"] == "Succeeded", found
        time.sleep(1.1)  # completion times (whole seconds) in the order of the names
    # a running cycle of the release, with a TTL of 0 that does not apply to it: its harvest pod never schedules
    assert apply(platform, ns, example("running", release="kept", placement=NOWHERE,
                                       ttlSecondsAfterFinished=0)).returncode == 0
    wait_for(platform, ns, "running to run", phase_is(platform, ns, "running", "Harvesting"))
    folders = {name: folder_of(platform, ns, name) for name in [*succeeded, "failed-1"]}
    for folder in folders.values():
        fill(folder)
    time.sleep(4)  # more than a resync: without limits nothing goes
    assert all(exists(platform, ns, name) for name in [*succeeded, "failed-1", "running"])

    # the release points at old-1's adapter (current) and a folder elsewhere (history); it keeps one succeeded cycle
    adapter = f"/artifacts/cycles/{ns}/{folders['old-1'].name}/train/adapter"
    platform.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "adapterreleases", "kept", {"spec": {
        "successfulCyclesHistoryLimit": 1, "revision": 1,
        "current": {"uri": adapter, "digest": DIGEST, "cycle": "old-1", "revision": 1},
        "history": [{"uri": "/artifacts/imports/elsewhere", "digest": DIGEST, "revision": 0}]}})
    wait_for(platform, ns, "old-1 and mid-2 to be deleted",
             lambda: not exists(platform, ns, "old-1") and not exists(platform, ns, "mid-2"), timeout=120)
    assert tree(folders["old-1"]) == {"train", "train/adapter", "train/adapter/adapter_model.safetensors",
                                      "train/adapter/adapter_config.json"}
    assert not folders["mid-2"].exists()
    assert tree(folders["new-3"]) >= set(FILES) and tree(folders["failed-1"]) >= set(FILES)
    assert exists(platform, ns, "new-3") and exists(platform, ns, "failed-1")  # no failed limit: failed stay
    assert status(platform, ns, "running")["phase"] == "Harvesting"
    assert [j.metadata.name for j in jobs_of(platform, ns, "running")] == ["running-harvest-1"]
    assert not jobs_of(platform, ns, "old-1") and not jobs_of(platform, ns, "mid-2")  # their Jobs went with them
    said = [e.message for e in platform.core.list_namespaced_event(
        ns, field_selector="involvedObject.name=old-1").items if e.reason == "CleaningUp"]
    assert len(said) == 1 and f"keeping {adapter} (its release points there)" in said[0]

    # a TTL: a dry run of another release goes 5 s after it finished, with its folder
    assert apply(platform, ns, dry_run(faults, "brief", "ttl", ttlSecondsAfterFinished=5)).returncode == 0
    done = wait_for(platform, ns, "brief to finish", phase_is(platform, ns, "brief", "Succeeded"), timeout=120)
    brief = folder_of(platform, ns, "brief")
    fill(brief)
    finished = datetime.fromisoformat(done["completionTime"].replace("Z", "+00:00")).timestamp()
    wait_for(platform, ns, "brief to be deleted", lambda: not exists(platform, ns, "brief"), timeout=60)
    assert time.time() >= finished + 5  # not before its TTL
    assert not brief.exists()
    assert exists(platform, ns, "running") and exists(platform, ns, "new-3")
    platform.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", "running")
