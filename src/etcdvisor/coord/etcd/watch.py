"""A watch on one gRPC Watch stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..base import WatchStream
from ..errors import Compacted, CoordError, CoordTimeout, PermissionDenied, Unavailable
from ..types import WatchBatch
from ._grpc import Message, grpc, to_event, translate

if TYPE_CHECKING:
    from .backend import EtcdBackend, _Connection


class EtcdWatchStream(WatchStream):
    """One gRPC Watch stream carrying one watch."""

    def __init__(self, backend: EtcdBackend, conn: _Connection, create_request: Message, key: str) -> None:
        self._backend = backend
        self._key = key
        self._requests: queue.Queue[Message | None] = queue.Queue()  # None ends the request stream
        self._requests.put(create_request)
        self._cancelled = threading.Event()
        self._responses = conn.watch.Watch(self._request_iter(), metadata=backend._metadata())
        self._first: Message | None = None  # the WatchResponse that confirmed the watch
        self._conn = conn

    def _request_iter(self) -> Iterator[Message]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def wait_created(self, timeout: float) -> None:
        """Block until the server confirmed the watch (or failed it)."""
        done = threading.Event()
        holder: list[Message | CoordError] = []

        def first() -> None:
            try:
                holder.append(next(self._responses))
            except grpc.RpcError as exc:
                error = translate(exc, f"watch {self._key!r}")
                holder.append(self._backend.denied(error) if isinstance(error, PermissionDenied) else error)
            except StopIteration:
                holder.append(Unavailable(f"watch {self._key!r}: stream closed"))
            done.set()

        threading.Thread(target=first, daemon=True, name="etcd-watch-create").start()
        if not done.wait(timeout):
            raise CoordTimeout(f"watch {self._key!r}: not confirmed within {timeout:g}s")
        result = holder[0]
        if isinstance(result, CoordError):
            if isinstance(result, Unavailable):
                self._backend._rotate(self._conn)
            raise result
        self._first = result

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            pending: list[Message] = [self._first] if self._first is not None else []
            self._first = None
            while True:
                resp = pending.pop() if pending else next(self._responses)
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
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                return
            error = translate(exc, f"watch {self._key!r}")
            raise (self._backend.denied(error) if isinstance(error, PermissionDenied) else error) from None
        except StopIteration:
            if self._cancelled.is_set():
                return
            raise Unavailable(f"watch {self._key!r}: stream ended") from None
        finally:
            self._backend._forget(self)

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._requests.put(None)
        self._responses.cancel()
