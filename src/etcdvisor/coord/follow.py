"""The never-miss watch loop (docs/safety.md, rule 5), in one place.

:class:`Follower` runs the loop and keeps no state of its own: its owner
decides what to remember. :class:`etcdvisor.coord.watcher.PrefixWatcher`
mirrors every key of a prefix on top of it; recipes whose values are large
(topic payloads) or that need one key (wait groups) use it directly:

1. ``resync()`` reads whatever state the owner needs and returns the store
   revision R it read at (skipped when a start revision is given);
2. watch ``[start, end)`` from R+1 and hand each batch to ``on_batch``;
3. when the stream breaks, resume from the last event revision + 1 after
   ``retry_interval`` (nothing lost, nothing repeated);
4. when the resume revision was compacted, call ``resync()`` again.

``on_batch`` returns True to *suspend*: the stream is cancelled and
``before_watch()`` (which may block until the owner is ready, e.g. until a
consumer drained a buffer) runs before the watch resumes from the last
revision + 1. So a slow owner never leaves a server stream undrained.

States: STARTING -> WATCHING -> (RETRYING | SUSPENDED -> WATCHING)* -> STOPPED.
Callbacks run on the follower's thread.

A read or watch the store refuses (:class:`PermissionDenied`) is never a
silent retry: it goes to ``on_error`` (whose owner reports it: a role
fails), or, without one, is logged once as an error naming the key; it is
retried every ``DENIED_RETRY`` seconds (a grant added later is picked up).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .base import Backend, WatchStream
from .errors import Closed, Compacted, CoordError, PermissionDenied
from .types import WatchBatch

log = logging.getLogger(__name__)

DENIED_RETRY = 5.0  # seconds between tries of a read or watch the store refused


class Follower:
    def __init__(self, backend: Backend, start: str, end: str | None, *,
                 resync: Callable[[], int], on_batch: Callable[[WatchBatch], bool | None],
                 before_watch: Callable[[], None] | None = None, start_revision: int = 0,
                 name: str = "follow", retry_interval: float = 0.5,
                 on_error: Callable[[CoordError], None] | None = None):
        self.backend = backend
        self.start_key = start
        self.end_key = end
        self.resync = resync
        self.on_batch = on_batch
        self.before_watch = before_watch
        self.name = name
        self.retry_interval = retry_interval
        self.on_error = on_error
        #: last store revision fully handed to the owner
        self.revision = start_revision - 1 if start_revision > 0 else 0
        self._need_resync = start_revision <= 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._denied_logged = False
        self._thread = threading.Thread(target=self._run, name=f"follow:{name}", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; safe to call twice and from a callback."""
        self.stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self._need_resync:
                    self.revision = self.resync()
                    self._need_resync = False
                if self.before_watch is not None:
                    self.before_watch()
                if self.stopping.is_set():
                    return
                self._follow()
            except Compacted:
                log.info("%s: history compacted past revision %d, re-reading", self.name, self.revision + 1)
                self._need_resync = True
            except Closed:
                return
            except PermissionDenied as exc:
                if self.stopping.is_set():
                    return
                self._denied(exc)
                self.stopping.wait(max(self.retry_interval, DENIED_RETRY))
            except CoordError as exc:
                if self.stopping.is_set():
                    return
                log.debug("%s: interrupted (%s), resuming from %d", self.name, exc, self.revision + 1)
                if self.on_error is not None:
                    self.on_error(exc)
                self.stopping.wait(self.retry_interval)
            except Exception:  # a broken callback must not kill the loop silently
                log.exception("%s: callback failed, retrying", self.name)
                self.stopping.wait(self.retry_interval)

    def _denied(self, exc: PermissionDenied) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        elif not self._denied_logged:
            self._denied_logged = True
            log.error("%s: %s; retrying every %gs", self.name, exc, max(self.retry_interval, DENIED_RETRY))

    def _follow(self) -> None:
        stream = self.backend.watch(self.start_key, self.end_key, start_revision=self.revision + 1)
        with self._lock:
            self._stream = stream
        try:
            if self.stopping.is_set():
                return
            for batch in stream:
                if self.stopping.is_set():
                    return
                fresh = tuple(ev for ev in batch.events if ev.kv.mod_revision > self.revision)
                if not fresh:
                    continue
                suspend = self.on_batch(WatchBatch(events=fresh, revision=batch.revision))
                self.revision = max(ev.kv.mod_revision for ev in fresh)
                if suspend:
                    return
        finally:
            with self._lock:
                self._stream = None
            stream.cancel()
