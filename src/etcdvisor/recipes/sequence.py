"""Sequence membership: every member of a group learns its INDEX and COUNT.

The system of etcdseq (``000_*.txt``), rebuilt on etcd v3:

* a member joins by putting ``<prefix><member_id>`` attached to its session's
  lease; members are ordered by **create revision** (join order), never by
  key, and only direct children of the prefix count (``<prefix>a/b`` or a
  sibling prefix ``<prefix>x`` with another parent are ignored);
* when a member leaves (clean delete, lease revoke, or expiry after a
  crash), later members shift down and COUNT shrinks;
* every member receives :class:`Info` ``(index, count, epoch)`` where
  ``epoch`` is the store revision of the membership snapshot; updates reach
  the handler in order on a dispatcher thread of their own, coalesced when the
  handler is slow (latest wins, never reordered), so a slow handler never
  blocks the watch;
* when the session's lease is lost (or may have expired on the server)
  :class:`Info` turns invalid at once; once the backend answers again the
  member rejoins (at the end, with a new create revision).

States: NEW -> JOINED -> (INVALID -> JOINED)* -> STOPPED.

``follow="head"``: a member that needs only to know whether it is *first*
(the sharded role's members: the first one publishes the plan the others
follow) does not mirror the group. It reads the group once after joining
(keys only), watches only its predecessor (the key with the greatest create
revision below its own) until that one is deleted, and reads again: the
queue-wait protocol of :mod:`.queue_wait`. The handler then receives
:class:`Place` ``(head, joined)`` instead of :class:`Info`. A join or leave
elsewhere costs such a member nothing, unless it is the leaver's successor
(one event and one read), so a burst of N joins costs the group O(N) events,
not N^2/2.

Limits: membership changes are seen after one watch round-trip; two members
that join in the same transaction cannot exist (one key per put).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..coord.types import Get as GetOp
from ..coord.types import KeyValue, Put, direct_children_by_create
from ..coord.watcher import Change, PrefixWatcher
from ._mailbox import LatestMailbox
from .queue_wait import EntryLost, QueueEntry, Signal, WaitQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Info:
    """This member's place: ``index`` in ``0..count-1``, or -1 when invalid."""

    index: int
    count: int
    epoch: int
    members: tuple[str, ...] = ()

    def invalid(self) -> bool:
        return self.index < 0

    def equal(self, other: Info | None) -> bool:
        """Same place (index and count); the epoch is ignored."""
        return other is not None and (self.index, self.count) == (other.index, other.count)


INVALID = Info(-1, 0, 0)


@dataclass(frozen=True)
class Place:
    """``follow="head"``: whether this member is first in join order; ``joined`` is
    the create revision of its key (0: not a member now: not joined yet, or its
    lease is lost or in doubt)."""

    head: bool
    joined: int

    def invalid(self) -> bool:
        return self.joined == 0


NOT_JOINED = Place(False, 0)


members_in_order = direct_children_by_create  # member keys of a group, in join order


def compute_info(prefix: str, member_id: str, kvs: Iterable[KeyValue], epoch: int) -> Info:
    ordered = members_in_order(prefix, kvs)
    ids = tuple(kv.key[len(prefix):] for kv in ordered)
    if member_id in ids:
        return Info(ids.index(member_id), len(ids), epoch, ids)
    return Info(-1, len(ids), epoch, ids)


