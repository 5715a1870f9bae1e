"""A loopback TCP proxy for fault tests: put it between a client and etcd,
then cut the traffic off, slow it down and restore it.

* ``blackhole()``: connections stay open but nothing is forwarded (a
  network partition: no RST, calls time out);
* ``reset()``: every open connection is closed at once and new ones are
  refused until ``restore()`` (a crashed peer or a dropped stream);
* ``set_delay(seconds, jitter, direction=...)``: every chunk read in that
  direction (``"up"``: client to server, ``"down"``: server to client,
  ``"both"``) is forwarded ``seconds + uniform(0, jitter)`` later. Bytes of
  one connection stay in order (a chunk never overtakes an earlier one, as
  on a real TCP path), so a round trip costs the sum of both directions;
* ``restore()``: traffic flows again (delays stay as set; ``set_delay(0)``
  clears them).

It stays a real TCP proxy: one selector thread accepts, reads and writes;
delayed chunks wait in a heap until due.
"""

from __future__ import annotations

import heapq
import itertools
import random
import selectors
import socket
import threading
import time

from .server import free_port

_DIRECTIONS = ("up", "down")


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0):
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._mode = "open"  # open | blackhole | reset
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._upstream: set[socket.socket] = set()  # sockets towards the target
        self._delay = {d: (0.0, 0.0) for d in _DIRECTIONS}
        self._random = random.Random()
        # (due, seq, destination, data): b"" closes the pair once due
        self._pending: list[tuple[float, int, socket.socket, bytes]] = []
        self._last_due: dict[socket.socket, float] = {}  # keeps each stream in order
        self._seq = itertools.count()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        host_port = url.split("://", 1)[-1]
        host, port = host_port.rsplit(":", 1)
        return cls(host, int(port)).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def blackhole(self) -> None:
        self._set_mode("blackhole")

    def reset(self) -> None:
        self._set_mode("reset")

    def restore(self) -> None:
        self._set_mode("open")

    def set_delay(self, seconds: float, jitter: float = 0.0, *, direction: str = "both") -> None:
        """Delay every chunk in ``direction`` by ``seconds + uniform(0, jitter)``."""
        if seconds < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        targets = _DIRECTIONS if direction == "both" else (direction,)
        if any(d not in _DIRECTIONS for d in targets):
            raise ValueError(f"direction must be up, down or both, not {direction!r}")
        with self._lock:
            for d in targets:
                self._delay[d] = (float(seconds), float(jitter))
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in list(self._pairs):
            sock.close()
        self._listener.close()

    def _set_mode(self, mode: str) -> None:
        with self._lock:
            self._mode = mode
        self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._mode == "reset":
                self._close_all()
            timeout = 0.5
            if self._pending:
                timeout = min(timeout, max(0.0, self._pending[0][0] - time.monotonic()))
            for key, _ in self._selector.select(timeout=timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                elif sock is self._listener:
                    self._accept()
                elif self._mode == "open":
                    self._forward(sock)
            if self._mode == "open":
                self._deliver_due()
            if self._mode == "blackhole":
                # stop reading so the kernel buffers fill: like dropped packets
                self._stop.wait(0.05)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._mode == "reset":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self._upstream.add(upstream)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        base, jitter = self._delay["up" if peer in self._upstream else "down"]
        now = time.monotonic()
        if not base and not jitter and self._last_due.get(peer, 0.0) <= now:
            self._send_now(sock, peer, data)
            return
        if not data:  # EOF: stop reading, close once the data before it went out
            self._unregister(sock)
        due = now + base + (self._random.uniform(0.0, jitter) if jitter else 0.0)
        due = max(due, self._last_due.get(peer, 0.0))
        self._last_due[peer] = due
        heapq.heappush(self._pending, (due, next(self._seq), peer, data))

    def _deliver_due(self) -> None:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            _, _, peer, data = heapq.heappop(self._pending)
            if peer in self._pairs:
                self._send_now(self._pairs[peer], peer, data)

    def _send_now(self, source: socket.socket, peer: socket.socket, data: bytes) -> None:
        if not data:
            self._close_pair(source)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close_pair(source)

    def _unregister(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            self._upstream.discard(s)
            self._last_due.pop(s, None)
            self._unregister(s)
            s.close()

    def _close_all(self) -> None:
        self._pending.clear()
        for sock in list(self._pairs):
            self._close_pair(sock)
