"""Every watch of a connection on one gRPC Watch stream (coord/etcd/watch.py), against
a real etcd: etcd counts one stream for many watches, each watch gets only its own
events, a cancel ends one watch, a restart of etcd ends them all and new ones work."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.errors import Compacted, CoordError, Unavailable


def _gauge(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _drain(stream, out: queue.SimpleQueue) -> threading.Thread:
    def run() -> None:
        try:
            for batch in stream:
                for ev in batch.events:
                    out.put(ev.kv.key)
        except CoordError as exc:
            out.put(exc)
        out.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _take(out: queue.SimpleQueue, timeout: float = 5.0):
    return out.get(timeout=timeout)


def test_many_watches_share_one_stream_and_each_gets_its_own_events(private_etcd):
    url = private_etcd.url
    backend = open_backend(url, timeout=5)
    try:
        streams_before = _gauge(url, "etcd_debugging_mvcc_watch_stream_total")
        watchers_before = _gauge(url, "etcd_debugging_mvcc_watcher_total")
        outs = []
        watches = []
        for i in range(8):
            watch = backend.watch(f"/mux/{i}/", f"/mux/{i}0")
            out: queue.SimpleQueue = queue.SimpleQueue()
            _drain(watch, out)
            watches.append(watch)
            outs.append(out)
        assert _gauge(url, "etcd_debugging_mvcc_watch_stream_total") == streams_before + 1
        assert _gauge(url, "etcd_debugging_mvcc_watcher_total") == watchers_before + 8
        assert sum(1 for t in threading.enumerate() if t.name == "etcd-watch") == 1
        for i in reversed(range(8)):
            backend.put(f"/mux/{i}/k", "v")
        for i, out in enumerate(outs):
            assert _take(out) == f"/mux/{i}/k"
        watches[3].cancel()
        assert _take(outs[3]) is None  # ended quietly by our cancel
        deadline = time.monotonic() + 5
        while _gauge(url, "etcd_debugging_mvcc_watcher_total") != watchers_before + 7:
            assert time.monotonic() < deadline, "the cancel did not reach etcd"
            time.sleep(0.05)
        backend.put("/mux/3/k", "again")
        backend.put("/mux/4/k", "again")
        assert _take(outs[4]) == "/mux/4/k"
        assert outs[3].empty()
    finally:
        backend.close()


def test_a_compacted_start_ends_only_that_watch(private_etcd):
    backend = open_backend(private_etcd.url, timeout=5)
    try:
        first = backend.put("/c/a", "1")
        backend.put("/c/a", "2")
        backend.compact(backend.put("/c/a", "3"))
        good: queue.SimpleQueue = queue.SimpleQueue()
        _drain(backend.watch("/c/b"), good)
        bad: queue.SimpleQueue = queue.SimpleQueue()
        _drain(backend.watch("/c/a", start_revision=first), bad)
        assert isinstance(_take(bad), Compacted)
        backend.put("/c/b", "x")
        assert _take(good) == "/c/b"
    finally:
        backend.close()


@pytest.mark.slow
def test_a_restart_of_etcd_ends_every_watch_and_new_ones_work(private_etcd):
    backend = open_backend(private_etcd.url, timeout=5)
    try:
        outs = []
        for i in range(3):
            out: queue.SimpleQueue = queue.SimpleQueue()
            _drain(backend.watch(f"/r/{i}"), out)
            outs.append(out)
        private_etcd.restart()
        for out in outs:
            assert isinstance(_take(out, 15), Unavailable)
            assert _take(out) is None
        deadline = time.monotonic() + 15
        while True:
            try:
                again = backend.watch("/r/0")
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        out = queue.SimpleQueue()
        _drain(again, out)
        backend.put("/r/0", "back")
        assert _take(out) == "/r/0"
    finally:
        backend.close()
