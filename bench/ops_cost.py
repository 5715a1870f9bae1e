"""What ``http:`` costs a member: CPU per /metrics scrape with 20 roles, and idle CPU/RSS
with the listener on versus off.

A real ``supervisor run`` (private etcd, one member) runs 20 roles: 10 sharded and
5 singleton roles whose children sleep, 3 cron roles (hourly, idle) and 2 topic roles
(no messages). Figures:

* ``scrape_cpu_ms``: the supervisor's CPU time (user+system, from /proc via psutil)
  over ``--scrapes`` sequential GET /metrics, minus its idle CPU over the same wall time,
  per scrape; ``scrape_bytes`` the size of one answer; ``scrape_wall_ms`` the client's
  median round trip;
* ``render_cpu_ms``: in-process ``Metrics.render()`` of a 20-role snapshot (no HTTP);
* ``idle_cpu_pct_http_on`` / ``idle_cpu_pct_http_off``: the member's CPU over an idle
  window (after start-up settled), as a percentage of one core; ``rss_mib_*`` its RSS.

Usage: ``python bench/ops_cost.py [--scrapes 300] [--idle 20]``. The last line of
output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402
from _supervisors import BenchFleet  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def twenty_roles() -> dict:
    sleep = ["sleep", "3600"]
    roles = {}
    for n in range(10):
        roles[f"shard{n}"] = {"type": "sharded", "command": sleep, "settle": 0, "stop_timeout": "1s"}
    for n in range(5):
        roles[f"single{n}"] = {"type": "singleton", "command": sleep, "stop_timeout": "1s"}
    for n in range(3):
        roles[f"cron{n}"] = {"type": "cron", "schedule": "0 * * * *", "command": ["true"]}
    for n in range(2):
        roles[f"topic{n}"] = {"type": "topic", "topic": f"t{n}", "command": ["cat"]}
    return roles


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


def start_member(fleet: BenchFleet, http_port: int | None) -> psutil.Process:
    if http_port:
        os.environ["ETCDVISOR_HTTP"] = f"127.0.0.1:{http_port}"
    try:
        fleet.start(1, fleet.write_config(twenty_roles()))
    finally:
        os.environ.pop("ETCDVISOR_HTTP", None)
    proc = psutil.Process(fleet.procs[-1].pid)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # every sleeping child started
        children = [c for c in proc.children() if c.name() == "sleep"]
        if len(children) >= 15:
            return proc
        time.sleep(0.2)
    raise SystemExit(f"the member did not start its 15 children: {fleet.log_lines()[-5:]}")


def idle(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """(CPU % of one core, RSS MiB) over an idle window."""
    time.sleep(3.0)  # let start-up work (records, elections) finish
    before, start = cpu(proc), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu(proc) - before, time.monotonic() - start
    return 100.0 * used / wall, proc.memory_info().rss / 2**20


def scrape_cost(proc: psutil.Process, port: int, scrapes: int, idle_pct: float) -> dict:
    url = f"http://127.0.0.1:{port}/metrics"
    body = get(url)
    walls = []
    before, start = cpu(proc), time.monotonic()
    for _ in range(scrapes):
        t0 = time.monotonic()
        get(url)
        walls.append(time.monotonic() - t0)
    used, wall = cpu(proc) - before, time.monotonic() - start
    net = max(0.0, used - idle_pct / 100.0 * wall)
    return {"scrape_cpu_ms": round(1000 * net / scrapes, 3), "scrape_bytes": len(body),
            "scrape_wall_ms": round(1000 * statistics.median(walls), 3),
            "scrape_series": sum(1 for line in body.decode().splitlines() if line and line[0] != "#")}


def render_cost(repeat: int = 300) -> float:
    from etcdvisor.runtime.metrics import Metrics, Snapshot

    roles = {}
    for name, spec in twenty_roles().items():
        status = {"type": spec["type"], "failed": None, "leader": spec["type"] != "sharded"}
        if spec["type"] in ("sharded", "singleton"):
            status["children"] = {name: {"state": "running", "pid": 1, "restarts": 0, "last_exit": None}}
        if spec["type"] == "sharded":
            status.update(index=0, count=3)
        roles[name] = status
    metrics = Metrics()
    for name in roles:
        metrics.exits.labels(name, "0").inc()
        metrics.restarts.labels(name).inc()
    metrics.publish(Snapshot(roles=roles, lease_alive_sent=time.monotonic(), lease_ttl=10,
                             max_stop_timeout=1.0))
    start = time.process_time()
    for _ in range(repeat):
        metrics.render()
    return 1000 * (time.process_time() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    result = {"roles": 20, "children": 15}
    fleet = BenchFleet("ops-off")
    try:
        proc = start_member(fleet, None)
        result["idle_cpu_pct_http_off"], result["rss_mib_http_off"] = idle(proc, args.idle)
    finally:
        fleet.close()
    fleet = BenchFleet("ops-on")
    try:
        port = free_port()
        proc = start_member(fleet, port)
        result["idle_cpu_pct_http_on"], result["rss_mib_http_on"] = idle(proc, args.idle)
        result.update(scrape_cost(proc, port, args.scrapes, result["idle_cpu_pct_http_on"]))
    finally:
        fleet.close()
    result["render_cpu_ms"] = round(render_cost(), 3)
    for key in list(result):
        if isinstance(result[key], float):
            result[key] = round(result[key], 3)
    print(f"scrape: {result['scrape_cpu_ms']} ms CPU in the supervisor per scrape "
          f"({result['scrape_series']} series, {result['scrape_bytes']} bytes); "
          f"render alone {result['render_cpu_ms']} ms")
    print(f"idle: http off {result['idle_cpu_pct_http_off']}% CPU, {result['rss_mib_http_off']} MiB; "
          f"http on {result['idle_cpu_pct_http_on']}% CPU, {result['rss_mib_http_on']} MiB")
    emit("ops_cost", result)


if __name__ == "__main__":
    main()
