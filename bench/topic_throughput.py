"""Topic throughput and publish-to-delivery latency on a private etcd.

Starts its own etcd (etcdvisor.testing.EtcdServer), publishes N messages
from K publisher threads (each with its own connection and Topic object)
while one subscriber (own connection) receives them, three times in the same
run, each on a fresh topic, so both id formats show side by side:

* ``revision`` topic (the default: id = store revision), ``publish()`` once
  per message (one transaction per message, always);
* ``batched`` topic (``Topic(..., batched=True)``: group commit), ``publish()``
  once per message (a lone caller has nothing to share its transaction with;
  ``--shared`` callers do);
* ``batched`` topic, ``publish_many()`` with ``--batch`` messages at a time
  (up to MAX_BATCH messages per transaction; skipped with ``--batch 1``).

For each it prints:

* published msgs/s (all publishers together, first publish to last return),
* delivered msgs/s (first publish to last delivery),
* latency from the start of ``publish()`` to the subscriber's ``get()``
  returning the message, p50/p99 in ms,

next to the ~200 msgs/s that sereno's README reports for its etcd v2 topic,
and next to the floor measured in the same run: the same two-put transaction
sent back to back without the topic (a publisher waits for each commit).
The last line is one JSON object with every figure (bench/_report.py).
Bounded in time: publishing stops after ``--max-seconds`` (default 40).

The JSON holds each run's figures under ``phases`` (keys ``revision_publish``,
``batched_publish``, ``batched_publish_many``), each with its ``format`` and ``mode``.

    python bench/topic_throughput.py [--messages 2000] [--publishers 1] [--payload 100] [--batch 64]
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
                 done: list[tuple[int, float]], batch: int, shared: Topic | None, batched: bool) -> None:
    """Publish ``count`` messages: ``publish()`` each if ``batch`` is 1,
    else ``publish_many()`` of ``batch`` at a time; on ``shared`` if given,
    else on a Topic of its own connection."""
    backend = open_backend(url, timeout=5) if shared is None else shared.backend
    topic = Topic(backend, prefix, batched=batched) if shared is None else shared
    padding = b"x" * max(0, payload - 8)
    sent = 0
    try:
        while sent < count and time.monotonic() <= stop_at:
            if batch == 1:
                topic.publish(struct.pack("!d", time.monotonic()) + padding)
                sent += 1
                continue
            stamp = struct.pack("!d", time.monotonic()) + padding
            sent += len(topic.publish_many([stamp] * min(batch, count - sent)))
    finally:
        done.append((sent, time.monotonic()))
        if shared is None:
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


def run(messages: int, publishers: int, payload: int, max_seconds: float, batch: int, shared: bool) -> dict:
    server = EtcdServer(name="bench-topic").start()
    try:
        floor_before = etcd_floor(server.url, payload)
        runs = [("revision_publish", False, 1), ("batched_publish", True, 1)]
        runs += [("batched_publish_many", True, batch)] if batch > 1 else []
        phases = {name: phase(server.url, f"/bench/topic/{name}/", messages, publishers, payload, max_seconds,
                              size, shared, batched) for name, batched, size in runs}
        return {"phases": phases, "etcd_floor_txn_per_s": (floor_before + etcd_floor(server.url, payload)) / 2}
    finally:
        server.cleanup()


def phase(url: str, prefix: str, messages: int, publishers: int, payload: int, max_seconds: float,
          batch: int, shared: bool, batched: bool) -> dict:
    """One publish-and-deliver run on a fresh topic (in batched format if
    ``batched``); its figures."""
    shared_topic = Topic(open_backend(url, timeout=5), prefix, batched=batched) if shared else None
    sub_backend = open_backend(url, timeout=5)
    subscription = Topic(sub_backend, prefix).subscribe(max_buffer=messages + 1)
    latencies: list[float] = []
    started = time.monotonic()
    stop_at = started + max_seconds
    counts: list[tuple[int, float]] = []
    share = [messages // publishers + (1 if i < messages % publishers else 0) for i in range(publishers)]
    threads = [threading.Thread(target=publish_part, args=(url, prefix, n, payload, stop_at, counts, batch,
                                                                 shared_topic, batched))
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
    recorded = sub_backend.get(prefix + "format")
    sub_backend.close()
    if shared_topic is not None:
        shared_topic.backend.close()
    return {
        "sent": sent, "delivered": len(latencies),
        "publish_rate": sent / (published_at - started),
        "deliver_rate": len(latencies) / (delivered_at - started),
        "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
        "elapsed": time.monotonic() - started, "mode": "publish()" if batch == 1 else f"publish_many({batch})",
        "format": recorded.value.decode() if recorded else "revision",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--payload", type=int, default=100, help="payload bytes (>= 8)")
    parser.add_argument("--max-seconds", type=float, default=40.0)
    parser.add_argument("--batch", type=int, default=64,
                        help="messages per publish_many() call in the third run; 1: skip it")
    parser.add_argument("--shared", action="store_true",
                        help="the publishers share one connection and one Topic object (threads of one "
                             "process: their publish() calls share transactions)")
    args = parser.parse_args(argv)
    payload, batch = max(8, args.payload), max(1, args.batch)
    result = run(args.messages, max(1, args.publishers), payload, args.max_seconds, batch, args.shared)
    phases = list(result["phases"].values())
    print(f"topic throughput: {args.messages} messages of {payload} B, {args.publishers} publisher(s), "
          f"{'sharing one Topic' if args.shared else 'each its own connection'}, 1 subscriber, local etcd")
    for figures in phases:
        print(f"  {figures['format']:<8} {figures['mode']:<17} published {figures['publish_rate']:6.0f} msgs/s, "
              f"delivered "
              f"{figures['deliver_rate']:6.0f} msgs/s ({figures['delivered']}/{figures['sent']}), latency "
              f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms (publish start -> get)")
    print(f"  sereno README: ~{SERENO_CLAIM:.0f} msgs/s; etcd floor: {result['etcd_floor_txn_per_s']:.0f} txn/s "
          f"(the same two-put transaction back to back, no topic; before and after, averaged)")
    emit("topic_throughput", {"publishers": args.publishers, "payload_bytes": payload, "shared_topic": args.shared,
                              "reference_msgs_per_s": SERENO_CLAIM, **result})
    return 0 if all(f["delivered"] == f["sent"] for f in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
