"""Leader election with fencing tokens.

Candidates put ``<prefix><lease-id-hex>`` attached to their session's lease;
the leader is the key with the **lowest create revision**. Each candidate
waits only on its predecessor (the key just before its own in create order),
so a leader change wakes exactly one candidate (no thundering herd). The
waiting is the queue-wait protocol shared with :mod:`.lock`
(:mod:`.queue_wait`).

Guarantees:

* ``campaign()`` returns only after (1) no key with a lower create revision
  exists, (2) our own key still exists, and (3) a keepalive *sent after* (1)
  and (2) came back alive (docs/safety.md, rule 2), so the lease could not have expired
  on the server before we started believing we lead;
* the **fencing token** is the create revision of the leader's key: it
  strictly increases from one leader to the next;
* a leader learns it was deposed when its key disappears (lease expired or
  revoked, resigned) or its session reports the lease expired/lost.

Callbacks (``observe``): elected leader, became follower, peer joined, peer
left -- what sereno's README promised and never built.

Candidate states: IDLE -> CAMPAIGNING -> LEADER -> (DEPOSED -> CAMPAIGNING)*
-> STOPPED.

Limits: leadership is a lease, not a lock held by the process: a leader
that is paused longer than the TTL keeps believing it leads until it runs
again; use the token (fencing) for writes, and the supervisor's deadlines
for processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..coord.base import Backend
from ..coord.errors import Closed, CoordError
from ..coord.follow import Follower
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..coord.types import (
    EventType,
    KeyValue,
    Put,
    WatchBatch,
    create_revision,
    direct_children_by_create,
)
from ..coord.watcher import Change, PrefixWatcher
from .queue_wait import QueueEntry, WaitOutcome, WaitQueue

log = logging.getLogger(__name__)


class NotLeader(CoordError):
    """The operation needs leadership this candidate does not hold."""


class CampaignCancelled(CoordError):
    """``campaign`` was cancelled or timed out; the candidacy was withdrawn."""


@dataclass(frozen=True)
class Candidate:
    key: str
    value: bytes
    token: int  # create revision of the key (the fencing token when it leads)
    lease: int


@dataclass(frozen=True)
class Topology:
    leader: Candidate | None
    candidates: tuple[Candidate, ...]  # in create-revision (succession) order
    revision: int


def _candidate(kv: KeyValue) -> Candidate:
    return Candidate(key=kv.key, value=kv.value, token=kv.create_revision, lease=kv.lease)


class Election:
    """One participant in the election under ``prefix``."""

    def __init__(self, backend: Backend, prefix: str, session: Session, value: bytes | str = b"",
                 *, name: str | None = None, confirm_timeout: float = 5.0):
        if not prefix.endswith("/"):
            prefix += "/"
        self.backend = backend
        self.prefix = prefix
        self.session = session
        self.value = value.encode() if isinstance(value, str) else value
        self.name = name or f"election:{prefix}"
        self.confirm_timeout = confirm_timeout
        self.token = 0  # create revision of our key while campaigning or leading
        self._key = ""
        self._entry: QueueEntry | None = None
        self._queue = WaitQueue(backend, prefix, name=self.name)
        self._observers: list[PrefixWatcher] = []

    @property
    def key(self) -> str:
        return self._key

    # --- campaign ------------------------------------------------------------
    def campaign(self, timeout: float | None = None, cancel: threading.Event | None = None) -> int:
        """Block until this participant leads; return the fencing token.

        Waiting is the shared queue-wait protocol (:mod:`.queue_wait`).
        Raises :class:`CampaignCancelled` on timeout or when ``cancel`` is
        set (the candidacy is withdrawn first), and CoordError if the lease
        is lost meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        entry = self._enter()
        outcome = self._queue.wait_turn(entry, deadline=deadline, cancel=cancel)
        if outcome is not WaitOutcome.HEAD:
            self._withdraw()
            raise CampaignCancelled(f"{self.name}: campaign {outcome.value}")
        won_at = time.monotonic()
        if not self._still_ours():
            raise CoordError(f"{self.name}: candidacy lost (lease expired) while campaigning")
        if not self.session.confirm(after=won_at, timeout=self.confirm_timeout):
            raise CoordError(f"{self.name}: could not confirm the lease after winning")
        if not self._still_ours():
            raise CoordError(f"{self.name}: lease lost right after winning")
        log.info("%s: elected leader with token %d", self.name, self.token)
        return self.token

    def _enter(self) -> QueueEntry:
        """Create our candidate key (idempotent for the same lease)."""
        entry = self._entry = self._queue.enqueue(self.session.lease_id, self.value)
        self._key, self.token = entry.key, entry.token
        return entry

    def _still_ours(self) -> bool:
        return self._entry is not None and self._queue.still_ours(self._entry)

    def _withdraw(self) -> None:
        try:
            if self._entry is not None:
                self._queue.withdraw(self._entry)
        except Closed:  # the member is leaving: its lease revoke removes the candidate key
            log.debug("%s: candidacy left to the lease revoke (store handle closed)", self.name)
        except CoordError as exc:
            log.warning("%s: could not withdraw candidacy: %s", self.name, exc)
        self.token = 0

    # --- leadership ----------------------------------------------------------
    def resign(self) -> None:
        """Give up leadership (or candidacy); the next candidate takes over."""
        if self._key and self.token:
            self._withdraw()

    def is_leader(self) -> bool:
        """Ask the store whether our key is currently the first."""
        current = self.leader()
        return current is not None and current.key == self._key and current.token == self.token

    def proclaim(self, value: bytes | str) -> None:
        """Update the leader's value without losing leadership."""
        data = value.encode() if isinstance(value, str) else value
        res = self.backend.txn([create_revision(self._key, "=", self.token)],
                               [Put(self._key, data, lease=self.session.lease_id)]) if self.token else None
        if res is None or not res.succeeded:
            raise NotLeader(f"{self.name}: cannot proclaim, not the leader")
        self.value = data

    def leader(self) -> Candidate | None:
        return self.topology().leader

    def topology(self) -> Topology:
        result = self.backend.get_prefix(self.prefix)
        return topology_of(self.prefix, result.kvs, result.revision)

    # --- observation ---------------------------------------------------------
    def observe(self, on_topology: Callable[[Topology], None] | None = None, *,
                on_elected: Callable[[Topology], None] | None = None,
                on_follower: Callable[[Topology], None] | None = None,
                on_peer_join: Callable[[Candidate, Topology], None] | None = None,
                on_peer_leave: Callable[[Candidate, Topology], None] | None = None) -> PrefixWatcher:
        """Follow the election; callbacks run on the watcher thread.

        ``on_elected``/``on_follower`` fire when *this* participant's role
        as seen in the store changes; peers are the other candidates."""
        previous: list[Topology | None] = [None]

        def handle(change: Change) -> None:
            topo = topology_of(self.prefix, change.snapshot.values(), change.revision)
            old = previous[0]
            previous[0] = topo
            if on_topology:
                on_topology(topo)
            self._fire_role(old, topo, on_elected, on_follower)
            old_keys = {c.key: c for c in (old.candidates if old else ())}
            new_keys = {c.key: c for c in topo.candidates}
            for key, cand in new_keys.items():
                if key not in old_keys and key != self._key and on_peer_join:
                    on_peer_join(cand, topo)
            for key, cand in old_keys.items():
                if key not in new_keys and key != self._key and on_peer_leave:
                    on_peer_leave(cand, topo)

        watcher = PrefixWatcher(self.backend, self.prefix, handle, name=f"{self.name}:observe")
        self._observers.append(watcher)
        return watcher.start(wait=5)

    def _fire_role(self, old: Topology | None, topo: Topology, on_elected: Callable[[Topology], None] | None,
                   on_follower: Callable[[Topology], None] | None) -> None:
        def leads(t: Topology | None) -> bool:
            return bool(t and t.leader and self._key and t.leader.key == self._key)
        if leads(topo) and not leads(old) and on_elected:
            on_elected(topo)
        elif not leads(topo) and (leads(old) or old is None) and on_follower and topo.leader:
            on_follower(topo)

    def close(self, resign: bool = True) -> None:
        for watcher in self._observers:
            watcher.stop()
        self._observers.clear()
        if resign:
            self.resign()


