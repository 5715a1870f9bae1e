"""The decision loop of a joined member.

Edge threads (lease keepalive, watches, campaign threads) and signal handlers
only put immutable events on the inbox; this loop is the only code that
changes state. Each turn it takes the pending events, lets every role runner
update itself, asks each for the children it wants now, reconciles the
process slots and carries out the actions, one log line per decision.

:class:`Loop` receives every part already made and wired (:class:`~.build.Parts`,
from :mod:`.build`) and owns the turn: dispatch, reconcile, the member record,
reloads, signals, and the shutdown. On SIGTERM/SIGINT: stop every child (each
with its own stop_timeout, in parallel; roles with ``needs`` first), then
leave/resign and revoke the lease so others react at once, then exit 0. A
second SIGTERM/SIGINT kills the children at once.
"""

from __future__ import annotations

import functools
import logging
import queue
import signal
from collections.abc import Callable
from typing import Any

from ..coord.session import SessionEvent, SessionEventKind
from ..events import Effect, EffectDone, RoleEvent, SessionChanged, Signalled, Wake
from ..process.slot import SlotEvent
from ..roles.base import RoleRunner, describe
from .barriers import BarrierFact
from .build import Parts, close_parts, make_rollouts
from .control import ControlChanged
from .member_status import roles_status, waits
from .reload import ReloadPlan, Reloads
from .rollout_watch import MembersChanged, RolloutsChanged
from .rollouts import ROLLOUT_LANE, Rollouts
from .runners import StartupError, build_runners
from .upgrade import Upgrader
from .waitlog import WaitLog
from .wiring import WIRING_LANE

log = logging.getLogger("etcdvisor")

IDLE_WAKEUP = 30.0  # the loop sleeps at most this long with nothing to do
# a deadline that stays in the past turns the loop without pause (a bug, but one that
# starves a loaded machine's keepalives): after this many turns in a row with no news and
# a deadline already passed, each turn waits SPIN_PAUSE first, and one warning says so
SPIN_TURNS = 200
SPIN_PAUSE = 0.01
SUPERVISOR_LANE = "(supervisor)"  # effect lane of the member's own I/O (record, reload)


