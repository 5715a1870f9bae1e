"""Topic-triggered runs: from ``publish()`` to a child process started by ``supervisor run``.

Starts a private etcd and ``--members`` supervisors (default 1) with one queue
topic role (``concurrency`` 4), waits until every member consumes, then
publishes N messages (default 300) from one thread as fast as it can with
``publish()`` (with ``--batch B``: ``publish_many()`` of B at a time; with
``--batched`` too, on a topic in batched id format, so B messages share a
transaction and the publisher is not what limits the runs/s; without
``--batched`` the topic has the default format: ids are store revisions, one
transaction per message), or one every ``--interval``
seconds (to see the latency of an idle system), and prints:

* publish rate (msgs/s),
* trigger rate: messages per second from the first publish to the last child start,
* completion rate: messages per second from the first publish until every
  message is acknowledged (its done marker, polled every 50 ms),
* publish -> child start latency p50/p99/max (ms), from the time ``publish()`` was
  called to the child's own ``time.time()`` at start (``--child record``,
  default: a ``python3 -S`` one-liner that appends a line) or to the arrival of the
  supervisor's ``started pid`` log line (``--child true``: ``/bin/true``);
* publish -> ack latency p50/p99 (ms, 50 ms resolution).

Bounded: gives up waiting ``--max-seconds`` (default 90) after the last publish.

    python bench/topic_trigger.py [--messages 300] [--members 1] [--child record|true]
    python bench/topic_trigger.py --messages 50 --interval 0.2    # unloaded latency
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402
from _supervisors import BenchFleet, percentile  # noqa: E402
from etcdvisor.coord.keys import ClusterKeys  # noqa: E402
from etcdvisor.recipes.topic import Topic  # noqa: E402

ROLE, TOPIC = "work", "bench"
STARTED = re.compile(r"\b" + ROLE + r"#(\d+): started pid \d+")


class AckPoller(threading.Thread):
    """Notes the first time each message's done marker is seen (every 50 ms),
    from before the first publish until ``expected`` are seen or ``stop()``."""

    def __init__(self, fleet: BenchFleet, topic: Topic):
        super().__init__(daemon=True, name="ack-poller")
        self.backend = fleet.backend
        self.prefix = f"{topic.prefix}done/{ROLE}/"
        self.acked: dict[int, float] = {}
        self.expected: int | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.time()
            for kv in self.backend.get_prefix(self.prefix, keys_only=True).kvs:
                self.acked.setdefault(int(kv.key.rsplit("/", 1)[-1]), now)
            if self.expected is not None and len(self.acked) >= self.expected:
                return
            self.halt.wait(0.05)

    def wait(self, expected: int, timeout: float) -> dict[int, float]:
        self.expected = expected
        self.join(timeout)
        self.halt.set()
        self.join()
        return dict(self.acked)


def child_starts(fleet: BenchFleet, mode: str) -> dict[int, float]:
    starts: dict[int, float] = {}
    if mode == "record":
        for rec in fleet.records():
            starts.setdefault(int(rec["message_id"]), rec["t"])
    else:
        for arrived, line in fleet.log_lines():
            match = STARTED.search(line)
            if match:
                starts.setdefault(int(match.group(1)), arrived)
    return starts


def run(messages: int, members: int, mode: str, concurrency: int, max_seconds: float,
        interval: float = 0.0, batch: int = 1, batched: bool = False) -> dict:
    fleet = BenchFleet("topic-trigger")
    try:
        command = fleet.record_command() if mode == "record" else [shutil.which("true") or "/bin/true"]
        config = fleet.write_config({ROLE: {
            "type": "topic", "topic": TOPIC, "concurrency": concurrency, "command": command,
            "env": {"BENCH_RECORD": str(fleet.record_path)}}})
        fleet.start(members, config)
        if not fleet.wait_roles(ROLE, members, timeout=60):
            print("supervisors did not start within 60s", file=sys.stderr)
            return {"error": "supervisors did not start within 60s"}
        topic = Topic(fleet.backend, ClusterKeys(fleet.cluster).topic(TOPIC), batched=batched)
        published: dict[int, float] = {}
        poller = AckPoller(fleet, topic)
        poller.start()
        first = time.time()
        for n in range(0, messages, batch):
            called = time.time()
            payloads = [b"%d" % i for i in range(n, min(messages, n + batch))]
            ids = topic.publish_many(payloads) if batch > 1 else [topic.publish(payloads[0])]
            published.update((i, called) for i in ids)
            if interval:
                time.sleep(max(0.0, called + interval - time.time()))
        publish_done = time.time()
        acked = poller.wait(len(published), timeout=max_seconds)
        time.sleep(0.3)  # the last log lines / records land
        starts = child_starts(fleet, mode)
        return {**report(messages, members, mode, concurrency, interval, published, first, publish_done,
                         starts, acked), "publish_batch": batch,
                "id_format": topic.id_format.value if topic.id_format else None}
    finally:
        fleet.close()


def report(messages, members, mode, concurrency, interval, published, first, publish_done, starts,
           acked) -> dict:
    """Print the figures and return them (for the JSON line)."""
    started = {i: t for i, t in starts.items() if i in published}
    to_start = [(started[i] - published[i]) * 1000 for i in started]
    to_ack = [(acked[i] - published[i]) * 1000 for i in acked if i in published]
    print(f"topic trigger: {messages} messages, {members} member(s), queue concurrency {concurrency}, "
          f"child {mode!r}, local etcd, {len(published)} published "
          f"{f'every {interval:g}s' if interval else 'back to back'}")
    print(f"  publish     : {len(published) / max(publish_done - first, 1e-9):8.1f} msgs/s")
    if started:
        print(f"  trigger     : {len(started) / max(max(started.values()) - first, 1e-9):8.1f} msgs/s "
              f"(first publish -> last child start; {len(started)}/{len(published)} started)")
    if acked:
        print(f"  completion  : {len(acked) / max(max(acked.values()) - first, 1e-9):8.1f} msgs/s "
              f"(first publish -> last ack; {len(acked)}/{len(published)} acked)")
    source = "child's own clock" if mode == "record" else "arrival of the 'started pid' log line"
    print(f"  publish->start : p50 {percentile(to_start, .5):7.1f} ms, p99 {percentile(to_start, .99):7.1f} ms, "
          f"max {max(to_start, default=float('nan')):7.1f} ms ({source})")
    print(f"  publish->ack   : p50 {percentile(to_ack, .5):7.1f} ms, p99 {percentile(to_ack, .99):7.1f} ms "
          f"(50 ms polling)")
    return {"messages": messages, "members": members, "child": mode, "concurrency": concurrency,
            "interval_s": interval, "published": len(published), "started": len(started), "acked": len(acked),
            "publish_rate": len(published) / max(publish_done - first, 1e-9),
            "trigger_rate": len(started) / max(max(started.values()) - first, 1e-9) if started else None,
            "completion_rate": len(acked) / max(max(acked.values()) - first, 1e-9) if acked else None,
            "publish_to_start_p50_ms": percentile(to_start, .5), "publish_to_start_p99_ms": percentile(to_start, .99),
            "publish_to_ack_p50_ms": percentile(to_ack, .5), "publish_to_ack_p99_ms": percentile(to_ack, .99)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--child", choices=["record", "true"], default="record")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between publishes")
    parser.add_argument("--max-seconds", type=float, default=90.0)
    parser.add_argument("--batch", type=int, default=1, help="messages per publish_many() call; 1: publish()")
    parser.add_argument("--batched", action="store_true", help="create the topic in batched id format")
    args = parser.parse_args(argv)
    figures = run(args.messages, args.members, args.child, args.concurrency, args.max_seconds, args.interval,
                  max(1, args.batch), args.batched)
    emit("topic_trigger", figures)
    return 1 if "error" in figures else 0


if __name__ == "__main__":
    sys.exit(main())
