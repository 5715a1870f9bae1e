"""Watches that never miss an event (docs/safety.md, rule 5).

:class:`PrefixWatcher` keeps a mirror of every key under a prefix and hands
each change to a callback, in revision order, exactly once:

1. read the prefix at revision R (the *snapshot*),
2. watch from R+1,
3. when the stream breaks (server restart, network), resume from the last
   revision seen + 1, so nothing is lost and nothing is repeated;
4. when the resume revision was compacted away, re-read the prefix and
   re-diff it against the mirror, delivering synthetic events for what
   changed in between (``resynced=True``).

States: STARTING -> WATCHING -> (RETRYING -> WATCHING)* -> STOPPED
(the loop is :class:`etcdvisor.coord.follow.Follower`).

Limits: events between a compaction and the re-read are coalesced into one
synthetic event per key (intermediate values are lost, the final state is
exact). The callback runs on the watcher's own thread and must not block for
long; hand work to a queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .base import Backend
from .errors import CoordError
from .follow import Follower
from .types import Event, EventType, KeyValue, WatchBatch, prefix_end

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """What a :class:`PrefixWatcher` callback receives."""

    snapshot: Mapping[str, KeyValue]  # read-only view of the prefix after the events
    events: tuple[Event, ...]  # events since the previous Change (empty on the first)
    revision: int  # store revision the snapshot reflects
    initial: bool = False  # first snapshot after start
    resynced: bool = False  # rebuilt by a re-read (after compaction)

    def ordered(self) -> tuple[KeyValue, ...]:
        """The snapshot in create-revision (join) order."""
        return tuple(sorted(self.snapshot.values(), key=lambda kv: kv.create_revision))


class PrefixWatcher:
    """Mirror a prefix and call ``on_change(Change)`` for every change.

    The loop itself (resume after errors, re-read after compaction) is a
    :class:`~etcdvisor.coord.follow.Follower`; this class adds the mirror
    and the diff."""

    def __init__(self, backend: Backend, prefix: str, on_change: Callable[[Change], None], *,
                 name: str = "watch", retry_interval: float = 0.5,
                 on_error: Callable[[CoordError], None] | None = None):
        self.backend = backend
        self.prefix = prefix
        self.on_change = on_change
        self.name = name
        self._mirror: dict[str, KeyValue] = {}
        self._initial = True
        self._synced = threading.Event()
        self._follower = Follower(backend, prefix, prefix_end(prefix), resync=self._resync,
                                  on_batch=self._on_batch, name=name, retry_interval=retry_interval,
                                  on_error=on_error)

    @property
    def revision(self) -> int:
        return self._follower.revision

    def start(self, wait: float | None = None) -> PrefixWatcher:
        """Start the thread; with ``wait`` block until the first snapshot was
        delivered (returns even if the backend is down; see :meth:`synced`)."""
        self._follower.start()
        if wait:
            self._synced.wait(wait)
        return self

    def synced(self) -> bool:
        return self._synced.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._follower.stop(timeout)

    # --- follower callbacks (watcher thread) ---------------------------------
    def _resync(self) -> int:
        result = self.backend.get_prefix(self.prefix)
        fresh = {kv.key: kv for kv in result.kvs}
        events = _diff(self._mirror, fresh, result.revision)
        self._mirror = fresh
        initial, self._initial = self._initial, False
        if initial or events:
            if not initial:
                log.info("%s: re-read the prefix at revision %d", self.name, result.revision)
            self._deliver(events, result.revision, initial=initial, resynced=not initial)
        self._synced.set()
        return result.revision

    def _on_batch(self, batch: WatchBatch) -> None:
        for ev in batch.events:
            if ev.type is EventType.PUT:
                self._mirror[ev.kv.key] = ev.kv
            else:
                self._mirror.pop(ev.kv.key, None)
        self._deliver(batch.events, max(ev.kv.mod_revision for ev in batch.events))

    def _deliver(self, events: Iterable[Event], revision: int, *, initial: bool = False,
                 resynced: bool = False) -> None:
        change = Change(snapshot=MappingProxyType(dict(self._mirror)), events=tuple(events),
                        revision=revision, initial=initial, resynced=resynced)
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
