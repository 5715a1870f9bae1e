"""A key that exists while this process lives (sereno's NodeKeepAlive).

The key is attached to the lease of the node's own
:class:`~etcdvisor.coord.session.Session`, which keeps the lease alive in
the background (about once a second). So:

* a crash (SIGKILL, power loss, partition) makes the key disappear by itself
  within the TTL, with no refresh writes (etcd v2's TTL refresh rewrote the
  key each time; a lease keepalive does not touch the key, so watchers see
  nothing while the node lives);
* :meth:`KeepAliveNode.stop` revokes the lease: the key disappears at once;
* if the lease is lost anyway (expired during a partition, revoked by
  someone else), the session grants a new one and the node re-creates the
  key on it (on ``NEW_LEASE``), retrying until it succeeds or is stopped.

States::

    NEW -> RUNNING            start(): lease granted, key written
    RUNNING -> LOST           the session lost the lease (key gone)
    LOST -> RUNNING           a new lease was granted and the key re-written
    any -> STOPPED            stop(): lease revoked, key deleted

Limits: the key is not guarded against other writers: if someone deletes
or overwrites it while the lease lives, it is not restored until the next
lease change. Between a lease loss and the re-creation (at least one
keepalive interval) the key is absent.
"""

from __future__ import annotations

import enum
import logging
import threading

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.session import Session, SessionEvent, SessionEventKind

log = logging.getLogger(__name__)


class NodeState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    LOST = "lost"
    STOPPED = "stopped"


class KeepAliveNode:
    """See module docstring. Use as a context manager or call
    :meth:`start` / :meth:`stop`."""

    def __init__(self, backend: Backend, key: str, value: bytes | str = b"", ttl: int = 10, *,
                 interval: float = 1.0):
        self.backend = backend
        self.key = key
        self.value = value
        self.ttl = ttl
        self.interval = interval
        self.state = NodeState.NEW
        self.session: Session | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def lease_id(self) -> int:
        return self.session.lease_id if self.session else 0

    @property
    def alive(self) -> bool:
        """True while the key should exist (written on a live lease)."""
        return self.state is NodeState.RUNNING and bool(self.session and self.session.alive)

    def start(self) -> KeepAliveNode:
        """Grant the lease and write the key; raises ``CoordError`` (and
        leaves nothing behind) when the store is unreachable."""
        if self.state is not NodeState.NEW:
            raise RuntimeError(f"keep-alive node {self.key!r} already started")
        session = Session(self.backend, self.ttl, interval=self.interval, name=f"node:{self.key}")
        session.add_listener(self._on_session_event)
        session.start()
        self.session = session
        try:
            self.backend.put(self.key, self.value, lease=session.lease_id)
        except CoordError:
            session.close(revoke=True)
            raise
        self._set_state(NodeState.RUNNING, session.lease_id)  # NEW -> RUNNING
        return self

    def stop(self) -> None:
        """Revoke the lease (the key disappears at once). Safe to call twice;
        if the store is unreachable the key goes when the TTL runs out."""
        self._stopped.set()
        with self._lock:
            self.state = NodeState.STOPPED  # any -> STOPPED
        if self.session is not None:
            self.session.close(revoke=True)

    def __enter__(self) -> KeepAliveNode:
        if self.state is NodeState.NEW:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- lease changes ------------------------------------------------------
    def _on_session_event(self, event: SessionEvent) -> None:
        # runs on the keepalive thread: only record, and hand writes to a thread
        if event.kind is SessionEventKind.LOST:
            self._set_state(NodeState.LOST, event.lease_id)  # RUNNING -> LOST
        elif event.kind is SessionEventKind.NEW_LEASE:
            threading.Thread(target=self._recreate, args=(event.lease_id,), daemon=True,
                             name=f"node-recreate:{self.key}").start()

    def _recreate(self, lease_id: int) -> None:
        while not self._stopped.is_set() and self.session and self.session.lease_id == lease_id:
            try:
                self.backend.put(self.key, self.value, lease=lease_id)
            except CoordError as exc:
                log.warning("keep-alive node %s: cannot re-create the key yet: %s", self.key, exc)
                self._stopped.wait(self.interval)
                continue
            self._set_state(NodeState.RUNNING, lease_id)  # LOST -> RUNNING
            log.info("keep-alive node %s re-created on lease %x", self.key, lease_id)
            return

    def _set_state(self, state: NodeState, lease_id: int) -> None:
        with self._lock:
            if self.state is NodeState.STOPPED:
                return
            if self.session is not None and self.session.lease_id != lease_id:
                return  # news about a lease we no longer hold
            self.state = state

    def __repr__(self) -> str:
        return f"KeepAliveNode({self.key!r}, {self.state.value})"
