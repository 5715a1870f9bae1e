"""Watches: every watch of one connection on one gRPC Watch stream.

etcd multiplexes watches on a stream: each ``WatchCreateRequest`` on it gets a
``watch_id`` and every response names the watch it is for. A
:class:`WatchMux` (one per connection) opens the stream with the first watch,
reads it on one thread and hands each response to its
:class:`EtcdWatchStream` (the ``WatchStream`` of one watch, read by its own
consumer, e.g. coord/follow.py). A member's watches (membership, control,
rollouts, barriers, config...) thus cost etcd one stream and the client one
stream's threads, not one stream and one gRPC request thread per watch.

Matching: the proto of the client library has no client-chosen ``watch_id``,
so creations are matched to their ``created`` answers in request order (etcd
answers the creates of one stream in the order it received them, as its own
client relies on). A watch cancelled before its answer came is cancelled on
the server once the answer names its id.

Failures: the stream ending or failing (etcd gone, the connection cut, a
create not confirmed in time, which tears the stream down as a keepalive that
timed out does) ends every watch on it with ``Unavailable``; their followers
re-create them (coord/follow.py: from the last revision they saw), and the
first re-creation opens a fresh stream. Per-watch outcomes (compaction,
permission denied, a cancel by the server) end only that watch.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..base import WatchStream
from ..errors import Closed, Compacted, CoordError, CoordTimeout, PermissionDenied, Unavailable
from ..types import WatchBatch
from ._grpc import Message, Metadata, etcdrpc, grpc, to_event, translate

if TYPE_CHECKING:
    from .backend import EtcdBackend, _Connection

_END = object()  # ends the request iterator / a watch's inbox after cancel()
_ENDED = object()  # the shared stream ended without an error


class _Stream:
    """One open Watch call and what is on it."""

    __slots__ = ("requests", "call", "metadata", "pending", "watches")

    def __init__(self, requests: queue.SimpleQueue[object], call: Message, metadata: Metadata | None) -> None:
        self.requests = requests
        self.call = call
        self.metadata = metadata  # the auth token it was opened with
        self.pending: collections.deque[EtcdWatchStream] = collections.deque()  # created not yet answered
        self.watches: dict[int, EtcdWatchStream] = {}  # by watch_id


def _request_iter(requests: queue.SimpleQueue[object]) -> Iterator[Message]:
    while True:
        item = requests.get()
        if item is _END:
            return
        yield item


class WatchMux:
    """The one Watch stream of a connection (opened on demand)."""

    def __init__(self, stub: Message, metadata: Callable[[], Metadata | None]) -> None:
        self._stub = stub  # the connection's WatchStub
        self._metadata = metadata  # read when a stream opens
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._closed = False

    def add(self, watch: EtcdWatchStream, request: Message) -> _Stream:
        """Send ``watch``'s create request on the stream (opening it if needed)."""
        with self._lock:
            if self._closed:
                raise Closed("watch: connection closed")
            stream = self._stream
            metadata = self._metadata()
            if stream is None or stream.metadata != metadata:
                # etcd checks a create against the token the stream was opened with: after
                # a re-authentication new watches go on a fresh stream (the old one keeps
                # serving the watches it has)
                requests: queue.SimpleQueue[object] = queue.SimpleQueue()
                call = self._stub.Watch(_request_iter(requests), metadata=metadata)
                stream = self._stream = _Stream(requests, call, metadata)
                threading.Thread(target=self._read, args=(stream,), daemon=True, name="etcd-watch").start()
            stream.pending.append(watch)
            stream.requests.put(request)
            return stream

    def cancel(self, watch: EtcdWatchStream, stream: _Stream) -> None:
        """Cancel ``watch`` on the server (at once, or when its creation is answered)."""
        with self._lock:
            if watch.watch_id is not None and stream.watches.get(watch.watch_id) is watch:
                del stream.watches[watch.watch_id]
                stream.requests.put(_cancel_request(watch.watch_id))
            retired = stream is not self._stream and not stream.watches and not stream.pending
        if retired:  # an old stream (before a re-authentication) with nothing left on it
            stream.requests.put(_END)
            stream.call.cancel()

    def reset(self, stream: _Stream) -> None:
        """Tear ``stream`` down (a create was not answered in time): every watch
        on it ends with Unavailable; the next watch opens a fresh stream."""
        with self._lock:
            if self._stream is stream:
                self._stream = None
        stream.call.cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.requests.put(_END)
            stream.call.cancel()

    def _read(self, stream: _Stream) -> None:
        ended: object = _ENDED
        try:
            for resp in stream.call:
                watch = self._route(stream, resp)
                if watch is not None:
                    watch.deliver(resp)
        except grpc.RpcError as exc:
            ended = exc
        with self._lock:
            if self._stream is stream:
                self._stream = None
            victims = list(stream.pending) + list(stream.watches.values())
            stream.pending.clear()
            stream.watches.clear()
        stream.requests.put(_END)
        for watch in victims:
            watch.deliver(ended)

    def _route(self, stream: _Stream, resp: Message) -> EtcdWatchStream | None:
        with self._lock:
            if resp.created:
                if not stream.pending:
                    return None
                watch = stream.pending.popleft()
                watch.watch_id = resp.watch_id
                if watch.cancelled:
                    if not resp.canceled:
                        stream.requests.put(_cancel_request(resp.watch_id))
                    return None
                if not resp.canceled:
                    stream.watches[resp.watch_id] = watch
                return watch
            found = stream.watches.get(resp.watch_id)
            if found is not None and (resp.canceled or resp.compact_revision):
                del stream.watches[resp.watch_id]  # the server ended it
            return found


