"""A lock holder process killed with SIGKILL: the lock passes on when its
lease expires, against a real etcd server."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.recipes.lock import Lock

from ..conftest import wait_until

pytestmark = pytest.mark.slow

HOLDER_TTL = 2

HOLDER = """
import sys, threading
from etcdvisor.coord import open_backend
from etcdvisor.recipes.lock import Lock

backend = open_backend(sys.argv[1], timeout=2)
lock = Lock(backend, sys.argv[2], ttl=int(sys.argv[3]))
lock.acquire()
print(lock.token, flush=True)
threading.Event().wait()  # hold until killed
"""


def test_killed_holder_frees_the_lock_within_ttl(etcd_url, etcd_prefix):
    name = etcd_prefix + "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, etcd_url, name, str(HOLDER_TTL)],
                              stdout=subprocess.PIPE, text=True)
    backend = open_backend(etcd_url, timeout=5)
    try:
        holder_token = int(holder.stdout.readline())
        held = backend.get_prefix(name + "/").kvs
        assert [kv.create_revision for kv in held] == [holder_token]
        assert 0 < backend.lease_ttl(held[0].lease) <= HOLDER_TTL

        waiter = Lock(backend, name, ttl=5)
        acquired_at = []

        def wait():
            if waiter.acquire(timeout=30):
                acquired_at.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: len(backend.get_prefix(name + "/").kvs) == 2, message="waiter queued")
        time.sleep(HOLDER_TTL + 0.5)  # the live holder keeps its lease: nobody else gets the lock
        assert acquired_at == []

        killed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        thread.join(30)
        assert acquired_at, "the waiter never got the lock"
        handover = acquired_at[0] - killed_at
        print(f"lock passed on {handover:.2f}s after SIGKILL (ttl {HOLDER_TTL}s)")
        assert handover <= HOLDER_TTL + 1.0, f"lock passed on {handover:.2f}s after the kill"
        assert waiter.token > holder_token
        assert waiter.is_held()
        waiter.release()
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdout.close()
        backend.close()
