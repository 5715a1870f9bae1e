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
``close()``; the next refresh opens a fresh stream). One refresh is in
flight at a time (a lock), so the next response on the stream answers it;
the response's lease id is checked all the same. A refresh that timed out
tears the stream down, so a late answer can never be taken for the answer
to a later request.
"""

from __future__ import annotations

import queue
import threading

from ..errors import Closed, CoordTimeout, Unavailable
from ._grpc import etcdrpc, grpc, translate

_END = object()  # the request iterator's end marker


class KeepAliveStream:
    def __init__(self, stub, metadata):
        self._stub = stub
        self._metadata = metadata  # () -> gRPC metadata, read when a stream opens
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue | None = None
        self._answers: queue.SimpleQueue | None = None
        self._call = None
        self._closed = False

    def refresh(self, lease_id: int, timeout: float) -> int:
        with self._lock:
            if self._closed:
                raise Closed(f"lease keepalive {lease_id:x}: backend closed")
            if self._call is not None and not self._answers.empty():
                self._teardown()  # the stream ended (or spoke) while idle: start afresh
            if self._call is None:
                self._open()
            self._requests.put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
            try:
                answer = self._answers.get(timeout=timeout)
            except queue.Empty:
                self._teardown()
                raise CoordTimeout(f"lease keepalive {lease_id:x}: timed out") from None
            if isinstance(answer, grpc.RpcError):
                self._teardown()
                raise translate(answer, f"lease keepalive {lease_id:x}")
            if answer is _END or answer.ID != lease_id:
                self._teardown()
                raise Unavailable(f"lease keepalive {lease_id:x}: stream ended without an answer")
            return max(0, answer.TTL)

    def close(self) -> None:
        """Never waits for a refresh in flight: cancelling the call makes it
        return at once (with an error), and it tears the stream down."""
        self._closed = True
        call = self._call
        if call is not None:
            call.cancel()
        with self._lock:
            self._teardown()

    # --- internals (under self._lock) --------------------------------------------
    def _open(self) -> None:
        requests: queue.SimpleQueue = queue.SimpleQueue()
        answers: queue.SimpleQueue = queue.SimpleQueue()

        def request_iter():
            while (item := requests.get()) is not _END:
                yield item

        call = self._stub.LeaseKeepAlive(request_iter(), metadata=self._metadata())
        threading.Thread(target=_read, args=(call, answers), daemon=True, name="etcd-keepalive-read").start()
        self._requests, self._answers, self._call = requests, answers, call

    def _teardown(self) -> None:
        if self._call is None:
            return
        self._requests.put(_END)
        self._call.cancel()
        self._requests = self._answers = self._call = None


def _read(call, answers: queue.SimpleQueue) -> None:
    """Reader thread: every response (or the error that ended the stream)
    goes to ``answers``; the thread ends with its stream."""
    try:
        for response in call:
            answers.put(response)
    except grpc.RpcError as exc:
        answers.put(exc)
        return
    answers.put(_END)
