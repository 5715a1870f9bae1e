"""Probe kinds against real sockets and processes, and the readiness decisions
(Kubernetes semantics) driven by their outcomes."""

from __future__ import annotations

import http.server
import os
import queue
import socket
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from etcdvisor.config.health import expand, template_problem
from etcdvisor.config.model import HealthSpec, ProbeSpec, RoleSpec, RoleType
from etcdvisor.process.child import ChildState
from etcdvisor.process.manager import ProcessManager
from etcdvisor.process.spawn import ChildSpec, ChildVars
from etcdvisor.process.tracking import alive
from etcdvisor.runtime.probes import ProbeDone, ProbeRunner, check_http, check_memory, check_tcp
from etcdvisor.runtime.readiness import NotifyMessage, Readiness


class _Handler(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self):  # noqa: N802
        if self.path == "/hang":
            self.release.wait(5)
        code = {"/ok": 200, "/redirect": 302, "/bad": 500}.get(self.path, 404)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/elsewhere")
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    _Handler.release.set()
    srv.shutdown()
    srv.server_close()
    _Handler.release.clear()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_probe_2xx_3xx_pass_others_fail(server):
    assert check_http(server + "/ok", 1.0) == (True, "HTTP 200")
    assert check_http(server + "/redirect", 1.0) == (True, "HTTP 302")  # not followed
    ok, message = check_http(server + "/bad", 1.0)
    assert not ok and "HTTP 500" in message
    ok, message = check_http(f"http://127.0.0.1:{closed_port()}/", 1.0)
    assert not ok and "refused" in message.lower()
    started = time.monotonic()
    ok, message = check_http(server + "/hang", 0.3)
    assert not ok and time.monotonic() - started < 2.0 and "timed out" in message.lower()


def test_tcp_probe_connects_or_fails():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert check_tcp(f"127.0.0.1:{listener.getsockname()[1]}", 1.0)[0]
    ok, message = check_tcp(f"127.0.0.1:{closed_port()}", 1.0)
    assert not ok and message.startswith("connect 127.0.0.1:")


def test_memory_probe_compares_the_tree_rss():
    assert check_memory(os.getpid(), 1 << 40)[0]
    ok, message = check_memory(os.getpid(), 1)
    assert not ok and "above the limit of 1 bytes" in message


def test_templates_take_the_register_placeholders():
    assert expand("http://{host}:{8000 + index}/{member}/{index}", index=3, member="m1", host="h") == \
        "http://h:8003/m1/3"
    assert expand("{index + 10}", index=2, member="m", host="h") == "12"
    assert template_problem("http://127.0.0.1:{port}/") is not None
    assert template_problem("http://127.0.0.1:{8000 + index}/") is None


# --- exec probes: tracked processes ------------------------------------------------------

@pytest.fixture
def runner():
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    manager = ProcessManager(capture_output=False)
    manager.start()
    probes = ProbeRunner(inbox.put, manager)
    yield probes, manager, inbox
    manager.stop_all(time.monotonic())
    deadline = time.monotonic() + 5
    while not manager.all_stopped() and time.monotonic() < deadline:
        manager.tick(time.monotonic())
        time.sleep(0.02)
    manager.close()
    probes.close()


def run_exec(probes, manager, inbox, argv, timeout=2.0, env=None) -> ProbeDone:
    child = ChildSpec(name="api[0]", argv=("true",), env=dict(env or os.environ), cwd="/tmp")
    probes.exec(ProbeDone("api/0", "tag", "liveness", False), tuple(argv), child, timeout, time.monotonic())
    deadline = time.monotonic() + timeout + 5
    while time.monotonic() < deadline:
        manager.tick(time.monotonic())
        probes.tick(time.monotonic())
        try:
            return inbox.get(timeout=0.02)
        except queue.Empty:
            pass
    raise AssertionError("no probe outcome")


def test_exec_probe_exit_status_env_and_cwd(runner):
    probes, manager, inbox = runner
    code = "import os,sys; sys.exit(0 if os.getcwd() == '/tmp' and os.environ['PROBE_X'] == 'y' else 3)"
    done = run_exec(probes, manager, inbox, [sys.executable, "-c", code], env={**os.environ, "PROBE_X": "y"})
    assert done.ok and done.slot == "api/0" and done.probe == "liveness"
    done = run_exec(probes, manager, inbox, [sys.executable, "-c", "import sys; sys.exit(2)"])
    assert not done.ok and done.message == "exit status 2"
    done = run_exec(probes, manager, inbox, ["/nonexistent/probe"])
    assert not done.ok


