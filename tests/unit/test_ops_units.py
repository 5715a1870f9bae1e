"""Pure parts of the operations features: listen addresses, log lines, control state,
probe logic and the metrics exposition (parsed back with prometheus_client)."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etcdvisor.config.model import LogFormat, LogLevel
from etcdvisor.config.ops import ListenError, connect_address, format_listen, parse_listen
from etcdvisor.logs import JsonFormatter, LogSettingError, TextFormatter, child_role_slot, parse_level, timestamp
from etcdvisor.process import output
from etcdvisor.runtime.control import ControlChanged, ControlState
from etcdvisor.runtime.health import STALL_GRACE, Health
from etcdvisor.runtime.metrics import Metrics, Snapshot, exit_code_label

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


# --- listen addresses -------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), (":9100", ("", 9100)), ("[::1]:80", ("::1", 80)),
    ("0.0.0.0:1", ("0.0.0.0", 1)), (" localhost:65535 ", ("localhost", 65535))])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9100", "host:", "host:0", "host:65536", "host:http", "::1:80",
                                  "a b:80", "x/y:80", "", ":\u00b2", ":\u0663\u0660", ":9" * 5000,
                                  ":" + "9" * 5000])
def test_parse_listen_rejects_with_one_line(text):
    with pytest.raises(ListenError) as info:
        parse_listen(text)
    assert "\n" not in str(info.value)


def test_wildcards_are_asked_on_loopback():
    assert connect_address(("", 9100)) == ("127.0.0.1", 9100)
    assert connect_address(("::", 9100)) == ("::1", 9100)
    assert format_listen(("::1", 80)) == "[::1]:80" and format_listen(("", 80)) == "0.0.0.0:80"


# --- logs --------------------------------------------------------------------------------------
def test_timestamp_is_iso8601_utc_with_milliseconds():
    assert timestamp(0.9999) == "1970-01-01T00:00:00.999Z"
    assert TS.match(timestamp())


def test_unknown_level_is_one_line():
    assert parse_level("WARNING", "x") is LogLevel.WARNING
    with pytest.raises(LogSettingError, match="--log-level: unknown log level 'loud'"):
        parse_level("loud", "--log-level")


@pytest.mark.parametrize("name, expected", [("worker[3]", ("worker", "3")), ("worker[0/2]", ("worker", "0/2")),
                         ("tick@2026-01-01T00:00:00Z",
                         ("tick", "2026-01-01T00:00:00Z")), ("thumbs#42", ("thumbs", "42")),
                         ("api", ("api", None)), ("Bad Name", (None, None))])
def test_child_role_slot(name, expected):
    assert child_role_slot(name) == expected


def record(msg, *args, **extra):
    rec = logging.LogRecord("etcdvisor", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_has_every_field_on_every_line():
    fmt = JsonFormatter("m1")
    plain = json.loads(fmt.format(record("member %s joined", "m1")))
    assert plain == {"ts": plain["ts"], "level": "info", "member": "m1", "role": None, "slot": None,
                     "msg": "member m1 joined"}
    assert TS.match(plain["ts"])
    assert json.loads(fmt.format(record("role worker: assign INDEX=0")))["role"] == "worker"
    assert json.loads(fmt.format(record("api:election: elected")))["role"] == "api"
    explicit = json.loads(fmt.format(record("x\ny", role="r", slot=3)))
    assert (explicit["role"], explicit["slot"], explicit["msg"]) == ("r", "3", "x\ny")
    assert TS.match(TextFormatter("m1").format(record("hello")).split(" ")[0])


def test_child_lines_in_json_carry_stream_role_and_slot():
    from etcdvisor.logs import _json_child_line

    out, err = io.BytesIO(), io.BytesIO()
    pump = output.OutputPump(out, err)
    output.set_line_format(_json_child_line("m1"))
    try:
        stream = output._Stream(io.BytesIO(), "worker[2]", "stderr", err)
        pump._write_line(stream, b"bad \xff byte")
    finally:
        output.set_line_format(None)
    doc = json.loads(err.getvalue())
    assert (doc["role"], doc["slot"], doc["stream"], doc["member"]) == ("worker", "2", "stderr", "m1")
    assert doc["msg"] == "bad \ufffd byte" and TS.match(doc["ts"])


# --- control state ------------------------------------------------------------------------------
def rec(verb, revision, when=1000.0, **extra):
    return {"verb": verb, "id": f"id{revision}", "who": "ann@h", "when": when, "revision": revision, **extra}


def test_control_state_history_commands_and_pause():
    state = ControlState(wall=lambda: 1030.0)
    first = state.update(ControlChanged({"w": {"restart": rec("restart", 5), "pause": rec("pause", 6)},
                                         "c": {"trigger": rec("trigger", 7, when=1000.0)}}, True))
    assert [(c.verb, c.role) for c in first] == [("trigger", "c")], "history, except a fresh trigger"
    assert state.is_paused("w") and not state.is_paused("c")
    again = state.update(ControlChanged({"w": {"restart": rec("restart", 5)}}, False))
    assert again == [] and not state.is_paused("w")
    new = state.update(ControlChanged({"w": {"restart": rec("restart", 9), "reset": rec("reset", 10)}}, False))
    assert [(c.verb, c.record["revision"]) for c in new] == [("restart", 9), ("reset", 10)]


def test_old_trigger_at_start_is_history():
    state = ControlState(wall=lambda: 2000.0)
    assert state.update(ControlChanged({"c": {"trigger": rec("trigger", 3, when=1000.0)}}, True)) == []


# --- probes ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_health_live_follows_the_loops_promise():
    clock = Clock()
    health = Health(clock=clock)
    assert health.live() == (False, "decision loop not started")
    health.turn(100.0, 130.0)  # idle: promised to turn again by 130
    clock.now = 130.0 + STALL_GRACE - 0.1
    assert health.live()[0]
    clock.now = 130.0 + STALL_GRACE + 1
    ok, reason = health.live()
    assert not ok and reason.startswith("decision loop stalled")
    health.turn(clock.now, clock.now + 1)
    health.joined = True
    assert not health.live()[0], "joined and no lease: not alive"
    health.lease_alive_sent = lambda: clock.now - 1
    assert health.live() == (True, "ok")


def test_health_ready_needs_join_fresh_lease_and_no_failed_role():
    clock = Clock()
    sent = {"t": 99.0}
    health = Health(clock=clock, lease_alive_sent=lambda: sent["t"], lease_fresh=3.0)
    health.turn(100.0, 101.0)
    assert health.ready() == (False, "not joined the cluster yet")
    health.joined = True
    assert health.ready() == (True, "ready")
    sent["t"] = 95.0
    ok, reason = health.ready()
    assert not ok and "lease not confirmed alive for 5.0s" in reason
    sent["t"] = None
    assert not health.ready()[0]
    sent["t"] = 99.5
    health.failed = "role api failed: boom"
    assert health.ready() == (False, "role api failed: boom")


# --- metrics -----------------------------------------------------------------------------------------
def parse(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_exposition_from_a_snapshot_and_counters():
    clock = Clock()
    metrics = Metrics(backlog=lambda: {"thumbs": 4}, clock=clock)
    metrics.publish(Snapshot(roles={
        "worker": {"type": "sharded", "failed": None, "index": 1, "count": 3,
                   "children": {"1/3": {"state": "running", "ready": True}}},
        "api": {"type": "singleton", "failed": "crash loop", "leader": False,
                "children": {"api": {"state": "backoff"}}},
    }, paused=frozenset({"api"}), lease_alive_sent=99.0, lease_ttl=10, max_stop_timeout=1.0))
    metrics.exits.labels("worker", exit_code_label(-9)).inc()
    metrics.restarts.labels("worker", "liveness").inc()
    metrics.probe_failures.labels("worker", "liveness").inc()
    metrics.cron_outcome("tick", "succeeded")
    metrics.cron_outcome("tick", "failed", manual=True)
    metrics.keepalive_rtt.observe(0.003)
    values = parse(metrics.render().decode())
    assert values[("etcdvisor_child_up", (("role", "worker"), ("slot", "1")))] == 1
    assert values[("etcdvisor_child_up", (("role", "api"), ("slot", "api")))] == 0
    assert values[("etcdvisor_shard_index", (("role", "worker"),))] == 1
    assert values[("etcdvisor_shard_count", (("role", "worker"),))] == 3
    assert values[("etcdvisor_role_leader", (("role", "api"),))] == 0
    assert values[("etcdvisor_role_paused", (("role", "api"),))] == 1
    assert values[("etcdvisor_role_failed", (("role", "api"),))] == 1
    assert values[("etcdvisor_child_exits_total", (("code", "SIGKILL"), ("role", "worker")))] == 1
    assert values[("etcdvisor_child_restarts_total", (("reason", "liveness"), ("role", "worker")))] == 1
    assert values[("etcdvisor_probe_failures_total", (("probe", "liveness"), ("role", "worker")))] == 1
    assert values[("etcdvisor_child_ready", (("role", "worker"), ("slot", "1")))] == 1
    assert values[("etcdvisor_child_ready", (("role", "api"), ("slot", "api")))] == 0
    assert values[("etcdvisor_cron_runs_total", (("outcome", "succeeded"), ("role", "tick")))] == 1
    assert values[("etcdvisor_cron_runs_total", (("outcome", "manual-failed"), ("role", "tick")))] == 1
    assert values[("etcdvisor_cron_last_success_timestamp_seconds", (("role", "tick"),))] > 0
    assert values[("etcdvisor_topic_backlog", (("role", "thumbs"),))] == 4
    assert values[("etcdvisor_lease_keepalive_rtt_seconds_count", ())] == 1
    # t_k 99 + 10*(1-0.05) - margin 0.5 - stop 1 - kill bound 0.5 = 106.5; now 100
    assert values[("etcdvisor_lease_deadline_seconds", ())] == pytest.approx(6.5)
    assert not [name for name, _ in values if name.endswith("_created")]


def test_backlog_errors_are_counted_and_reuse_the_last_value():
    clock = Clock()
    calls = {"n": 0}

    def backlog():
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("etcd down")
        return {"q": 2}
    metrics = Metrics(backlog=backlog, clock=clock)
    assert metrics.backlog() == {"q": 2}
    assert metrics.backlog() == {"q": 2} and calls["n"] == 1  # cached
    clock.now += 10
    assert metrics.backlog() == {"q": 2} and calls["n"] == 2
    assert parse(metrics.render().decode())[("etcdvisor_etcd_errors_total", (("kind", "topic_backlog"),))] == 1


def test_log_settings_enums_match_the_schema():
    from etcdvisor.config import schema_text

    schema = json.loads(schema_text())
    log = schema["properties"]["log"]["properties"]
    assert log["format"]["enum"] == [f.value for f in LogFormat]
    assert log["level"]["enum"] == [lv.value for lv in LogLevel]


def test_python_dash_m_etcdvisor_is_the_cli():
    import subprocess
    import sys
    from pathlib import Path

    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    done = subprocess.run([sys.executable, "-m", "etcdvisor", "validate", str(quickstart)],
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and b": ok: cluster" in done.stdout, done.stderr
    usage = subprocess.run([sys.executable, "-m", "etcdvisor", "--help"], capture_output=True, timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith(b"usage: supervisor ")
    for verb in (b"restart", b"pause", b"resume", b"reset", b"trigger", b"health"):
        assert verb in usage.stdout


def test_ops_server_answers_survives_a_silent_client_and_stops():
    import socket
    import time
    import urllib.error
    import urllib.request

    from etcdvisor.runtime.http import REQUEST_TIMEOUT, OpsServer

    health = Health()
    health.turn(health.clock(), health.clock() + 30)
    server = OpsServer(("127.0.0.1", 0), Metrics(), health).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as reply:
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
            assert b"etcdvisor_lease_deadline_seconds" in reply.read()
        with urllib.request.urlopen(base + "/healthz", timeout=5) as reply:
            assert reply.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert info.value.code == 503 and info.value.read() == b"not joined the cluster yet\n"
        head = urllib.request.Request(base + "/healthz", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as reply:
            assert reply.status == 200 and reply.read() == b""
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/../etc/passwd", timeout=5)
        assert info.value.code == 404
        silent = socket.create_connection(("127.0.0.1", server.port))  # sends nothing
        started = time.monotonic()
        with urllib.request.urlopen(base + "/healthz", timeout=10) as reply:
            assert reply.status == 200
        assert time.monotonic() - started < REQUEST_TIMEOUT + 2
        silent.close()
    finally:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3


def test_child_up_has_one_series_per_child_and_fixed_shards_report_count():
    from etcdvisor.runtime.metrics import child_indexes, slot_label

    assert child_indexes("3/8", {}) == {3}
    assert child_indexes("shard-5", {}) == {5}
    assert child_indexes("shards-2-abcd", {"shards": [4, 9]}) == {4, 9}
    assert child_indexes("api", {}) == frozenset()
    # overlap hand-off keys children by position (p0, p1): the child's own INDEX counts
    overlap = {"children": {"p1": {"state": "running", "index": 7}}}
    assert child_indexes("p1", overlap) == {7} and slot_label("p1", overlap) == "7"
    assert [slot_label(k, {"shards": [1]}) for k in ("3/8", "shard-5", "shards-1-ab", "api")] == \
        ["3", "5", "shards-1-ab", "api"]
    metrics = Metrics(clock=Clock())
    metrics.declare({"worker": "sharded", "shards": "sharded", "tick": "cron", "q": "topic"})
    metrics.publish(Snapshot(roles={
        "worker": {"type": "sharded", "index": 2, "count": 4,
                   "children": {"2/4": {"state": "running"}, "3/4": {"state": "running"}}},
        "shards": {"type": "sharded", "index": None, "count": 64, "shards": [7, 8],
                   "children": {"shard-7": {"state": "running"}, "shard-8": {"state": "backoff"}}},
    }))
    text = metrics.render().decode()
    values = parse(text)
    assert text.count('etcdvisor_child_up{role="worker"') == 2
    assert values[("etcdvisor_child_up", (("role", "worker"), ("slot", "3")))] == 1
    assert values[("etcdvisor_child_up", (("role", "shards"), ("slot", "8")))] == 0
    assert values[("etcdvisor_shard_count", (("role", "shards"),))] == 64
    assert ("etcdvisor_shard_index", (("role", "shards"),)) not in values
    for role in ("worker", "shards", "tick", "q"):
        assert values[("etcdvisor_child_restarts_total", (("reason", "exit"), ("role", role)))] == 0
    assert values[("etcdvisor_cron_runs_total", (("outcome", "succeeded"), ("role", "tick")))] == 0
    assert values[("etcdvisor_topic_messages_total", (("outcome", "done"), ("role", "q")))] == 0


def test_usage_mistakes_are_one_line_and_exit_2():
    import subprocess
    import sys

    for argv in (["restart", "worker", "--index", "abc"], [], ["frob"], ["config", "set", "--global",
                                                                      "--member", "m", "a", "b"]):
        done = subprocess.run([sys.executable, "-m", "etcdvisor", *argv], capture_output=True, timeout=60)
        assert done.returncode == 2, argv
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: supervisor"), (argv, lines)