def _cancel_request(watch_id: int) -> Message:
    return etcdrpc.WatchRequest(cancel_request=etcdrpc.WatchCancelRequest(watch_id=watch_id))


class EtcdWatchStream(WatchStream):
    """One watch, multiplexed with the connection's others on one gRPC stream."""

    def __init__(self, backend: EtcdBackend, conn: _Connection, create_request: Message, key: str) -> None:
        self._backend = backend
        self._key = key
        self._conn = conn
        self.watch_id: int | None = None  # set (under the mux lock) when the server answers
        self.cancelled = False
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # responses, an error, _END
        self._first: Message | None = None  # the WatchResponse that confirmed the watch
        self._stream = conn.watches.add(self, create_request)

    def deliver(self, item: object) -> None:
        """(The mux's reader) a WatchResponse for this watch, or how the stream ended."""
        self._inbox.put(item)

    def _error(self, item: object) -> CoordError:
        if isinstance(item, grpc.RpcError):
            error = translate(item, f"watch {self._key!r}")
            return self._backend.denied(error) if isinstance(error, PermissionDenied) else error
        return Unavailable(f"watch {self._key!r}: stream ended")

    def wait_created(self, timeout: float) -> None:
        """Block until the server confirmed the watch (or failed it)."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            self._conn.watches.reset(self._stream)
            raise CoordTimeout(f"watch {self._key!r}: not confirmed within {timeout:g}s") from None
        if item is _END:
            raise Closed(f"watch {self._key!r}: cancelled")
        if isinstance(item, grpc.RpcError) or item is _ENDED:
            error = self._error(item)
            if isinstance(error, Unavailable):
                self._backend._rotate(self._conn)
            raise error
        self._first = item

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            pending: list[Message] = [self._first] if self._first is not None else []
            self._first = None
            while True:
                item = pending.pop() if pending else self._inbox.get()
                if item is _END:
                    return
                if isinstance(item, grpc.RpcError) or item is _ENDED:
                    if self.cancelled:
                        return
                    raise self._error(item)
                resp: Message = item
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    if "permission denied" in resp.cancel_reason:
                        # retrying cannot help: say so, naming the key
                        raise self._backend.denied(PermissionDenied(f"watch {self._key!r}: permission denied"))
                    raise Unavailable(f"watch {self._key!r} cancelled by server: {resp.cancel_reason}")
                if resp.created and not resp.events:
                    continue
                events = tuple(to_event(ev) for ev in resp.events)
                yield WatchBatch(events=events, revision=resp.header.revision)
        finally:
            self._backend._forget(self)

    def cancel(self) -> None:
        with self._conn.watches._lock:
            if self.cancelled:
                return
            self.cancelled = True
        self._conn.watches.cancel(self, self._stream)
        self._inbox.put(_END)
