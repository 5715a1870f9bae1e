"""The coordination backend interface.

Every recipe and the supervisor talk to a :class:`Backend`; two
implementations exist: :mod:`etcdvisor.coord.etcd` (a real etcd v3 cluster)
and :mod:`etcdvisor.coord.memory` (in-process, for users' unit tests). Both
implement exactly the contracts written in the docstrings below, and one
contract test suite runs against both.

General rules for every method:

* Keys are ``str``, values ``bytes`` (a ``str`` value is UTF-8 encoded).
* Every call that talks to the server finishes within ``timeout`` seconds
  (the backend's default, settable per backend) or raises
  :class:`~etcdvisor.coord.errors.CoordTimeout`.
* Revisions are etcd's: one store-wide counter that grows with every write.
* Errors are always :class:`~etcdvisor.coord.errors.CoordError` subclasses.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Self

from .types import Compare, KeyValue, Lease, Op, RangeResult, TxnResult, WatchBatch


class WatchStream(abc.ABC):
    """An open watch: iterate to receive :class:`WatchBatch` objects in
    revision order.

    Iteration blocks until the next batch. It raises
    :class:`~etcdvisor.coord.errors.Compacted` if the requested start
    revision was compacted, :class:`~etcdvisor.coord.errors.Unavailable`
    when the stream breaks (server gone, restarted), and ends (StopIteration)
    after :meth:`cancel`. A raw stream never retries by itself: use
    :class:`etcdvisor.coord.watcher.PrefixWatcher` for a watch that resumes
    and never misses an event.
    """

    @abc.abstractmethod
    def __iter__(self) -> Iterator[WatchBatch]: ...

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the watch; safe to call twice and from another thread."""


class Backend(abc.ABC):
    """One connection to a coordination store."""

    #: URL the backend was opened with (password never included).
    url: str
    #: default per-call timeout, seconds
    timeout: float

    # --- reads -----------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """The key's current value and metadata, or None when it does not
        exist."""

    @abc.abstractmethod
    def range(
        self,
        start: str,
        end: str | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
    ) -> RangeResult:
        """Keys in ``[start, end)`` sorted by key, read at ``revision``
        (0 = latest). ``end=None`` reads just ``start``. ``limit`` > 0 caps
        the number of kvs returned (``count`` still tells the total).
        Reading a compacted revision raises ``Compacted``. ``keys_only``
        leaves values empty. The result's ``revision`` is the store's current
        revision when the read was served (for a read at the latest revision,
        watching from ``revision + 1`` afterwards misses nothing; for a
        historical read it is still the *current* revision, as in etcd).
        An empty ``start`` is an error, as in etcd (use ``"\\0"``)."""

    def get_prefix(self, prefix: str, *, revision: int = 0, keys_only: bool = False) -> RangeResult:
        """Every key starting with ``prefix`` (see :meth:`range`)."""
        from .types import prefix_end

        return self.range(prefix, prefix_end(prefix), revision=revision, keys_only=keys_only)

    # --- writes ----------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Set ``key`` to ``value`` (attached to ``lease`` if non-zero) and
        return the new store revision. Putting with a lease that does not
        exist raises ``LeaseNotFound`` and writes nothing."""

    @abc.abstractmethod
    def delete(self, key: str, end: str | None = None) -> int:
        """Delete ``key`` (or every key in ``[key, end)``) and return how many
        keys were deleted. Deleting a missing key is not an error (returns 0)."""

    @abc.abstractmethod
    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds, run ``success`` ops, else run
        ``failure`` ops. All ops of the chosen branch take effect at one
        revision. A Put with a missing lease raises ``LeaseNotFound`` and
        applies nothing."""

    # --- leases ----------------------------------------------------------
    @abc.abstractmethod
    def lease_grant(self, ttl: int) -> Lease:
        """Create a lease of ``ttl`` seconds (the server may grant more,
        never less; the granted value is ``Lease.ttl``)."""

    @abc.abstractmethod
    def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh the lease once and return its TTL as granted by this
        refresh. Returns 0 when the lease no longer exists (expired or
        revoked): the caller's claims are gone. Raises ``CoordTimeout``/
        ``Unavailable`` when the server did not answer, in which case the
        lease may still be alive until its last deadline."""

    @abc.abstractmethod
    def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease, deleting every key attached to it at once.
        Revoking a missing lease is not an error."""

    @abc.abstractmethod
    def lease_ttl(self, lease_id: int) -> int:
        """Remaining seconds of the lease, or -1 when it does not exist."""

    # --- watches ---------------------------------------------------------
    @abc.abstractmethod
    def watch(
        self,
        key: str,
        end: str | None = None,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> WatchStream:
        """Open a watch on ``key`` (or ``[key, end)``) delivering every event
        with revision >= ``start_revision`` (0: from now). Events arrive in
        revision order, each exactly once on this stream. If
        ``start_revision`` was compacted, the stream raises ``Compacted``.
        The watch is registered on the server before this call returns, so a
        write made after it returns is seen."""

    # --- maintenance -----------------------------------------------------
    @abc.abstractmethod
    def revision(self) -> int:
        """The current store revision."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (watches and reads at older
        revisions then raise ``Compacted``). Compacting at or below the
        current compact revision raises ``Compacted``; a future revision
        raises ``CoordError``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; open watches end. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

