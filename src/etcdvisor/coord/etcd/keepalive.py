"""Lease keepalives on one long-lived LeaseKeepAlive stream per connection.

Opening a gRPC stream per keepalive (once a second, for the supervisor's
whole life) costs a new HTTP/2 stream, a new request-consumer thread in the
gRPC client and a dozen completion-queue wake-ups; on an idle supervisor
that was most of its CPU. A :class:`KeepAliveStream` keeps one stream open
and writes one request per keepalive on it.

Contract (the same as ``Backend.lease_keepalive``): ``refresh(lease, timeout)``
returns the TTL the server granted, 0 if the lease is gone, or raises
``CoordTimeout``/``Unavailable`` if no answer came within ``timeout``.

States: CLOSED -> OPEN (first refresh) -> CLOSED (error, timeout or
``close()``; the next refresh opens a fresh stream). Refreshes are pipelined:
several may be in flight at once (the session sends on a fixed cadence even
when round trips are long), and etcd answers them in request order, so the
n-th answer on a stream goes to the n-th waiter; the answer's lease id is
checked all the same. A refresh that timed out tears the stream down (every
other refresh in flight on it fails at once), so a late answer can never be
taken for the answer to a later request.
"""

from __future__ import annotations

import collections
import queue
import threading

from ..errors import Closed, CoordTimeout, Unavailable
from ._grpc import etcdrpc, grpc, translate

_END = object()  # the request iterator's end marker


class _Waiter:
    __slots__ = ("lease_id", "done", "answer")

    def __init__(self, lease_id: int):
        self.lease_id = lease_id
        self.done = threading.Event()
        self.answer: object = None


class KeepAliveStream:
    def __init__(self, stub, metadata):
        self._stub = stub
        self._metadata = metadata  # () -> gRPC metadata, read when a stream opens
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue | None = None
        self._pending: collections.deque[_Waiter] = collections.deque()  # in request order
        self._call = None
        self._generation = 0  # which stream the pending waiters belong to
        self._closed = False

    def refresh(self, lease_id: int, timeout: float) -> int:
        waiter = _Waiter(lease_id)
        with self._lock:
            if self._closed:
                raise Closed(f"lease keepalive {lease_id:x}: backend closed")
            if self._call is None:
                self._open()
            generation = self._generation
            self._pending.append(waiter)
            self._requests.put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
        if not waiter.done.wait(timeout):
            with self._lock:
                if self._generation == generation:
                    self._teardown()
            raise CoordTimeout(f"lease keepalive {lease_id:x}: timed out")
        answer = waiter.answer
        if isinstance(answer, grpc.RpcError):
            raise translate(answer, f"lease keepalive {lease_id:x}")
        if answer is _END or answer is None or answer.ID != lease_id:
            raise Unavailable(f"lease keepalive {lease_id:x}: stream ended without an answer")
        return max(0, answer.TTL)

    def close(self) -> None:
        """Never waits for a refresh in flight: cancelling the call makes every
        one of them return at once (with an error)."""
        self._closed = True
        with self._lock:
            self._teardown()

    # --- internals (under self._lock) --------------------------------------------
    def _open(self) -> None:
        requests: queue.SimpleQueue = queue.SimpleQueue()

        def request_iter():
            while (item := requests.get()) is not _END:
                yield item

        call = self._stub.LeaseKeepAlive(request_iter(), metadata=self._metadata())
        self._generation += 1
        threading.Thread(target=self._read, args=(call, self._generation), daemon=True,
                         name="etcd-keepalive-read").start()
        self._requests, self._call = requests, call

    def _teardown(self, answer: object = _END) -> None:
        """End the current stream; every refresh in flight on it fails."""
        if self._call is not None:
            self._requests.put(_END)
            self._call.cancel()
        self._requests = self._call = None
        self._generation += 1
        while self._pending:
            waiter = self._pending.popleft()
            waiter.answer = answer
            waiter.done.set()

    def _deliver(self, generation: int, answer: object) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a stream already torn down
            if isinstance(answer, grpc.RpcError) or answer is _END or not self._pending:
                self._teardown(answer)  # an error, the end, or an answer nobody asked for
                return
            waiter = self._pending.popleft()
            waiter.answer = answer
            waiter.done.set()

    def _read(self, call, generation: int) -> None:
        """Reader thread: every response (or the error that ended the stream)
        goes to the oldest refresh waiting on this stream."""
        try:
            for response in call:
                self._deliver(generation, response)
        except grpc.RpcError as exc:
            self._deliver(generation, exc)
            return
        self._deliver(generation, _END)
