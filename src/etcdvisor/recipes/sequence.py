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

Limits: membership changes are seen after one watch round-trip; two members
that join in the same transaction cannot exist (one key per put).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..coord.types import KeyValue, direct_children_by_create
from ..coord.watcher import Change, PrefixWatcher
from ._mailbox import LatestMailbox

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
                 handler: Callable[[Info], None] | None = None, *, value: bytes = b"",
                 name: str | None = None):
        if not prefix.endswith("/"):
            prefix += "/"
        if not member_id or "/" in member_id:
            raise ValueError(f"invalid member id {member_id!r}")
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
        self._mailbox = LatestMailbox(handler, name=self.name) if handler else None
        self._changed = threading.Condition(self._lock)
        self._watcher = PrefixWatcher(backend, prefix, self._on_change, name=self.name)

    # --- public --------------------------------------------------------------
    @property
    def info(self) -> Info:
        return self._info

    def start(self, wait: float = 5.0) -> Sequence:
        """Join the group and start following it; with ``wait`` block until
        this member sees itself in the group."""
        self.session.add_listener(self._on_session)
        self._join()
        self._watcher.start()
        if wait:
            self.wait_valid(wait)
        return self

    def wait_valid(self, timeout: float) -> Info:
        with self._changed:
            self._changed.wait_for(lambda: not self._info.invalid(), timeout)
            return self._info

    def stop(self, leave: bool = True) -> None:
        """Stop following; with ``leave`` delete the member key so the others
        reshard at once."""
        self._stopping = True
        self.session.remove_listener(self._on_session)
        self._watcher.stop()
        if leave:
            try:
                self.backend.delete(self.key)
            except CoordError as exc:
                log.warning("%s: could not leave cleanly: %s", self.name, exc)
        self._publish(INVALID)
        if self._mailbox:
            self._mailbox.close()

    # --- internals -----------------------------------------------------------
    def _join(self) -> None:
        try:
            self._joined_revision = self.backend.put(self.key, self.value, lease=self.session.lease_id)
            log.info("%s: joined at revision %d", self.name, self._joined_revision)
        except CoordError as exc:
            log.warning("%s: cannot join yet: %s", self.name, exc)
            self._joined_revision = 0

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

    def _publish(self, info: Info) -> None:
        with self._changed:
            if info == self._info:
                return
            self._info = info
            self._changed.notify_all()
        if self._mailbox:
            self._mailbox.put(info)
