"""Serving /metrics: HTTPS that only lets in whom the cluster's RBAC lets in, or plain HTTP on one address.

Secure (the chart's default, `metrics.secure: true`; `sigma0 operator --metrics-secure`): kube-rbac-proxy's pattern,
in this process instead of a sidecar.

    TLS          a certificate the admin gives (a Secret's tls.crt / tls.key, e.g. cert-manager's), re-read whenever
                 its files change (a rotated Secret needs no restart), or else a self-signed one made at start
    who          the request's bearer token goes to a TokenReview: no token, or one the API server does not
                 accept, is 401
    may they     a SubjectAccessReview asks whether that user may `get` the nonResourceURL /metrics (the chart's
                 <release>-metrics-reader ClusterRole grants exactly that): no is 403, yes is 200 with the figures
    cache        each token's answer is kept CACHE_SECONDS (Prometheus scrapes every 15-30 s: one review pair a
                 minute, not one per scrape), a rejected token's too; an API server that cannot answer is 503,
                 not cached

Plain (`metrics.secure: false`): HTTP, bound to the address given (the chart gives the pod's IP, never 0.0.0.0),
and the chart's NetworkPolicy admits only the peers its values list.

prometheus_client's own server can do TLS but not authentication, nor re-read a rotated certificate: hence this
small server on http.server, whose figures are still prometheus_client's (`choose_encoder`: text or OpenMetrics).
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("sigma0.metrics")

PATH = "/metrics"
CACHE_SECONDS = 60.0
CACHE_ENTRIES = 1024
HANDSHAKE_SECONDS = 10.0  # a client that opens a connection and says nothing holds one thread this long at most


@dataclass(frozen=True)
class User:
    """Who a TokenReview says a token belongs to: what a SubjectAccessReview asks about."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


class Reviewer(Protocol):
    def authenticate(self, token: str) -> User | None: ...

    def allowed(self, user: User, path: str) -> bool: ...


class KubeReviewer:
    """TokenReview and SubjectAccessReview against the API server, as the operator's ServiceAccount (it needs
    `create` on tokenreviews and subjectaccessreviews: the chart grants both)."""

    def __init__(self, api_client: Any, timeout: tuple[float, float] = (5.0, 10.0)) -> None:
        from kubernetes import client

        self.authentication = client.AuthenticationV1Api(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)
        self.timeout = timeout

    def authenticate(self, token: str) -> User | None:
        review = self.authentication.create_token_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            _request_timeout=self.timeout)
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        user = status.user
        return User(user.username or "", user.uid or "", tuple(user.groups or ()),
                    {key: list(values) for key, values in (user.extra or {}).items()})

    def allowed(self, user: User, path: str) -> bool:
        review = self.authorization.create_subject_access_review(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": {"user": user.name, "uid": user.uid, "groups": list(user.groups), "extra": user.extra,
                      "nonResourceAttributes": {"path": path, "verb": "get"}}},
            _request_timeout=self.timeout)
        return bool(review.status is not None and review.status.allowed)


class Gate:
    """The decision for one request's Authorization header: 200, 401, 403, or 503 (the API server did not answer)."""

    def __init__(self, reviewer: Reviewer, path: str = PATH, ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reviewer, self.path, self.ttl, self.clock = reviewer, path, ttl, clock
        self._cache: dict[str, tuple[float, int]] = {}  # sha256 of the token → (expiry, status)
        self._lock = threading.Lock()

    def status(self, authorization: str | None) -> int:
        token = bearer(authorization)
        if token is None:
            return 401
        key = hashlib.sha256(token.encode()).hexdigest()  # the token itself is never kept
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        try:
            user = self.reviewer.authenticate(token)
            status = 401 if user is None else 200 if self.reviewer.allowed(user, self.path) else 403
        except Exception as error:  # any failure to ask is "cannot tell now", never a yes
            log.warning("metrics: reviewing a token failed: %s", error)
            return 503
        with self._lock:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                while len(self._cache) >= CACHE_ENTRIES:
                    self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[key] = (now + self.ttl, status)
        return status


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class CertificateFiles:
    """A certificate and key on disk, loaded into a server SSLContext and loaded again whenever either file
    changes (a mounted Secret is updated in place). A file that cannot be loaded keeps the last good context."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self._seen: tuple[Any, ...] | None = None
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self.context()  # a bad certificate fails at start, not at the first scrape

    def _stamp(self) -> tuple[Any, ...]:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (self.cert.stat(), self.key.stat()))

    def context(self) -> ssl.SSLContext:
        with self._lock:
            try:
                stamp = self._stamp()
                if stamp != self._seen or self._context is None:
                    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    context.minimum_version = ssl.TLSVersion.TLSv1_2
                    context.load_cert_chain(self.cert, self.key)
                    self._context, self._seen = context, stamp
                    log.info("metrics: serving the certificate in %s", self.cert)
            except (OSError, ssl.SSLError) as error:
                if self._context is None:
                    raise
                log.warning("metrics: could not load %s again (%s); keeping the previous certificate", self.cert,
                            error)
            return self._context


def self_signed(folder: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path]:
    """A self-signed certificate (ECDSA P-256) for `hosts` (names or IP addresses), written into `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sigma0-operator-metrics")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def certificate(cert: str | None, key: str | None, address: str) -> CertificateFiles:
    """The admin's certificate files, or a self-signed certificate made now in a private temporary folder."""
    if cert or key:
        if not (cert and key):
            raise SystemExit("--metrics-cert-file and --metrics-key-file go together (a Secret's tls.crt and "
                             "tls.key)")
        return CertificateFiles(Path(cert), Path(key))
    folder = Path(tempfile.mkdtemp(prefix="sigma0-metrics-tls-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, True)  # a container restart keeps /tmp: leave no key behind
    hosts = [socket.gethostname(), "localhost", "127.0.0.1", *([address] if address not in ("", "0.0.0.0") else [])]
    log.info("metrics: no certificate given (--metrics-cert-file): serving a self-signed one")
    return CertificateFiles(*self_signed(folder, hosts))


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, registry: CollectorRegistry, *, gate: Gate | None = None,
                 tls: CertificateFiles | None = None) -> None:
        if (gate is None) != (tls is None):
            raise ValueError("a token travels only over TLS: give both gate and tls, or neither")
        self.registry, self.gate, self.tls = registry, gate, tls
        if ":" in address:
            self.address_family = socket.AF_INET6
        super().__init__((address, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake happens here, in this connection's own thread, never in the accepting one.
        request.settimeout(HANDSHAKE_SECONDS)
        secured = self.tls.context().wrap_socket(request, server_side=True)
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a connection from %s failed", client_address, exc_info=True)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="sigma0-metrics", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = HANDSHAKE_SECONDS

    def do_GET(self) -> None:
        if urlsplit(self.path).path != PATH:
            self._answer(404, b"not found: the figures are at /metrics\n")
            return
        status = 200 if self.server.gate is None else self.server.gate.status(self.headers.get("Authorization"))
        if status != 200:
            reason = {401: b"Unauthorized: send a bearer token the cluster accepts\n",
                      403: b"Forbidden: this user may not get /metrics (bind it to the metrics-reader ClusterRole)\n",
                      503: b"cannot review the token now: the API server did not answer\n"}[status]
            self._answer(status, reason, {"WWW-Authenticate": 'Bearer realm="sigma0-metrics"'} if status == 401
                         else {})
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
        self._answer(200, encoder(self.server.registry), {"Content-Type": content_type})

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s " + format, self.address_string(), *args)
