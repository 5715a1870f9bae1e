"""Per-spawn cost of a ``/bin/true`` child, by spawn path, in this process.

Measures wall time of ``spawn()`` alone (Popen returns once exec succeeded), of a
whole run (spawn + reap), and of the process layer's full path
(``ChildProcess.start`` + ``poll`` until reaped, with the tracker), for:

* ``fork+preexec``   -- the old path: PR_SET_PDEATHSIG in a ``preexec_fn`` (fork);
* ``vfork``          -- no ``preexec_fn`` (CPython uses vfork), what the manager uses
                        now that the watchdog helper replaces the parent-death signal;
* ``setpriv``        -- a trampoline: ``setpriv --pdeathsig KILL -- /bin/true`` (vfork,
                        plus one extra exec), another way to keep a parent-death signal;
* ``child+tracker``  -- ``ChildProcess`` with the marker and, where allowed, a cgroup
                        leaf (the move runs on the cgroup thread), start to reap.

Threads matter: fork copies page tables of a big parent, so ``--ballast MiB`` grows
the heap first (the supervisor's RSS is ~40 MiB). Prints a table, then ONE JSON line.

    python bench/spawn_cost.py [--runs 300] [--ballast 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from etcdvisor.process.cgroup import CgroupPool
from etcdvisor.process.child import ChildProcess
from etcdvisor.process.spawn import ChildSpec, spawn
from etcdvisor.process.tracking import TreeTracker


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spawn_path(argv: tuple[str, ...], parent_death: bool, runs: int) -> dict:
    spec = ChildSpec(name="bench", argv=argv, env={"PATH": os.environ.get("PATH", "/bin")})
    spawn_ms, run_ms = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = spawn(spec, capture_output=False, parent_death=parent_death)
        t1 = time.perf_counter()
        proc.wait()
        t2 = time.perf_counter()
        spawn_ms.append((t1 - t0) * 1e3)
        run_ms.append((t2 - t0) * 1e3)
    return _summary(spawn_ms, run_ms)


def _child_path(runs: int, cgroups: bool) -> dict:
    pool = CgroupPool.create() if cgroups else None
    tracker = TreeTracker(lambda _pid: False, subreaper=True, cgroups=pool)

    class _NoWatchdog:  # the manager's path: vfork (no parent-death hook)
        def register(self, *a, **k): pass
        def extend(self, *a, **k): pass
        def unregister(self, *a, **k): pass

    spec = ChildSpec(name="bench", argv=("/bin/true",), env={"PATH": "/bin"})
    spawn_ms, run_ms = [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            child = ChildProcess(spec, watchdog=_NoWatchdog(), tracker=tracker)
            child.start(time.monotonic())
            t1 = time.perf_counter()
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
            while child.poll(time.monotonic()) is None:
                time.sleep(0.0005)
            t2 = time.perf_counter()
            spawn_ms.append((t1 - t0) * 1e3)
            run_ms.append((t2 - t0) * 1e3)
    finally:
        if pool is not None:
            pool.close()
    result = _summary(spawn_ms, run_ms)
    result["cgroup"] = pool is not None
    return result


def _summary(spawn_ms: list[float], run_ms: list[float]) -> dict:
    return {"spawn_ms_p50": round(_pct(spawn_ms, 0.5), 3),
            "spawn_ms_p99": round(_pct(spawn_ms, 0.99), 3),
            "run_ms_p50": round(_pct(run_ms, 0.5), 3),
            "run_ms_p99": round(_pct(run_ms, 0.99), 3),
            "runs_per_s": round(len(run_ms) / (sum(run_ms) / 1e3), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--ballast", type=int, default=40, help="MiB of heap to touch first")
    args = parser.parse_args()
    ballast = bytearray(args.ballast << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    results = {
        "fork+preexec": _spawn_path(("/bin/true",), True, args.runs),
        "vfork": _spawn_path(("/bin/true",), False, args.runs),
    }
    setpriv = shutil.which("setpriv")
    if setpriv and subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "/bin/true"],
                                  check=False).returncode == 0:
        results["setpriv"] = _spawn_path((setpriv, "--pdeathsig", "KILL", "--", "/bin/true"),
                                         False, args.runs)
    results["child+tracker"] = _child_path(args.runs, cgroups=True)
    results["child+marker"] = _child_path(args.runs, cgroups=False)
    print(f"{'path':16} {'spawn p50':>10} {'spawn p99':>10} {'run p50':>9} {'run p99':>9} {'runs/s':>8}")
    for name, r in results.items():
        print(f"{name:16} {r['spawn_ms_p50']:10.3f} {r['spawn_ms_p99']:10.3f} "
              f"{r['run_ms_p50']:9.3f} {r['run_ms_p99']:9.3f} {r['runs_per_s']:8.1f}")
    saved = results["fork+preexec"]["spawn_ms_p50"] - results["vfork"]["spawn_ms_p50"]
    print(f"vfork saves {saved:.3f} ms per spawn (p50) with {args.ballast} MiB ballast; "
          f"load {os.getloadavg()[0]:.2f}")
    print(json.dumps({"bench": "spawn_cost", "runs": args.runs, "ballast_mib": args.ballast,
                      "loadavg": round(os.getloadavg()[0], 2), "saved_ms_p50": round(saved, 3),
                      **{k.replace("+", "_"): v for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
