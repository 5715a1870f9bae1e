"""The floor the gRPC etcd client sets under an idle supervisor.

Starts a private etcd and, one after the other, a Python process at each
stage below; after it settled, measures its RSS, thread count, wake-ups/s
(voluntary + involuntary context switches of all its threads, from
/proc/<pid>/task/*/status) and CPU % over ``--seconds``:

* ``bare``: the interpreter alone (what supervisord starts from);
* ``import``: + the gRPC client and etcd3's protocol modules (``coord/etcd/_grpc.py``);
* ``watch``: + one channel carrying one idle watch;
* ``keepalive``: + one lease keepalive a second on the long-lived stream;
* ``supervisor-like``: + 4 more idle watches (5 sharded roles' memberships);
* ``keepalive-per-call`` (the alternative, side by side): as ``keepalive`` but
  each keepalive opens its own LeaseKeepAlive stream, as the backend did before
  ``coord/etcd/keepalive.py``.

Run next to ``supervisor_bench.py``'s idle row, it tells what of the
supervisor's idle cost is the client's and what is ours::

    python bench/grpc_floor.py [--seconds 20]

The last line is one JSON object with every figure (bench/_report.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _report import emit
from etcdvisor.testing import EtcdServer

STAGES = ("bare", "import", "watch", "keepalive", "supervisor-like", "keepalive-per-call")

CHILD = r'''
import sys, threading, time
stage, url = sys.argv[1], sys.argv[2]
if stage != "bare":
    from etcdvisor.coord.etcd import _grpc  # noqa: F401
if stage in ("watch", "keepalive", "supervisor-like", "keepalive-per-call"):
    from etcdvisor.coord import open_backend
    backend = open_backend(url, timeout=5)
    watches = [backend.watch(f"/floor/{i}/", f"/floor/{i}0")
               for i in range(5 if stage == "supervisor-like" else 1)]
    for watch in watches:
        threading.Thread(target=lambda w=watch: list(w), daemon=True).start()
    if stage != "watch":
        lease = backend.lease_grant(10)

        def refresh_on_own_stream():  # the old way: one stream per keepalive
            request = _grpc.etcdrpc.LeaseKeepAliveRequest(ID=lease.id)
            responses = backend._conn().lease.LeaseKeepAlive(iter([request]), 1.0)
            for _ in responses:
                responses.cancel()
                return

        def keepalive():
            stop = threading.Event()
            while not stop.wait(1.0):
                if stage == "keepalive-per-call":
                    refresh_on_own_stream()
                else:
                    backend.lease_keepalive(lease.id, timeout=1)

        threading.Thread(target=keepalive, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
'''


def sample(pid: int) -> tuple[int, float, int]:
    """(context switches of all threads, CPU seconds, thread count)."""
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                        switches += int(line.split()[-1])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return switches, cpu, len(os.listdir(f"/proc/{pid}/task"))


def measure(stage: str, url: str, seconds: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, stage, url], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        time.sleep(3.0)  # start-up work done
        switches0, cpu0, _ = sample(proc.pid)
        began = time.monotonic()
        time.sleep(seconds)
        switches1, cpu1, threads = sample(proc.pid)
        wall = time.monotonic() - began
        with open(f"/proc/{proc.pid}/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return {"stage": stage, "rss_mib": rss, "threads": threads,
                "wakeups_per_s": (switches1 - switches0) / wall, "cpu_pct": 100 * (cpu1 - cpu0) / wall}
    finally:
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args(argv)
    server = EtcdServer(name="bench-floor").start()
    try:
        print(f"gRPC client floor, {args.seconds:.0f}s per stage, load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"  {'stage':<16}{'RSS MiB':>9}{'threads':>9}{'wake-ups/s':>12}{'CPU %':>8}")
        rows = []
        for stage in args.stages:
            row = measure(stage, server.url, args.seconds)
            rows.append(row)
            print(f"  {stage:<16}{row['rss_mib']:>9.1f}{row['threads']:>9}{row['wakeups_per_s']:>12.1f}"
                  f"{row['cpu_pct']:>8.2f}", flush=True)
    finally:
        server.cleanup()
    emit("grpc_floor", {"seconds_per_stage": args.seconds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
