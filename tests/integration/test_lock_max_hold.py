"""A lock's maximum hold time against a real etcd: the store releases the
lock whatever the holder does -- SIGSTOPped, or running but holding too
long -- the next waiter acquires, and the holder learns that it lost it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.types import Put, create_revision
from etcdvisor.recipes.lock import Lock

MAX_HOLD = 2

HOLDER = """
import sys, threading, time
from etcdvisor.coord import open_backend
from etcdvisor.recipes.lock import Lock, LockLost

backend = open_backend(sys.argv[1], timeout=2)
lost = threading.Event()
lock = Lock(backend, sys.argv[2], ttl=30, max_hold=int(sys.argv[3]),
            on_lost=lambda reason: (print("lost:", reason, flush=True), lost.set()))
lock.acquire()
print(lock.token, lock.key, flush=True)
lost.wait(60)  # "work" that overruns the maximum hold time
print("token after loss:", lock.token, flush=True)
try:
    lock.release()
    print("release: ok", flush=True)
except LockLost as exc:
    print("release: LockLost", flush=True)
"""


@pytest.mark.parametrize("fault", ["sigstop", "overrun"])
def test_store_releases_a_held_lock_after_max_hold(etcd_url, etcd_prefix, fault):
    name = etcd_prefix + "timed"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, etcd_url, name, str(MAX_HOLD)],
                              stdout=subprocess.PIPE, text=True)
    backend = open_backend(etcd_url, timeout=5)
    try:
        token_text, key = holder.stdout.readline().split()
        token, acquired_at = int(token_text), time.monotonic()
        if fault == "sigstop":
            os.kill(holder.pid, signal.SIGSTOP)  # it can neither release nor keep anything alive
        kv = backend.get(key)
        assert kv.create_revision == token and 0 < backend.lease_ttl(kv.lease) <= MAX_HOLD

        waiter = Lock(backend, name, ttl=5)
        assert waiter.acquire(timeout=MAX_HOLD + 10), "the store never released the lock"
        handover = time.monotonic() - acquired_at
        print(f"{fault}: lock passed on {handover:.2f}s after the holder acquired it (max_hold {MAX_HOLD}s)")
        assert handover <= MAX_HOLD + 1.5, f"passed on after {handover:.2f}s"
        assert waiter.token > token
        fenced = backend.txn([create_revision(key, "=", token)], [Put(etcd_prefix + "fenced", b"x")])
        assert not fenced.succeeded, "the old holder's token must no longer fence"

        if fault == "sigstop":
            time.sleep(0.5)
            assert backend.get(etcd_prefix + "fenced") is None
            os.kill(holder.pid, signal.SIGCONT)
        report = [holder.stdout.readline().strip() for _ in range(3)]
        assert report[0].startswith("lost: max hold time"), report
        assert report[1:] == ["token after loss: None", "release: LockLost"], report
        assert holder.wait(10) == 0
        assert [kv.key for kv in backend.get_prefix(name + "/").kvs] == [waiter.key]
        waiter.release()
        assert backend.get_prefix(name + "/").kvs == ()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait(5)
        holder.stdout.close()
        backend.close()
