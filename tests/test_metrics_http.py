"""The /metrics endpoint as an attacker meets it: over HTTPS, only a token that the cluster authenticates and
authorizes for `get /metrics` reads the figures (here a stand-in answers the TokenReview and SubjectAccessReview;
on the real control plane: tests/cluster/test_metrics.py)."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sigma0.kube import metrics_http
from sigma0.kube.metrics import OperatorMetrics
from sigma0.kube.metrics_http import CertificateFiles, Gate, MetricsServer, User

TOKENS = {"reader": User("system:serviceaccount:monitoring:prometheus", groups=("system:serviceaccounts",)),
          "nobody": User("system:serviceaccount:default:default")}


class Reviewer:
    """The API server's answers: TOKENS are authenticated, and only `reader` may get /metrics."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.down = False

    def authenticate(self, token: str) -> User | None:
        self.asked.append(token)
        if self.down:
            raise ConnectionError("the API server is unreachable")
        return TOKENS.get(token)

    def allowed(self, user: User, path: str) -> bool:
        assert path == "/metrics"
        return user == TOKENS["reader"]


@pytest.fixture
def reviewer() -> Reviewer:
    return Reviewer()


@pytest.fixture
def tls(tmp_path: Path) -> CertificateFiles:
    return CertificateFiles(*metrics_http.self_signed(tmp_path, ["localhost", "127.0.0.1"]))


@pytest.fixture
def secure(reviewer: Reviewer, tls: CertificateFiles) -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    OperatorMetrics(registry).decided("coder", "Promoted")
    server = MetricsServer("127.0.0.1", 0, registry, gate=Gate(reviewer), tls=tls)
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()


def get(server: MetricsServer, token: str | None = None, path: str = "/metrics",
        cafile: Path | None = None) -> tuple[int, dict[str, str], str]:
    context = ssl.create_default_context(cafile=str(cafile or server.tls.cert))  # type: ignore[union-attr]
    connection = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=context, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode()
    finally:
        connection.close()


def test_only_an_authenticated_and_authorized_token_reads_the_figures(secure: MetricsServer) -> None:
    status, headers, _ = get(secure)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert get(secure, "forged")[0] == 401  # TokenReview: not authenticated
    assert get(secure, "nobody")[0] == 403  # authenticated, but RBAC does not let it get /metrics
    status, headers, body = get(secure, "reader")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'sigma0_decisions_total{outcome="Promoted",release="coder"} 1.0' in body
    assert get(secure, "reader", path="/other")[0] == 404


@pytest.mark.parametrize("header", ["Basic cmVhZGVyOg==", "Bearer", "Bearer   ", "reader", "Token reader"])
def test_anything_but_a_bearer_token_is_401_and_never_reviewed(secure: MetricsServer, reviewer: Reviewer,
                                                               header: str) -> None:
    context = ssl.create_default_context(cafile=str(secure.tls.cert))  # type: ignore[union-attr]
    connection = http.client.HTTPSConnection("127.0.0.1", secure.server_address[1], context=context, timeout=10)
    connection.request("GET", "/metrics", headers={"Authorization": header})
    assert connection.getresponse().status == 401
    connection.close()
    assert reviewer.asked == []


def test_plain_http_on_the_https_port_gets_nothing(secure: MetricsServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", secure.server_address[1], timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection.request("GET", "/metrics", headers={"Authorization": "Bearer reader"})
        connection.getresponse()
    connection.close()


def test_answers_are_cached_briefly_by_token_and_an_api_server_that_cannot_answer_is_503_not_cached(
        reviewer: Reviewer) -> None:
    now = [0.0]
    gate = Gate(reviewer, ttl=60, clock=lambda: now[0])
    assert [gate.status("Bearer reader") for _ in range(3)] == [200] * 3
    assert [gate.status("Bearer forged") for _ in range(3)] == [401] * 3
    assert reviewer.asked == ["reader", "forged"]  # one review per token per minute, rejected ones too
    now[0] = 61
    reviewer.down = True
    assert gate.status("Bearer reader") == 503  # expired, and the API server cannot say: never a yes
    reviewer.down = False
    assert gate.status("Bearer reader") == 200
    assert reviewer.asked == ["reader", "forged", "reader", "reader"]


def test_the_cache_is_bounded_whatever_tokens_arrive(reviewer: Reviewer) -> None:
    gate = Gate(reviewer)
    for number in range(metrics_http.CACHE_ENTRIES + 50):
        gate.status(f"Bearer junk-{number}")
    assert len(gate._cache) <= metrics_http.CACHE_ENTRIES


def test_a_client_that_connects_and_says_nothing_does_not_hold_up_the_others(secure: MetricsServer) -> None:
    silent = socket.create_connection(("127.0.0.1", secure.server_address[1]))  # no TLS handshake, ever
    try:
        started = time.monotonic()
        assert get(secure, "reader")[0] == 200
        assert time.monotonic() - started < metrics_http.HANDSHAKE_SECONDS
    finally:
        silent.close()


def test_a_rotated_certificate_is_served_without_a_restart(secure: MetricsServer, tmp_path: Path) -> None:
    first = secure.tls.cert.read_bytes()  # type: ignore[union-attr]
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    cert, key = metrics_http.self_signed(renewed, ["localhost", "127.0.0.1"])
    secure.tls.key.write_bytes(key.read_bytes())  # type: ignore[union-attr]  # as a Secret's update lands
    secure.tls.cert.write_bytes(cert.read_bytes())  # type: ignore[union-attr]
    assert get(secure, "reader", cafile=cert)[0] == 200
    (tmp_path / "old.crt").write_bytes(first)
    with pytest.raises(ssl.SSLCertVerificationError):  # the old certificate is gone
        get(secure, "reader", cafile=tmp_path / "old.crt")


def test_a_broken_certificate_is_refused_at_start_and_a_broken_rotation_keeps_the_last_good_one(
        tls: CertificateFiles, tmp_path: Path) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        CertificateFiles(bad, tls.key)
    good = tls.context()
    tls.cert.write_text("truncated")
    assert tls.context() is good


def test_plain_http_listens_only_on_the_address_given() -> None:
    server = MetricsServer("127.0.0.2", 0, CollectorRegistry())
    server.serve_in_thread()
    try:
        port = server.server_address[1]
        connection = http.client.HTTPConnection("127.0.0.2", port, timeout=10)
        connection.request("GET", "/metrics")
        assert connection.getresponse().status == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_never_travels_in_plain_http() -> None:
    with pytest.raises(ValueError, match="only over TLS"):
        MetricsServer("127.0.0.1", 0, CollectorRegistry(), gate=Gate(Reviewer()))


@pytest.mark.parametrize(("flags", "error"), [
    (["--metrics-cert-file", "tls.crt", "--metrics-key-file", "tls.key"], "need --metrics-secure"),
    (["--metrics-secure", "--metrics-cert-file", "tls.crt"], "go together")])
def test_certificate_flags_that_would_be_ignored_or_half_given_are_refused(flags: list[str], error: str) -> None:
    import argparse

    from sigma0.kube import operator

    parser = argparse.ArgumentParser()
    operator.add_arguments(parser)
    with pytest.raises(SystemExit, match=error):
        operator.metrics_server(parser.parse_args(["--metrics-port", "0", *flags]), OperatorMetrics(), None)
