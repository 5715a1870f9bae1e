"""``http:`` and ``log:`` of real ``supervisor run`` processes on real etcd.

* /metrics is scraped over HTTP and parsed with prometheus_client's text parser;
  values are checked against what the children recorded themselves: after a child
  was SIGKILLed and restarted, after the singleton leader's supervisor stopped
  (failover), after cron runs;
* /healthz and /readyz (and ``supervisor health``) while etcd is cut off by a TCP
  proxy and after it heals;
* ``log.format: json``: every output line parses and has ts, level, member, role,
  slot, msg (child lines also stream), with millisecond ISO 8601 timestamps.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import pytest

from etcdvisor.testing.proxy import TcpProxy

from .conftest import pid_alive, wait_for
from .harness_ops import free_port, get, json_lines, metric, scrape
from .harness_roles import cli, recorder  # noqa: F401

pytestmark = [pytest.mark.etcd]

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def start_member(fleet, member_id: str, config, port: int, **kwargs):
    env = {"ETCDVISOR_HTTP": f"127.0.0.1:{port}"}
    env.update(kwargs.pop("env", {}))
    return fleet.start(member_id, config, env=env, **kwargs)


def test_metrics_follow_restart_failover_and_cron_runs(fleet, recorder):
    config = fleet.write_config({
        "worker": recorder.role("sharded", sleep=600, settle=0),
        "api": recorder.role("singleton", sleep=600),
        "tick": recorder.role("cron", schedule="@every 2s", sleep=0.1),
    }, log={"format": "json"})
    ports = {"m0": free_port(), "m1": free_port()}
    members = {m: start_member(fleet, m, config, port) for m, port in ports.items()}

    def shard_counts():
        return [metric(port, "etcdvisor_shard_count", None, role="worker") for port in ports.values()]

    wait_for(lambda: shard_counts() == [2.0, 2.0], 40, "both members to report COUNT=2")
    indexes = sorted(metric(p, "etcdvisor_shard_index", None, role="worker") for p in ports.values())
    assert indexes == [0.0, 1.0]
    wait_for(lambda: sum(metric(p, "etcdvisor_role_leader", role="api") or 0 for p in ports.values()) == 1,
             30, "one api leader")
    leader = next(m for m, p in ports.items() if metric(p, "etcdvisor_role_leader", role="api") == 1)
    follower = next(m for m in ports if m != leader)
    wait_for(lambda: [r["member_id"] for r in recorder.starts("api")] == [leader], 30, "api child")

    # cron runs: the metric on the leader equals the runs its children recorded
    def cron_agrees() -> bool:
        ok = [r for r in recorder.ends("tick") if r["exit"] == 0]
        counted = sum(metric(p, "etcdvisor_cron_runs_total", role="tick", outcome="succeeded") or 0
                      for p in ports.values())
        return len(ok) >= 2 and counted == len(ok)
    wait_for(cron_agrees, 40, "cron_runs_total{outcome=succeeded} to match the recorded runs")
    last_ok = max(metric(p, "etcdvisor_cron_last_success_timestamp_seconds", role="tick") or 0
                  for p in ports.values())
    assert abs(last_ok - max(r["t"] for r in recorder.ends("tick"))) < 5

    # restart: SIGKILL the worker child on m0; it comes back, and the counters say so
    port0 = ports["m0"]
    before = scrape(port0)
    assert before.value("etcdvisor_child_up", role="worker") == 1
    starts_m0 = [r for r in recorder.starts("worker") if r["member_id"] == "m0"]
    os.kill(starts_m0[-1]["pid"], signal.SIGKILL)  # the child now running (COUNT=2)
    wait_for(lambda: len([r for r in recorder.starts("worker") if r["member_id"] == "m0"]) ==
             len(starts_m0) + 1, 30, "the worker child on m0 to restart")
    wait_for(lambda: metric(port0, "etcdvisor_child_up", role="worker") == 1, 15, "child_up back to 1")
    after = scrape(port0)
    assert after.value("etcdvisor_child_restarts_total", role="worker") == \
        before.value("etcdvisor_child_restarts_total", role="worker") + 1
    assert after.value("etcdvisor_child_exits_total", role="worker", code="SIGKILL") == 1

    # failover: the api leader's supervisor stops; the other member leads and says so
    members[leader].term()
    members[leader].wait(30)
    wait_for(lambda: metric(ports[follower], "etcdvisor_role_leader", role="api") == 1, 30,
             "the follower to report leadership")
    wait_for(lambda: [r["member_id"] for r in recorder.starts("api")] == [leader, follower], 30,
             "the api child to start on the new leader")
    # the worker reshards to 0/1 on the follower: its child starts when the coordinator (now the
    # follower itself, after its kill bound) grants it; COUNT shows once the child runs
    wait_for(lambda: metric(ports[follower], "etcdvisor_shard_count", None, role="worker") == 1, 30,
             "the follower to report COUNT=1 for the worker")
    final = scrape(ports[follower])
    assert final.value("etcdvisor_child_up", role="api") == 1
    assert final.value("etcdvisor_shard_count", role="worker") == 1
    assert final.samples("etcdvisor_lease_keepalive_rtt_seconds_count")[0].value > 0
    assert final.value("etcdvisor_lease_deadline_seconds") > 0

    # every line of both members' output is one JSON object with the fields
    for member in members.values():
        for doc in json_lines(member.output()):
            assert {"ts", "level", "member", "role", "slot", "msg"} <= set(doc), doc
            assert TS.match(doc["ts"]), doc
            assert doc["member"] == member.id
    lines = json_lines(members[leader].output())
    assert any(d["role"] == "api" and "elected" in d["msg"] for d in lines), "role of a decision line"


def test_probes_fail_while_etcd_is_cut_off_and_recover(fleet, recorder, etcd_url):
    proxy = TcpProxy.to_url(etcd_url)
    try:
        config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0)},
                                    http={"listen": "127.0.0.1:1"})  # ETCDVISOR_HTTP wins
        port = free_port()
        start_member(fleet, "m0", config, port, endpoints=proxy.url)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "ready")
        assert get(base + "/healthz") == (200, "ok\n")
        assert cli("health", "--http", f"127.0.0.1:{port}").returncode == 0

        proxy.blackhole()
        cut = time.time()
        wait_for(lambda: get(base + "/readyz")[0] == 503, 15, "not ready while etcd is cut off")
        status, body = get(base + "/readyz")
        assert "lease" in body and body.count("\n") == 1, body
        probe = cli("health", "--http", f"127.0.0.1:{port}")
        assert probe.returncode == 1 and probe.stdout.startswith(b"unhealthy: /"), probe.stdout
        # once the lease is gone (TTL 4s) the member is not alive either: its lease-bound
        # children are stopped and it holds no shard
        wait_for(lambda: get(base + "/healthz")[0] == 503, 20, "liveness to fail once the lease is gone")
        assert "lease expired or lost" in get(base + "/healthz")[1]
        assert cli("health", "--live", "--http", f"127.0.0.1:{port}").returncode == 1
        wait_for(lambda: not [r for r in recorder.starts("worker") if pid_alive(r["pid"], r["t"])], 15,
                 "the lease-bound child to stop")
        scraped = scrape(port)
        assert scraped.value("etcdvisor_etcd_errors_total", kind="keepalive") >= 1
        assert scraped.value("etcdvisor_etcd_errors_total", kind="lease_expired") >= 1
        assert scraped.value("etcdvisor_lease_deadline_seconds") < 0

        proxy.restore()
        healed = time.time()
        wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "ready again after the heal")
        assert get(base + "/healthz") == (200, "ok\n")
        assert cli("health", "--http", f"127.0.0.1:{port}").returncode == 0
        wait_for(lambda: [r for r in recorder.starts("worker") if r["t"] > healed], 30,
                 "the child to start again after the heal")
        assert cut < healed
        assert get(base + "/nope")[0] == 404
    finally:
        proxy.close()


def test_bad_log_level_and_http_address_are_one_line_exit_2(fleet, recorder):
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600)})
    for args, env in ((["--log-level", "loud"], {}), ([], {"ETCDVISOR_LOG_LEVEL": "loud"}),
                      (["--log-format", "xml"], {}), (["--http", "nowhere"], {}),
                      ([], {"ETCDVISOR_HTTP": "1.2.3.4:99999"})):
        result = cli("run", str(config), *args, env=env, timeout=30)
        err = result.stderr.decode()
        assert result.returncode == 2, (args, env, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    taken = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        result = cli("run", str(config), "--http", f"127.0.0.1:{taken}",
                     env={"ETCDVISOR_ENDPOINTS": fleet.etcd_url}, timeout=30)
    err = result.stderr.decode()
    assert result.returncode == 1 and "cannot listen" in err and len(err.strip().splitlines()) == 1, err
    assert not recorder.starts("worker"), "nothing may start when the port is taken"


def test_text_log_lines_have_timestamps_and_keep_the_child_prefix(fleet, recorder):
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0,
                                                        command=["sh", "-c", "echo hello; exec sleep 600"])})
    member = fleet.start("m0", config)
    wait_for(lambda: re.search(r"^\S+ worker\[0\]\| hello$", member.output(), re.M), 30,
             "the child's line with its role[index]| prefix")
    for line in member.output().splitlines():
        stamp = line.split(" ", 1)[0]
        assert TS.match(stamp), line


def test_json_child_output_lines_are_wrapped_with_stream(fleet, recorder):
    config = fleet.write_config({"worker": recorder.role(
        "sharded", settle=0, command=["sh", "-c", "echo out-line; echo err-line >&2; exec sleep 600"])},
        log={"format": "json", "level": "debug"})
    member = fleet.start("m0", config)
    member.wait_output("err-line", 30)
    member.wait_output("out-line", 30)
    docs = json_lines(member.output())
    child = {d["msg"]: d for d in docs if "stream" in d}
    assert child["out-line"]["stream"] == "stdout" and child["err-line"]["stream"] == "stderr"
    for doc in child.values():
        assert (doc["role"], doc["member"], doc["level"]) == ("worker", "m0", "info")
        assert doc["slot"] == "0", doc  # the child's INDEX
        assert TS.match(doc["ts"])
    assert any(d["level"] == "debug" for d in docs) or all(d["level"] != "debug" for d in docs)


def test_token_file_guards_metrics_of_a_running_member_and_probes_stay_open(fleet, recorder):
    """http.token_file wired through `supervisor run` (ETCDVISOR_HTTP replaces the
    address, the token stays); slow clients do not delay `supervisor health`."""
    (fleet.dir / "secrets").mkdir()
    (fleet.dir / "secrets" / "metrics-token").write_text("k8s-scrape-token\n")
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0)},
                                http={"listen": "127.0.0.1:1", "token_file": "secrets/metrics-token"})
    port = free_port()
    start_member(fleet, "m0", config, port)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/readyz")[0] == 200, 30, "the member to be ready")
    status, body = get(base + "/metrics")
    assert status == 401 and "Bearer" in body, (status, body)
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer k8s-scrape-token"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200 and b"etcdvisor_child_up" in reply.read()
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        probe = cli("health", "--http", f"127.0.0.1:{port}", "--timeout", "2")
        assert probe.returncode == 0 and probe.stdout == b"ok: alive and ready\n", probe
    finally:
        for sock in slow:
            sock.close()


def test_json_stop_lines_of_sharded_children_carry_role_and_slot(fleet, recorder):
    """The supervisor's lines about stopping a child (SIGTERM sent, SIGKILL after the grace)
    carry the child's role and slot (its INDEX) as its start and exit lines do: they were
    null (issue 18, 5)."""
    config = fleet.write_config({"worker": recorder.role("sharded", sleep=600, settle=0, processes=2)},
                                log={"format": "json"})
    member = fleet.start("m0", config)
    wait_for(lambda: len(recorder.starts("worker")) == 2, 60, "both worker children")
    member.term()
    assert member.wait(30) == 0
    about = [d for d in json_lines(member.output()) if "stream" not in d and d["msg"].startswith("worker[")]
    stops = [d for d in about if "sent SIGTERM" in d["msg"]]
    assert len(stops) == 2, about
    for doc in about:
        index = doc["msg"][len("worker["):doc["msg"].index("]")]
        assert (doc["role"], doc["slot"]) == ("worker", index), doc
