"""The longest etcd round trip ``supervisor run`` tolerates at a given TTL.

For each round trip in ``--rtts`` it starts a private etcd, a
:class:`~etcdvisor.testing.proxy.TcpProxy` that delays each direction by half
of it (plus ``--jitter``, uniform, per direction), and one supervisor with a
sharded and a singleton role (ttl ``--ttl``, stop_timeout ``--stop-timeout``)
that talks to etcd only through the proxy. Once both children run it watches
for ``--seconds`` and counts child starts after the first two (restarts) and
lease deadline stops (the ``deadline reached`` warning). A round trip is
tolerated when neither happened. It prints one line per trial, then one JSON
object line::

    {"ttl": 4, "stop_timeout": 0.5, "predicted_rtt": 1.2, "longest_tolerated_rtt": 1.2, "trials": [...]}

``predicted_rtt`` is :func:`etcdvisor.timing.tolerated_round_trip` (what
``validate`` prints).

    python bench/rtt_tolerance.py [--ttl 4] [--rtts 0.4,0.8,1.0,1.2,1.4,1.6] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _supervisors import BenchFleet
from etcdvisor import timing
from etcdvisor.testing.proxy import TcpProxy


def trial(rtt: float, args) -> dict:
    fleet = BenchFleet("rtt")
    proxy = TcpProxy.to_url(fleet.server.url)
    proxy.set_delay(rtt / 2, args.jitter)
    try:
        roles = {name: {"type": kind, "command": ["sleep", "100000"], "stop_timeout": f"{args.stop_timeout}s",
                        **({"settle": "0.5s"} if kind == "sharded" else {})}
                 for name, kind in (("work", "sharded"), ("lead", "singleton"))}
        config = fleet.write_config(roles, ttl=args.ttl)
        config.write_text(config.read_text().replace(fleet.server.url, proxy.url))
        started = time.monotonic()
        fleet.start(1, config)
        running_at = None
        while time.monotonic() < started + args.startup_timeout:
            if _count(fleet, "started pid") >= 2:
                running_at = time.monotonic()
                break
            time.sleep(0.1)
        result = {"rtt": rtt, "startup_s": None if running_at is None else round(running_at - started, 2)}
        if running_at is None:
            return {**result, "tolerated": False, "restarts": None, "deadline_stops": None,
                    "note": "children never started"}
        time.sleep(args.seconds)
        restarts = _count(fleet, "started pid") - 2
        stops = _count(fleet, "deadline reached")
        exited = fleet.procs[0].poll() is not None
        return {**result, "tolerated": restarts == 0 and stops == 0 and not exited,
                "restarts": restarts, "deadline_stops": stops, "supervisor_exited": exited}
    finally:
        fleet.close()
        proxy.close()


def _count(fleet: BenchFleet, text: str) -> int:
    return sum(1 for _, line in fleet.log_lines() if text in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttl", type=int, default=4)
    parser.add_argument("--stop-timeout", type=float, default=0.5)
    parser.add_argument("--rtts", default="0.4,0.8,1.0,1.2,1.4,1.6",
                        help="round trips to try, seconds, comma-separated")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform delay per direction, seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="observation time per trial")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args()
    trials = []
    for rtt in (float(x) for x in args.rtts.split(",")):
        result = trial(rtt, args)
        trials.append(result)
        print(f"rtt {rtt:.2f}s (+{2 * args.jitter:.2f}s jitter): "
              f"{'tolerated' if result['tolerated'] else 'NOT tolerated'}; restarts {result['restarts']}, "
              f"deadline stops {result['deadline_stops']}, children up after {result['startup_s']}s", flush=True)
    tolerated = [t["rtt"] for t in trials if t["tolerated"]]
    print(json.dumps({"ttl": args.ttl, "stop_timeout": args.stop_timeout, "jitter": args.jitter,
                      "seconds_per_trial": args.seconds,
                      "predicted_rtt": round(timing.tolerated_round_trip(args.ttl, args.stop_timeout), 3),
                      "longest_tolerated_rtt": max(tolerated) if tolerated else None, "trials": trials}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
