"""``Slot``: one desired child, kept running according to a restart policy.

States and transitions (``# A -> B`` in the code)::

    STOPPED  --desired spec, lease allows--> RUNNING          (Started)
    RUNNING  --exit, policy restarts-------> BACKOFF          (Exited, restart_at set)
    RUNNING  --exit, policy done-----------> EXITED           (Exited, restart_at None)
    RUNNING  --quick exit #start_retries+1-> FAILED           (Exited, Failed)
    RUNNING  --desired None / new spec / lease term--> STOPPING
    STOPPING --exit---------------------------> STOPPED       (Stopped); a new spec starts
    BACKOFF  --restart_at reached----------> RUNNING          (Started)
    STOPPED | BACKOFF --permanent SpawnError--> FAILED        (SpawnFailed, Failed)
    STOPPED | BACKOFF --transient SpawnError--> BACKOFF|FAILED (SpawnFailed[, Failed])
    BACKOFF | EXITED | FAILED --desired None--> STOPPED       (Stopped from BACKOFF)
    EXITED | FAILED --a different spec-------> STOPPED -> RUNNING

Guarantees:

- ``set_desired`` only records intent (no I/O); the next ``tick(now)`` acts on it and
  ``next_deadline()`` returns 0.0 ("due now") until then. Same spec = nothing happens;
  a different spec stops the running child (its own stop_timeout) and starts the new one
  with fresh failure counters; None stops.
- Restart policy: ``always`` restarts after any exit; ``on-failure`` after a non-zero
  exit; ``never`` (one-shot: cron run, job, topic message) reports completion as
  ``Exited(code)`` and stays EXITED.
- A run shorter than ``backoff.reset_after`` is a quick exit; consecutive quick exits
  grow the restart delay (``RestartBackoff``); a longer run resets it (restart at once).
  After ``start_retries`` restarts that all exited quickly (that is, start_retries + 1
  quick exits in a row) the slot becomes FAILED and emits ``Failed`` -- the caller gives
  up a lease-bound role. A command that cannot be executed fails at once (no crash loop).
- An exit we asked for (stop, kill, lease term) is ``Stopped``, never a failure,
  except after ``fail_child(now, reason, quick)`` (a failed health check): that exit
  counts like a crash (backoff, ``start_retries``, FAILED) and its ``Exited`` carries
  ``reason``; ``quick`` (the child never became healthy) makes it a quick exit whatever
  the uptime, so such a child ends FAILED like a crash loop; without ``quick`` (it had
  been healthy) the count resets and the child restarts at once.
- Restarts are counted by reason (``restarts_by_reason``): ``exit`` and the health
  reasons for automatic ones, ``restart_child``'s ``reason`` (``control`` by default)
  and, after ``note_restart_reason(reason)``, that reason when the next new spec replaces
  the running child (``config``); a requested restart's ``Started`` carries its reason.
  Other spec changes (a new assignment) are not counted as restarts.
- Lease-bound specs: ``set_lease_deadlines(term_at, kill_at)`` is passed to the child,
  which is stopped at ``term_at`` and killed at ``kill_at``; while ``term_at`` (or the
  earlier ``start_by``, when given) has passed no new lease-bound child is started (the
  slot waits for new deadlines). ``start_by`` keeps a slot from starting a child that the
  lease would stop again before the next keepalive could move its deadline: without it a
  link slower than the config tolerates makes children start and stop every second.
- Events are returned by ``tick`` and, if ``on_event`` was given, also passed to it in
  the same order. ``tick`` never blocks.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etcdvisor.process.backoff import RestartBackoff
from etcdvisor.process.child import ChildProcess, ChildState
from etcdvisor.process.layer import Child, ChildFactory
from etcdvisor.process.spawn import ChildSpec, SpawnError
from etcdvisor.process.states import Transitions

if TYPE_CHECKING:
    from etcdvisor.process.output import OutputPump
    from etcdvisor.process.tracking import TreeTracker
    from etcdvisor.process.watchdog import Watchdog


class RestartPolicy(str, enum.Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class SlotState(enum.Enum):
    STOPPED = "stopped"    # no child, and none running for the current desire yet
    RUNNING = "running"    # a child is alive and wanted
    STOPPING = "stopping"  # a child is alive and being stopped (desire changed / lease)
    BACKOFF = "backoff"    # waiting for restart_at
    EXITED = "exited"      # the policy says the run is complete (one-shot done)
    FAILED = "failed"      # crash loop or unexecutable command; needs a new desire


SLOT_STATES = Transitions("slot", {
    SlotState.STOPPED: (SlotState.RUNNING, SlotState.BACKOFF, SlotState.FAILED),  # started, spawn failed
    # stop requested (desire, lease, restart, health check); the child exited: stopped
    # as asked, complete, crash loop, restart later
    SlotState.RUNNING: (SlotState.STOPPING, SlotState.STOPPED, SlotState.EXITED, SlotState.FAILED,
                        SlotState.BACKOFF),
    SlotState.STOPPING: (SlotState.STOPPED, SlotState.EXITED, SlotState.FAILED, SlotState.BACKOFF),
    SlotState.BACKOFF: (SlotState.RUNNING, SlotState.FAILED, SlotState.STOPPED),
    SlotState.EXITED: (SlotState.STOPPED,),  # a new desire (or none)
    SlotState.FAILED: (SlotState.STOPPED,),
})


@dataclass(frozen=True)
class SlotEvent:
    slot: str


@dataclass(frozen=True)
class Started(SlotEvent):
    pid: int
    reason: str | None = None     # a requested restart: control, config, rollout...


@dataclass(frozen=True)
class Exited(SlotEvent):
    code: int                     # exit status; negative = killed by that signal (always known)
    uptime: float
    restart_at: float | None      # when the slot will restart it, None = it will not
    reason: str = "exit"          # exit, or the failed check (liveness, startup, watchdog, memory)


@dataclass(frozen=True)
class Stopped(SlotEvent):
    code: int | None              # None when there was no child to stop


@dataclass(frozen=True)
class Failed(SlotEvent):
    reason: str


@dataclass(frozen=True)
class SpawnFailed(SlotEvent):
    message: str


class Slot:
    """One desired child with a restart policy. Drive it with ``tick(now)``."""

    def __init__(self, spec: ChildSpec | None, restart: RestartPolicy | str = RestartPolicy.ALWAYS,
                 backoff: RestartBackoff | None = None, start_retries: int = 3,
                 on_event: Callable[[SlotEvent], None] | None = None, *,
                 name: str | None = None, output: OutputPump | None = None,
                 watchdog: Watchdog | None = None, tracker: TreeTracker | None = None,
                 rand: Callable[[], float] = random.random, child_factory: ChildFactory | None = None):
        """``child_factory(spec)`` makes each run (default: a real ``ChildProcess``
        with ``output``, ``watchdog`` and ``tracker``; see ``process/layer.py``)."""
        if spec is None and name is None:
            raise ValueError("Slot needs a spec or a name")
        self.name = name if name is not None else spec.name  # type: ignore[union-attr]
        self.restart = RestartPolicy(restart)
        self.backoff = backoff if backoff is not None else RestartBackoff()
        self.start_retries = start_retries
        self.state = SlotState.STOPPED
        self.restarts = 0                 # automatic restarts after unrequested exits
        self.restarts_by_reason: dict[str, int] = {}  # every restart, automatic or requested
        self._restart_reason: str | None = None  # a requested restart in progress
        self._spec_change_reason: str | None = None  # why the next new spec will come (config)
        self._health_failure: tuple[str, bool] | None = None  # (reason, quick) of fail_child
        self.last_exit: int | None = None
        self.restart_at: float | None = None
        self._on_event = on_event
        self._output, self._watchdog, self._rand = output, watchdog, rand
        self._tracker = tracker
        self._child_factory = child_factory
        self._desired = spec
        self._spec: ChildSpec | None = None   # spec of the current / last child
        self._child: Child | None = None
        self._failures = 0                    # consecutive quick exits
        self._lease: tuple[float | None, float | None] = (None, None)
        self._lease_blocked = False   # a start is held back until new lease deadlines
        self._start_by: float | None = None  # no lease-bound start at or after this
        self._dirty = True

    def _set_state(self, new: SlotState) -> None:
        self.state = SLOT_STATES.change(self.name, self.state, new)

    # -- inputs ------------------------------------------------------------------

    def set_desired(self, spec: ChildSpec | None) -> None:
        """Record what should run (None = nothing). Acted on by the next ``tick``."""
        if spec == self._desired:
            return
        self._desired = spec
        if spec is None and self._child is None:
            # Forget the last spec so that asking for it again (even before the next
            # tick) is a fresh start, e.g. re-running a completed one-shot.
            self._spec = None
        self._dirty = True

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to the running child's group (not a stop: the state is
        unchanged); False when no child is RUNNING."""
        return self.state is SlotState.RUNNING and self._child is not None and self._child.send_signal(signum)

    def set_lease_deadlines(self, term_at: float | None, kill_at: float | None,
                            start_by: float | None = None) -> None:
        """Lease deadlines for lease-bound specs (see ``ChildProcess.set_lease_deadlines``);
        ``start_by``: the latest time a lease-bound child may start (default ``term_at``)."""
        self._lease = (term_at, kill_at)
        self._start_by = start_by
        self._lease_blocked = False
        if self._child is not None:
            self._child.set_lease_deadlines(term_at, kill_at, sync_watchdog=False)
        self._dirty = True

    def restart_child(self, now: float, reason: str = "control") -> bool:
        """Stop the running child (its stop signal, then SIGKILL after stop_timeout);
        it starts again with the same desired spec once gone, like after any
        requested stop; its ``Started`` carries ``reason`` (control, config,
        rollout). False when no child runs."""
        if self._child is None or self._child.state is not ChildState.RUNNING:
            return False
        self._set_state(SlotState.STOPPING)  # RUNNING -> STOPPING (restart requested)
        self._restart_reason = reason
        self._child.stop(now)
        self._dirty = True
        return True

    def note_restart_reason(self, reason: str) -> None:
        """The next new spec replaces the running child for ``reason`` (``config``:
        a config item changed); other spec changes (a new INDEX) are not restarts."""
        self._spec_change_reason = reason
        self._dirty = True

    def fail_child(self, now: float, reason: str, quick: bool) -> bool:
        """A health check failed (``reason``: liveness, startup, watchdog, memory):
        stop the child like ``restart_child``, but count its exit as a crash
        (backoff, ``start_retries``); ``quick``: whatever its uptime. False when
        no child runs."""
        if self._child is None or self._child.state is not ChildState.RUNNING:
            return False
        self._set_state(SlotState.STOPPING)  # RUNNING -> STOPPING (health check failed)
        self._health_failure = (reason, quick)
        self._child.stop(now)
        self._dirty = True
        return True

    # -- outputs -----------------------------------------------------------------

    @property
    def child(self) -> Child | None:
        return self._child

    @property
    def desired(self) -> ChildSpec | None:
        return self._desired

    @property
    def idle(self) -> bool:
        """No child alive and nothing pending: safe to drop the slot."""
        return self._child is None and self.state in (
            SlotState.STOPPED, SlotState.EXITED, SlotState.FAILED)

    def next_deadline(self) -> float | None:
        """Latest time for the next ``tick``; 0.0 = now. Child exits come via SIGCHLD."""
        if self._dirty:
            return 0.0
        deadlines = []
        if self._child is not None:
            deadlines.append(self._child.next_deadline())
        if self.state is SlotState.BACKOFF and not self._lease_blocked:
            deadlines.append(self.restart_at)
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    # -- the tick ----------------------------------------------------------------

    def tick(self, now: float) -> list[SlotEvent]:
        """Reap, apply deadlines and desires, (re)start; return the events that happened."""
        self._dirty = False
        events: list[SlotEvent] = []
        if self._child is not None:
            code = self._child.poll(now)
            if code is not None:
                self._child_exited(now, code, events)
        self._reconcile(now, events)
        if self._on_event is not None:
            for event in events:
                self._on_event(event)
        return events

    def _child_exited(self, now: float, code: int, events: list[SlotEvent]) -> None:
        child, self._child = self._child, None
        assert child is not None and child.started_at is not None
        self.last_exit = code
        health, self._health_failure = self._health_failure, None
        if child.stop_requested and health is None:
            self._set_state(SlotState.STOPPED)  # STOPPING -> STOPPED
            events.append(Stopped(self.name, code))
            return
        self._restart_reason = None
        uptime = now - child.started_at
        reason = health[0] if health is not None else "exit"
        if self.restart is RestartPolicy.NEVER or (
                health is None and self.restart is RestartPolicy.ON_FAILURE and code == 0):
            self._set_state(SlotState.EXITED)  # RUNNING | STOPPING -> EXITED
            events.append(Exited(self.name, code, uptime, None, reason))
            return
        if health is None:
            self._failures = self.backoff.next_failures(self._failures, uptime)
        else:  # never healthy: a quick exit whatever the uptime; healthy before: restart at once
            self._failures = self._failures + 1 if health[1] else 0
        if self._failures > self.start_retries:
            self._set_state(SlotState.FAILED)  # RUNNING | STOPPING -> FAILED
            events.append(Exited(self.name, code, uptime, None, reason))
            what = "exited" if health is None else f"failed its {reason} check"
            events.append(Failed(self.name, (
                f"{self.child_name}: {what} {self._failures} times in a row within "
                f"{self.backoff.reset_after:g}s of starting (last exit code {code})")))
            return
        self.restart_at = now + self.backoff.delay(self._failures, self._rand)
        self._set_state(SlotState.BACKOFF)  # RUNNING | STOPPING -> BACKOFF
        self._restart_reason = reason
        events.append(Exited(self.name, code, uptime, self.restart_at, reason))

    def _reconcile(self, now: float, events: list[SlotEvent]) -> None:
        desired = self._desired
        if self._child is not None:
            if desired != self._spec and self._child.state is ChildState.RUNNING:
                self._set_state(SlotState.STOPPING)  # RUNNING -> STOPPING
                self._restart_reason = self._spec_change_reason if desired is not None else None
                self._spec_change_reason = None
                self._child.stop(now)
            elif self._child.stop_requested:
                self._set_state(SlotState.STOPPING)  # RUNNING -> STOPPING (lease term)
            return
        if desired is None:
            self._restart_reason = None
            if self.state is SlotState.BACKOFF:
                events.append(Stopped(self.name, None))
            self._set_state(SlotState.STOPPED)  # BACKOFF | EXITED | FAILED -> STOPPED
            self._failures, self.restart_at = 0, None
            return
        if desired != self._spec:
            self._spec_change_reason = None
            self._spec, self._failures, self.restart_at = desired, 0, None
            self._set_state(SlotState.STOPPED)  # EXITED | FAILED | BACKOFF -> STOPPED (new spec)
        if self.state in (SlotState.EXITED, SlotState.FAILED):
            return
        if self.state is SlotState.BACKOFF and self.restart_at is not None \
                and now < self.restart_at:
            return
        if not self._lease_allows_start(now):
            self._lease_blocked = True
            return
        self._start(now, events)

    def _lease_allows_start(self, now: float) -> bool:
        limit = self._lease[0] if self._start_by is None else self._start_by
        assert self._spec is not None
        return not (self._spec.lease_bound and limit is not None and now >= limit)

    def _start(self, now: float, events: list[SlotEvent]) -> None:
        assert self._spec is not None  # _reconcile only starts a desired spec
        child: Child
        if self._child_factory is not None:
            child = self._child_factory(self._spec)
        else:
            child = ChildProcess(self._spec, output=self._output, watchdog=self._watchdog,
                                 tracker=self._tracker)
        child.set_lease_deadlines(*self._lease, sync_watchdog=False)
        restarting = self.state is SlotState.BACKOFF
        try:
            pid = child.start(now)
        except SpawnError as exc:
            self._spawn_failed(now, exc, events)
            return
        if restarting:
            self.restarts += 1
        reason, self._restart_reason = self._restart_reason, None
        if reason is not None:
            self.restarts_by_reason[reason] = self.restarts_by_reason.get(reason, 0) + 1
        self._child, self.restart_at = child, None
        self._set_state(SlotState.RUNNING)  # STOPPED | BACKOFF -> RUNNING
        events.append(Started(self.name, pid, None if restarting else reason))

    def _spawn_failed(self, now: float, exc: SpawnError, events: list[SlotEvent]) -> None:
        events.append(SpawnFailed(self.name, str(exc)))
        self._failures += 1
        if exc.permanent or self._failures > self.start_retries:
            self._set_state(SlotState.FAILED)  # STOPPED | BACKOFF -> FAILED
            events.append(Failed(self.name, str(exc)))
            return
        self.restart_at = now + self.backoff.delay(self._failures, self._rand)
        self._set_state(SlotState.BACKOFF)  # STOPPED -> BACKOFF (transient spawn error)

    @property
    def child_name(self) -> str:
        """The child's one name (``worker[0]``, ``api``, ``report@T``, ``thumbs#7``: its spec's
        name), also after it is gone; the slot's own key path before any spec."""
        spec = self._spec if self._spec is not None else self._desired
        return spec.name if spec is not None else self.name

    def __repr__(self) -> str:
        return f"<Slot {self.name} {self.state.name} restarts={self.restarts}>"
