"""The seed wiring of a member (issue 11): role ``config:``, ``register:`` and
``peers:`` behind the few calls the decision loop makes.

Loop contract (all on the loop thread): ``start()`` after the session and the
process manager exist; ``handle(event)`` for every event it ``owns``;
``before_reconcile(now)`` once per turn after the events (``next_deadline()``
says when a turn is due without events); ``gate(runner,
desired)`` on each runner's desired children; ``after_tick(events)`` with
the slot events of each tick; ``on_new_lease()``; ``status(role)``;
``close()`` at the end. Edge threads (watchers) only post; file and registry
writes are effects on the loop's EffectRunner (lane ``(wiring)``, in order).

What the store refuses (``PermissionDenied`` on config items, registry
writes, peers watches) and a peers file outside its role's ``cwd`` fail the
roles concerned through ``fail_role(role, what, error)``; the private
directory of the config files goes to ``on_directory`` (the watchdog removes
it if the supervisor dies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..config import Config, RoleSpec
from ..coord.base import Backend
from ..coord.session import Session
from ..process.slot import SlotEvent
from ..process.spawn import ChildSpec, ChildVars
from ..roles.base import RoleRunner
from .reconcile import Reconciler
from .registration import PeersDenied, PeersSnapshot, Registration
from .role_config import ConfigDenied, ConfigSnapshot, QueueEffect, RoleConfig

log = logging.getLogger("etcdvisor")

EVENTS = (ConfigSnapshot, PeersSnapshot, ConfigDenied, PeersDenied)
WIRING_LANE = "(wiring)"  # effect lane of the wiring's file and registry writes


class SeedWiring:
    def __init__(self, config: Config, backend: Backend, session: Session, member_id: str,
                 post: Callable[[object], None], clock: Callable[[], float], reconciler: Reconciler,
                 effect: QueueEffect, *, fail_role: Callable[[str, str, BaseException], None] | None = None,
                 on_directory: Callable[[str], None] | None = None):
        """``effect(what, call, done=None)`` queues I/O off the loop (lane
        WIRING_LANE: in order); ``done(result, error)`` runs on the loop.
        ``fail_role(role, what, error)``: fail that role (one line);
        ``on_directory(path)``: the config files' private directory, once made."""
        self.reconciler = reconciler
        self.config = RoleConfig(config, backend, member_id, post, effect)
        self.config.on_directory = on_directory
        self.registration = Registration(config, backend, session, member_id, post, effect, clock)
        if fail_role is not None:
            self.registration.fail_role = fail_role

    def start(self) -> None:
        if self.config.wanted:
            self.config.start()
        self.registration.start()

    def reconfigure(self, config: Config) -> None:
        """A reload: new role keys apply to runners started from now on."""
        self.registration.config = config
        self.config.reconfigure(config)
        self.registration.start()  # watches services not watched yet
        self.registration.refresh(self.reconciler.children)

    @staticmethod
    def owns(event: object) -> bool:
        return isinstance(event, EVENTS)

    def handle(self, event: object) -> None:
        if isinstance(event, ConfigSnapshot):
            self.config.handle(event)
        elif isinstance(event, PeersSnapshot):
            self.registration.handle(event, self.reconciler.children)
        elif isinstance(event, ConfigDenied):
            for role in self.config.config.roles.values():
                if role.config:
                    self.registration.fail_role(role.name, "config items", event.error)
        elif isinstance(event, PeersDenied):
            self.registration.denied(event)

    def child_env(self, role: RoleSpec, name: str, child_vars: ChildVars) -> dict[str, str]:
        return self.config.child_env(role, name, child_vars)

    def before_reconcile(self, now: float) -> None:
        self.registration.retry_due(now)
        self.config.flush(self.reconciler.children())

    def next_deadline(self) -> float | None:
        """When a failed registry write is due again (None: no timer)."""
        return self.registration.next_deadline()

    def gate(self, runner: RoleRunner, desired: dict[str, ChildSpec]) -> dict[str, ChildSpec]:
        role = runner.spec
        if not (role.config or role.peers):
            return desired
        current = self.reconciler.slots_of(runner)
        return self.registration.gate(role, self.config.gate(role, desired, current), current)

    def after_tick(self, events: Sequence[SlotEvent]) -> None:
        self.registration.on_slot_events(events, self.reconciler.children())
        if self.config.files:
            live = {slot.child.spec.name for _r, _k, slot in self.reconciler.children() if slot.child}
            live |= {slot.desired.name for _r, _k, slot in self.reconciler.children() if slot.desired}
            self.config.forget(live)

    def on_new_lease(self) -> None:
        self.registration.on_new_lease()

    def status(self, role: str) -> list[dict[str, Any]]:
        return self.registration.status(role)

    def close(self) -> None:
        self.registration.close()
        self.config.close()
