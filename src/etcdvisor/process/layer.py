"""The seam between a slot and the run of its child: :class:`Child` and :data:`ChildFactory`.

A :class:`~etcdvisor.process.slot.Slot` starts each run through a factory
``factory(spec) -> Child``. The default (``ProcessManager`` without
``child_factory``) makes a real :class:`~etcdvisor.process.child.ChildProcess`
(fork/exec, process group, watchdog, cgroup). Anything else that keeps this
protocol can stand in for it: the fleet simulator (``bench/fleet_sim.py``) and
tests use :class:`etcdvisor.testing.fake_process.FakeChild`, a run that is only
a record, so that hundreds of members fit on one machine while the rest of the
runtime (slots, restart policy, lease deadlines, roles, the decision loop) is
the real code.

The contract a stand-in must keep (``ChildProcess`` documents each point):
``start(now)`` returns a pid or raises ``SpawnError``; ``poll(now)`` never
blocks, applies the stop and lease deadlines and returns the exit code once
the run is over (``None`` before); ``next_deadline()`` says when ``poll`` must
run next (a stand-in that has no SIGCHLD must also give the time it will exit);
``stop(now)`` is idempotent and sets ``stop_requested``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from etcdvisor.process.child import ChildState
    from etcdvisor.process.spawn import ChildSpec


class Child(Protocol):
    """One run of one child, as a slot and the runtime see it."""

    spec: ChildSpec
    tag: str                      # unique per run (probes and readiness tell runs apart)
    state: ChildState
    pid: int | None
    pgid: int | None
    returncode: int | None
    started_at: float | None
    stop_requested: bool

    def start(self, now: float | None = None) -> int: ...

    def stop(self, now: float) -> None: ...

    def send_signal(self, signum: int) -> bool: ...

    def kill(self) -> None: ...

    def poll(self, now: float) -> int | None: ...

    def set_lease_deadlines(self, term_at: float | None, kill_at: float | None, *,
                            sync_watchdog: bool = True) -> None: ...

    def guard_deadlines(self) -> tuple[float | None, float | None]: ...

    def next_deadline(self) -> float | None: ...

    @property
    def alive(self) -> bool: ...


ChildFactory = Callable[["ChildSpec"], Child]
"""Makes the (not yet started) run of ``spec`` for a slot."""