class Sequence:
    """One member of the group under ``prefix`` (see module docstring)."""

    def __init__(self, backend: Backend, prefix: str, member_id: str, session: Session,
                 handler: Callable[[Info], None] | Callable[[Place], None] | None = None, *,
                 value: bytes = b"", name: str | None = None,
                 follow: Literal["members", "head"] = "members", retry_interval: float = 0.5):
        if not prefix.endswith("/"):
            prefix += "/"
        if not member_id or "/" in member_id:
            raise ValueError(f"invalid member id {member_id!r}")
        if follow not in ("members", "head"):
            raise ValueError(f"follow must be 'members' or 'head', not {follow!r}")
        self.backend = backend
        self.prefix = prefix
        self.member_id = member_id
        self.key = prefix + member_id
        self.session = session
        self.value = value
        self.name = name or f"seq:{prefix}{member_id}"
        self._info = INVALID
        self._lock = threading.Lock()
        self._joined_revision = 0
        self._lease_ok = True
        self._stopping = False
        self._last_change: Change | None = None
        # (Info in members mode, Place in head mode)
        self._mailbox: LatestMailbox[Any] | None = \
            LatestMailbox(cast(Callable[[Any], None], handler), name=self.name) if handler else None
        self._changed = threading.Condition(self._lock)
        self.follow = follow
        self.retry_interval = retry_interval
        self._place = NOT_JOINED
        # head mode: look again (rejoined, lease back, kicked, stop); setting it also
        # cancels the watch on the predecessor (a Signal: nothing polls it)
        self._wake = Signal()
        self._head_thread: threading.Thread | None = None
        self._watcher = PrefixWatcher(backend, prefix, self._on_change, name=self.name) \
            if follow == "members" else None

    # --- public --------------------------------------------------------------
    @property
    def info(self) -> Info:
        return self._info

    @property
    def place(self) -> Place:
        """``follow="head"``: whether this member is first (see module docstring)."""
        return self._place

    def start(self, wait: float = 5.0) -> Sequence:
        """Join the group and start following it; with ``wait`` block until
        this member sees itself in the group."""
        self.session.add_listener(self._on_session)
        self._join()
        if self._watcher is not None:
            self._watcher.start()
        else:
            self._head_thread = threading.Thread(target=self._follow_head, name=self.name, daemon=True)
            self._head_thread.start()
        if wait:
            self.wait_valid(wait)
        return self

    def wait_valid(self, timeout: float) -> Info:
        with self._changed:
            if self._watcher is None:
                self._changed.wait_for(lambda: not self._place.invalid(), timeout)
            else:
                self._changed.wait_for(lambda: not self._info.invalid(), timeout)
            return self._info

    def kick(self) -> None:
        """Head mode: read the group again now (the caller has reason to think our key
        is gone: a plan computed after our join does not list us)."""
        self._wake.set()

    def stop(self, leave: bool = True) -> None:
        """Stop following; with ``leave`` delete the member key so the others
        reshard at once."""
        self._stopping = True
        self.session.remove_listener(self._on_session)
        if self._watcher is not None:
            self._watcher.stop()
        else:
            self.kick()
            thread = self._head_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(5.0)
        if leave:
            try:
                self.backend.delete(self.key)
            except CoordError as exc:
                log.warning("%s: could not leave cleanly: %s", self.name, exc)
        self._publish(NOT_JOINED if self._watcher is None else INVALID)
        if self._mailbox:
            self._mailbox.close()

    # --- internals -----------------------------------------------------------
    def _join(self) -> None:
        try:
            if self._watcher is None:  # head mode: our place in line is the key's create revision
                result = self.backend.txn([], [Put(self.key, self.value, self.session.lease_id), GetOp(self.key)])
                found = result.responses[1]
                self._joined_revision = found[0].create_revision if found else 0
            else:
                self._joined_revision = self.backend.put(self.key, self.value, lease=self.session.lease_id)
            log.info("%s: joined at revision %d", self.name, self._joined_revision)
        except CoordError as exc:
            log.warning("%s: cannot join yet: %s", self.name, exc)
            self._joined_revision = 0
        self._wake.set()

    def _follow_head(self) -> None:
        """Head mode (own thread): find our predecessor, wait for its deletion, again."""
        queue = WaitQueue(self.backend, self.prefix, name=self.name, retry_interval=self.retry_interval)
        while not self._stopping:
            self._wake.clear()
            token = self._joined_revision
            if not token or not self._lease_ok:
                self._publish(NOT_JOINED)
                self._wake.wait()
                continue
            try:
                predecessor, revision = queue.predecessor(QueueEntry(self.key, token, self.session.lease_id))
            except EntryLost:
                if not self._stopping and self._lease_ok and token == self._joined_revision:
                    log.warning("%s: member key deleted, rejoining", self.name)
                    self._publish(NOT_JOINED)
                    self._join()
                continue
            except CoordError as exc:
                log.debug("%s: cannot read the group (retrying): %s", self.name, exc)
                self._wake.wait(self.retry_interval)
                continue
            if self._stopping or token != self._joined_revision:
                continue
            self._publish(Place(predecessor is None, token))
            if predecessor is None:
                self._wake.wait()  # first until our key goes: nobody can join before us
                continue
            try:  # (a kick cancels this watch at once)
                queue.wait_deleted(predecessor.key, revision, cancel=self._wake)
            except CoordError as exc:
                log.debug("%s: cannot watch %s (retrying): %s", self.name, predecessor.key, exc)
                self._wake.wait(self.retry_interval)

    def _on_change(self, change: Change) -> None:
        self._last_change = change
        info = compute_info(self.prefix, self.member_id, change.snapshot.values(), change.revision)
        if info.invalid() and self._joined_revision and change.revision >= self._joined_revision \
                and self._lease_ok and not self._stopping:
            # our key vanished while our lease lives (deleted by hand): rejoin
            log.warning("%s: member key deleted, rejoining", self.name)
            self._join()
        if not self._lease_ok:
            info = Info(-1, info.count, info.epoch, info.members)
        self._publish(info)

    def _on_session(self, event: SessionEvent) -> None:
        if self._stopping:
            return
        if self._watcher is None:
            self._on_session_head(event)
            return
        if event.kind in (SessionEventKind.EXPIRED, SessionEventKind.LOST):
            self._lease_ok = False
            self._publish(Info(-1, self._info.count, self._info.epoch, self._info.members))
        elif event.kind is SessionEventKind.NEW_LEASE:
            self._lease_ok = True
            self._join()
        elif event.kind is SessionEventKind.KEEPALIVE and not self._joined_revision:
            self._join()  # an earlier join failed while the backend was away
        elif event.kind is SessionEventKind.KEEPALIVE and not self._lease_ok:
            # the old lease survived (e.g. etcd restarted and renewed it)
            self._lease_ok = True
            if self._last_change is not None:
                self._on_change(self._last_change)

    def _on_session_head(self, event: SessionEvent) -> None:
        if event.kind in (SessionEventKind.EXPIRED, SessionEventKind.LOST):
            self._lease_ok = False
            self._publish(NOT_JOINED)
            self.kick()
        elif event.kind is SessionEventKind.NEW_LEASE:
            self._lease_ok = True
            self._join()
        elif event.kind is SessionEventKind.KEEPALIVE and (not self._joined_revision or not self._lease_ok):
            self._lease_ok = True  # (the old lease survived: e.g. etcd restarted and renewed it)
            if not self._joined_revision:
                self._join()
            self._wake.set()

    def _publish(self, value: Info | Place) -> None:
        """Keep ``value`` (an Info in members mode, a Place in head mode) and hand it to
        the handler, unless it is what we have."""
        with self._changed:
            if value == (self._place if isinstance(value, Place) else self._info):
                return
            if isinstance(value, Place):
                self._place = value
            else:
                self._info = value
            self._changed.notify_all()
        if self._mailbox:
            self._mailbox.put(value)
