"""The dashboard's HTTP server: one read-only page, its live fragment, the evidence pages, the packaged assets.

The standard library's ThreadingHTTPServer, in a thread of its own: `sigma0 dashboard` runs it in the
foreground, the operator next to kopf (as it runs the Prometheus endpoint), so both serve the very same code.
A page that two people poll every two seconds needs no event loop, and this keeps the dashboard out of kopf's.

    GET /                               the page (sigma0.dashboard.board, drawn by templates/page.html)
    GET /board                          the page's live part; `If-None-Match: <version>` answers 304 while nothing
                                        changed, so the page swaps content only when a figure moved (polling:
                                        nothing held open, any proxy or Ingress passes it)
    GET /cycles/<namespace>/<name>      a cycle's decision evidence (`-` is the namespace of a local cycle)
    GET /static/<file>                  the script and the stylesheet, shipped in the package
    GET /healthz                        ok

Anything but GET and HEAD is refused (405): there is no write action. The page holds no credentials and no
environment, and loads nothing from another origin (Content-Security-Policy: 'self' only).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import jinja2

from sigma0 import __version__
from sigma0.dashboard import plot
from sigma0.dashboard.board import Board
from sigma0.dashboard.sources import Source

log = logging.getLogger("sigma0.dashboard")

POLL_MS = 2000
STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ALLOWED = "GET, HEAD"

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("sigma0.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _p_value(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


_templates.filters["seconds"] = _seconds
_templates.filters["p_value"] = _p_value
_templates.filters["figure"] = lambda value: "-" if value is None else f"{value:.3f}"
_templates.filters["hours"] = lambda value: f"{value:.2f}"


def render_board(board: Board) -> str:
    curves = {release.key: plot.curve(release) for release in board.releases}
    return _templates.get_template("board.html").render(board=board, curves=curves)


def render_page(board: Board) -> str:
    return _templates.get_template("page.html").render(
        board=board, fragment=render_board(board), version=board.version(), poll_ms=POLL_MS, sigma0_version=__version__
    )


class CachedSource:
    """A source read at most once per `seconds`, however many pages poll it."""

    def __init__(self, source: Source, seconds: float = 1.0) -> None:
        self.source, self.seconds = source, seconds
        self._lock = threading.Lock()
        self._board: Board | None = None
        self._at = 0.0

    def board(self) -> Board:
        with self._lock:
            if self._board is None or time.monotonic() - self._at >= self.seconds:
                self._board, self._at = self.source.board(), time.monotonic()
            return self._board

    def evidence(self, namespace: str, name: str) -> Any:
        return self.source.evidence(namespace, name)


@dataclass
class Reply:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    version: str | None = None


def answer(source: CachedSource, path: str, if_none_match: str | None) -> Reply:
    """The reply to GET `path`: pure but for reading the source."""
    route = urlsplit(path).path
    if route == "/":
        return Reply(HTTPStatus.OK, render_page(source.board()).encode())
    if route == "/board":
        board = source.board()
        version = board.version()
        if if_none_match == version:
            return Reply(HTTPStatus.NOT_MODIFIED, b"", version=version)
        return Reply(HTTPStatus.OK, render_board(board).encode(), version=version)
    if route == "/healthz":
        return Reply(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
    if route.startswith("/static/"):
        name = route.removeprefix("/static/")
        if name in STATIC:
            data = resources.files("sigma0.dashboard").joinpath("static", name).read_bytes()
            return Reply(HTTPStatus.OK, data, STATIC[name])
    parts = route.split("/")
    if len(parts) == 4 and parts[1] == "cycles":
        namespace, name = unquote(parts[2]), unquote(parts[3])
        found = source.evidence("" if namespace == "-" else namespace, name)
        if found is not None:
            page = _templates.get_template("evidence.html").render(evidence=found, namespace=namespace)
            return Reply(HTTPStatus.OK, page.encode())
    return Reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")


def handler_for(source: CachedSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sigma0-dashboard"
        sys_version = ""

        def _send(self, reply: Reply, body: bool) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            if reply.version:
                self.send_header("ETag", reply.version)
            for key, value in HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(reply.body)

        def _get(self, body: bool) -> None:
            try:
                reply = answer(source, self.path, self.headers.get("If-None-Match"))
            except Exception:
                log.exception("dashboard: GET %s failed", self.path)
                reply = Reply(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    b"the dashboard could not read its source; see the log\n",
                    "text/plain; charset=utf-8",
                )
            self._send(reply, body)

        def do_GET(self) -> None:
            self._get(body=True)

        def do_HEAD(self) -> None:
            self._get(body=False)

        def _refuse(self) -> None:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", ALLOWED)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            body = b"the sigma0 dashboard is read-only: GET and HEAD only\n"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard %s: " + format, self.address_string(), *args)

    return Handler


def make_server(source: Source, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), handler_for(CachedSource(source)))
    server.daemon_threads = True
    return server


def serve_in_thread(source: Source, host: str, port: int) -> ThreadingHTTPServer:
    """Start serving in a daemon thread (the operator's way); returns the server (its port, its shutdown)."""
    server = make_server(source, host, port)
    threading.Thread(target=server.serve_forever, name="sigma0-dashboard", daemon=True).start()
    return server
