"""The listener's connections: one selector thread, a few worker threads.

Contract (docs/config-reference.md, ``http``; GUIDE rule 7: no client can delay a probe):

* At most ``MAX_CONNECTIONS`` connections are open at once; one more is answered
  ``503 too many connections`` and closed at once (never queued behind the others).
* One deadline per request: the request line, headers and body must arrive within
  ``REQUEST_TIMEOUT`` seconds of the connection being accepted, however the bytes
  trickle in; then the connection is closed (408 if a part of a request came).
* The answer is computed within ``HANDLER_TIMEOUT`` (else 503) and must be taken by
  the client within ``WRITE_TIMEOUT``; then the connection is closed (one request per
  connection, ``Connection: close``).
* Fast routes (``inline``: the probes, microseconds, no I/O) are answered on the
  selector thread, so they never wait behind another client or a scrape; the other
  routes run on at most ``MAX_WORKERS`` worker threads.

Idle cost: the selector thread sleeps in ``select()`` without a timeout while no
connection is open, and with the nearest deadline as timeout otherwise; workers
are started on demand and sleep on a queue. Neither polls.
"""

from __future__ import annotations

import enum
import errno
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable

from . import httpwire
from .httpwire import BadRequest, Request, Response

log = logging.getLogger("etcdvisor")

MAX_CONNECTIONS = 128
REQUEST_TIMEOUT = 2.0
HANDLER_TIMEOUT = 15.0
WRITE_TIMEOUT = 10.0
LINGER = 1.0  # after the answer: read and drop what the client still sends, so closing is not a reset
MAX_WORKERS = 4
ACCEPT_PAUSE = 0.1  # out of file descriptors: stop accepting this long instead of spinning

Dispatch = Callable[[Request], tuple[Response | None, Callable[[], Response] | None]]
"""What to answer: ``(response, None)`` to answer now on the selector thread, or
``(None, compute)`` to have a worker run ``compute()``."""

REFUSED = httpwire.encode(httpwire.text(503, "too many connections", (("Retry-After", "1"),)))


class _State(enum.Enum):
    READING = "reading"
    COMPUTING = "computing"
    WRITING = "writing"
    LINGERING = "lingering"


class _Conn:
    __slots__ = ("sock", "peer", "buffer", "scanned", "state", "deadline", "out", "head_only", "job")

    def __init__(self, sock: socket.socket, peer: str, deadline: float):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.buffer = bytearray()
        self.scanned = 0  # the head's end was searched for up to here
        self.state = _State.READING
        self.out = memoryview(b"")
        self.head_only = False
        self.job = 0