def test_exec_probe_is_killed_at_its_timeout_with_its_tree(runner, tmp_path):
    probes, manager, inbox = runner
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; setsid sleep 30 & echo $! >> {pids}; wait"
    started = time.monotonic()
    done = run_exec(probes, manager, inbox, ["sh", "-c", script], timeout=0.5)
    assert not done.ok and "timed out" in done.message and time.monotonic() - started < 3
    spawned = [int(p) for p in pids.read_text().split()]
    assert len(spawned) == 2
    deadline = time.monotonic() + 3
    while alive(spawned) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(spawned), "a process of a timed-out probe survived"
    probes.tick(time.monotonic())
    assert manager.slots == ()  # finished probe slots are dropped


def test_a_daemon_left_by_a_successful_probe_is_killed(runner, tmp_path):
    probes, manager, inbox = runner
    pids = tmp_path / "pids"
    done = run_exec(probes, manager, inbox, ["sh", "-c", f"setsid sleep 30 </dev/null >/dev/null 2>&1 & "
                                             f"echo $! > {pids}"])
    assert done.ok
    daemon = int(pids.read_text())
    deadline = time.monotonic() + 3
    while alive([daemon]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive([daemon])


# --- readiness decisions -------------------------------------------------------------------

class FakeRunner:
    def __init__(self):
        self.launched: list[tuple[str, str]] = []

    def http(self, done, url, timeout):
        self.launched.append((done.probe, url))

    tcp = http

    def exec(self, done, argv, child, timeout, now):
        self.launched.append((done.probe, argv[0]))

    def memory(self, done, pid, limit):
        self.launched.append(("memory", str(limit)))

    def tick(self, now):
        pass

    def cancel(self, slot_name):
        self.launched.append(("cancel", slot_name))

    def next_deadline(self):
        return None


class FakeSlot:
    def __init__(self, name="api/0"):
        self.name = name
        self.desired = ChildSpec(name="api[0]", argv=("x",), env={}, vars=ChildVars(index=2))
        self.child = SimpleNamespace(tag="t1", pid=4242, state=ChildState.RUNNING, started_at=100.0,
                                     spec=self.desired, alive=True)
        self.failed: list[tuple[str, bool]] = []

    def fail_child(self, now, reason, quick):
        self.failed.append((reason, quick))
        self.child.state = ChildState.STOPPING
        return True


NO_HEALTH = HealthSpec()


def role(health=NO_HEALTH, min_ready=2.0) -> RoleSpec:
    return RoleSpec(name="api", type=RoleType.SHARDED, command=("x",), health=health, min_ready=min_ready)


def probe(kind="http", **keys) -> ProbeSpec:
    return ProbeSpec(kind=kind, target="http://127.0.0.1:{9000 + index}/" if kind == "http" else "", **keys)


def done(probe_name, ok, slot="api/0", tag="t1"):
    return ProbeDone(slot, tag, probe_name, ok, "" if ok else "boom")


def test_without_checks_a_child_is_ready_after_min_ready():
    ready = Readiness(FakeRunner(), member="m0")
    slot = FakeSlot()
    ready.sync([(role(min_ready=2.0), slot)], 100.0)
    assert ready.ready_since("api/0", 101.9) is None and not ready.unready_checked(101.9)
    assert ready.ready_since("api/0", 102.0) == 102.0
    assert ready.next_deadline() == 102.0
    slot.child.state = ChildState.STOPPING
    assert not ready.ready("api/0", 103.0)


def test_startup_then_readiness_and_liveness_with_thresholds():
    runner = FakeRunner()
    ready = Readiness(runner, member="m0")
    slot = FakeSlot()
    health = HealthSpec(startup=probe(period=1.0, failure_threshold=3),
                        readiness=probe(period=1.0, success_threshold=2, failure_threshold=2),
                        liveness=probe(kind="exec", argv=("check",), period=1.0, failure_threshold=2))
    ready.sync([(role(health), slot)], 100.0)
    ready.run_due(100.0)
    assert runner.launched == [("startup", "http://127.0.0.1:9002/")]  # nothing else before startup
    ready.on_probe(done("startup", False), 100.1)
    ready.on_probe(done("startup", True), 101.1)
    ready.run_due(101.1)
    assert sorted(p for p, _ in runner.launched[1:]) == ["liveness", "readiness"]
    ready.on_probe(done("readiness", True), 101.2)
    assert not ready.ready("api/0", 101.2)  # success_threshold 2
    ready.on_probe(done("readiness", True), 102.2)
    assert ready.ready_since("api/0", 102.3) == 102.2
    ready.on_probe(done("readiness", False), 103.2)
    assert ready.ready("api/0", 103.2)  # one failure of failure_threshold 2
    ready.on_probe(done("readiness", False), 104.2)
    assert not ready.ready("api/0", 104.2) and ready.unready_checked(104.2) == ["api/0"]
    assert slot.failed == []  # readiness never restarts
    ready.on_probe(done("liveness", True), 104.3)
    ready.on_probe(done("liveness", False), 105.3)
    ready.on_probe(done("liveness", False), 106.3)
    assert slot.failed == [("liveness", False)]  # it had been live and ready: not a quick exit
    status = ready.status("api/0", 106.3)
    assert status["probe_failure"]["probe"] == "liveness" and status["probe_failure"]["message"] == "boom"


def test_startup_failing_restarts_as_a_quick_exit():
    ready = Readiness(FakeRunner(), member="m0")
    slot = FakeSlot()
    ready.sync([(role(HealthSpec(startup=probe(failure_threshold=2))), slot)], 100.0)
    ready.on_probe(done("startup", False), 100.0)
    ready.on_probe(done("startup", False), 101.0)
    assert slot.failed == [("startup", True)]
    ready.on_probe(done("startup", False, tag="old-run"), 102.0)  # a gone run's outcome is ignored
    assert len(slot.failed) == 1


def test_notify_ready_status_and_watchdog():
    ready = Readiness(FakeRunner(), member="m0")
    slot = FakeSlot()
    ready.sync([(role(HealthSpec(notify=True, watchdog=3.0)), slot)], 100.0)
    assert ready.unready_checked(100.0) == ["api/0"]
    ready.on_notify(NotifyMessage("api/0", (("READY", "1"), ("STATUS", "serving"))), 101.0)
    assert ready.ready_since("api/0", 101.0) == 101.0
    assert ready.status("api/0", 101.0)["notify_status"] == "serving"
    ready.on_notify(NotifyMessage("api/0", (("WATCHDOG", "1"),)), 102.0)
    assert ready.next_deadline() == 105.0
    ready.run_due(104.9)
    assert slot.failed == []
    ready.run_due(105.0)
    assert slot.failed == [("watchdog", False)]
    assert ready.status("api/0", 105.0)["probe_failure"]["probe"] == "watchdog"


def test_memory_is_sampled_and_a_breach_restarts():
    runner = FakeRunner()
    ready = Readiness(runner, member="m0")
    slot = FakeSlot()
    ready.sync([(role(HealthSpec(memory=1024)), slot)], 100.0)
    ready.run_due(100.0)
    assert runner.launched == [("memory", "1024")]
    ready.on_probe(done("memory", False), 100.1)
    assert slot.failed and slot.failed[0][0] == "memory"


def test_exec_probes_of_a_stopping_child_are_killed(runner):
    probes, manager, inbox = runner
    child = ChildSpec(name="api[0]", argv=("true",), env=dict(os.environ))
    probes.exec(ProbeDone("api/0", "tag", "liveness", False), ("sleep", "30"), child, 20.0, time.monotonic())
    manager.tick(time.monotonic())
    started = time.monotonic()
    probes.cancel("api/0")
    while True:
        manager.tick(time.monotonic())
        try:
            outcome = inbox.get(timeout=0.02)
            break
        except queue.Empty:
            assert time.monotonic() - started < 3, "the probe was not killed"
    assert not outcome.ok and time.monotonic() - started < 3


def test_no_deadline_in_the_past_once_min_ready_passed():
    """A passed min_ready must not keep the loop spinning (deadline 'now' forever)."""
    ready = Readiness(FakeRunner(), member="m0")
    ready.sync([(role(min_ready=2.0), FakeSlot())], 100.0)
    assert ready.next_deadline() == 102.0
    ready.run_due(102.0)
    assert ready.next_deadline() is None
