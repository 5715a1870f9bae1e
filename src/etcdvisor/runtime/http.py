"""The member's HTTP endpoint (``http.listen``): ``/metrics``, ``/healthz``, ``/readyz``.

One daemon thread runs a stdlib ``HTTPServer`` (one request at a time: a scrape
or a probe takes microseconds to milliseconds, and a slow or silent client is
cut off after ``REQUEST_TIMEOUT``). It never touches the loop's state: it reads
what the loop publishes (:class:`Health` fields, the metrics snapshot), each a
single attribute read.

* ``GET /healthz`` -> 200 ``ok`` while the decision loop keeps its promise (the
  loop records when a turn ended and the latest time it will wake up; its idle
  sleep is bounded) and the member still holds its lease; 503 ``decision loop
  stalled ...`` once that promise is more than ``STALL_GRACE`` seconds overdue,
  503 ``lease expired or lost ...`` while the lease is gone (etcd unreachable for
  longer than the TTL: the member runs no lease-bound child and has left every
  election and shard). A shorter etcd blip only fails readiness.
* ``GET /readyz`` -> 200 ``ready`` once the member joined, a keepalive came back
  alive within ``lease_fresh`` seconds and no role is FAILED; otherwise 503 with
  a one-line reason (``lease not confirmed for 4.2s``, ``role api failed: ...``).
* ``GET /metrics`` -> Prometheus text (:mod:`.metrics`).

``HEAD`` is answered like ``GET`` without a body; other paths get 404.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from ..config.ops import format_listen
from .health import Health, HttpError
from .metrics import Metrics

log = logging.getLogger("etcdvisor")

REQUEST_TIMEOUT = 2.0  # a client that sends nothing holds the one thread this long at most


class _Handler(BaseHTTPRequestHandler):
    server_version = "etcdvisor"
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        endpoint: OpsServer = self.server.endpoint  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            code, ctype, data = 200, CONTENT_TYPE_LATEST, endpoint.metrics.render()
        elif path in ("/healthz", "/readyz"):
            ok, reason = endpoint.health.live() if path == "/healthz" else endpoint.health.ready()
            code, ctype, data = (200 if ok else 503), "text/plain; charset=utf-8", (reason + "\n").encode()
        else:
            code, ctype, data = 404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz, /readyz\n"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # probes every few seconds would drown the log


class _Server(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], endpoint: OpsServer):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.endpoint = endpoint
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("http: error serving %s", client_address, exc_info=True)


class OpsServer:
    """Owns the listener and its one thread: ``start()`` (raises HttpError), ``stop()``."""

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: Health):
        self.address = address
        self.metrics = metrics
        self.health = health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> OpsServer:
        host, port = self.address
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise HttpError(f"http.listen {format_listen(self.address)}: cannot listen: "
                            f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 3600},
                                        name="http", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def stop(self) -> None:
        """Stop serving. The thread sleeps in select() without a timeout (no idle
        wakeups), so shutdown() is woken by one connection to ourselves."""
        if self._server is None:
            return
        server, self._server = self._server, None
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        host, port = server.server_address[:2]
        try:
            socket.create_connection((connect_host(str(host)), port), timeout=0.5).close()
        except OSError:
            pass
        stopper.join(2.0)
        server.server_close()


def connect_host(host: str) -> str:
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
