"""Recipes against real faults: a queue consumer process SIGKILLed while it
holds a claim; a keep-alive node process SIGKILLed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session
from etcdvisor.recipes.topic import QueueConsumer, Topic

from ..conftest import wait_until

pytestmark = pytest.mark.slow

TTL = 3

CONSUMER = f"""
import sys, threading
from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session
from etcdvisor.recipes.topic import QueueConsumer, Topic

url, prefix = sys.argv[1], sys.argv[2]
backend = open_backend(url, timeout=5)
session = Session(backend, ttl={TTL}, interval=0.5, name="victim").start()
consumer = QueueConsumer(Topic(backend, prefix), "workers", session, name="victim")
message = consumer.get(timeout=20)
print("claimed", message.id, session.ttl, flush=True)
threading.Event().wait(120)  # "working" on it, never acks
"""


def spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_killed_consumer_claim_is_redelivered_within_ttl(etcd_url, etcd_prefix):
    backend = open_backend(etcd_url, timeout=5)
    topic = Topic(backend, etcd_prefix + "t")
    message_id = topic.publish(b"job")
    child = spawn(CONSUMER, etcd_url, etcd_prefix + "t")
    session = Session(backend, ttl=5, interval=0.5, name="survivor").start()
    survivor = None
    try:
        line = child.stdout.readline().split()
        assert line[:2] == ["claimed", str(message_id)], (line, child.stderr.read() if child.poll() else "")
        granted_ttl = int(line[2])
        claim = backend.get(topic.claim_key("workers", message_id))
        assert claim is not None and claim.value == b"victim"
        survivor = QueueConsumer(Topic(backend, etcd_prefix + "t"), "workers", session, name="survivor")
        assert survivor.get(timeout=0.5) is None  # held by the live victim
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(5)
        killed_at = time.monotonic()
        message = survivor.get(timeout=granted_ttl + 5)
        delay = time.monotonic() - killed_at
        print(f"redelivered {delay:.2f}s after SIGKILL (TTL {granted_ttl}s)")
        assert message is not None and message.id == message_id and message.data == b"job"
        assert delay <= granted_ttl + 1, f"redelivered {delay:.2f}s after SIGKILL (TTL {granted_ttl}s)"
        assert survivor.ack(message) is True
        assert backend.get(topic.done_key("workers", message_id)) is not None
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(5)
        if survivor is not None:
            survivor.close()
        session.close()
        backend.close()


NODE = f"""
import sys, threading
from etcdvisor.coord import open_backend
from etcdvisor.recipes.keepalive import KeepAliveNode

backend = open_backend(sys.argv[1], timeout=5)
node = KeepAliveNode(backend, sys.argv[2], b"alive", ttl={TTL}, interval=0.5).start()
print("up", flush=True)
threading.Event().wait(120)
"""


def test_killed_keepalive_node_disappears_within_ttl(etcd_url, etcd_prefix):
    backend = open_backend(etcd_url, timeout=5)
    key = etcd_prefix + "node"
    child = spawn(NODE, etcd_url, key)
    try:
        assert child.stdout.readline().strip() == "up"
        time.sleep(TTL + 0.5)  # outlives its TTL while the process runs
        assert backend.get(key).value == b"alive"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(5)
        killed_at = time.monotonic()
        wait_until(lambda: backend.get(key) is None, timeout=TTL + 3, interval=0.1,
                   message="node key gone after SIGKILL")
        assert time.monotonic() - killed_at <= TTL + 1
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(5)
        backend.close()
