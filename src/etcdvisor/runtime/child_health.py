"""The loop's handle on children's health: probes, sd_notify, readiness, ``needs``,
``on_failed``, and the order children stop in.

:class:`ChildHealth` bundles :class:`~.probes.ProbeRunner`,
:class:`~.readiness.Readiness` and the :class:`~.notify.NotifyHub` (made when the
first child with ``health.notify`` is specified). The supervisor calls it at fixed
points of each turn, on the loop thread: ``handles(event)`` for inbox events,
``gate(...)`` for a role's desired children (``needs``), ``after_reconcile(...)``
once slots were ticked, ``next_deadline()``, ``failed_exit(...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Config, RoleType
from ..config.health import stop_waves
from ..process.manager import ProcessManager
from ..process.slot import Slot
from ..process.spawn import ChildSpec
from ..roles.base import RoleRunner
from .notify import NotifyHub
from .probes import ProbeDone, ProbeRunner
from .readiness import NotifyMessage, Readiness

if TYPE_CHECKING:
    from .reconcile import Reconciler

log = logging.getLogger("etcdvisor")

NEEDS_LEADER_GRACE = 5.0  # a needed leader role without a child here: wait this long for its election
Children = list[tuple[RoleRunner, str, Slot]]


class ChildHealth:
    def __init__(self, post: Callable[[object], None], member: str, metrics: Any,
                 clock: Callable[[], float]):
        self.post = post
        self.clock = clock
        self.probes = ProbeRunner(post, None)  # the manager is set by attach()
        self.readiness = Readiness(self.probes, member=member, metrics=metrics)
        self.notify: NotifyHub | None = None
        self.needs_wake: float | None = None
        self._needs_seen: dict[int, float] = {}  # runner serial -> first asked (needs of leader roles)

    def attach(self, manager: ProcessManager) -> None:
        self.probes.manager = manager

    def close(self) -> None:
        self.probes.close()
        if self.notify is not None:
            self.notify.close()

    # --- events ------------------------------------------------------------------------
    def handles(self, event: object) -> bool:
        """Act on a probe outcome or an sd_notify message; False for other events."""
        if isinstance(event, ProbeDone):
            self.readiness.on_probe(event, self.clock())
        elif isinstance(event, NotifyMessage):
            self.readiness.on_notify(event, self.clock())
        else:
            return False
        return True

    def notify_socket(self, child_name: str) -> str:
        """(RuntimeContext.notify_socket) the sd_notify socket of one child."""
        if self.notify is None:
            self.notify = NotifyHub(self.post)
        return self.notify.path_for(child_name)

    # --- each turn ------------------------------------------------------------------------
    def after_reconcile(self, children: Children, now: float) -> None:
        """Follow started/stopped children, start due probes, map notify sockets."""
        self.readiness.sync(((runner.spec, slot) for runner, _key, slot in children), now)
        self.readiness.run_due(now)
        if self.notify is not None:
            self._follow_notify(children)

    def next_deadline(self) -> float | None:
        times = [t for t in (self.readiness.next_deadline(), self.needs_wake) if t is not None]
        return min(times) if times else None

    def _follow_notify(self, children: Children) -> None:
        """Tell the sd_notify reader which child owns which socket; close the others."""
        assert self.notify is not None
        owners, names = {}, []
        for runner, _key, slot in children:
            if not runner.spec.health.notify:
                continue
            spec = slot.child.spec if slot.child is not None else slot.desired
            if spec is None or "NOTIFY_SOCKET" not in spec.env:
                continue
            names.append(spec.name)
            if slot.desired is not None and slot.desired.name != spec.name:
                names.append(slot.desired.name)
            child = slot.child
            if child is not None and child.pid is not None:
                owners[spec.env["NOTIFY_SOCKET"]] = (slot.name, child.pid, child.tag)
        self.notify.set_owners(owners)
        self.notify.retain(names)

    # --- needs -------------------------------------------------------------------------------
    def gate(self, runner: RoleRunner, desired: dict[str, ChildSpec], reconciler: Reconciler,
             runners: Mapping[str, RoleRunner], member: str, now: float) -> dict[str, ChildSpec]:
        """``needs:``: children of ``runner`` not running yet start only once every
        child of the needed roles on this member is ready."""
        if not runner.spec.needs or not desired or \
                self._needs_met(runner.spec.needs, reconciler.children(), runners, member, now):
            return desired
        current = reconciler.slots_of(runner)
        return {k: spec for k, spec in desired.items() if k in current and current[k].child is not None}

    def _needs_met(self, needs: Iterable[str], children: Children, runners: Mapping[str, RoleRunner],
                   member: str, now: float) -> bool:
        """Every child of the roles ``needs`` on this member is ready. A needed
        sharded role must have a child here; a leader role (singleton, cron, job)
        led elsewhere has none, which is fine once another leader is known or the
        role has campaigned here for ``NEEDS_LEADER_GRACE`` without winning."""
        seen = set()
        for owner, _key, slot in children:
            if owner.name in needs and runners.get(owner.name) is owner and slot.desired is not None:
                if not self.readiness.ready(slot.name, now):
                    return False
                seen.add(owner.name)
        for name in needs:
            runner = runners.get(name)
            if name in seen or runner is None:
                continue
            if runner.spec.type is RoleType.SHARDED or runner.status().get("leader"):
                return False
            since = self._needs_seen.setdefault(runner.serial, now)
            if getattr(runner, "leader_member", None) in (None, member) and now - since < NEEDS_LEADER_GRACE:
                self.needs_wake = since + NEEDS_LEADER_GRACE
                return False
        return True

    # --- on_failed, shutdown ------------------------------------------------------------------
    @staticmethod
    def failed_exit(config: Config, roles_status: Mapping[str, Any]) -> str | None:
        """The role whose FAILED state ends the member (``on_failed: exit``), or None."""
        for name, status in roles_status.items():
            role = config.roles.get(name)
            if status.get("failed") and role is not None and role.on_failed == "exit":
                log.error("role %s FAILED (%s) and has on_failed: exit: stopping every child, "
                          "leaving the cluster, exit status 3", name, status["failed"], extra={"role": name})
                return name
        return None

    @staticmethod
    def stop_waves(runners: Iterable[RoleRunner]) -> list[set[str]]:
        """Role names in the order their children stop: dependents first."""
        needs = {r.name: r.spec.needs for r in runners}
        return stop_waves(needs) if any(needs.values()) else [set(needs)]
