"""The dashboard's routes on the member's listener (etcdvisor.dashboard): ``GET /``,
``GET /api/status``, ``POST /api/roles/<role>/<verb>``. Real sockets on 127.0.0.1, the
listener in this process, the store on the in-memory backend and on real etcd.
(The page in a real browser, against ``supervisor run``: tests/e2e/test_dashboard_browser.py.)"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import uuid

import pytest

from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.dashboard import CACHE_SECONDS, Dashboard, StatusCache, page_source
from etcdvisor.runtime.control import read_records
from etcdvisor.runtime.health import Health
from etcdvisor.runtime.http import OpsServer
from etcdvisor.runtime.metrics import Metrics
from etcdvisor.status import gather, render_json

TOKEN = "dash-s3cret"


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), parsed, payload


def seed(backend, cluster: str) -> ClusterKeys:
    """Two member records (one with a hostile id), a sharded and a cron role."""
    keys = ClusterKeys(cluster)
    for key, member, index in (("web-1", "web-1", 0), ("evil", "<script>alert(1)</script>", 1)):
        record = {"member": member, "host": "h", "pid": 10 + index, "started": 1700000000.0,
                  "roles": {"worker": {"type": "sharded", "state": "running", "index": index, "count": 2,
                                       "children": {"worker": {"state": "running", "pid": 100 + index,
                                                               "restarts": 0, "last_exit": None}}},
                            "nightly": {"type": "cron", "state": "following"}}}
        backend.put(keys.member(key), json.dumps(record).encode())
    return keys


@pytest.fixture
def cluster():
    return "dash-" + uuid.uuid4().hex[:8]


def serve(backend, cluster: str, token_file: str | None):
    server = OpsServer(("127.0.0.1", 0), Metrics(), Health(), token_file=token_file)
    dashboard = Dashboard(lambda: (backend, cluster, None), actions=token_file is not None)
    dashboard.install(server)
    server.start()
    return server, dashboard


@pytest.fixture
def open_server(backend, cluster):
    server, dashboard = serve(backend, cluster, None)
    server.dashboard = dashboard
    yield server
    server.stop()


@pytest.fixture
def token_server(backend, cluster, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    server, dashboard = serve(backend, cluster, str(path))
    server.dashboard = dashboard
    yield server
    server.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_api_status_is_the_status_document(backend, cluster, open_server):
    seed(backend, cluster)
    status, headers, body = request(open_server.port, "GET", "/api/status")
    assert status == 200 and headers["content-type"] == "application/json"
    assert body.decode() == render_json(gather(backend, cluster)) + "\n"  # byte for byte: status --json
    doc = json.loads(body)
    assert [m["member"] for m in doc["members"]] == ["web-1", "<script>alert(1)</script>"]


def test_the_page_ships_everything_and_forbids_loads_from_elsewhere(open_server):
    status, headers, body = request(open_server.port, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    html = body.decode()
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and headers["x-frame-options"] == "DENY"
    # the inline script and style run by their hash; nothing else would
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        inline = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert len(inline) == 1
        digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
        assert directives[directive] == f"'sha256-{digest}'"
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html), "no external asset"
    assert "unsafe-inline" not in csp and "http" not in csp
    # data from etcd only ever becomes text: no HTML-parsing sink in the script
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", html)
    assert 'data-actions="0"' in html  # no token file: the page offers no action
    assert request(open_server.port, "GET", "/api/status")[1]["content-security-policy"] == csp


def test_without_a_token_file_actions_are_404_and_nothing_is_written(backend, cluster, open_server):
    keys = seed(backend, cluster)
    status, _, body = request(open_server.port, "POST", "/api/roles/worker/restart", AUTH)
    assert status == 404 and "http.token_file" in json.loads(body)["error"]
    assert not backend.get_prefix(keys.base + "control/").kvs
    assert request(open_server.port, "GET", "/api/roles/worker/restart")[0] == 405


def test_actions_need_the_token_and_record_who(backend, cluster, token_server):
    keys = seed(backend, cluster)
    port = token_server.port
    assert request(port, "GET", "/")[0] == 200  # the page is public: it asks for the token
    assert 'data-actions="1"' in request(port, "GET", "/")[2].decode()
    assert request(port, "GET", "/api/status")[0] == 401  # the cluster's state is not
    assert request(port, "GET", "/api/status", {"Authorization": "Bearer wrong"})[0] == 401
    assert request(port, "GET", "/api/status", AUTH)[0] == 200
    assert request(port, "POST", "/api/roles/worker/pause")[0] == 401
    assert request(port, "POST", "/api/roles/worker/pause", {"Authorization": "Bearer nope"})[0] == 401
    assert not backend.get_prefix(keys.base + "control/").kvs

    status, _, body = request(port, "POST", "/api/roles/worker/pause", AUTH)
    assert status == 200, body
    answer = json.loads(body)
    records = read_records(backend.get_prefix(keys.base + "control/").kvs, keys.base + "control/")
    record = records["worker"]["pause"]
    assert record["who"].startswith("http:127.0.0.1:") and record["verb"] == "pause"
    assert record["revision"] == answer["revision"] and record["id"] == answer["record"]["id"]
    # the next status read shows it at once (the cache is dropped after an action)
    doc = json.loads(request(port, "GET", "/api/status", AUTH)[2])
    assert doc["control"]["worker"]["pause"]["who"] == record["who"]

    status, _, body = request(port, "POST", "/api/roles/worker/resume", AUTH)
    assert status == 200
    assert "pause" not in read_records(backend.get_prefix(keys.base + "control/").kvs,
                                       keys.base + "control/")["worker"]
    status, _, body = request(port, "POST", "/api/roles/worker/restart", AUTH,
                              json.dumps({"member": "web-1", "index": 0}).encode())
    assert status == 200 and json.loads(body)["record"]["member"] == "web-1"
    assert json.loads(body)["record"]["index"] == 0
    assert request(port, "POST", "/api/roles/nightly/trigger", AUTH)[0] == 200


@pytest.mark.parametrize("path,body,code,words", [
    ("/api/roles/nosuch/restart", b"", 404, "no role 'nosuch'"),
    ("/api/roles/worker/explode", b"", 404, "verb one of"),
    ("/api/roles/worker", b"", 404, "verb one of"),
    ("/api/roles/bad%20name!/restart", b"", 400, "invalid role name"),
    ("/api/roles/worker/trigger", b"", 400, "trigger applies to cron roles only"),
    ("/api/roles/nightly/restart", b'{"index": 1}', 400, "applies to sharded roles only"),
    ("/api/roles/worker/restart", b'{"member": "ghost"}', 400, "no live member 'ghost'"),
    ("/api/roles/worker/restart", b"not json", 400, "JSON object"),
    ("/api/roles/worker/pause", b'{"index": 0}', 400, "for restart only"),
])
def test_bad_actions_are_one_json_line(backend, cluster, token_server, path, body, code, words):
    keys = seed(backend, cluster)
    status, headers, answer = request(token_server.port, "POST", path, AUTH, body)
    assert status == code, answer
    assert headers["content-type"] == "application/json" and answer.count(b"\n") == 1
    assert words in json.loads(answer)["error"]
    assert not backend.get_prefix(keys.base + "control/").kvs


def test_many_dashboards_cost_one_read_per_interval(backend, cluster, open_server):
    seed(backend, cluster)
    cache = open_server.dashboard.cache
    results = []
    threads = [threading.Thread(target=lambda: results.append(request(open_server.port, "GET", "/api/status")[0]))
               for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 12
    assert cache.reads <= 2  # 12 polls within the interval; a slow box may cross one boundary


def test_the_cache_reads_again_after_its_interval():
    now = [0.0]
    reads = []
    cache = StatusCache(lambda: reads.append(1) or str(len(reads)), ttl=CACHE_SECONDS, clock=lambda: now[0])
    assert cache.get() == "1" and cache.get() == "1"
    now[0] += CACHE_SECONDS - 0.01
    assert cache.get() == "1"
    now[0] += 0.02
    assert cache.get() == "2"
    cache.invalidate()
    assert cache.get() == "3"


def test_a_failed_read_is_kept_for_the_interval_too():
    from etcdvisor.coord.errors import CoordError

    now = [0.0]
    calls = []

    def read():
        calls.append(1)
        raise CoordError("etcd down")

    cache = StatusCache(read, ttl=CACHE_SECONDS, clock=lambda: now[0])
    for _ in range(5):
        with pytest.raises(CoordError, match="etcd down"):
            cache.get()
    assert len(calls) == 1
    now[0] += CACHE_SECONDS
    with pytest.raises(CoordError):
        cache.get()
    assert len(calls) == 2


def test_status_before_the_member_connected_is_503():
    server = OpsServer(("127.0.0.1", 0), Metrics(), Health())
    Dashboard(lambda: None, actions=False).install(server)
    server.start()
    try:
        status, _, body = request(server.port, "GET", "/api/status")
        assert status == 503 and "not connected" in json.loads(body)["error"]
    finally:
        server.stop()


def test_the_page_is_in_the_package():
    assert "<script>" in page_source() and "/api/status" in page_source()
