"""Lock handover, max-hold release and KV watch latency against a private etcd.

Prints:

* release -> next waiter holds the lock, p50/p99/max (ms) over ``--rounds``
  handovers between two handles (the waiter watches only its predecessor);
* max hold: acquisition -> another handle holds the lock, for ``max_hold`` 2 s,
  with the holder doing nothing (the store releases it), ``--timed`` rounds;
* KV watch: put of a new value -> callback, p50/p99 (ms); and how many wake-ups
  ``--rewrites`` puts of the same value cause (0 by default, all with
  ``every_write=True``).

    python bench/lock_watch.py [--rounds 100] [--timed 3] [--rewrites 200]
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402
from _supervisors import percentile  # noqa: E402
from etcdvisor import kv  # noqa: E402
from etcdvisor.coord import open_backend  # noqa: E402
from etcdvisor.recipes.lock import Lock  # noqa: E402
from etcdvisor.testing import EtcdServer  # noqa: E402


def handover(url: str, rounds: int) -> list[float]:
    first, second = open_backend(url), open_backend(url)
    holder, waiter = Lock(first, "/bench/lock", ttl=10), Lock(second, "/bench/lock", ttl=10)
    latencies = []
    for _ in range(rounds):
        holder.acquire()
        got = threading.Event()
        thread = threading.Thread(target=lambda: waiter.acquire() and got.set())
        thread.start()
        while len(first.get_prefix("/bench/lock/").kvs) < 2:
            time.sleep(0.002)
        released = time.monotonic()
        holder.release()
        got.wait(10)
        latencies.append((time.monotonic() - released) * 1000)
        thread.join()
        waiter.release()
    first.close()
    second.close()
    return latencies


def timed(url: str, rounds: int, max_hold: int = 2) -> list[float]:
    first, second = open_backend(url), open_backend(url)
    passed = []
    for index in range(rounds):
        holder = Lock(first, f"/bench/timed{index}", ttl=10, max_hold=max_hold)
        holder.acquire()
        held_at = time.monotonic()
        waiter = Lock(second, f"/bench/timed{index}", ttl=10)
        waiter.acquire(timeout=max_hold + 10)
        passed.append(time.monotonic() - held_at)
        waiter.release()
    first.close()
    second.close()
    return passed


def watch(url: str, rounds: int, rewrites: int) -> tuple[list[float], int, int]:
    with kv.open(url) as store, kv.open(url) as writer:
        seen: queue.Queue = queue.Queue()
        writer.store("/bench/w", "start")
        handle = store.watch_callback("/bench/w", lambda *_: seen.put(time.monotonic()))
        every = queue.Queue()
        every_handle = store.watch_callback("/bench/w", lambda *_: every.put(1), every_write=True)
        latencies = []
        for i in range(rounds):
            put_at = time.monotonic()
            writer.store("/bench/w", str(i))
            latencies.append((seen.get(timeout=10) - put_at) * 1000)
        time.sleep(0.3)
        while not every.empty():
            every.get()
        for _ in range(rewrites):
            writer.store("/bench/w", "same")
        time.sleep(1.0)
        woke_changes = seen.qsize() - 1  # the first "same" is a real change
        woke_every = every.qsize()
        handle.cancel()
        every_handle.cancel()
    return latencies, woke_changes, woke_every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--timed", type=int, default=3)
    parser.add_argument("--rewrites", type=int, default=200)
    args = parser.parse_args()
    server = EtcdServer(name="bench-lock").start()
    figures: dict = {"rounds": args.rounds, "timed": args.timed, "rewrites": args.rewrites}
    try:
        lat = handover(server.url, args.rounds)
        figures.update(handover_p50_ms=percentile(lat, .5), handover_p99_ms=percentile(lat, .99),
                       handover_max_ms=max(lat))
        print(f"lock handover (release -> next holds), {len(lat)} rounds: p50 {percentile(lat, .5):.1f} ms, "
              f"p99 {percentile(lat, .99):.1f} ms, max {max(lat):.1f} ms")
        passed = timed(server.url, args.timed)
        print(f"max_hold 2 s, idle holder: lock passed on after {', '.join(f'{p:.2f}' for p in passed)} s")
        figures["max_hold_passed_s"] = passed
        lat, woke, every = watch(server.url, args.rounds, args.rewrites)
        figures.update(watch_p50_ms=percentile(lat, .5), watch_p99_ms=percentile(lat, .99),
                       rewrite_wakeups_default=woke, rewrite_wakeups_every_write=every)
        print(f"kv watch put -> callback, {len(lat)} changes: p50 {percentile(lat, .5):.1f} ms, "
              f"p99 {percentile(lat, .99):.1f} ms")
        print(f"kv watch, {args.rewrites} rewrites of the same value: {woke} wake-ups by default, "
              f"{every} with every_write=True")
    finally:
        server.stop()
    emit("lock_watch", figures)


if __name__ == "__main__":
    main()