def topology_of(prefix: str, kvs: Iterable[KeyValue], revision: int) -> Topology:
    candidates = tuple(_candidate(kv) for kv in direct_children_by_create(prefix, kvs))
    return Topology(leader=candidates[0] if candidates else None, candidates=candidates, revision=revision)


class LeadershipWatch:
    """Tells a leader at once when it is deposed: its key was deleted, or its
    session reports the lease expired or lost. ``on_deposed(reason)`` is
    called once, from a watch or keepalive thread. The key is followed by
    the never-miss loop (:class:`~etcdvisor.coord.follow.Follower`): a read
    first, then a watch from that revision + 1, resumed after errors."""

    def __init__(self, election: Election, on_deposed: Callable[[str], None]):
        self.election = election
        self.on_deposed = on_deposed
        self._fired = threading.Event()
        self._key, self._token = election.key, election.token
        self._follower = Follower(election.backend, self._key, None, resync=self._resync,
                                  on_batch=self._on_batch, name=f"{election.name}:deposed")

    def start(self) -> LeadershipWatch:
        self.election.session.add_listener(self._on_session)
        self._follower.start()
        return self

    def stop(self) -> None:
        self._fired.set()
        self.election.session.remove_listener(self._on_session)
        self._follower.stop()

    def _fire(self, reason: str) -> None:
        if not self._fired.is_set():
            self._fired.set()
            self._follower.stop(0)  # never block the keepalive thread on a join
            self.on_deposed(reason)

    def _on_session(self, event: SessionEvent) -> None:
        if event.kind in (SessionEventKind.EXPIRED, SessionEventKind.LOST):
            self._fire(f"lease {event.kind.value}")

    def _resync(self) -> int:
        result = self.election.backend.range(self._key)
        if not self._token or not any(kv.create_revision == self._token for kv in result.kvs):
            self._fire("leader key deleted")
        return result.revision

    def _on_batch(self, batch: WatchBatch) -> bool:
        if any(ev.type is EventType.DELETE for ev in batch.events):
            self._fire("leader key deleted")
            return True
        return False
