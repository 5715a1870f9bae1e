"""Count what a fleet costs etcd, from etcd's own ``/metrics`` endpoint.

``scrape(url)`` reads the Prometheus text once and keeps the counters the
scaling figures need; ``delta(before, after)`` subtracts two scrapes:

* ``requests``: gRPC messages etcd received (``grpc_server_msg_received_total``,
  unary calls and every message on a stream: a keepalive request is one),
  also split by method (``by_method``);
* ``watch_events``: events etcd sent to watchers (``etcd_debugging_mvcc_events_total``);
* ``watch_responses``: messages etcd sent on Watch streams
  (``grpc_server_msg_sent_total{grpc_method="Watch"}``: one per batch of events
  delivered to one watcher, plus creation/cancel confirmations);
* ``writes``: requests other than keepalives and watch-stream messages
  (``requests`` minus the LeaseKeepAlive and Watch methods);
* ``revisions``: growth of ``etcd_debugging_mvcc_current_revision`` (writes);
* ``keepalives``: leases renewed (``etcd_debugging_lease_renewed_total``).
"""

from __future__ import annotations

import re
import urllib.request

_LINE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')
_METHOD = re.compile(r'grpc_method="([^"]+)"')
_TOTALS = {"etcd_debugging_mvcc_events_total": "watch_events",
           "etcd_debugging_mvcc_current_revision": "revisions",
           "etcd_debugging_lease_renewed_total": "keepalives",
           "etcd_debugging_mvcc_watcher_total": "watchers",
           "etcd_debugging_mvcc_watch_stream_total": "watch_streams"}


def scrape(url: str, timeout: float = 5.0) -> dict:
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout).read().decode()
    out: dict = {"requests": 0.0, "by_method": {}}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name, value = match["name"], float(match["value"])
        if name == "grpc_server_msg_received_total":
            method = _METHOD.search(match["labels"] or "")
            out["requests"] += value
            if method and value:
                out["by_method"][method[1]] = out["by_method"].get(method[1], 0.0) + value
        elif name == "grpc_server_msg_sent_total" and 'grpc_method="Watch"' in (match["labels"] or ""):
            out["watch_responses"] = out.get("watch_responses", 0.0) + value
        elif name in _TOTALS:
            out[_TOTALS[name]] = out.get(_TOTALS[name], 0.0) + value
    out["writes"] = out["requests"] - out["by_method"].get("LeaseKeepAlive", 0.0) \
        - out["by_method"].get("Watch", 0.0)
    return out


def delta(before: dict, after: dict) -> dict:
    """Counters of ``after`` minus ``before`` (gauges such as ``watchers``
    keep their ``after`` value)."""
    out = {key: after.get(key, 0.0) - before.get(key, 0.0)
           for key in ("requests", "watch_events", "watch_responses", "revisions", "keepalives")}
    out["watchers"] = after.get("watchers", 0.0)
    out["watch_streams"] = after.get("watch_streams", 0.0)
    methods = set(before["by_method"]) | set(after["by_method"])
    out["by_method"] = {m: after["by_method"].get(m, 0.0) - before["by_method"].get(m, 0.0)
                        for m in sorted(methods)
                        if after["by_method"].get(m, 0.0) != before["by_method"].get(m, 0.0)}
    out["writes"] = out["requests"] - out["by_method"].get("LeaseKeepAlive", 0.0) \
        - out["by_method"].get("Watch", 0.0)
    return out
