"""The member's role runners, and the fence that keeps one role's fault in it.

Every call from the decision loop into a runner goes through :class:`Roster`.
A runner that raises (a bug, a value its code did not expect) does not take
the loop down: its role is marked failed with a one-line reason (in the log
and in ``status``), its children are stopped like any lease-bound child,
and once they are gone its coordination is given up (leave/resign) so the
other members take over. Every other role keeps running.

Runner lifecycle as the roster sees it (``Phase``)::

    STARTING -> ACTIVE            start() ran (an effect after a reload)
    ACTIVE -> BROKEN              a call raised: children stopped, then stop()
    ACTIVE|BROKEN -> RETIRING     a reload removed or changed the role
    RETIRING -> (gone)            its children are gone: stop() as an effect

A reload's new runners wait (``pending``) until the runner they replace is
gone, so two generations of one role never run children at once.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from ..coord.errors import PermissionDenied
from ..coord.session import SessionEvent
from ..events import Effect, EffectDone, RoleEvent
from ..process.slot import SlotEvent
from ..process.spawn import ChildSpec
from ..roles.base import RoleRunner, describe
from .reconcile import Reconciler

log = logging.getLogger("etcdvisor")

T = TypeVar("T")


class Phase(enum.Enum):
    STARTING = "starting"
    ACTIVE = "active"
    BROKEN = "broken"
    RETIRING = "retiring"


class Roster:
    def __init__(self, reconciler: Reconciler, submit: Callable[[Effect], None]):
        self.reconciler = reconciler
        self.submit = submit
        self.runners: dict[str, RoleRunner] = {}
        self.phase: dict[int, Phase] = {}  # by runner serial
        self.retiring: list[RoleRunner] = []
        self.pending: list[RoleRunner] = []  # to start once their predecessor is gone
        self._stopped: set[int] = set()  # serials whose stop() was queued
        self._cause: dict[str, str] = {}  # role name -> why it is being replaced ("reload", "reset")
        reconciler.fault = self.fail

    # --- membership of the roster ---------------------------------------------
    def add_started(self, runner: RoleRunner) -> None:
        """A runner whose start() already ran (member start-up)."""
        self.runners[runner.name] = runner
        self.phase[runner.serial] = Phase.ACTIVE

    def retire(self, names: Iterable[str], cause: str = "reload") -> None:
        """Stop ``names``' runners once their children are gone; ``cause`` (``reload``,
        ``reset``) only words the log lines of the retirement and of the fresh start."""
        for name in names:
            runner = self.runners.pop(name, None)
            self._cause[name] = cause
            if runner is not None:
                self.phase[runner.serial] = Phase.RETIRING
                self.retiring.append(runner)

    def queue(self, runners: Iterable[RoleRunner]) -> None:
        self.pending.extend(runners)

    def busy(self) -> bool:
        return bool(self.retiring or self.pending)

    def all(self) -> list[RoleRunner]:
        return list(self.runners.values()) + self.retiring

    # --- guarded calls ----------------------------------------------------------
    def fail(self, runner: RoleRunner, what: str, error: BaseException) -> None:
        """``runner`` raised in ``what``: its role fails, nothing else does."""
        self.refuse(runner, f"{what} raised {describe(error)}", exc_info=log.isEnabledFor(logging.DEBUG))

    def refuse(self, runner: RoleRunner, reason: str, *, exc_info: bool = False) -> None:
        """``runner``'s role cannot work (``reason``: one line): it fails, nothing else does."""
        log.error("role %s: FAILED: %s; stopping its children, the member and other roles carry on",
                  runner.name, reason, exc_info=exc_info)
        runner.failed_reason = runner.failed_reason or reason
        if self.phase.get(runner.serial) in (Phase.ACTIVE, Phase.STARTING):
            self.phase[runner.serial] = Phase.BROKEN

    def fail_role(self, name: str, what: str, error: BaseException) -> None:
        """Role ``name``'s wiring cannot work (the store refused a key, a path escapes,
        a barrier is denied): it goes FAILED once, naming ``what``."""
        runner = self.runners.get(name)
        if runner is None or runner.failed_reason is not None:
            return
        hint = " (the grants each feature needs: docs/etcd-auth.md)" if isinstance(error, PermissionDenied) else ""
        text = " ".join(str(error).split()) or describe(error)  # our own errors: the message says it all
        self.refuse(runner, f"{what}: {text}{hint}")

    @overload
    def call(self, runner: RoleRunner, what: str, fn: Callable[[], T]) -> T | None: ...

    @overload
    def call(self, runner: RoleRunner, what: str, fn: Callable[[], T], default: T) -> T: ...

    def call(self, runner: RoleRunner, what: str, fn: Callable[[], T], default: T | None = None) -> T | None:
        """``fn()``, or ``default`` when it raised (the role then fails)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the fence: one role's fault stays in it
            self.fail(runner, what, exc)
            return default

    def deliver(self, event: RoleEvent) -> None:
        runner = self._owner(event)
        if runner is None:
            return
        if isinstance(event.payload, EffectDone) and event.payload.effect.what == _START:
            self._started(runner, event.payload.error)
            return
        if self.phase.get(runner.serial) is Phase.BROKEN and not isinstance(event.payload, EffectDone):
            return
        self.call(runner, "handle", lambda: runner.deliver(event.payload, event.at))

    def _owner(self, event: RoleEvent) -> RoleRunner | None:
        for runner in self.all():
            if runner.name == event.role and event.source in (0, runner.serial):
                return runner
        return None

    def desired(self, runner: RoleRunner, now: float) -> dict[str, ChildSpec]:
        if self.phase.get(runner.serial) is not Phase.ACTIVE:
            return {}
        none: dict[str, ChildSpec] = {}
        wanted = self.call(runner, "desired", lambda: runner.desired(now), none)
        return wanted if self.phase.get(runner.serial) is Phase.ACTIVE else {}

    def apply(self, runner: RoleRunner, desired: dict[str, ChildSpec]) -> None:
        try:
            self.reconciler.apply(runner, desired)
        except Exception as exc:  # noqa: BLE001 - a spec the process layer refused
            self.fail(runner, "reconcile", exc)
            self.reconciler.apply(runner, {})

    def next_deadline(self) -> float | None:
        found = [self.call(r, "next_deadline", r.next_deadline) for r in self.runners.values()
                 if self.phase.get(r.serial) is Phase.ACTIVE]
        present = [d for d in found if d is not None]
        return min(present) if present else None

    def status(self, runner: RoleRunner) -> dict[str, Any]:
        entry = self.call(runner, "status", runner.status)
        if entry is None:
            entry = {"type": runner.spec.type.value, "failed": runner.failed_reason}
        phase = self.phase.get(runner.serial)
        if phase is not Phase.ACTIVE and phase is not None:
            entry["phase"] = phase.value
        return entry

    def slot_event(self, runner: RoleRunner, key: str, event: SlotEvent, now: float) -> None:
        self.call(runner, "on_slot_event", lambda: runner.on_slot_event(key, event, now))

    def on_session(self, event: SessionEvent) -> None:
        for runner in list(self.runners.values()):
            self.call(runner, "on_session", functools.partial(runner.on_session, event))

    # --- effects and transitions -------------------------------------------------
    def flush_effects(self) -> None:
        for runner in self.all():
            for effect in runner.take_effects():
                self.submit(effect)

    def settle(self) -> None:
        """Retire drained runners and broken ones whose children are gone;
        start pending runners whose predecessor is gone."""
        for runner in list(self.retiring):
            self.reconciler.apply(runner, {})
            if not self.reconciler.slots_of(runner):
                self.retiring.remove(runner)
                self.phase.pop(runner.serial, None)
                self._stop(runner, "leave")
                cause = self._cause.get(runner.name, "reload")
                if cause == "reload":
                    log.info("role %s: retired after reload", runner.name)
                else:
                    log.info("role %s: the failed runner left (%s); a fresh one starts", runner.name, cause)
        for runner in list(self.runners.values()):
            if self.phase.get(runner.serial) is Phase.BROKEN and not self.reconciler.slots_of(runner):
                self.phase[runner.serial] = Phase.RETIRING  # stop() once, but keep its status
                self._stop(runner, "give up coordination")
        busy = {r.name for r in self.retiring}
        for runner in list(self.pending):
            if runner.name not in busy:
                self.pending.remove(runner)
                self.runners[runner.name] = runner
                self.phase[runner.serial] = Phase.STARTING
                self.submit(Effect(runner.name, runner.serial, _START, runner.start))

    def _stop(self, runner: RoleRunner, what: str) -> None:
        if runner.serial not in self._stopped:
            self._stopped.add(runner.serial)
            self.submit(Effect(runner.name, runner.serial, what, runner.stop))

    def stop_all(self) -> None:
        """Shutdown, children gone: give up every runner's coordination here
        and now (the loop has nothing left to serve)."""
        for runner in self.all():
            if runner.serial in self._stopped:
                continue
            self._stopped.add(runner.serial)
            try:
                runner.stop()
            except Exception as exc:  # noqa: BLE001 - leaving must go on for the others
                log.warning("role %s: could not leave cleanly: %s", runner.name, describe(exc))

    def _started(self, runner: RoleRunner, error: BaseException | None) -> None:
        if error is not None:
            self.fail(runner, "start", error)
            return
        if self.phase.get(runner.serial) is Phase.STARTING:
            self.phase[runner.serial] = Phase.ACTIVE
            cause = self._cause.pop(runner.name, "reload")
            log.info("role %s: started after %s", runner.name, cause)


_START = "start coordination"
