"""The live dashboard on the member's HTTP listener (``http.listen``).

Routes (added to :class:`etcdvisor.runtime.http.OpsServer` before it starts, by ``run``):

* ``GET /``: one HTML page (``static/dashboard.html``, shipped in the package, no external
  asset) that polls ``/api/status`` once a second and renders the whole cluster. Always
  public: it holds no data; with ``http.token_file`` set it asks for the token (kept in the
  tab's ``sessionStorage``) and sends it as ``Authorization: Bearer``.
* ``GET /api/status``: the document ``supervisor status --json`` prints
  (:func:`etcdvisor.status.gather`, the same reader, the same serialisation), read from etcd
  on a listener worker thread and cached ``CACHE_SECONDS``: any number of open dashboards
  cost at most one etcd read per interval. Needs the token when ``http.token_file`` is set
  (it shows the whole cluster), like ``/metrics``.
* ``POST /api/roles/<role>/<verb>`` (``restart``, ``pause``, ``resume``, ``reset``,
  ``trigger``): writes the control record ``supervisor <verb> <role>`` writes
  (:func:`etcdvisor.cli.cluster.issue_control`, same checks), with ``who`` =
  ``http:<remote address>``. Optional JSON body ``{"member": M, "index": I}`` (``restart``,
  ``reset``). Only with ``http.token_file`` set (404 otherwise, so an open listener never
  changes the cluster), and the token (401). Answers are one JSON object: ``{"record": ...,
  "revision": N}`` (200) or ``{"error": "one line"}`` (400 bad input or a verb that does
  not fit the role, 404 unknown role or verb, 503 etcd unreachable or not joined yet).

Every answer of these routes carries a ``Content-Security-Policy`` that forbids loading
anything from elsewhere (``default-src 'none'``; the page's one inline script and style
are allowed by their SHA-256 hash, so injected markup could not run a script either) and
``X-Frame-Options: DENY``. The page writes every string from etcd with ``textContent``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from .cli.cluster import issue_control, reported_roles
from .cli.kit import OBJECT_NAME, Target, UsageError
from .coord.errors import CoordError
from .runtime.control import VERBS
from .runtime.http import OpsServer
from .runtime.httpwire import Request, Response
from .status import gather, render_json

CACHE_SECONDS = 0.8
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
ACTIONS_PREFIX = "/api/roles/"


def page_source() -> str:
    return resources.files("etcdvisor").joinpath("static/dashboard.html").read_text(encoding="utf-8")


def _hashes(html: str, tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                    for b in bodies)


def content_security_policy(html: str) -> str:
    """Nothing from elsewhere; only this page's own inline script and style run."""
    return (f"default-src 'none'; script-src {_hashes(html, 'script')}; style-src {_hashes(html, 'style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def _security_headers(csp: str) -> tuple[tuple[str, str], ...]:
    return (("Content-Security-Policy", csp), ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"))


class StatusCache:
    """``read()`` at most once per ``ttl`` seconds, whoever asks; concurrent askers wait
    for the one read in flight and share it. A failed read (CoordError) is kept as long:
    dashboards polling an unreachable etcd do not multiply the attempts."""

    def __init__(self, read: Callable[[], str], ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._read, self.ttl, self._clock = read, ttl, clock
        self._lock = threading.Lock()
        self._value: str | CoordError | None = None
        self._at = 0.0
        self.reads = 0

    def get(self) -> str:
        with self._lock:
            if self._value is None or self._clock() - self._at >= self.ttl:
                self.reads += 1
                try:
                    self._value = self._read()
                except CoordError as exc:
                    self._value = exc
                self._at = self._clock()
            if isinstance(self._value, CoordError):
                raise self._value
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None


def _json(status: int, doc: Any, csp: str) -> Response:
    return Response(status, (json.dumps(doc) + "\n").encode(), JSON_TYPE, _security_headers(csp))


def _error(status: int, message: str, csp: str) -> Response:
    return _json(status, {"error": " ".join(str(message).split())}, csp)


class Dashboard:
    """The routes, for one member. ``source()`` gives (backend, cluster, config) once the
    member is connected, else None."""

    def __init__(self, source: Callable[[], tuple[Any, str, Any] | None], actions: bool):
        self.source = source
        self.actions = actions
        html = page_source()
        self.csp = content_security_policy(html)
        self.page = html.replace("__ACTIONS__", "1" if actions else "0").encode()
        self.cache = StatusCache(self._read_status)

    def install(self, server: OpsServer) -> None:
        server.route("/", self.serve_page, public=True)
        server.route("/api/status", self.serve_status)
        server.route(ACTIONS_PREFIX, self.serve_action, methods=("POST",), prefix=True)

    # --- routes (listener worker threads) ------------------------------------------------
    def serve_page(self, _request: Request) -> Response:
        return Response(200, self.page, HTML_TYPE, _security_headers(self.csp))

    def _read_status(self) -> str:
        source = self.source()
        if source is None:
            raise CoordError("the member has not connected to etcd yet")
        backend, cluster, config = source
        return render_json(gather(backend, cluster, config))

    def serve_status(self, _request: Request) -> Response:
        try:
            body = self.cache.get()
        except CoordError as exc:
            return _error(503, f"cannot read the cluster from etcd: {exc}", self.csp)
        return Response(200, (body + "\n").encode(), JSON_TYPE, _security_headers(self.csp))

    def serve_action(self, request: Request) -> Response:
        if not self.actions:
            return _error(404, "actions are off: set http.token_file to enable them", self.csp)
        parts = request.path[len(ACTIONS_PREFIX):].split("/")
        if len(parts) != 2 or parts[1] not in VERBS:
            return _error(404, f"not found: POST {ACTIONS_PREFIX}<role>/<verb>, verb one of "
                          f"{', '.join(VERBS)}", self.csp)
        role, verb = parts
        if not OBJECT_NAME.fullmatch(role):
            return _error(400, f"invalid role name {role!r}", self.csp)
        try:
            member, index = _scope(request.body, verb)
        except ValueError as exc:
            return _error(400, str(exc), self.csp)
        source = self.source()
        if source is None:
            return _error(503, "the member has not connected to etcd yet", self.csp)
        backend, cluster, config = source
        target = Target(cluster, "", config, backend)
        try:
            if role not in reported_roles(target):
                return _error(404, f"no role {role!r} in cluster {cluster}", self.csp)
            record, revision = issue_control(target, verb, role, member=member, index=index,
                                             who=f"http:{request.peer}")
        except UsageError as exc:
            return _error(400, str(exc), self.csp)
        except CoordError as exc:
            return _error(503, f"etcd: {exc}", self.csp)
        self.cache.invalidate()  # the next poll shows the record
        return _json(200, {"record": record, "revision": revision}, self.csp)


def _scope(body: bytes, verb: str) -> tuple[str | None, int | None]:
    """``member``/``index`` of an action's optional JSON body; ValueError (one line)."""
    if not body.strip():
        return None, None
    try:
        doc = json.loads(body)
    except ValueError:
        raise ValueError("the body must be a JSON object (or empty)") from None
    if not isinstance(doc, dict) or set(doc) - {"member", "index"}:
        raise ValueError('the body may hold only "member" and "index"')
    member, index = doc.get("member"), doc.get("index")
    if member is not None and (not isinstance(member, str) or verb not in ("restart", "reset")):
        raise ValueError(f'"member" is a member id, for restart and reset only (not {verb})')
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or verb != "restart"):
        raise ValueError(f'"index" is an integer, for restart only (not {verb})')
    return member, index


def install(server: OpsServer, sup: Any) -> None:
    """Add the dashboard's routes to ``server`` for the running supervisor ``sup``."""

    def source() -> tuple[Any, str, Any] | None:
        backend = getattr(sup, "backend", None)
        return None if backend is None else (backend, sup.config.cluster, sup.config)

    Dashboard(source, actions=server.token_file is not None).install(server)
