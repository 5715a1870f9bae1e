"""Idle cost, part 3 of ``supervisor_bench.py``: one supervisor with 5 idle children
next to supervisord running the same 5 children, RSS/USS/CPU in one window."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from _fleet import IDLE_CHILD, BenchTimeout, Fleet
from etcdvisor.process.watchdog import find_helper
from etcdvisor.testing import EtcdServer, wait_for


def start_supervisord(workdir: Path) -> subprocess.Popen:
    binary = shutil.which("supervisord") or str(Path(sys.executable).parent / "supervisord")
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError("supervisord not found (pip install 'etcdvisor[bench]')")
    sdir = workdir / "supervisord"
    sdir.mkdir()
    programs = "".join(
        f"\n[program:idle{i}]\ncommand={' '.join(IDLE_CHILD)}\nautorestart=true\n"
        f"stdout_logfile={sdir}/idle{i}.log\nredirect_stderr=true\n" for i in range(5))
    conf = sdir / "supervisord.conf"
    conf.write_text(f"[supervisord]\nnodaemon=true\nlogfile={sdir}/supervisord.log\n"
                    f"pidfile={sdir}/supervisord.pid\nchildlogdir={sdir}\n{programs}")
    return subprocess.Popen([binary, "-n", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=sdir)


class Meter:
    """CPU seconds and RSS of one process between ``begin()`` and ``end()``."""

    def __init__(self, label: str, pid: int):
        self.label = label
        self.proc = psutil.Process(pid)

    def begin(self) -> None:
        times = self.proc.cpu_times()
        self.cpu0, self.wall0 = times.user + times.system, time.monotonic()

    def end(self) -> dict:
        times = self.proc.cpu_times()
        wall = time.monotonic() - self.wall0
        mem = self.proc.memory_info()
        return {"label": self.label, "rss_mib": mem.rss / 2**20,
                "uss_mib": _uss(self.proc) / 2**20,
                "cpu_pct": 100.0 * (times.user + times.system - self.cpu0) / wall}


def _uss(proc: psutil.Process) -> float:
    try:
        return proc.memory_full_info().uss
    except (psutil.AccessDenied, AttributeError):
        return float("nan")


IDLE_TTL = 10  # the default member.ttl; keepalives go out about every second whatever the TTL


def bench_idle(workdir: Path, etcd_server: EtcdServer, seconds: float) -> list[dict]:
    fleet = Fleet(workdir, etcd_server.url, "idle")
    roles = {f"idle{i}": {"type": "sharded", "command": list(IDLE_CHILD), "settle": "0s",
                          "stop_timeout": "1s"} for i in range(5)}
    config = fleet.config(roles, IDLE_TTL)
    supervisor = fleet.start("idle-0", config)
    supervisord = start_supervisord(workdir)
    try:
        def children_of(pid: int) -> list[psutil.Process]:
            if supervisor.poll() is not None:
                raise BenchTimeout(f"supervisor exited: {(fleet.dir / 'idle-0.out').read_text()}")
            return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "sleep"]

        wait_for(lambda: len(children_of(supervisor.pid)) == 5, 60, "5 etcdvisor children")
        wait_for(lambda: len(children_of(supervisord.pid)) == 5, 60, "5 supervisord children")
        watchdog = wait_for(lambda: find_helper(supervisor.pid), 10, "the watchdog helper")
        time.sleep(2.0)  # let start-up work (imports, joins, first record writes) finish
        meters = [Meter("etcdvisor supervisor", supervisor.pid), Meter("  its watchdog helper", watchdog),
                  Meter("supervisord", supervisord.pid), Meter("etcd server (shared)", etcd_server.proc.pid)]
        for meter in meters:
            meter.begin()
        time.sleep(seconds)
        rows = [meter.end() for meter in meters]
        rows[2]["children"] = rows[0]["children"] = 5
        return rows
    finally:
        supervisord.send_signal(signal.SIGTERM)
        try:
            supervisord.wait(15)
        except subprocess.TimeoutExpired:
            supervisord.kill()
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(15)
        except subprocess.TimeoutExpired:
            pass
        fleet.close()


def report_idle(rows: list[dict], seconds: float) -> None:
    print(f"\n[3] idle cost over {seconds:.0f}s, 5 idle children ({' '.join(IDLE_CHILD)}) "
          f"each, same window (ttl {IDLE_TTL}s; keepalives about every second)")
    print(f"  {'process':<24}{'RSS MiB':>9}{'USS MiB':>9}{'CPU %':>8}")
    for row in rows:
        print(f"  {row['label']:<24}{row['rss_mib']:>9.1f}{row['uss_mib']:>9.1f}{row['cpu_pct']:>8.2f}")
    total = rows[0]["rss_mib"] + rows[1]["rss_mib"]
    print(f"  etcdvisor total (supervisor + watchdog): RSS {total:.1f} MiB "
          f"({total / rows[2]['rss_mib']:.2f}x supervisord), CPU {rows[0]['cpu_pct'] + rows[1]['cpu_pct']:.2f}%")
