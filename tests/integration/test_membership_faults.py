"""Kill real member processes and check the survivors' view."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session
from etcdvisor.recipes.election import Election
from etcdvisor.recipes.sequence import Sequence

from ..conftest import wait_until

pytestmark = pytest.mark.slow

MEMBER = textwrap.dedent("""
    import sys, time, threading
    from etcdvisor.coord import open_backend
    from etcdvisor.coord.session import Session
    from etcdvisor.recipes.sequence import Sequence
    from etcdvisor.recipes.election import Election
    url, prefix, name, kind, ttl = sys.argv[1:6]
    backend = open_backend(url)
    session = Session(backend, ttl=int(ttl), interval=0.5, name=name).start()
    if kind == "seq":
        Sequence(backend, prefix, name, session).start(wait=5)
        print("joined", flush=True)
    else:
        token = Election(backend, prefix, session, name).campaign(timeout=10)
        print("leader", token, flush=True)
    threading.Event().wait()
""")


def spawn(url, prefix, name, kind, ttl=2):
    proc = subprocess.Popen([sys.executable, "-c", MEMBER, url, prefix, name, kind, str(ttl)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.split()[0] in ("joined", "leader"), line
    return proc, line


def test_sigkilled_member_leaves_every_sequence_within_ttl(etcd_url, etcd_prefix):
    prefix = etcd_prefix + "g/"
    backend = open_backend(etcd_url)
    session = Session(backend, ttl=5, interval=0.3).start()
    watcher = Sequence(backend, prefix, "observer", session).start(wait=5)
    victim, _ = spawn(etcd_url, prefix, "victim", "seq", ttl=2)
    survivor, _ = spawn(etcd_url, prefix, "survivor", "seq", ttl=2)
    wait_until(lambda: watcher.info.count == 3, message="3 members")
    assert watcher.info.members == ("observer", "victim", "survivor")
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: watcher.info.count == 2, timeout=6, message="victim gone")
    assert time.monotonic() - killed_at <= 2 + 1.0 + 0.5  # TTL + 1 s (+ scheduling slack)
    assert watcher.info.members == ("observer", "survivor")
    survivor.kill()
    watcher.stop()
    session.close()
    backend.close()


def test_leader_sigkilled_next_leader_within_ttl_with_larger_token(etcd_url, etcd_prefix):
    prefix = etcd_prefix + "e/"
    leader, line = spawn(etcd_url, prefix, "first", "election", ttl=2)
    first_token = int(line.split()[1])
    backend = open_backend(etcd_url)
    session = Session(backend, ttl=5, interval=0.3).start()
    election = Election(backend, prefix, session, "second")
    leader.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    token = election.campaign(timeout=10)
    assert time.monotonic() - killed_at <= 2 + 1.0 + 0.5
    assert token > first_token
    election.close()
    session.close()
    backend.close()
