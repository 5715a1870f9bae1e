"""The dashboard (``GET /`` on ``http.listen``) in a real browser: Debian's headless
Chromium, driven as a subprocess (``--dump-dom`` after a virtual-time budget, so the
page's polling ran; ``--screenshot``).

* against a real ``supervisor run`` on a private etcd: what the page renders (members,
  children with state, pid and restarts) equals ``supervisor status --json``, and
  ``/api/status`` equals ``status --json``, also after a member joins and after a child
  was killed and restarted; a screenshot is saved in the test's directory (and copied to
  ``$ETCDVISOR_DASHBOARD_PNG`` when set: how docs/dashboard.png is made);
* hostile strings from etcd (a member id, a STATUS text, a failed reason with markup)
  are rendered as text, never as elements.

Needs ``chromium`` (``apt-get install chromium``; .ci/run installs it): without it the
tests skip with one line saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.dashboard import Dashboard
from etcdvisor.runtime.health import Health
from etcdvisor.runtime.http import OpsServer
from etcdvisor.runtime.metrics import Metrics

from .conftest import wait_for
from .harness_ops import free_port, get
from .harness_roles import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                ".ci/run does it): the dashboard's browser test cannot run")


def browse(url: str, profile: Path, *, screenshot: Path | None = None, budget_ms: int = 2500) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (its first polls done)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", "--window-size=1280,900"]
    args += [f"--screenshot={screenshot}"] if screenshot is not None else ["--dump-dom"]
    result = subprocess.run(args + [url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Rendered(HTMLParser):
    """What the page shows, from its data-* attributes (set from the same values
    the cells show with textContent), plus every element name and all text."""

    def __init__(self, dom: str):
        super().__init__()
        self.members: list[str] = []
        self.children: set[tuple] = set()
        self.revision: str | None = None
        self.tags: list[str] = []
        self.text: list[str] = []
        self.in_script = False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.in_script = tag == "script"
        a = dict(attrs)
        if tag == "tr" and "data-child" in a:
            self.children.add((a["data-role"], a["data-member"], a["data-child"], a["data-state"],
                               a["data-pid"], a["data-restarts"]))
        elif tag == "tr" and "data-member" in a:
            self.members.append(a["data-member"])
        if "data-revision" in a:
            self.revision = a["data-revision"]

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if not self.in_script:
            self.text.append(data)


def expected(doc: dict) -> tuple[list[str], set[tuple]]:
    members = [m["member"] for m in doc["members"]]
    children = set()
    for role, entry in doc["roles"].items():
        for a in entry["assignments"]:
            for key, child in a["children"].items():
                children.add((role, a["member"], key, child["state"],
                              "" if child["pid"] is None else str(child["pid"]), str(child["restarts"] or 0)))
    return members, children


def status_json(config: Path) -> dict:
    result = cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


@pytest.mark.etcd
@pytest.mark.slow
def test_the_page_shows_what_status_shows_after_a_join_and_a_restart(fleet, tmp_path):
    config = fleet.write_config({
        "worker": fleet.worker_role("sharded", settle="0.2s"),
        "api": fleet.worker_role("singleton"),
    })
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fleet.start("m0", config, env={"ETCDVISOR_HTTP": f"127.0.0.1:{port}"})
    profile = tmp_path / "chromium"

    def children_running(doc: dict, count: int) -> bool:
        pids = [c["pid"] for r in ("worker", "api") for a in doc["roles"][r]["assignments"]
                for c in a["children"].values() if c["state"] == "running"]
        counts = {a["count"] for a in doc["roles"]["worker"]["assignments"]}
        return len(doc["members"]) == count and len(pids) == count + 1 and counts == {count}

    def api_status() -> dict | None:
        code, body = get(f"{url}/api/status")
        return json.loads(body) if code == 200 else None

    wait_for(lambda: (doc := api_status()) is not None and children_running(doc, 1), 30, "m0's children")

    def page_matches_status() -> bool:
        doc = status_json(config)
        page = Rendered(browse(url + "/", profile))
        members, children = expected(doc)
        # the page polled during its budget: it shows this state once nothing changes
        return page.members == members and page.children == children and page.revision == str(doc["revision"])

    def api_matches_status() -> bool:  # the same document; equal whenever no write came between
        return api_status() == status_json(config)

    wait_for(api_matches_status, 15, "/api/status to equal status --json")
    wait_for(page_matches_status, 20, "the page to show what status --json shows (one member)")

    # a member joins: both members and COUNT=2 appear
    fleet.start("m1", config)
    wait_for(lambda: children_running(status_json(config), 2), 40, "m1 to join and both workers to run")
    wait_for(page_matches_status, 20, "the page to show the second member")
    wait_for(api_matches_status, 15, "/api/status to equal status --json (two members)")

    # a child is killed: the page shows the new pid and one restart
    doc = status_json(config)
    victim = doc["roles"]["worker"]["assignments"][0]
    (key, child), = victim["children"].items()
    os.kill(child["pid"], signal.SIGKILL)

    def restarted() -> bool:
        for a in status_json(config)["roles"]["worker"]["assignments"]:
            if a["member"] == victim["member"]:
                now = a["children"].get(key, {})
                return now.get("state") == "running" and now.get("pid") != child["pid"] and now.get("restarts") == 1
        return False

    wait_for(restarted, 30, "the killed worker to be restarted")
    wait_for(page_matches_status, 20, "the page to show the restart")
    page = Rendered(browse(url + "/", profile))
    assert any(c[1] == victim["member"] and c[5] == "1" for c in page.children)

    # a control record (who, verb) shows up, and the role shows as paused
    assert cli("pause", "api", "-c", str(config)).returncode == 0
    wait_for(lambda: not any(c["state"] == "running" for a in status_json(config)["roles"]["api"]["assignments"]
                             for c in a["children"].values()), 20, "api to stop once paused")
    wait_for(page_matches_status, 20, "the page to show the paused role")
    page = Rendered(browse(url + "/", profile))
    pause = status_json(config)["control"]["api"]["pause"]
    text = "".join(page.text)
    assert "pause (in effect)" in text and pause["who"] in text and f"paused by {pause['who']}" in text

    shot = tmp_path / "dashboard.png"
    browse(url + "/", profile, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")
    if os.environ.get("ETCDVISOR_DASHBOARD_PNG"):
        shutil.copyfile(shot, os.environ["ETCDVISOR_DASHBOARD_PNG"])


HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


def test_strings_from_etcd_are_rendered_as_text(tmp_path):
    backend = open_backend("memory://dash-xss-" + uuid.uuid4().hex[:8], timeout=5)
    keys = ClusterKeys("xss")
    record = {"member": HOSTILE, "host": HOSTILE, "pid": 7, "started": 1700000000.0,
              "roles": {HOSTILE: {"type": "sharded", "state": HOSTILE, "failed": HOSTILE, "index": 0, "count": 1,
                                  "children": {HOSTILE: {"state": "running", "pid": 8, "restarts": 0,
                                                         "status": HOSTILE, "last_exit": None}}}}}
    backend.put(keys.member("evil"), json.dumps(record).encode())
    backend.put(keys.base + "control/worker/pause", json.dumps({"verb": "pause", "role": "worker", "who": HOSTILE,
                                                                 "when": 1700000000.0, "at": HOSTILE}).encode())
    server = OpsServer(("127.0.0.1", 0), Metrics(), Health())
    Dashboard(lambda: (backend, "xss", None), actions=False).install(server)
    server.start()
    try:
        dom = browse(f"http://127.0.0.1:{server.port}/", tmp_path / "chromium")
    finally:
        server.stop()
        backend.close()
    page = Rendered(dom)
    assert page.members == [HOSTILE]  # rendered: the poll ran
    text = "".join(page.text)
    assert text.count(HOSTILE) >= 6  # member, host, role, state, failed, STATUS, who: all as text
    assert "img" not in page.tags and page.tags.count("script") == 1  # only the page's own script
    assert "<title>etcdvisor · xss</title>" in dom and "pwned" not in dom.split("<body")[0]



def test_with_a_token_file_the_page_asks_for_the_token_and_shows_nothing(tmp_path):
    backend = open_backend("memory://dash-token-" + uuid.uuid4().hex[:8], timeout=5)
    keys = ClusterKeys("locked")
    backend.put(keys.member("m0"), json.dumps({"member": "m0", "host": "h", "roles": {}}).encode())
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    server = OpsServer(("127.0.0.1", 0), Metrics(), Health(), token_file=str(token))
    Dashboard(lambda: (backend, "locked", None), actions=True).install(server)
    server.start()
    try:
        dom = browse(f"http://127.0.0.1:{server.port}/", tmp_path / "chromium")
    finally:
        server.stop()
        backend.close()
    page = Rendered(dom)
    assert '<section id="login" class="shown">' in dom and "token needed" in "".join(page.text)
    assert page.members == [] and page.revision is None  # /api/status was not shown without it
