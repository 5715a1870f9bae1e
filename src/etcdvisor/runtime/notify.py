"""systemd's ``sd_notify`` protocol for children with ``health.notify: true``.

Each such child gets ``NOTIFY_SOCKET``: the path of a unix datagram socket of its
own, in a private directory (mode 0700) made at start-up; with ``health.watchdog``
also ``WATCHDOG_USEC`` (``WATCHDOG_PID`` is not set, so any process of the child's
tree may send keep-alives, as libraries expect when it is absent). The path is a
function of the child's name, so a child's spec (and its environment) does not
change from one turn to the next.

One reader thread serves every socket (a selector): it only translates datagrams
into :class:`~.readiness.NotifyMessage` events. A datagram is accepted when the
kernel's ``SCM_CREDENTIALS`` name a process of the child's tree (the child itself,
a descendant, or a process carrying its marker ``ETCDVISOR_CHILD_TAG``); others are
refused, and oversized (over ``MAX_DATAGRAM``) or malformed ones (not UTF-8, a line
without ``=``) are dropped, each with one debug line. Which child owns which socket
is set by the loop (:meth:`NotifyHub.set_owners`, one reference assignment).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import selectors
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable

from ..process.tracking import read_tag
from .readiness import NotifyMessage

log = logging.getLogger("etcdvisor")

MAX_DATAGRAM = 4096
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
ANCESTRY_MAX = 64
HEARD_MAX = 256  # senders remembered per socket


def parse_datagram(data: bytes) -> tuple[tuple[str, str], ...] | None:
    """``KEY=VALUE`` lines (empty lines ignored); None when malformed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields = []
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum() or "\0" in line:
            return None
        fields.append((key, value))
    return tuple(fields) if fields else None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def in_tree(sender: int, child_pid: int, tag: str) -> bool:
    """True if ``sender`` is ``child_pid``, descends from it, or carries its marker."""
    pid: int | None = sender
    for _ in range(ANCESTRY_MAX):
        if pid is None or pid <= 1:
            break
        if pid == child_pid:
            return True
        pid = _parent(pid)
    return read_tag(sender) == tag


class NotifyHub:
    """The sockets, and the reader thread that serves them."""

    def __init__(self, post: Callable[[object], None], base_dir: str | None = None, *,
                 directory: str | None = None):
        self.post = post
        # directory: the one of the previous image of this process (an in-place upgrade:
        # the children's NOTIFY_SOCKET paths stay valid)
        self.directory = directory or tempfile.mkdtemp(prefix="etcdvisor-notify-", dir=base_dir)
        os.chmod(self.directory, 0o700)
        self._sockets: dict[str, socket.socket] = {}  # path -> bound socket
        self._owners: dict[str, tuple[str, int, str]] = {}  # path -> (slot, pid, tag)
        self._asked: set[str] = set()  # paths asked for since the last retain()
        # path -> (owner, pids found in its tree): a sender checked once is heard even if it
        # has exited by its next datagram (`systemd-notify` style: send, then exit at once;
        # a reaped pid has no /proc entry left to check). The reader thread's own.
        self._heard: dict[str, tuple[tuple[str, int, str], set[int]]] = {}
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()  # the selector's registrations
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sd-notify", daemon=True)
        self._thread.start()

    # --- loop side ----------------------------------------------------------------
    def path_for(self, child_name: str) -> str:
        """The socket path of child ``child_name``, bound once here (loop thread)."""
        digest = hashlib.sha1(child_name.encode("utf-8")).hexdigest()[:20]
        path = os.path.join(self.directory, f"{digest}.sock")
        self._asked.add(path)
        if path not in self._sockets:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setblocking(False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock.bind(path)
            self._sockets[path] = sock
            with self._lock:
                self._selector.register(sock, selectors.EVENT_READ, path)
            self._wake()
        return path

    def set_owners(self, owners: dict[str, tuple[str, int, str]]) -> None:
        """path -> (slot name, child pid, child tag) of every running notify child."""
        self._owners = owners

    def retain(self, child_names: Iterable[str]) -> None:
        """Close the sockets of children that are gone (neither named here nor
        asked for by ``path_for`` since the last call)."""
        keep = {os.path.join(self.directory, f"{hashlib.sha1(n.encode('utf-8')).hexdigest()[:20]}.sock")
                for n in child_names} | self._asked
        self._asked = set()
        for path in [p for p in self._sockets if p not in keep]:
            sock = self._sockets.pop(path)
            with self._lock:
                self._selector.unregister(sock)
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=2.0)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # --- the reader thread -------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pass  # let the loop finish a registration before selecting again
            try:
                ready = self._selector.select(timeout=1.0)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                continue
            for key, _events in ready:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                self._receive(key.fileobj, key.data)  # type: ignore[arg-type]  # registered: a socket and its path

    def _receive(self, sock: socket.socket, path: str) -> None:
        for _ in range(64):  # a burst, then let other sockets be served
            try:
                data, ancdata, flags, _addr = sock.recvmsg(MAX_DATAGRAM + 1, socket.CMSG_SPACE(_CREDS.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed by retain()
            self._one(path, data, ancdata, flags)

    def _sender_in_tree(self, path: str, owner: tuple[str, int, str], sender: int) -> bool:
        owned, pids = self._heard.get(path, (None, set()))
        if owned != owner:  # a new child on this socket: nothing it did not send is known
            pids = set()
            self._heard[path] = (owner, pids)
        if sender in pids:
            return True
        if not in_tree(sender, owner[1], owner[2]):
            return False
        if len(pids) >= HEARD_MAX:
            pids.clear()
        pids.add(sender)
        return True

    def _one(self, path: str, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> None:
        owner = self._owners.get(path)
        if owner is None:
            log.debug("sd_notify: datagram on %s with no running child: dropped", path)
            return
        slot, child_pid, tag = owner
        sender = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS.size:
                sender = _CREDS.unpack(payload[:_CREDS.size])[0]
        if sender is None or not self._sender_in_tree(path, owner, sender):
            log.debug("sd_notify: %s: datagram from pid %s, not of this child's tree: refused", slot, sender)
            return
        if len(data) > MAX_DATAGRAM or flags & socket.MSG_TRUNC:
            log.debug("sd_notify: %s: datagram over %d bytes: dropped", slot, MAX_DATAGRAM)
            return
        fields = parse_datagram(data)
        if fields is None:
            log.debug("sd_notify: %s: malformed datagram (%d bytes): dropped", slot, len(data))
            return
        self.post(NotifyMessage(slot, fields))
