"""A process layer whose children are records: for the fleet simulator and tests.

:class:`FakeProcessLayer` makes :class:`~etcdvisor.process.manager.ProcessManager`
instances (pass ``layer.manager`` as ``Supervisor(process_layer=...)``) whose
slots start :class:`FakeChild` runs instead of processes: no fork, no watchdog
helper, no output thread, no cgroup, no reaper. Everything above the run (slots,
restart policy, lease deadlines, roles, the decision loop) is the real code.

A run starts at once and, once asked to stop (or at its lease's ``term_at``),
is gone ``stop_delay`` seconds later (a worker's clean shutdown); ``kill()``
ends it at once. A run found alive past its lease's ``kill_at`` is recorded as
ended at ``kill_at``: the watchdog helper (process/watchdog.py) kills a real
child then even when the supervisor's loop is starved. ``exit_after(spec)`` lets a run end on its own (a cron run, a
job): seconds after its start, or None to run until stopped. Every start and
end is passed to ``record(event)``: a :class:`RunEvent` with a monotonic time
(``time.monotonic`` is one clock for every process of the machine), so the
starts and stops of many members can be merged and checked for overlaps.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..process.child import ChildState
from ..process.manager import ProcessManager
from ..process.spawn import ChildSpec

__all__ = ["FakeChild", "FakeProcessLayer", "RunEvent"]

RECORDED_ENV = ("ROLE", "MEMBER_ID", "INDEX", "COUNT", "EPOCH", "SHARDS", "LEADER", "LEADER_TOKEN",
                "SCHEDULED_TIME")
_PIDS = itertools.count(1_000_000 + os.getpid() * 1000)  # never a real pid of this machine's tests
_PIDS_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunEvent:
    """One start or end of a fake run (``event``: ``start`` or ``stop``)."""

    event: str
    t: float            # time.monotonic()
    pid: int
    member: str
    name: str           # the child's name (worker[3], api, report@T)
    env: dict[str, str]  # the variables of RECORDED_ENV it has (ROLE, INDEX, COUNT, SHARDS...)
    code: int | None = None


def _next_pid() -> int:
    with _PIDS_LOCK:
        return next(_PIDS)


class FakeChild:
    """One run that is only a record; keeps ``process.layer.Child``."""

    def __init__(self, spec: ChildSpec, member: str, record: Callable[[RunEvent], None], *,
                 stop_delay: float = 0.005, exit_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.spec = spec
        self.tag = os.urandom(8).hex()
        self.state = ChildState.STARTING
        self.pid: int | None = None
        self.pgid: int | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.stop_requested = False
        self._member, self._record, self._clock = member, record, clock
        self._stop_delay, self._exit_after = stop_delay, exit_after
        self._ends_at: float | None = None  # when the run is over (stop, kill, own exit)
        self._end_code: int | None = None
        self._lease: tuple[float | None, float | None] = (None, None)

    def _emit(self, event: str, code: int | None = None, at: float | None = None) -> None:
        assert self.pid is not None
        env = self.spec.environ()  # the typed vars (ROLE, INDEX, COUNT...) rendered over env
        self._record(RunEvent(event, self._clock() if at is None else at, self.pid, self._member, self.spec.name,
                              {k: env[k] for k in RECORDED_ENV if k in env}, code))

    def start(self, now: float | None = None) -> int:
        if self.state is not ChildState.STARTING:
            raise RuntimeError(f"{self.spec.name}: start() in state {self.state.name}")
        self.pid = self.pgid = _next_pid()
        self.started_at = self._clock() if now is None else now
        self.state = ChildState.RUNNING
        if self._exit_after is not None:
            self._ends_at, self._end_code = self.started_at + self._exit_after, 0
        self._emit("start")
        return self.pid

    def stop(self, now: float) -> None:
        if self.state is not ChildState.RUNNING:
            return
        self.stop_requested = True
        self.state = ChildState.STOPPING
        end = now + min(self._stop_delay, self.spec.stop_timeout)
        if self._ends_at is None or end < self._ends_at:
            self._ends_at, self._end_code = end, 0

    def send_signal(self, signum: int) -> bool:
        return self.state is ChildState.RUNNING

    def kill(self, at: float | None = None) -> None:
        if not self.alive:
            return
        self.stop_requested = True
        self.state = ChildState.KILLED
        self._ends_at, self._end_code = self._clock(), -signal.SIGKILL
        self._finish(at)  # a killed run is gone at once: record it now

    def _finish(self, at: float | None = None) -> None:
        if self.returncode is None and self.state is not ChildState.EXITED:
            self.returncode = self._end_code
            self.state = ChildState.EXITED
            self._emit("stop", self.returncode, at)

    def poll(self, now: float) -> int | None:
        if self.state is ChildState.EXITED:
            return self.returncode
        if self.state is ChildState.STARTING:
            return None
        term_at, kill_at = self._lease
        if kill_at is not None and now >= kill_at:
            # the watchdog helper kills a real child at its lease's kill_at even when
            # the loop is late (starved): the run ended then, not when we looked
            self.kill(at=kill_at)
        elif self.state is ChildState.RUNNING and term_at is not None and now >= term_at:
            self.stop(now)
        if self._ends_at is not None and now >= self._ends_at:
            self._finish()
        state: ChildState = self.state  # read again: kill() and _finish() change it
        return self.returncode if state is ChildState.EXITED else None

    def set_lease_deadlines(self, term_at: float | None, kill_at: float | None, *,
                            sync_watchdog: bool = True) -> None:
        if self.spec.lease_bound:
            self._lease = (term_at, kill_at)

    def guard_deadlines(self) -> tuple[float | None, float | None]:
        return self._lease

    def next_deadline(self) -> float | None:
        if not self.alive:
            return None
        present = [d for d in (self._ends_at, *self._lease) if d is not None]
        if self.state is not ChildState.RUNNING:
            present = [d for d in (self._ends_at, self._lease[1]) if d is not None]
        return min(present) if present else None

    @property
    def alive(self) -> bool:
        return self.state in (ChildState.RUNNING, ChildState.STOPPING, ChildState.KILLED)

    def __repr__(self) -> str:
        return f"<FakeChild {self.spec.name} pid={self.pid} {self.state.name}>"


class FakeProcessLayer:
    """Makes process managers of fake runs for one member each.

    ``record(event)`` is called (on the member's loop thread) for every start
    and end; ``stop_delay``: how long a stopped run takes to go;
    ``exit_after(spec)``: seconds after which a run ends by itself (None: never)."""

    def __init__(self, record: Callable[[RunEvent], None], *, stop_delay: float = 0.005,
                 exit_after: Callable[[ChildSpec], float | None] | None = None):
        self.record = record
        self.stop_delay = stop_delay
        self.exit_after = exit_after or (lambda _spec: None)

    def child_factory(self, member: str) -> Callable[[ChildSpec], FakeChild]:
        def make(spec: ChildSpec) -> FakeChild:
            return FakeChild(spec, member, self.record, stop_delay=self.stop_delay,
                             exit_after=self.exit_after(spec))
        return make

    def manager(self, member: str) -> Callable[[], ProcessManager]:
        """The ``Supervisor(process_layer=...)`` argument for ``member``."""
        def make() -> ProcessManager:
            return ProcessManager(capture_output=False, use_watchdog=False, reap_orphans=False,
                                  subreaper=False, cgroups=False, child_factory=self.child_factory(member))
        return make