class Loop:
    def __init__(self, parts: Parts):
        self.config = parts.config  # replaced by a reload
        self.environ = parts.environ
        self.clock = parts.clock
        self.inbox = parts.inbox
        self.keys = parts.keys
        self.effects = parts.effects
        self.ops = parts.ops
        self.child_health = parts.child_health
        self.readiness = parts.child_health.readiness
        self.store_health = parts.store_health
        self.backend = parts.backend
        self.session = parts.session
        self.record = parts.record
        self.manager = parts.manager
        self.reconciler = parts.reconciler
        self.roster = parts.roster
        self.ctx = parts.ctx
        self.wiring = parts.wiring
        self.rollouts = parts.rollouts
        self.gate = parts.gate  # rebuilt by a reload
        self.rollout_watch = parts.rollout_watch
        self.file_watcher = parts.file_watcher
        self.embedded = parts.embedded
        self.resume = parts.resume
        self.password = parts.password
        self.upgrades = parts.record.upgrades  # in-place upgrades of this member since it joined
        # the loop's own handlers on the parts
        self.reconciler.observer = self._on_slot_event
        self.ops.attach(self)
        self.stopping = False
        self.escalated = False
        self.crashed = False  # crash(): leave as a killed supervisor would
        self._empty_turns = 0  # turns in a row woken by a passed deadline, with no event
        self._spin_warned = False
        self.exit_status = 0  # 3: a role with on_failed: exit went FAILED
        self.wait_log = WaitLog()  # waits over a second: one line when they begin, one when they end
        self.upgrader = Upgrader(self)  # in-place upgrade, the old image's side (runtime/upgrade.py)
        self._record_retry: float | None = None
        self.reloads = Reloads(lambda: (self.config, self.environ), self.effect, self._apply_reload,
                               lambda: self.stopping)
        self.last_status: dict[str, Any] = {}

    @property
    def runners(self) -> dict[str, RoleRunner]:
        return self.roster.runners

    @property
    def last_upgrade(self) -> dict[str, Any] | None:
        """The figures of the in-place upgrade that made this process (None: none)."""
        return self.resume.figures if self.resume is not None else None

    def request_upgrade(self, why: str) -> None:
        self.upgrader.request(why)

    def run(self) -> int:
        """Turn until a stop, stop the children, leave; the exit status."""
        try:
            while not self.stopping and not self.crashed:
                self._turn()
            if self.crashed:
                return self._abandon()
            return self.shutdown()
        except BaseException:
            self._emergency_stop()
            raise

    def attach_rollouts(self) -> Rollouts:
        """A fresh rolling-restart controller (tests: after changing the config)."""
        self.rollouts = make_rollouts(self.config, self.backend, self.keys, self.session, self.reconciler,
                                      self.wiring, self.child_health, self.effects, self.clock)
        return self.rollouts

    def _on_slot_event(self, role: str, event: SlotEvent) -> None:
        self.ops.on_slot_event(role, event)
        self.rollouts.observe(role, event)

    def crash(self) -> None:
        """(Any thread) end ``run`` as SIGKILL would: children killed at once, no
        record or lease cleanup: the lease stays until it expires, so the others
        see the member go only then. For the fleet simulator and tests."""
        self.crashed = True
        self.inbox.put(Wake("crash"))

    def _abandon(self) -> int:
        self._kill_children()  # no tick after: the slots would start them again
        self.close(revoke=False)
        return 137

    def _turn(self) -> None:
        now = self.clock()
        deadline = self._next_deadline()
        timeout = IDLE_WAKEUP if deadline is None else min(IDLE_WAKEUP, max(0.0, deadline - now))
        passed = timeout <= 0
        if passed and self._empty_turns >= SPIN_TURNS:
            timeout = SPIN_PAUSE
            if not self._spin_warned:
                self._spin_warned = True
                log.warning("the supervisor loop was woken %d times in a row by deadlines already passed, "
                            "with nothing new (a bug: please report it); pausing %gs between such turns",
                            SPIN_TURNS, SPIN_PAUSE)
        events = []
        try:
            events.append(self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait())
        except queue.Empty:
            pass
        self._empty_turns = self._empty_turns + 1 if passed and not events else 0
        while True:
            try:
                events.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for event in events:
            self.dispatch(event)
        self._reconcile(self.clock())
        if not self.stopping and self.child_health.failed_exit(self.config, self.last_status):
            self.stopping, self.exit_status = True, 3
        self.roster.flush_effects()
        self._tick_store_health(self.clock())
        after = self.clock()
        unready = self.readiness.unready_checked(after)
        if unready:  # named as everywhere else (worker[0], api), not by slot key path
            names = {slot.name: slot.child_name for _r, _k, slot in self.reconciler.children()}
            unready = [names.get(name, name) for name in unready]
        self.ops.health.unready = tuple(unready)
        deadline = self._next_deadline()
        self.ops.end_turn(after, IDLE_WAKEUP if deadline is None else min(IDLE_WAKEUP, max(0.0, deadline - after)),
                          self.last_status)
        if self.resume is not None:
            self.resume.after_turn(after, self.runners, self.readiness, self.session)
        self.upgrader.tick()  # re-executes here when an upgrade is checked and the member quiet

    def _next_deadline(self) -> float | None:
        deadlines = [self.reconciler.next_deadline(), self._record_retry, self.roster.next_deadline(),
                     self.store_health.next_deadline(), self.wait_log.next_deadline(),
                     self.wiring.next_deadline(), self.child_health.next_deadline(), self.rollouts.next_deadline(),
                     self.upgrader.next_deadline(), self.resume.next_deadline() if self.resume is not None else None]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def dispatch(self, event: object) -> None:
        if isinstance(event, Signalled):
            self._on_signal(event.signum)
        elif isinstance(event, SessionChanged):
            self._on_session(event.event)
        elif isinstance(event, BarrierFact):
            self.gate.update(event)
            if event.denied is not None:
                for role in self.gate.waiting(event.name):
                    self.roster.fail_role(role, f"barrier {event.name}", event.denied)
        elif isinstance(event, ControlChanged):
            self.ops.on_control(event)
        elif isinstance(event, (RolloutsChanged, MembersChanged)):
            self.rollouts.handle(event)
        elif self.child_health.handles(event):
            pass
        elif self.wiring.owns(event):
            self.wiring.handle(event)
        elif isinstance(event, RoleEvent):
            if event.role in (SUPERVISOR_LANE, WIRING_LANE, ROLLOUT_LANE):
                self._supervisor_effect_done(event.payload)
            else:
                self.roster.deliver(event)

    def effect(self, what: str, call: Callable[[], Any],
               done: Callable[[Any, BaseException | None], None] | None = None) -> None:
        """The member's own I/O (its record, reload checks), off the loop."""
        self.effects.submit(Effect(SUPERVISOR_LANE, 0, what, call, done))

    def _supervisor_effect_done(self, outcome: EffectDone) -> None:
        if outcome.effect.done is not None:
            outcome.effect.done(outcome.result, outcome.error)
        elif outcome.error is not None:
            log.warning("%s failed: %s", outcome.effect.what, describe(outcome.error))

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if not self.stopping:
                self.reloads.request()
            return
        if signum == signal.SIGUSR2:
            self.upgrader.request("SIGUSR2")
            return
        if not self.stopping:
            log.info("received %s: stopping children, then leaving the cluster", name)
            self.stopping = True
        elif not self.escalated:
            log.warning("received %s again: killing children now", name)
            self.escalated = True
            self._kill_children()

    def _tick_store_health(self, now: float) -> None:
        session = self.session
        self.store_health.tick(now, session.expiry_bound() - now if session.alive else None)

    def _on_session(self, event: SessionEvent) -> None:
        self.ops.on_session(event)
        self.store_health.on_session(event, self.clock())
        if event.kind is SessionEventKind.KEEPALIVE:
            self.reconciler.lease_confirmed(event.last_alive_sent, event.ttl)
        elif event.kind in (SessionEventKind.EXPIRED, SessionEventKind.LOST):
            log.warning("lease %x %s: stopping lease-bound children", event.lease_id, event.kind.value)
        elif event.kind is SessionEventKind.NEW_LEASE:
            log.info("new lease %x: rejoining the cluster", event.lease_id)
            self.reconciler.lease_confirmed(event.last_alive_sent, event.ttl)
            roles = self._roles_status()
            self.effect("re-register the member", lambda: self.record.register(event.lease_id, roles))
            self.wiring.on_new_lease()
        self.roster.on_session(event)

    def _on_session_while_stopping(self, event: SessionEvent) -> None:
        """Keepalives still confirm the lease while children stop: without them the
        lease deadlines would run from the last confirmation before shutdown and
        stop (and warn about) children whose lease is fine."""
        self.ops.on_session(event)
        if event.kind is SessionEventKind.KEEPALIVE:
            self.reconciler.lease_confirmed(event.last_alive_sent, event.ttl)
        elif event.kind in (SessionEventKind.EXPIRED, SessionEventKind.LOST):
            log.warning("lease %x %s while stopping: killing lease-bound children by their deadlines",
                        event.lease_id, event.kind.value)

    # --- reload (checked off the loop: runtime/reload.py) -----------------------------------
    def _apply_reload(self, plan: ReloadPlan) -> None:
        try:
            fresh = build_runners(plan.config, self.ctx, plan.start)
        except StartupError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.config = self.ctx.config = plan.config
        self.wiring.reconfigure(plan.config)
        self.rollouts.config = plan.config
        self.roster.retire(plan.retire)
        self.roster.queue(fresh)
        self.gate = self.gate.rebuild(self.config)

    # --- reconcile ---------------------------------------------------------------
    def _reconcile(self, now: float) -> None:
        lease_ok = self.session.alive
        self.child_health.needs_wake = None
        self.roster.settle()
        wiring = self.wiring
        wiring.before_reconcile(now)
        for _ in range(2):  # once more when children exited: a run may free room for another
            for runner in self.roster.all():
                allowed = runner in self.runners.values() and self.gate.allows(runner.name)
                if allowed and self.ops.paused(runner.name):
                    # a cron leader records due ticks 'paused'
                    self.roster.call(runner, "while_paused", functools.partial(runner.while_paused, now))
                    allowed = False
                desired = self.roster.desired(runner, now) if allowed else {}
                desired = self.child_health.gate(runner, desired, self.reconciler, self.runners,
                                                 self.config.member.id, now)
                if not lease_ok:
                    desired = {k: spec for k, spec in desired.items() if not spec.lease_bound}
                self.roster.apply(runner, wiring.gate(runner, desired))
            events = self.reconciler.tick(now)
            wiring.after_tick(events)
            if not events:
                break
            now = self.clock()
        self.child_health.after_reconcile(self.reconciler.children(), now)
        self.rollouts.tick(now)
        self.last_status = self._roles_status(now)
        self._log_waits(now)
        self._update_record(now if lease_ok else None)

    def _log_waits(self, now: float) -> None:
        self.wait_log.update(waits(self.roster, self.gate, self.ops.paused, now), now)

    def _update_record(self, now: float | None) -> None:
        """Rewrite the member record when the roles' status changed (rate-
        limited, off the loop); never while the store is known unreachable."""
        if now is None:
            self._record_retry = None
            return
        roles = self.last_status
        urgent = self.rollouts.record_wanted
        body, self._record_retry = self.record.plan_update(roles, now, urgent=urgent,
                                                           ready_by=self.readiness.ready_by)
        if body is not None:
            self.effect("update the member record", lambda: self.record.write(body),
                         lambda _r, error: self.record.written(roles, error is None))

    def _roles_status(self, now: float | None = None) -> dict[str, Any]:
        return roles_status(self.roster, self.gate, self.ops.paused, self.wiring, self.rollouts,
                            self.reconciler.children(), self.readiness, self.clock() if now is None else now)

    # --- readiness -------------------------------------------------------------------
    def child_ready_since(self, role: str, key: str) -> float | None:
        """Since when (monotonic) the child in slot ``key`` of ``role`` has been
        ready on this member, or None when it is not ready (not running, stopping,
        not started, probes failing). For rollouts: a replacement is done once
        ``now - child_ready_since(role, key) >= min_ready``."""
        return self.readiness.ready_since(f"{role}/{key}", self.clock())

    def child_ready(self, role: str, key: str) -> bool:
        """True while the child in slot ``key`` of ``role`` is ready (see
        :meth:`child_ready_since`)."""
        return self.child_ready_since(role, key) is not None

    # --- shutdown ------------------------------------------------------------
    def shutdown(self) -> int:
        """Stop every child (roles with ``needs`` before the roles they need), then leave."""
        runners = list(self.runners.values())
        waves = self.child_health.stop_waves(runners)
        for number, wave in enumerate(waves):
            if len(waves) > 1:
                log.info("stopping %s (%s)", ", ".join(sorted(wave)) or "nothing",
                         "dependents first" if number == 0 else "the roles that need them have stopped")
            for runner, _key, slot in self.reconciler.children():
                if runner.name in wave or (number == 0 and runner not in runners):
                    slot.set_desired(None)
            for runner in runners:
                if runner.name in wave:
                    self.roster.call(runner, "leaving", runner.leaving)
            self._wait_stopped(functools.partial(self._stopped, wave))
        self.manager.stop_all(self.clock())  # whatever is left (probes, a retiring runner)
        self._wait_stopped(self.manager.all_stopped)
        log.info("all children stopped; leaving cluster %s", self.config.cluster)
        if not self.effects.drain(timeout=2 * self.config.etcd.timeout):
            log.warning("some writes to the store did not finish before leaving")
        self.roster.stop_all()
        self.close()
        return 1 if self.escalated else self.exit_status

    def _stopped(self, roles: set[str]) -> bool:
        return not any(slot.child is not None for runner, _k, slot in self.reconciler.children()
                       if runner.name in roles)

    def _wait_stopped(self, done: Callable[[], bool]) -> None:
        """Turn the process layer (not the roles) until ``done()``; signals and
        keepalives are still acted on (lease deadlines keep moving)."""
        self.roster.flush_effects()
        self.reconciler.tick(self.clock())
        while not done():
            deadline = self.reconciler.next_deadline()
            timeout = 0.5 if deadline is None else min(0.5, max(0.0, deadline - self.clock()))
            try:
                event = self.inbox.get(timeout=timeout)
                if isinstance(event, Signalled):
                    self._on_signal(event.signum)
                elif isinstance(event, SessionChanged):
                    self._on_session_while_stopping(event.event)
            except queue.Empty:
                pass
            self.reconciler.tick(self.clock())
            self.roster.flush_effects()  # e.g. a cron run's 'stopped' record
            self.ops.end_turn(self.clock(), 0.5, self.last_status)  # still alive while stopping

    def close(self, *, revoke: bool = True) -> None:
        """Stop every edge thread and leave; ``revoke=False`` leaves the lease to
        expire (``crash``)."""
        close_parts(self.ops, self.child_health, self.effects, rollout_watch=self.rollout_watch,
                    file_watcher=self.file_watcher, wiring=self.wiring, gate=self.gate, session=self.session,
                    manager=self.manager, backend=self.backend, embedded=self.embedded, revoke=revoke)

    def _emergency_stop(self) -> None:
        """An unexpected error in the loop: never leave children behind."""
        log.exception("supervisor loop crashed; killing children")
        self._kill_children()
        self.close()

    def _kill_children(self) -> None:
        """SIGKILL every child's group (and escaped descendants) now."""
        for _, _, slot in self.reconciler.children():
            if slot.child is not None:
                slot.child.kill()
