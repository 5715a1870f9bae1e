"""Topic throughput and publish-to-delivery latency on a private etcd.

Starts its own etcd (etcdvisor.testing.EtcdServer), publishes N messages
from K publisher threads (each with its own connection) while one
subscriber (own connection) receives them, and prints:

* published msgs/s (all publishers together, first publish to last return),
* delivered msgs/s (first publish to last delivery),
* latency from the start of ``publish()`` to the subscriber's ``get()``
  returning the message, p50/p99 in ms,

next to the ~200 msgs/s that sereno's README reports for its etcd v2 topic,
and next to the floor measured in the same run: the same two-put transaction
sent back to back without the topic (a publisher waits for each commit).
The last line is one JSON object with every figure (bench/_report.py).
Bounded in time: publishing stops after ``--max-seconds`` (default 40).

    python bench/topic_throughput.py [--messages 2000] [--publishers 1] [--payload 100]
"""

from __future__ import annotations

import argparse
import struct
import sys
import threading
import time

from _report import emit
from etcdvisor.coord import open_backend
from etcdvisor.coord.types import Put
from etcdvisor.recipes.topic import Topic
from etcdvisor.testing import EtcdServer

SERENO_CLAIM = 200.0  # msgs/s, "does fine up to about 200 msgs/second"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def publish_part(url: str, prefix: str, count: int, payload: int, stop_at: float,
                 done: list[tuple[int, float]]) -> None:
    backend = open_backend(url, timeout=5)
    topic = Topic(backend, prefix)
    padding = b"x" * max(0, payload - 8)
    sent = 0
    try:
        for _ in range(count):
            if time.monotonic() > stop_at:
                break
            topic.publish(struct.pack("!d", time.monotonic()) + padding)
            sent += 1
    finally:
        done.append((sent, time.monotonic()))
        backend.close()


def etcd_floor(url: str, payload: int, seconds: float = 2.0) -> float:
    """Round trips/s of the same write without the topic: one transaction of
    two puts (head and message) back to back on one connection. A single
    publisher waits for each commit (it returns the id), so this is its
    ceiling on this machine at this moment."""
    backend = open_backend(url, timeout=5)
    try:
        data, done, started = b"x" * payload, 0, time.monotonic()
        while time.monotonic() - started < seconds:
            backend.txn([], [Put("/bench/floor/head", str(done)), Put(f"/bench/floor/{done % 64}", data)])
            done += 1
        return done / (time.monotonic() - started)
    finally:
        backend.delete("/bench/floor/", "/bench/floor0")
        backend.close()


def run(messages: int, publishers: int, payload: int, max_seconds: float) -> dict:
    server = EtcdServer(name="bench-topic").start()
    try:
        url, prefix = server.url, "/bench/topic/"
        floor_before = etcd_floor(url, payload)
        sub_backend = open_backend(url, timeout=5)
        subscription = Topic(sub_backend, prefix).subscribe(max_buffer=messages + 1)
        latencies: list[float] = []
        started = time.monotonic()
        stop_at = started + max_seconds
        counts: list[tuple[int, float]] = []
        share = [messages // publishers + (1 if i < messages % publishers else 0) for i in range(publishers)]
        threads = [threading.Thread(target=publish_part, args=(url, prefix, n, payload, stop_at, counts))
                   for n in share]
        for thread in threads:
            thread.start()
        delivered_at = started
        while True:
            message = subscription.get(timeout=0.2)
            if message is not None:
                now = time.monotonic()
                latencies.append(now - struct.unpack("!d", message.data[:8])[0])
                delivered_at = now
            if len(counts) == publishers:  # every publisher finished
                sent = sum(n for n, _ in counts)
                published_at = max(t for _, t in counts)
                if len(latencies) >= sent or time.monotonic() > published_at + 5:
                    break
        for thread in threads:
            thread.join()
        subscription.close()
        sub_backend.close()
        return {
            "sent": sent, "delivered": len(latencies),
            "publish_rate": sent / (published_at - started),
            "deliver_rate": len(latencies) / (delivered_at - started),
            "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else float("nan"),
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
            "elapsed": time.monotonic() - started,
            "etcd_floor_txn_per_s": (floor_before + etcd_floor(url, payload)) / 2,
        }
    finally:
        server.cleanup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--payload", type=int, default=100, help="payload bytes (>= 8)")
    parser.add_argument("--max-seconds", type=float, default=40.0)
    args = parser.parse_args(argv)
    result = run(args.messages, max(1, args.publishers), max(8, args.payload), args.max_seconds)
    print(f"topic throughput: {result['sent']} messages of {max(8, args.payload)} B, "
          f"{args.publishers} publisher(s), 1 subscriber, local etcd ({result['elapsed']:.1f}s)")
    print(f"  published : {result['publish_rate']:8.0f} msgs/s   (sereno README: ~{SERENO_CLAIM:.0f} msgs/s)")
    print(f"  delivered : {result['deliver_rate']:8.0f} msgs/s   ({result['delivered']}/{result['sent']})")
    print(f"  etcd floor: {result['etcd_floor_txn_per_s']:8.0f} txn/s    (the same two-put transaction back to back, "
          f"no topic; before and after, averaged)")
    print(f"  latency   : p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms (publish start -> get)")
    emit("topic_throughput", {"publishers": args.publishers, "payload_bytes": max(8, args.payload),
                              "reference_msgs_per_s": SERENO_CLAIM, **result})
    return 0 if result["delivered"] == result["sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
