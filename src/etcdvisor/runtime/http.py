"""The member's HTTP endpoint (``http.listen``): ``/metrics``, ``/healthz``, ``/readyz``.

Connections are served by :mod:`.httpserve` (a selector thread, bounded connections,
one deadline per request: a slow, silent or flooding client never delays a probe).
The routes never touch the loop's state: they read what the loop publishes
(:class:`Health` fields, the metrics snapshot), each a single attribute read.

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

``HEAD`` is answered like ``GET`` without a body; other paths get 404, other methods
405. With ``http.token_file`` every route but the probes needs ``Authorization:
Bearer <token>`` (401 otherwise, unknown paths included): see :func:`check_bearer`,
which any later route (:meth:`OpsServer.route`) shares.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST

from ..config.ops import TokenFileError, format_listen, read_token_file
from . import httpserve, httpwire
from .health import Health, HttpError
from .httpwire import Request, Response
from .metrics import Metrics

log = logging.getLogger("etcdvisor")

REQUEST_TIMEOUT = httpserve.REQUEST_TIMEOUT
MAX_CONNECTIONS = httpserve.MAX_CONNECTIONS
REALM = "etcdvisor"

Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    handler: Handler
    methods: frozenset[str]  # HEAD is implied by GET
    public: bool  # served without the bearer token (probes)
    inline: bool  # microseconds, no I/O: answered on the selector thread


class BearerToken:
    """The token of ``http.token_file``: read at start (TokenFileError), then read
    again whenever the file changes (a rotated Kubernetes Secret), on a worker
    thread. A changed file that cannot be read keeps the last good token (one
    warning line)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._token = read_token_file(path)
        self._seen = self._identity()

    def _identity(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns

    def current(self) -> bytes:
        identity = self._identity()
        with self._lock:
            if identity is not None and identity != self._seen:
                self._seen = identity
                try:
                    self._token = read_token_file(self.path)
                except TokenFileError as exc:
                    log.warning("http.token_file: %s; keeping the previous token", exc)
            return self._token


def bearer_matches(authorization: str | None, token: bytes) -> bool:
    """True if an ``Authorization`` header value carries ``token`` as a Bearer
    credential. The comparison takes the same time wherever the first difference is."""
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = credential.strip().encode("ascii", "replace")
    return hmac.compare_digest(given, token)


def check_bearer(request: Request, token: BearerToken | None) -> Response | None:
    """None if ``request`` may proceed (no token configured, or the right one given),
    else the 401 answer to send (with ``WWW-Authenticate``, RFC 6750)."""
    if token is None:
        return None
    authorization = request.header("authorization")
    if bearer_matches(authorization, token.current()):
        return None
    challenge = f'Bearer realm="{REALM}"'
    if authorization:
        challenge += ', error="invalid_token"'
    return httpwire.text(401, "unauthorized: send 'Authorization: Bearer <token>' (http.token_file)",
                         (("WWW-Authenticate", challenge),))


class OpsServer:
    """Owns the listener: ``start()`` (raises HttpError), ``stop()``, ``route()``."""

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: Health,
                 token_file: str | None = None):
        self.address = address
        self.metrics = metrics
        self.health = health
        self.token_file = token_file
        self.token: BearerToken | None = None
        self._listener: httpserve.Listener | None = None
        self.routes: dict[str, Route] = {}
        self.prefixes: dict[str, Route] = {}  # route(prefix=True): every path under it
        self.route("/healthz", lambda _r: self._probe(self.health.live()), public=True, inline=True)
        self.route("/readyz", lambda _r: self._probe(self.health.ready()), public=True, inline=True)
        self.route("/metrics", lambda _r: Response(200, self.metrics.render(), CONTENT_TYPE_LATEST))

    def route(self, path: str, handler: Handler, *, methods: tuple[str, ...] = ("GET",),
              public: bool = False, inline: bool = False, prefix: bool = False) -> None:
        """Serve ``path`` (exact match, query string ignored) with ``handler``. Not
        ``public``: needs the bearer token when ``http.token_file`` is set. ``inline``
        only for handlers that take microseconds and do no I/O (they run on the thread
        every connection shares); the others run on a worker thread, within
        ``httpserve.HANDLER_TIMEOUT``. Register routes before :meth:`start`. A handler
        gets the whole request (method, path, query, headers, a body of at most
        ``httpwire.MAX_BODY`` bytes, the peer's address) and returns one answer: the
        connection closes after it (no streaming). ``prefix``: ``path`` (ending in
        ``/``) serves every path that starts with it and has no exact route; the
        longest prefix wins."""
        allowed = frozenset(methods) | ({"HEAD"} if "GET" in methods else set())
        (self.prefixes if prefix else self.routes)[path] = Route(handler, allowed, public, inline)

    def start(self) -> OpsServer:
        if self.token_file is not None:
            try:
                self.token = BearerToken(self.token_file)
            except TokenFileError as exc:
                raise HttpError(f"http.token_file: {exc}") from None
        host, port = self.address
        try:
            sock = httpserve.bind(host, port)
        except OSError as exc:
            raise HttpError(f"http.listen {format_listen(self.address)}: cannot listen: "
                            f"{exc.strerror or exc}") from None
        self._listener = httpserve.Listener(sock, self._dispatch)
        self._listener.start()
        return self

    @property
    def port(self) -> int:
        return int(self._listener.sock.getsockname()[1]) if self._listener else 0

    @property
    def connections(self) -> int:
        return self._listener.connections if self._listener else 0

    def stop(self) -> None:
        """Stop serving and close every connection (within 2 s)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    # --- on the selector thread ------------------------------------------------------------
    def _dispatch(self, request: Request) -> tuple[Response | None, Callable[[], Response] | None]:
        route = self.routes.get(request.path) or self._by_prefix(request.path)
        if route is not None and route.public and route.inline:
            return self._checked(route, request), None
        # everything else may need the token (read from disk when it changed): a worker's job
        return None, lambda: self._serve(route, request)

    def _by_prefix(self, path: str) -> Route | None:
        matches = [p for p in self.prefixes if path.startswith(p)]
        return self.prefixes[max(matches, key=len)] if matches else None

    def _serve(self, route: Route | None, request: Request) -> Response:
        if route is None or not route.public:
            refused = check_bearer(request, self.token)
            if refused is not None:
                return refused  # before 404: without the token, nothing is revealed
        if route is None:
            return httpwire.text(404, "not found: try /, /metrics, /healthz, /readyz")
        return self._checked(route, request)

    @staticmethod
    def _checked(route: Route, request: Request) -> Response:
        if request.method not in route.methods:
            return httpwire.text(405, f"method {request.method} not allowed",
                                 (("Allow", ", ".join(sorted(route.methods))),))
        return route.handler(request)

    @staticmethod
    def _probe(answer: tuple[bool, str]) -> Response:
        ok, reason = answer
        return httpwire.text(200 if ok else 503, reason)
