"""Fault tests of the etcd backend against a real server: restarts, pauses,
compaction behind a cut-off watcher, and bad connection input."""

import queue
import subprocess
import time

import pytest

from etcdvisor.coord import AuthFailed, CoordError, CoordTimeout, EventType, InvalidURL, Unavailable, open_backend
from etcdvisor.coord.watcher import PrefixWatcher
from etcdvisor.testing import find_etcd_binary
from etcdvisor.testing.proxy import TcpProxy

from ..conftest import wait_until

pytestmark = pytest.mark.slow


def put_retrying(backend, key, value, deadline):
    while True:
        try:
            return backend.put(key, value)
        except CoordError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_watch_survives_etcd_restart_without_loss_or_duplicates(private_etcd, etcd_prefix):
    watcher_backend = open_backend(private_etcd.url, timeout=2)
    writer = open_backend(private_etcd.url, timeout=2)
    changes = queue.Queue()
    watcher = PrefixWatcher(watcher_backend, etcd_prefix, changes.put, retry_interval=0.1).start(wait=5)
    deadline = time.monotonic() + 60
    for i in range(20):
        put_retrying(writer, f"{etcd_prefix}{i:03d}", str(i), deadline)
    private_etcd.restart()
    for i in range(20, 40):
        put_retrying(writer, f"{etcd_prefix}{i:03d}", str(i), deadline)

    events = []

    def all_seen():
        while not changes.empty():
            events.extend(changes.get().events)
        return len({e.kv.key for e in events}) == 40
    wait_until(all_seen, timeout=20, message="all 40 events after restart")
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions) and len(revisions) == len(set(revisions)), "duplicate or reordered"
    assert all(e.type is EventType.PUT for e in events)
    assert len(events) == 40
    watcher.stop()
    watcher_backend.close()
    writer.close()


def test_watcher_resyncs_after_compaction_while_cut_off(etcd_server, etcd_prefix):
    proxy = TcpProxy.to_url(etcd_server.url)
    watched = open_backend(proxy.url, timeout=1)
    direct = open_backend(etcd_server.url)
    direct.put(etcd_prefix + "gone", "x")
    changes = queue.Queue()
    watcher = PrefixWatcher(watched, etcd_prefix, changes.put, retry_interval=0.1).start(wait=5)
    assert changes.get(timeout=5).initial
    proxy.reset()  # drop the stream and refuse reconnects
    direct.put(etcd_prefix + "a", "1")
    direct.put(etcd_prefix + "a", "2")
    direct.delete(etcd_prefix + "gone")
    direct.compact(direct.revision())
    proxy.restore()
    change = changes.get(timeout=15)
    assert change.resynced
    assert set(change.snapshot) == {etcd_prefix + "a"} and change.snapshot[etcd_prefix + "a"].value == b"2"
    kinds = {(e.type, e.kv.key) for e in change.events}
    assert kinds == {(EventType.PUT, etcd_prefix + "a"), (EventType.DELETE, etcd_prefix + "gone")}
    watcher.stop()
    watched.close()
    direct.close()
    proxy.close()


def test_paused_etcd_gives_timeout_within_configured_timeout(private_etcd, etcd_prefix):
    backend = open_backend(private_etcd.url, timeout=1.0)
    backend.put(etcd_prefix + "k", "v")
    private_etcd.pause()
    try:
        for call in (lambda: backend.get(etcd_prefix + "k"),
                     lambda: backend.put(etcd_prefix + "k", "w"),
                     lambda: backend.lease_grant(5)):
            start = time.monotonic()
            with pytest.raises(CoordTimeout):
                call()
            assert time.monotonic() - start < 2.5
    finally:
        private_etcd.resume()
    assert backend.get(etcd_prefix + "k") is not None
    backend.close()


def test_failed_endpoint_is_retried_at_once(private_etcd, etcd_prefix):
    backend = open_backend(private_etcd.url, timeout=1.0)
    private_etcd.stop()
    with pytest.raises(Unavailable):
        backend.get(etcd_prefix + "k")
    private_etcd.start()
    # no lock-out: the very next calls may use the endpoint again
    wait_until(lambda: _works(backend, etcd_prefix), timeout=5, message="endpoint reused")
    backend.close()


def _works(backend, prefix):
    try:
        backend.get(prefix + "k")
        return True
    except CoordError:
        return False


def test_second_endpoint_used_when_first_is_down(etcd_server, etcd_prefix):
    from etcdvisor.testing import free_port
    dead = f"http://127.0.0.1:{free_port()}"
    backend = open_backend(f"{dead},{etcd_server.url}", timeout=1.0)
    backend.put(etcd_prefix + "k", "v")
    wait_until(lambda: _works(backend, etcd_prefix), timeout=5)
    backend.close()


@pytest.mark.parametrize("url,needle", [
    ("ftp://host:2379", "unknown scheme 'ftp'"),
    ("http://host:notaport", "port 'notaport' is not a number"),
    ("http://user:pw@host:2379", "credentials in URLs"),
    ("", "empty"),
    ("http://host:99999", "out of range"),
])
def test_invalid_urls_are_one_clear_line(url, needle):
    with pytest.raises(InvalidURL) as info:
        open_backend(url)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_unreachable_endpoint_is_one_clear_line():
    from etcdvisor.testing import free_port
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(Unavailable) as info:
        open_backend(url, timeout=1)
    assert url in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - start < 5


def test_wrong_credentials_are_one_clear_line(private_etcd, tmp_path):
    etcdctl = find_etcd_binary().rsplit("/", 1)[0] + "/etcdctl"
    def run(*args):
        return subprocess.run([etcdctl, "--endpoints", private_etcd.url, *args],
                              check=True, capture_output=True, timeout=20)
    run("user", "add", "root", "--new-user-password=s3cret", "--interactive=false")
    run("auth", "enable")
    good = tmp_path / "pw"
    good.write_text("s3cret\n")
    backend = open_backend(private_etcd.url, username="root", password_file=str(good))
    backend.put("/auth-test", "ok")
    backend.close()
    with pytest.raises(AuthFailed) as info:
        open_backend(private_etcd.url, username="root", password="wrong")
    assert "authentication failed" in str(info.value) and "wrong" not in str(info.value)
    with pytest.raises(InvalidURL):
        open_backend(private_etcd.url, username="root", password_file=str(tmp_path / "missing"))


def test_a_call_racing_close_raises_closed_not_a_grpc_value_error(etcd_url):
    """Shutdown: another thread closes the backend between a call's closed check and its
    RPC; gRPC raises ValueError ("closed channel"), which the call reports as Closed (the
    error every caller handles), not as a traceback in a runner's thread."""
    from etcdvisor.coord import Closed

    backend = open_backend(etcd_url, timeout=2.0)
    pick = backend._conn

    def closed_meanwhile():
        conn = pick()
        backend.close()
        return conn

    backend._conn = closed_meanwhile
    with pytest.raises(Closed, match="backend closed"):
        backend.get("/any")
