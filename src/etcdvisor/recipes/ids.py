"""Time-sortable 64-bit ids, sonyflake style, with a machine id claimed in
the store (sereno's ``NextId`` guessed the machine id from the host's
private IP address: two containers behind NAT could share it).

Layout of an id (63 bits used, always positive)::

    | 39 bits: 10 ms units since 2024-01-01 UTC | 8 bits: sequence | 16 bits: machine |

Guarantees:

* ids from one :class:`IdGenerator` strictly increase (thread-safe), and
  sort by creation time at 10 ms resolution across generators;
* the machine id is a key ``<prefix>machines/<n>`` created with a
  transaction that only succeeds if the key is missing, on the session's
  lease: two generators whose leases are alive never hold the same ``n``,
  so two live generators never produce the same id;
* when the session reports the lease lost or not confirmed,
  :meth:`IdGenerator.next_id` raises :class:`NoMachineId` until a machine id
  is claimed again on the new lease (done in the background on
  ``NEW_LEASE``);
* at most 256 ids per 10 ms per generator: when the sequence of the current
  unit is used up, ``next_id`` waits (``Event.wait``) for the next unit;
* if the wall clock goes backwards, ``next_id`` waits until it is past the
  last unit used, or raises :class:`ClockMovedBackwards` when that is more
  than ``max_backwards`` (1 s).

States::

    CLAIMED -> UNCLAIMED      session lost the lease (next_id raises)
    UNCLAIMED -> CLAIMED      machine id claimed on the new lease
    any -> CLOSED             close(): the machine key is deleted

Limits: uniqueness across generators relies on the lease, so it holds while
the session's view is right: a generator whose process was frozen longer
than the TTL keeps minting with its old machine id until its session notices
(the session state is checked on every call, so only ids minted in that
window are at risk). 39 bits of 10 ms last until 2198.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..coord.types import Compare, Delete, Put, missing

log = logging.getLogger(__name__)

EPOCH = _dt.datetime(2024, 1, 1, tzinfo=_dt.UTC).timestamp()
UNIT = 0.01  # seconds per time unit
TIME_BITS, SEQUENCE_BITS, MACHINE_BITS = 39, 8, 16
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_MACHINE = (1 << MACHINE_BITS) - 1
MAX_UNITS = (1 << TIME_BITS) - 1


class NoMachineId(CoordError):
    """No machine id is held on a live lease right now."""


class ClockMovedBackwards(RuntimeError):
    """The wall clock went back further than the generator waits for."""


class IdParts(NamedTuple):
    time: float  # Unix seconds of the id's 10 ms unit
    sequence: int
    machine: int


def compose(units: int, sequence: int, machine: int) -> int:
    return (units << (SEQUENCE_BITS + MACHINE_BITS)) | (sequence << MACHINE_BITS) | machine


def decompose(value: int) -> IdParts:
    """Split an id into (time as Unix seconds, sequence, machine)."""
    units = value >> (SEQUENCE_BITS + MACHINE_BITS)
    sequence = (value >> MACHINE_BITS) & MAX_SEQUENCE
    return IdParts(EPOCH + units * UNIT, sequence, value & MAX_MACHINE)


class IdGenerator:
    """See module docstring. The session is the caller's (it may carry other
    claims); the generator listens to it but never closes it."""

    def __init__(self, backend: Backend, prefix: str, session: Session, *,
                 clock: Callable[[], float] = time.time, max_backwards: float = 1.0):
        self.backend = backend
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.session = session
        self.clock = clock
        self.max_backwards = max_backwards
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._pause = threading.Event()  # never set: Event.wait is our timer
        self._closed = threading.Event()
        self._machine: int | None = None
        self._claim_lease = 0
        self._last_units = -1
        self._sequence = 0
        session.add_listener(self._on_session_event)
        self._claim(session.lease_id)

    @property
    def machine_id(self) -> int | None:
        """The machine id held on the session's current lease, or None."""
        machine, lease = self._machine, self._claim_lease
        if machine is None or lease != self.session.lease_id or not self.session.alive:
            return None
        return machine

    def next_id(self) -> int:
        """A new id, larger than every id this generator returned before."""
        with self._lock:
            machine = self.machine_id
            if machine is None:
                raise NoMachineId(f"id generator {self.prefix!r}: no machine id on a live lease "
                                  f"(session {self.session.state.value})")
            units = self._current_units(at_least=self._last_units)
            if units == self._last_units:
                if self._sequence == MAX_SEQUENCE:  # this 10 ms unit is used up
                    units = self._current_units(at_least=self._last_units + 1)
                    self._sequence = 0
                else:
                    self._sequence += 1
            else:
                self._sequence = 0
            if units > MAX_UNITS:
                raise OverflowError("id time field exhausted (year 2198)")
            self._last_units = units
            return compose(units, self._sequence, machine)

    def decompose(self, value: int) -> IdParts:
        return decompose(value)

    def close(self) -> None:
        """Release the machine id (delete its key if it is still ours)."""
        self._closed.set()
        self.session.remove_listener(self._on_session_event)
        with self._claim_lock:
            machine, lease = self._machine, self._claim_lease
            self._machine = None
        if machine is None:
            return
        key = self._machine_key(machine)
        try:
            self.backend.txn([_lease_is(key, lease)], [Delete(key)])
        except CoordError as exc:
            log.warning("id generator: could not release machine id %d: %s", machine, exc)

    def __enter__(self) -> IdGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- time -----------------------------------------------------------------
    def _units(self) -> int:
        return int((self.clock() - EPOCH) / UNIT)

    def _current_units(self, at_least: int) -> int:
        """The current unit, waiting (``Event.wait``) while the clock is
        before unit ``at_least``: for the next unit when the sequence is used
        up, or for the clock to catch up after it went backwards."""
        units = self._units()
        if units >= at_least:
            return units
        behind = EPOCH + at_least * UNIT - self.clock()
        if behind > self.max_backwards + UNIT:
            raise ClockMovedBackwards(f"wall clock is {behind:.3f}s behind the last id's time "
                                      f"(waits at most {self.max_backwards:g}s)")
        deadline = time.monotonic() + self.max_backwards + 2 * UNIT
        while units < at_least:
            if time.monotonic() > deadline:
                raise ClockMovedBackwards("wall clock did not catch up with the last id's time "
                                          f"within {self.max_backwards:g}s")
            self._pause.wait(max(EPOCH + at_least * UNIT - self.clock(), 0.001))
            units = self._units()
        return units

    # --- machine id -------------------------------------------------------------
    def _machine_key(self, machine: int) -> str:
        return f"{self.prefix}machines/{machine:05d}"

    def _claim(self, lease_id: int) -> int:
        """Create a free ``machines/<n>`` key on ``lease_id``: scan from a
        random start, skipping ids seen taken; a lost race moves on."""
        taken = {int(kv.key.rsplit("/", 1)[1]) for kv in
                 self.backend.get_prefix(self.prefix + "machines/", keys_only=True).kvs}
        start = random.randrange(MAX_MACHINE + 1)
        for offset in range(MAX_MACHINE + 1):
            machine = (start + offset) % (MAX_MACHINE + 1)
            if machine in taken:
                continue
            key = self._machine_key(machine)
            if self.backend.txn([missing(key)], [Put(key, self.identity.encode(), lease=lease_id)]).succeeded:
                with self._claim_lock:
                    self._machine, self._claim_lease = machine, lease_id
                log.info("id generator %s: machine id %d on lease %x", self.prefix, machine, lease_id)
                return machine
        raise NoMachineId(f"id generator {self.prefix!r}: all {MAX_MACHINE + 1} machine ids are taken")

    def _on_session_event(self, event: SessionEvent) -> None:
        # keepalive thread: only record; the claim (store calls) runs elsewhere
        if event.kind is SessionEventKind.LOST:
            with self._claim_lock:
                self._machine = None
        elif event.kind is SessionEventKind.NEW_LEASE and not self._closed.is_set():
            threading.Thread(target=self._reclaim, args=(event.lease_id,), daemon=True,
                             name=f"ids-reclaim:{self.prefix}").start()

    def _reclaim(self, lease_id: int) -> None:
        while not self._closed.is_set() and self.session.lease_id == lease_id:
            try:
                self._claim(lease_id)
                return
            except CoordError as exc:
                log.warning("id generator %s: cannot claim a machine id yet: %s", self.prefix, exc)
                self._closed.wait(1.0)


def _lease_is(key: str, lease_id: int) -> Compare:
    return Compare(key, "lease", "=", lease_id)
