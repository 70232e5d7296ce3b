"""The operator's /metrics on the real control plane: served over HTTPS (`--metrics-secure`, the chart's default)
to a ServiceAccount token that the real API server authenticates (TokenReview) and whose RBAC lets it get /metrics
(SubjectAccessReview), under the operator's own least-privilege ServiceAccount plus manifests/15-metrics-access.yaml;
and the new figures (time in phase, queue depth, reconcile duration) as a queued pair of cycles makes them."""

from __future__ import annotations

import http.client
import ssl
import tempfile
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .cluster import Cluster
from .test_operator import MANIFESTS, Platform, apply, example, ns, phase_is, started_platform, wait_for

__all__ = ["ns"]  # the artifacts-claim namespace fixture, with this module's platform


@pytest.fixture(scope="module")
def platform(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    cluster.kubectl("apply", "-f", str(MANIFESTS / "15-metrics-access.yaml"))
    with started_platform(cluster, tmp_path_factory, extra=("--metrics-secure",)) as found:
        yield found


def pinned(port: int) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate the operator serves (its self-signed one), and so also
    checks that it names 127.0.0.1."""
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    with tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False) as out:
        out.write(pem)
    return ssl.create_default_context(cafile=out.name)


def scrape(platform: Platform, token: str | None) -> tuple[int, str]:
    port = platform.operator.metrics_port
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=pinned(port), timeout=15)
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def service_account(platform: Platform, namespace: str, name: str, reader: bool) -> str:
    documents = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}]
    if reader:  # what an admin does for Prometheus (the chart's metrics.readers)
        documents.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{namespace}-{name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "sigma0-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    platform.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    return platform.cluster.service_account_token(namespace, name, seconds=3600)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition `text`, or None."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def test_only_a_token_the_cluster_authorizes_reads_the_metrics_over_https(platform: Platform, ns: str) -> None:
    reader = service_account(platform, ns, "prometheus", reader=True)
    stranger = service_account(platform, ns, "stranger", reader=False)
    assert scrape(platform, None)[0] == 401
    assert scrape(platform, stranger)[0] == 403  # authenticated by the API server, but no RBAC for /metrics
    assert scrape(platform, reader[:-4] + "abcd")[0] == 401  # a forged signature: TokenReview says no
    status, text = scrape(platform, reader)
    assert status == 200 and sample(text, "sigma0_reconcile_errors_total", kind="cycle") is not None
    plain = http.client.HTTPConnection("127.0.0.1", platform.operator.metrics_port, timeout=15)
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # no plain HTTP on the HTTPS port
        plain.request("GET", "/metrics", headers={"Authorization": f"Bearer {reader}"})
        plain.getresponse()
    plain.close()

    # A queued pair of one release: the queue depth, the oldest Queued cycle, and each phase the first one leaves
    assert apply(platform, ns, example()).returncode == 0
    assert apply(platform, ns, example("sample-coder-2")).returncode == 0
    wait_for(platform, ns, "the second cycle to be Queued", phase_is(platform, ns, "sample-coder-2", "Queued"))

    def figures() -> str | None:
        status, text = scrape(platform, reader)
        assert status == 200
        depth = sample(text, "sigma0_queue_depth", namespace=ns, release="sample-coder")
        left = sample(text, "sigma0_phase_duration_seconds_count", phase="Harvesting")
        return text if depth == 1 and left and (sample(text, "sigma0_phase_oldest_seconds", phase="Queued") or 0) > 0 \
            else None

    text = wait_for(platform, ns, "queue depth 1, a Queued age and the first cycle past harvest in the metrics",
                    figures, timeout=240, interval=1)
    assert (sample(text, "sigma0_phase_duration_seconds_sum", phase="Harvesting") or 0) > 0
    assert (sample(text, "sigma0_reconcile_duration_seconds_count", kind="cycle") or 0) > 0
    assert (sample(text, "sigma0_reconcile_duration_seconds_count", kind="resync") or 0) > 0
    assert sample(text, "sigma0_reconcile_errors_total", kind="cycle") == 0
    first = platform.custom.get_namespaced_custom_object("sigma0.dev", "v1alpha1", ns, "trainingcycles",
                                                         "sample-coder-1")["status"]
    assert first["phaseTransitionTime"] >= first["startTime"]

