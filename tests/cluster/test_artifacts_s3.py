"""Artifacts in an S3 bucket instead of a volume, end to end on the real control plane: `spec.artifacts.uri`, the
operator's `--artifacts-secret` (from SIGMA0_ARTIFACTS_SECRET, as the chart's Deployment sets it), trusted stage pods
that get the Secret's keys through envFrom, sandbox pods (verify, score) that get none and use the presigned URLs of
the presign step before them, every stage on local copies (sigma0.remote), and an AdapterRelease whose adapter URI is
in the bucket.

The bucket is a real S3 REST endpoint that checks every signature, presigned URLs' included (versitygw,
tests/s3server.py's S3Server), on 127.0.0.1. The test's stage pods run as
host processes, which share the host's network, so they reach it; gVisor pods of the test node have no network at
all, so this module runs the sandbox steps with the stage's own process sandbox in plain pods (the sandbox itself
is tested in test_operator.py and tests/test_remote.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3server import SECRET_KEY, S3Server

from sigma0.io import tree_digest

from . import test_operator
from .cluster import Cluster
from .test_operator import GROUP, VERSION, Platform, apply, example, jobs_of, phase_is, release, wait_for

pytestmark = pytest.mark.slow

BUCKET = "sigma0-cycles"
SECRET = "s3-credentials"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "versitygw.log").start()  # checks every signature
    try:
        server.create_bucket(BUCKET)
        store = server.filesystem()
        for name in ("agent_corpus.json", "tasks.jsonl", "base_train.jsonl"):
            store.put_file(str(ROOT / "examples" / "corpus" / name), f"{BUCKET}/sigma0/corpus/{name}")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def process_sandbox(cluster: Cluster) -> Iterator[str]:
    """The operator of this module allows sandbox steps in plain pods (set before `platform` starts it)."""
    with test_operator.process_sandbox_allowed(cluster) as runtime_class:
        yield runtime_class


@pytest.fixture(scope="module", autouse=True)
def artifacts_secret() -> Iterator[None]:
    """The operator of this module passes the Secret SECRET to stage pods (set before `platform` starts it)."""
    before = os.environ.get("SIGMA0_ARTIFACTS_SECRET")
    os.environ["SIGMA0_ARTIFACTS_SECRET"] = SECRET
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SIGMA0_ARTIFACTS_SECRET", None)
        else:
            os.environ["SIGMA0_ARTIFACTS_SECRET"] = before


platform = test_operator.platform
ns = test_operator.ns


def s3_cycle(name: str, **spec: Any) -> dict[str, Any]:
    base = example()["spec"]
    return example(name, release="s3-coder", artifacts={"uri": f"s3://{BUCKET}/sigma0"},
                   placement={"sandbox": {"runtimeClassName": test_operator.PLAIN_RUNTIME_CLASS}},
                   verify={**base["verify"], "sandbox": "process"}, eval={**base["eval"], "sandbox": "process"},
                   **spec)


def test_a_cycle_on_s3_artifacts_bootstraps_then_a_second_is_judged_against_the_adapter_in_the_bucket(
        platform: Platform, ns: str, s3: S3Server, tmp_path: Path) -> None:
    platform.core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret",
                                                "metadata": {"name": SECRET}, "stringData": s3.environment()})
    assert apply(platform, ns, s3_cycle("s3-one")).returncode == 0
    first = wait_for(platform, ns, "the first S3 cycle to end", phase_is(platform, ns, "s3-one", "Succeeded", "Failed"),
                     timeout=400)
    assert first["phase"] == "Succeeded" and first["decision"]["outcome"] == "Bootstrapped", first.get("message")
    assert first["counts"]["verified"] > 0

    published = release(platform, ns, "s3-coder")
    assert published is not None
    current = published["spec"]["current"]
    assert current["uri"].startswith(f"s3://{BUCKET}/sigma0/cycles/{ns}/s3-one-"), current
    assert current["uri"].endswith("/train/adapter")
    store = s3.filesystem()
    local = tmp_path / "adapter"
    store.get(current["uri"].removeprefix("s3://") + "/", str(local), recursive=True)
    assert tree_digest(local) == current["digest"], "the adapter in the bucket is the one the release names"
    cycle_prefix = current["uri"].removeprefix("s3://").removesuffix("/train/adapter")
    for output in ("harvest/candidates.jsonl", "verify/verified.jsonl", "dataset/train.jsonl",
                   "eval/results/candidate-gate/results.jsonl", "decide/decision.json"):
        assert store.exists(f"{cycle_prefix}/{output}"), output
    assert store.exists(f"{cycle_prefix}/eval/results/candidate-gate/leaderboard.jsonl"), "each score step its own"
    assert store.exists(f"{cycle_prefix}/presign/verify.json") and store.exists(
        f"{cycle_prefix}/presign/score-candidate.json"), "the maps the trusted presign steps handed the sandbox steps"

    # the second cycle generates with the incumbent adapter downloaded from the bucket
    assert apply(platform, ns, s3_cycle("s3-two", train={**example()["spec"]["train"], "seed": 1})).returncode == 0
    second = wait_for(platform, ns, "the second S3 cycle to end",
                      phase_is(platform, ns, "s3-two", "Succeeded", "Failed"), timeout=400)
    assert second["phase"] == "Succeeded", second.get("message")
    assert second["resolvedIncumbent"]["uri"] == current["uri"]
    assert second["incumbent"]["total"] == 3 and second["decision"]["outcome"] in ("Promoted", "Rejected")

    # every trusted stage pod got the credentials from the Secret, no sandbox pod got any (they had presigned URLs
    # from the presign step just before), and the secret shows up nowhere it could be read back
    pods = platform.core.list_namespaced_pod(ns).items
    assert len(pods) >= 15
    kinds = {pod.metadata.name: pod.metadata.labels["sigma0.dev/kind"] for pod in pods}
    assert list(kinds.values()).count("sandbox") >= 5, kinds  # verify and score-candidate twice, score-incumbent
    for pod in pods:
        (container,) = pod.spec.containers
        given = [source.secret_ref.name for source in container.env_from or []]
        assert given == ([] if kinds[pod.metadata.name] == "sandbox" else [SECRET]), pod.metadata.name
        if kinds[pod.metadata.name] == "sandbox":  # the namespace's default account, and no token of it
            assert pod.spec.service_account_name in (None, "default") and not pod.spec.automount_service_account_token
        assert SECRET_KEY not in platform.cluster.pod_log(ns, pod.metadata.name)
        for state in pod.status.container_statuses or []:
            assert SECRET_KEY not in json.dumps(state.to_dict(), default=str)
    for name in ("s3-one", "s3-two"):
        found = platform.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "trainingcycles", name)
        assert SECRET_KEY not in json.dumps(found)
        assert len(jobs_of(platform, ns, name)) == len({j.metadata.labels["sigma0.dev/step"]
                                                        for j in jobs_of(platform, ns, name)})


def test_a_missing_credentials_secret_fails_the_cycle_at_once_with_the_reason(platform: Platform, ns: str) -> None:
    """The Secret the operator passes to stage pods does not exist in this namespace: the harvest pod cannot be
    configured (CreateContainerConfigError), which never heals by itself, so the cycle fails now, says why in its
    status and REASON column, and its Job is gone, instead of waiting out spec.deadlineSeconds (24 h by default)."""
    assert apply(platform, ns, s3_cycle("no-secret")).returncode == 0
    found = wait_for(platform, ns, "the cycle to fail", phase_is(platform, ns, "no-secret", "Failed"), timeout=90)
    assert found["reason"] == "StageFailed"
    assert "CreateContainerConfigError" in found["message"] and SECRET in found["message"], found["message"]
    assert found["stages"]["harvest"]["state"] == "failed"
    wait_for(platform, ns, "its Job to be deleted", lambda: not jobs_of(platform, ns, "no-secret"), timeout=60)
    assert release(platform, ns, "s3-coder") is None
    shown = platform.cluster.kubectl("get", "trainingcycles", "no-secret", "-n", ns, "--no-headers").stdout
    assert "Failed" in shown and "StageFailed" in shown, shown