class Listener:
    """Serves ``dispatch`` on ``sock`` (bound and listening) until :meth:`stop`."""

    def __init__(self, sock: socket.socket, dispatch: Dispatch, name: str = "http"):
        self.sock = sock
        self.dispatch = dispatch
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns: dict[int, _Conn] = {}  # by file descriptor
        self._done: queue.SimpleQueue[tuple[_Conn, int, Response]] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[tuple[_Conn, int, Callable[[], Response]] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._workers_lock = threading.Lock()
        self._stopping = False
        self._accept_paused_until: float | None = None
        self._thread: threading.Thread | None = None
        self._job_counter = 0

    @property
    def connections(self) -> int:
        """Open connections (a racy read, for tests and diagnostics)."""
        return len(self._conns)

    def start(self) -> None:
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(self.sock, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        self._stopping = True
        self._wake()
        for _ in self._workers:
            self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(wait)

    # --- the selector thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, _mask in self._selector.select(self._timeout()):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._on_ready(key.data)
                self._answers()
                self._expire(time.monotonic())
        except Exception:  # a bug here must not leave the port open and dead
            log.exception("http: the listener failed")
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            for sock in (self.sock, self._wake_r, self._wake_w):
                sock.close()

    def _timeout(self) -> float | None:
        deadlines = [c.deadline for c in self._conns.values()]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None  # nothing can expire: sleep until a client or stop() comes
        return max(0.0, min(deadlines) - time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time; the others on the next turn
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("http: cannot accept a connection: %s; pausing %.1fs", exc.strerror, ACCEPT_PAUSE)
                    self._selector.unregister(self.sock)
                    self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                return  # ECONNABORTED and the like: the client is gone already
            if len(self._conns) >= MAX_CONNECTIONS:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            conn = _Conn(sock, _peer(address), time.monotonic() + REQUEST_TIMEOUT)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    @staticmethod
    def _refuse(sock: socket.socket) -> None:
        try:
            sock.send(REFUSED, socket.MSG_DONTWAIT)
        except OSError:
            pass
        sock.close()

    def _on_ready(self, conn: _Conn) -> None:
        try:
            if conn.state is _State.READING:
                self._read(conn)
            elif conn.state is _State.WRITING:
                self._write(conn)
            elif conn.state is _State.LINGERING:
                self._linger(conn)
        except Exception:  # one connection's surprise never ends the listener
            log.debug("http: error serving %s", conn.peer, exc_info=True)
            if self._conns.get(conn.sock.fileno()) is conn:
                self._close(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(16 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)  # the client left before its request was complete
            return
        conn.buffer += data
        try:
            request = self._complete_request(conn)
        except BadRequest as exc:
            self._respond(conn, httpwire.text(exc.status, str(exc)))
            return
        if request is not None:
            self._serve(conn, request)

    def _complete_request(self, conn: _Conn) -> Request | None:
        head_end = httpwire.head_length(conn.buffer, conn.scanned)
        if head_end is None:
            conn.scanned = max(0, len(conn.buffer) - 3)
            return None
        method, path, query, headers = httpwire.parse_head(bytes(conn.buffer[:head_end]))
        length = httpwire.body_length(headers)
        if len(conn.buffer) < head_end + length:
            if headers.get("expect", "").lower() == "100-continue" and len(conn.buffer) == head_end:
                _send_quietly(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(conn.buffer[head_end:head_end + length])
        return Request(method, path, query, headers, body, conn.peer)

    def _serve(self, conn: _Conn, request: Request) -> None:
        conn.head_only = request.method == "HEAD"
        try:
            response, compute = self.dispatch(request)
        except Exception:
            log.debug("http: error routing %s %s", request.method, request.path, exc_info=True)
            response, compute = httpwire.text(500, "internal error"), None
        if response is not None:
            self._respond(conn, response)
            return
        assert compute is not None
        # READING -> COMPUTING: the socket leaves the selector until the answer is ready
        self._selector.unregister(conn.sock)
        conn.state = _State.COMPUTING
        conn.deadline = time.monotonic() + HANDLER_TIMEOUT
        self._job_counter += 1
        conn.job = self._job_counter
        self._submit(conn, conn.job, compute)

    def _respond(self, conn: _Conn, response: Response) -> None:
        # READING/COMPUTING -> WRITING
        conn.out = memoryview(httpwire.encode(response, with_body=not conn.head_only))
        conn.buffer = bytearray()
        conn.deadline = time.monotonic() + WRITE_TIMEOUT
        if conn.state is _State.COMPUTING:
            self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        conn.state = _State.WRITING
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        # WRITING -> LINGERING: no more to say; wait (briefly) for the client to close
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = _State.LINGERING
        conn.deadline = time.monotonic() + LINGER
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _linger(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(16 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)

    def _expire(self, now: float) -> None:
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self.sock, selectors.EVENT_READ, "accept")
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.state is _State.READING and conn.buffer:
                conn.head_only = False
                self._respond(conn, httpwire.text(408, f"request not complete within {REQUEST_TIMEOUT:g}s"))
                conn.deadline = now + min(WRITE_TIMEOUT, LINGER)  # a trickler gets no more time
            elif conn.state is _State.COMPUTING:
                conn.job = 0  # its late answer is dropped
                self._respond(conn, httpwire.text(503, f"no answer within {HANDLER_TIMEOUT:g}s"))
            else:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        if conn.state is not _State.COMPUTING:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    # --- the workers ---------------------------------------------------------------------
    def _submit(self, conn: _Conn, job: int, compute: Callable[[], Response]) -> None:
        with self._workers_lock:
            if self._idle_workers == 0 and len(self._workers) < MAX_WORKERS:
                worker = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
                self._workers.append(worker)
                self._idle_workers += 1
                worker.start()
        self._jobs.put((conn, job, compute))

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            with self._workers_lock:
                self._idle_workers -= 1
            conn, job, compute = item
            try:
                response = compute()
            except Exception:
                log.debug("http: error serving %s", conn.peer, exc_info=True)
                response = httpwire.text(500, "internal error")
            with self._workers_lock:
                self._idle_workers += 1
            self._done.put((conn, job, response))
            self._wake()

    def _answers(self) -> None:
        while True:
            try:
                conn, job, response = self._done.get_nowait()
            except queue.Empty:
                return
            if conn.job == job and conn.state is _State.COMPUTING and self._conns.get(conn.sock.fileno()) is conn:
                self._respond(conn, response)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed (stopping)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except OSError:
        pass


def _peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 if ``host`` is an IPv6 address); OSError if not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(min(socket.SOMAXCONN, 1024))
    except OSError:
        sock.close()
        raise
    return sock

