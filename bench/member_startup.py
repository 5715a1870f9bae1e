"""CPU and wall time of one member's start-up, and of the quick verbs.

``supervisor run`` of a one-role config against a private etcd: the supervisor's own
CPU seconds (user + sys, from /proc) when its first child is running (the first loop
turn has started it), plus ``validate``/``--help``/``status`` wall times. Prints one
line per figure (median of ``--runs``). ``python bench/member_startup.py [--runs 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from etcdvisor.etcd_server import EtcdServer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
cluster: bench
etcd: {{endpoints: "{url}"}}
member: {{ttl: 10, state_dir: "{state}"}}
roles:
  worker:
    type: sharded
    command: ["sleep", "60"]
"""


def run_start(url: str, workdir: Path) -> tuple[float, float, float]:
    """(CPU seconds of the member, CPU seconds of its helpers, wall seconds) of
    ``supervisor run`` until its child runs; helpers: the config-check child and the
    watchdog helper."""
    config = workdir / "bench.yaml"
    config.write_text(CONFIG.format(url=url, state=workdir / "state"))
    env = {**os.environ, "ETCDVISOR_LOG_LEVEL": "warning"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "etcdvisor", "run", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    member = psutil.Process(proc.pid)
    try:
        deadline = started + 60
        while time.monotonic() < deadline:
            if any(c.name() == "sleep" for c in member.children(recursive=True)):
                wall = time.monotonic() - started
                cpu = member.cpu_times()  # children_*: the config-check child, waited for
                helpers = [c.cpu_times() for c in member.children() if c.name() != "sleep"]  # the watchdog
                return (cpu.user + cpu.system, cpu.children_user + cpu.children_system
                        + sum(h.user + h.system for h in helpers), wall)
            time.sleep(0.005)
        raise RuntimeError("the child did not start within 60 s")
    finally:
        proc.terminate()
        proc.wait(30)


def wall(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "etcdvisor", *args], capture_output=True, env=env, check=False)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    server = EtcdServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            starts = [run_start(server.url, Path(tmp)) for _ in range(runs)]
            env = {**os.environ, "ETCDVISOR_ENDPOINTS": server.url, "ETCDVISOR_CLUSTER": "bench"}
            figures = {
                "run: member CPU s": [own for own, _, _ in starts],
                "run: helpers' CPU s": [helpers for _, helpers, _ in starts],
                "run: wall s to first child": [w for _, _, w in starts],
                "validate: wall s": [wall(["validate", str(ROOT / "examples" / "fleet.yaml")]) for _ in range(runs)],
                "--help: wall s": [wall(["--help"]) for _ in range(runs)],
                "status: wall s": [wall(["status"], env) for _ in range(runs)],
            }
    finally:
        server.cleanup()
    print(f"{'':28} {'min':>6} {'median':>6}")
    for name, values in figures.items():
        print(f"{name:28} {min(values):6.3f} {statistics.median(values):6.3f}")


if __name__ == "__main__":
    main()
