"""A loopback TCP proxy for fault tests: put it between a client and etcd,
then cut the traffic off and restore it.

* ``blackhole()``: connections stay open but nothing is forwarded (a
  network partition: no RST, calls time out);
* ``reset()``: every open connection is closed at once and new ones are
  refused until ``restore()`` (a crashed peer or a dropped stream);
* ``restore()``: traffic flows again.
"""

from __future__ import annotations

import selectors
import socket
import threading

from .server import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0):
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._mode = "open"  # open | blackhole | reset
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
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
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                elif sock is self._listener:
                    self._accept()
                elif self._mode == "open":
                    self._forward(sock)
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
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client] = upstream
        self._pairs[upstream] = client

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
        if not data:
            self._close_pair(sock)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _close_all(self) -> None:
        for sock in list(self._pairs):
            self._close_pair(sock)
