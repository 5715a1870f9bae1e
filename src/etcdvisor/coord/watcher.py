"""Watches that never miss an event (GUIDE safety rule 5).

:class:`PrefixWatcher` keeps a mirror of every key under a prefix and hands
each change to a callback, in revision order, exactly once:

1. read the prefix at revision R (the *snapshot*),
2. watch from R+1,
3. when the stream breaks (server restart, network), resume from the last
   revision seen + 1, so nothing is lost and nothing is repeated;
4. when the resume revision was compacted away, re-read the prefix and
   re-diff it against the mirror, delivering synthetic events for what
   changed in between (``resynced=True``).

States: STARTING -> WATCHING -> (RETRYING -> WATCHING)* -> STOPPED.

Limits: events between a compaction and the re-read are coalesced into one
synthetic event per key (intermediate values are lost, the final state is
exact). The callback runs on the watcher's own thread and must not block for
long; hand work to a queue.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from .base import Backend
from .errors import Closed, Compacted, CoordError
from .types import Event, EventType, KeyValue, prefix_end

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """What a :class:`PrefixWatcher` callback receives."""

    snapshot: Mapping[str, KeyValue]  # read-only view of the prefix after the events
    events: tuple[Event, ...]  # events since the previous Change (empty on the first)
    revision: int  # store revision the snapshot reflects
    initial: bool = False  # first snapshot after start
    resynced: bool = False  # rebuilt by a re-read (after compaction)
    members_by_create: tuple[KeyValue, ...] = field(default=())  # snapshot ordered by create revision

    def ordered(self) -> tuple[KeyValue, ...]:
        return self.members_by_create


class PrefixWatcher:
    """Mirror a prefix and call ``on_change(Change)`` for every change."""

    def __init__(self, backend: Backend, prefix: str, on_change: Callable[[Change], None], *,
                 name: str = "watch", retry_interval: float = 0.5,
                 on_error: Callable[[CoordError], None] | None = None):
        self.backend = backend
        self.prefix = prefix
        self.on_change = on_change
        self.on_error = on_error
        self.retry_interval = retry_interval
        self.name = name
        self._mirror: dict[str, KeyValue] = {}
        self._revision = 0
        self._stop = threading.Event()
        self._stream = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch:{name}", daemon=True)
        self._synced = threading.Event()

    @property
    def revision(self) -> int:
        return self._revision

    def start(self, wait: float | None = None) -> "PrefixWatcher":
        """Start the thread; with ``wait`` block until the first snapshot was
        delivered (returns even if the backend is down; see :meth:`synced`)."""
        self._thread.start()
        if wait:
            self._synced.wait(wait)
        return self

    def synced(self) -> bool:
        return self._synced.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # --- the loop ------------------------------------------------------------
    def _run(self) -> None:
        need_snapshot = True
        first = True
        while not self._stop.is_set():
            try:
                if need_snapshot:
                    self._resync(initial=first)
                    first = False
                    need_snapshot = False
                self._follow()
            except Compacted:
                log.info("%s: history compacted at revision %s, re-reading", self.name, self._revision)
                need_snapshot = True
            except Closed:
                return
            except CoordError as exc:
                if self._stop.is_set():
                    return
                log.debug("%s: watch interrupted (%s), resuming from %d", self.name, exc, self._revision + 1)
                if self.on_error:
                    self.on_error(exc)
                self._stop.wait(self.retry_interval)

    def _resync(self, initial: bool) -> None:
        result = self.backend.get_prefix(self.prefix)
        fresh = {kv.key: kv for kv in result.kvs}
        events = _diff(self._mirror, fresh, result.revision)
        self._mirror = fresh
        self._revision = result.revision
        if initial or events:
            self._deliver(events, initial=initial, resynced=not initial)
        self._synced.set()

    def _follow(self) -> None:
        stream = self.backend.watch(self.prefix, prefix_end(self.prefix),
                                    start_revision=self._revision + 1, prev_kv=False)
        with self._lock:
            self._stream = stream
        if self._stop.is_set():
            stream.cancel()
            return
        try:
            for batch in stream:
                if self._stop.is_set():
                    return
                fresh_events = tuple(ev for ev in batch.events if ev.kv.mod_revision > self._revision)
                for ev in fresh_events:
                    if ev.type is EventType.PUT:
                        self._mirror[ev.kv.key] = ev.kv
                    else:
                        self._mirror.pop(ev.kv.key, None)
                if fresh_events:
                    self._revision = max(ev.kv.mod_revision for ev in fresh_events)
                    self._deliver(fresh_events)
        finally:
            with self._lock:
                self._stream = None
            stream.cancel()

    def _deliver(self, events, *, initial=False, resynced=False) -> None:
        snapshot = MappingProxyType(dict(self._mirror))
        ordered = tuple(sorted(snapshot.values(), key=lambda kv: kv.create_revision))
        change = Change(snapshot=snapshot, events=tuple(events), revision=self._revision,
                        initial=initial, resynced=resynced, members_by_create=ordered)
        try:
            self.on_change(change)
        except Exception:  # a broken callback must not kill the watch
            log.exception("%s: change callback failed", self.name)


def _diff(old: dict[str, KeyValue], new: dict[str, KeyValue], revision: int) -> list[Event]:
    """Synthetic events turning ``old`` into ``new``."""
    events = []
    for key, kv in old.items():
        if key not in new:
            gone = KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)
            events.append(Event(EventType.DELETE, gone, prev_kv=kv))
    for key, kv in new.items():
        if old.get(key) != kv:
            events.append(Event(EventType.PUT, kv, prev_kv=old.get(key)))
    events.sort(key=lambda ev: (ev.kv.mod_revision, ev.kv.key))
    return events
