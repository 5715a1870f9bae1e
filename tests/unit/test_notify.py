"""The sd_notify socket: real unix datagram sockets and real processes (each child
is its own datagram client, as the sdnotify package or systemd's sd_notify() are)."""

from __future__ import annotations

import logging
import os
import queue
import socket
import struct
import subprocess
import sys
import time

import pytest

from etcdvisor.runtime.notify import MAX_DATAGRAM, NotifyHub, parse_datagram
from etcdvisor.runtime.readiness import NotifyMessage

SEND = ("import os, socket, sys\n"
        "path = os.environ['NOTIFY_SOCKET']\n"
        "path = '\\0' + path[1:] if path.startswith('@') else path\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "for message in sys.argv[1:]:\n"
        "    s.sendto(message.encode('utf-8', 'surrogateescape'), path)\n")


@pytest.fixture
def hub():
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    notify = NotifyHub(inbox.put)
    yield notify, inbox
    notify.close()


def start(path: str, *messages: str, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SEND, *messages], env={**os.environ, "NOTIFY_SOCKET": path})
    if wait:
        proc.wait(10)
    return proc


def next_message(inbox, timeout=5.0) -> NotifyMessage:
    return inbox.get(timeout=timeout)


def test_a_child_and_its_descendants_are_heard(hub, tmp_path):
    notify, inbox = hub
    path = notify.path_for("api[0]")
    assert path == notify.path_for("api[0]") and os.path.dirname(path) == notify.directory
    assert os.stat(notify.directory).st_mode & 0o777 == 0o700
    # the "child": a shell that runs the sender as its descendant; the sender stays alive
    # until heard (one that exits first cannot be checked: the next-but-one test's case)
    child = subprocess.Popen(["sh", "-c", f'read _; "{sys.executable}" -c "$0" "READY=1\nSTATUS=up 3/3"',
                              SEND + "sys.stdin.read()\n"],
                             env={**os.environ, "NOTIFY_SOCKET": path}, stdin=subprocess.PIPE)
    try:
        notify.set_owners({path: ("api/0", child.pid, "tag-of-child")})
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        message = next_message(inbox)
    finally:
        child.communicate(timeout=10)
    assert message == NotifyMessage("api/0", (("READY", "1"), ("STATUS", "up 3/3")))


def test_other_processes_are_refused(hub, caplog):
    notify, inbox = hub
    path = notify.path_for("api[0]")
    notify.set_owners({path: ("api/0", 999_999, "tag-of-child")})  # not the sender's tree
    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    start(path, "READY=1")
    deadline = time.monotonic() + 5
    while "not of this child's tree: refused" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "refused" in caplog.text
    assert inbox.empty()


def test_a_process_with_the_childs_marker_is_heard(hub):
    notify, inbox = hub
    path = notify.path_for("api[0]")
    notify.set_owners({path: ("api/0", 999_999, "marker-123")})
    proc = subprocess.Popen([sys.executable, "-c", SEND + "sys.stdin.read()\n", "WATCHDOG=1"], stdin=subprocess.PIPE,
                            env={**os.environ, "NOTIFY_SOCKET": path, "ETCDVISOR_CHILD_TAG": "marker-123"})
    try:  # alive until heard: its marker is read from /proc
        assert next_message(inbox).fields == (("WATCHDOG", "1"),)
    finally:
        proc.communicate(timeout=10)


def test_oversized_and_malformed_datagrams_are_dropped_with_one_debug_line(hub, caplog):
    notify, inbox = hub
    path = notify.path_for("api[0]")
    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    # the sender stays alive until its good datagram is heard (the check of a sender that has
    # exited is the next test's)
    proc = subprocess.Popen(["sh", "-c", 'read _; "$1" -c "$0" "$2" "no equals sign" "STATUS=ok"',
                             SEND + "sys.stdin.read()\n", sys.executable, "STATUS=" + "x" * MAX_DATAGRAM],
                            env={**os.environ, "NOTIFY_SOCKET": path}, stdin=subprocess.PIPE)
    try:
        notify.set_owners({path: ("api/0", proc.pid, "t")})
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert next_message(inbox).fields == (("STATUS", "ok"),)  # the good one after the two bad ones
    finally:
        proc.communicate(timeout=10)
    assert caplog.text.count("dropped") == 2
    assert "over 4096 bytes" in caplog.text and "malformed" in caplog.text


def test_a_sender_checked_once_is_heard_after_it_has_exited(hub):
    """`systemd-notify STATUS=..` style: send, exit at once. Once a pid was found in the
    child's tree, its later datagrams are heard even if it is gone (and reaped) before the
    reader thread looks at them; an unknown pid that is gone is still refused."""
    notify, inbox = hub
    path = notify.path_for("api[0]")
    child = subprocess.Popen(["sh", "-c", '"$0" -c "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"',
                              sys.executable], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    owner = ("api/0", child.pid, "t")
    notify.set_owners({path: owner})
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())

    def datagram(text: str, pid: int) -> None:  # as the reader thread gets it from the kernel
        creds = socket.CMSG_SPACE(0), struct.pack("iII", pid, os.getuid(), os.getgid())
        notify._one(path, text.encode(), [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds[1])], 0)

    datagram("STATUS=first", grandchild)  # alive: its parent is the child
    assert next_message(inbox).fields == (("STATUS", "first"),)
    child.communicate(timeout=10)  # the grandchild exits and the child reaps it
    assert not os.path.exists(f"/proc/{grandchild}")
    datagram("STATUS=second", grandchild)
    assert next_message(inbox).fields == (("STATUS", "second"),)
    notify.set_owners({path: ("api/0", child.pid, "t2")})  # a new child on the socket
    datagram("STATUS=third", grandchild)
    with pytest.raises(queue.Empty):
        next_message(inbox, timeout=0.2)


def test_retain_closes_sockets_of_children_that_are_gone(hub):
    notify, _inbox = hub
    kept, gone = notify.path_for("a[0]"), notify.path_for("a[1]")
    notify.retain(["a[0]"])  # both asked for since the last call: both kept
    assert os.path.exists(kept) and os.path.exists(gone)
    notify.retain(["a[0]"])
    assert os.path.exists(kept) and not os.path.exists(gone)


def test_parse_datagram():
    assert parse_datagram(b"READY=1\nSTATUS=a=b\n") == (("READY", "1"), ("STATUS", "a=b"))
    assert parse_datagram(b"\xff\xfe") is None
    assert parse_datagram(b"READY") is None
    assert parse_datagram(b"") is None
