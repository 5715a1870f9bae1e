"""What the decision loop does for operators: metrics, probes, control verbs.

:class:`Operations` is the loop's one handle on :mod:`.metrics`, :mod:`.http` and
:mod:`.control`. The supervisor calls it at a few fixed points (start, each event,
the end of each turn, slot and session events, close); everything here runs on the
loop thread except the HTTP server and the control watch, which own their threads.

Control commands are applied here, on the loop: ``restart`` stops the role's running
children on this member (they start again with the same spec, lease rules applying
as for any start); ``reset`` replaces a FAILED runner through the reload path
(retire, then start a fresh runner once its children are gone); ``trigger`` goes to
the cron runner; pause is read by the supervisor when it asks runners what to run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config
from ..coord.base import Backend
from ..coord.keys import ClusterKeys
from ..coord.records import decimal
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..process.slot import Exited, Slot, SlotEvent, Started, Stopped
from ..roles.base import RoleRunner, RuntimeContext
from . import control, rollout_store
from .health import Health
from .metrics import Metrics, NullMetrics, Snapshot, exit_code_label
from .reconcile import Reconciler
from .rollouts import ROLLOUT_TYPES, Rollouts
from .roster import Roster
from .runners import build_runners

if TYPE_CHECKING:
    from .http import OpsServer

log = logging.getLogger("etcdvisor")

SESSION_ERRORS = {SessionEventKind.ERROR: "keepalive", SessionEventKind.EXPIRED: "lease_expired",
                  SessionEventKind.LOST: "lease_lost"}


class OpsHost(Protocol):
    """What the control verbs act on: the member's running parts (the loop)."""

    @property
    def config(self) -> Config: ...
    @property
    def keys(self) -> ClusterKeys: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def session(self) -> Session: ...
    @property
    def ctx(self) -> RuntimeContext: ...
    @property
    def runners(self) -> Mapping[str, RoleRunner]: ...
    @property
    def roster(self) -> Roster: ...
    @property
    def reconciler(self) -> Reconciler: ...
    @property
    def rollouts(self) -> Rollouts | None: ...

    def effect(self, what: str, call: Callable[[], Any],
               done: Callable[[Any, BaseException | None], None] | None = None) -> None:
        """The member's own I/O, off the loop."""

    def request_upgrade(self, why: str) -> None: ...


class Operations:
    def __init__(self, config: Config, clock: Callable[[], float]):
        """``config``: the one the member starts with (the listener); once joined, the
        host (:meth:`attach`) gives the running one."""
        self._config = config
        self.host: OpsHost | None = None  # the loop, once the member joined
        # without http nobody reads metrics: keep prometheus_client out of PID 1
        self.metrics: Metrics | NullMetrics = (
            Metrics(backlog=self._topic_backlog) if config.http.listen is not None else NullMetrics())
        self.health = Health(clock=clock)
        self.control = control.ControlState()
        self.server: OpsServer | None = None  # runtime.http, imported only with http.listen
        # more routes (the dashboard, added by the CLI): each is called with the server before it starts
        self.http_routes: list[Callable[[OpsServer], None]] = []
        self.watch: control.ControlWatch | None = None
        self._declared: frozenset[str] = frozenset()  # roles whose counter series exist

    @property
    def sup(self) -> OpsHost:
        if self.host is None:
            raise RuntimeError("the member has not joined yet")
        return self.host

    # --- lifecycle ---------------------------------------------------------------------
    def attach(self, host: OpsHost) -> None:
        self.host = host

    def listen(self) -> None:
        """Open the HTTP listener (before anything starts: a taken port fails start-up)."""
        address = self._config.http.listen
        if address is not None:
            from .http import OpsServer

            assert isinstance(self.metrics, Metrics)
            server = OpsServer(address, self.metrics, self.health, token_file=self._config.http.token_file)
            for add_routes in self.http_routes:
                add_routes(server)
            self.server = server.start()

    def start(self, session: Session, backend: Backend, keys: ClusterKeys, post: Callable[[object], None]) -> None:
        """After the member joined: probes may say ready; control records are read
        (blocking briefly, so a paused role never starts before its pause is known)."""
        self.health.lease_alive_sent = lambda: session.last_alive_sent if session.alive else None
        self.health.lease_fresh = max(3.0, session.ttl / 3)
        self.health.joined = True
        self.watch = control.ControlWatch(backend, keys, post,
                                          on_error=lambda exc: self.etcd_error("control_watch"))
        self.watch.start(wait=5.0)

    def stop(self) -> None:
        self.health.joined = False
        if self.watch is not None:
            self.watch.stop()
        if self.server is not None:
            self.server.stop()

    # --- loop hooks ----------------------------------------------------------------------
    def etcd_error(self, kind: str) -> None:
        self.metrics.etcd_errors.labels(kind).inc()

    def on_session(self, event: SessionEvent) -> None:
        if event.kind is SessionEventKind.KEEPALIVE and event.rtt is not None:
            self.metrics.keepalive_rtt.observe(event.rtt)
        elif event.kind in SESSION_ERRORS:
            self.etcd_error(SESSION_ERRORS[event.kind])

    def on_slot_event(self, role: str, event: SlotEvent) -> None:
        if isinstance(event, Exited) and event.code is not None:
            self.metrics.exits.labels(role, exit_code_label(event.code)).inc()
            if event.restart_at is not None:
                self.metrics.restarts.labels(role, event.reason).inc()
        elif isinstance(event, Stopped) and event.code is not None:
            self.metrics.exits.labels(role, exit_code_label(event.code)).inc()
        elif isinstance(event, Started) and event.reason is not None:
            self.metrics.restarts.labels(role, event.reason).inc()

    def paused(self, role: str) -> bool:
        return self.control.is_paused(role)

    def end_turn(self, now: float, slept_at_most: float, roles_status: dict[str, Any]) -> None:
        failed = next((f"role {n} failed: {s['failed']}" for n, s in roles_status.items()
                       if s.get("failed")), None)
        self.health.failed = failed
        self.health.turn(now, now + slept_at_most)
        if self.server is None:
            return
        if self._declared != frozenset(roles_status):  # start-up and reloads only
            self._declared = frozenset(roles_status)
            self.metrics.declare({n: s.get("type") for n, s in roles_status.items()})
        sup = self.sup
        session = sup.session
        bound = [r.stop_timeout for r in sup.config.roles.values() if r.lease_bound]
        self.metrics.publish(Snapshot(
            roles=roles_status, paused=frozenset(self.control.paused),
            lease_alive_sent=session.last_alive_sent, lease_ttl=session.ttl,
            max_stop_timeout=max(bound, default=0.0)))

    # --- control commands ------------------------------------------------------------------
    def on_control(self, event: control.ControlChanged) -> None:
        before = set(self.control.paused)
        commands = self.control.update(event)
        after = set(self.control.paused)
        for role in sorted(after - before):
            if role in self.sup.runners:
                record = self.control.paused[role]
                log.info("role %s: paused by %s at %s: stopping its children here, starting none",
                         role, record.get("who"), record.get("at"), extra={"role": role})
        for role in sorted(before - after):
            if role in self.sup.runners:
                log.info("role %s: resumed", role, extra={"role": role})
        for command in commands:
            if command.verb == control.UPGRADE:  # member-wide (runtime/upgrade.py)
                if self._mine(command):
                    self.sup.request_upgrade(f"supervisor upgrade by {command.record.get('who')}")
                continue
            log.debug("control record: %s %s (%s)%s", command.verb, command.role, command.describe(),
                      "" if command.role in self.sup.runners else ": no such role here, ignored")
            if command.role not in self.sup.runners:
                continue
            try:
                getattr(self, f"_{command.verb}")(command)
            except Exception:  # an operator's command never takes the member down
                log.exception("role %s: %s failed", command.role, command.describe())

    def _mine(self, command: control.Command) -> bool:
        member = command.record.get("member")
        return member in (None, self.sup.config.member.id)

    def _restart(self, command: control.Command) -> None:
        if not self._mine(command):
            return
        runner = self.sup.runners[command.role]
        if command.record.get("member") is None and command.record.get("index") is None and \
                self.sup.rollouts is not None and runner.spec.type in ROLLOUT_TYPES:
            self._restart_as_rollout(command)
            return
        index = command.record.get("index")
        now = self.sup.clock()
        restarted = []
        for owner, key, slot in self.sup.reconciler.children():
            if owner is not runner:
                continue
            # per child: with ``processes: k`` or fixed shards a member runs several indexes
            if index is not None and index not in _child_indexes(slot):
                continue
            if slot.restart_child(now, "control"):
                restarted.append(key)
        log.info("role %s: %s: restarting %s", command.role, command.describe(),
                 ", ".join(restarted) or "nothing (no child runs here)", extra={"role": command.role})

    def _restart_as_rollout(self, command: control.Command) -> None:
        """A whole-role restart: the CLI wrote its rollout next to the record (``rollout``:
        its id). A record without one (an older CLI) becomes one rollout, written once
        whichever member sees it first (its target is the record's id)."""
        sup, role = self.sup, command.role
        if command.record.get("rollout"):
            return
        record = rollout_store.new_record(role, "restart", str(command.record.get("who") or "control record"),
                                          f"control:{command.record.get('id')}")
        log.info("role %s: %s: as a rolling restart", role, command.describe(), extra={"role": role})
        sup.effect(f"start a rollout of {role}",
                    lambda: rollout_store.start(sup.backend, sup.keys, record, unless_target=True))

    def _reset(self, command: control.Command) -> None:
        if not self._mine(command):
            return
        runner = self.sup.runners[command.role]
        if not runner.failed_reason:
            log.info("role %s: %s: not failed here, nothing to reset", command.role, command.describe())
            return
        fresh = build_runners(self.sup.config, self.sup.ctx, [command.role])
        log.info("role %s: %s: clearing FAILED (%s); the role starts again", command.role,
                 command.describe(), runner.failed_reason, extra={"role": command.role})
        self.sup.roster.retire([command.role], "reset")  # its children are gone already; it leaves/resigns
        self.sup.roster.queue(fresh)  # then a fresh runner joins / campaigns again

    def _trigger(self, command: control.Command) -> None:
        runner = self.sup.runners[command.role]
        trigger = getattr(runner, "trigger", None)
        if trigger is None:
            log.warning("role %s: %s: not a cron role, ignored", command.role, command.describe())
            return
        self.sup.roster.call(runner, "trigger", lambda: trigger(command.record))

    # --- the HTTP thread -----------------------------------------------------------------------
    def _topic_backlog(self) -> dict[str, int]:
        """Unprocessed messages per topic role (queue: of its group; broadcast: after this
        member's cursor). Runs on the HTTP thread, so etcd reads are fine here."""
        from ..recipes.topic_format import topic_backlog  # the count status shows too

        sup = self.sup
        roles = [r for r in sup.config.roles.values() if r.type.value == "topic"]
        backlog = {}
        for role in roles:
            topic = role.topic or role.name
            prefix = sup.keys.topic(topic)
            found = topic_backlog(sup.backend.get_prefix(prefix, keys_only=True).kvs, prefix)  # CoordError:
            if role.delivery == "broadcast":  # counted by Metrics
                cursor = sup.backend.get(sup.keys.topic_cursor(topic, role.name, sup.config.member.id))
                backlog[role.name] = found.after((decimal(cursor.value) if cursor is not None else None) or 0)
            else:  # queue: retained messages without the group's done marker
                backlog[role.name] = found.unacked(role.name)
        return backlog


def _child_indexes(slot: Slot) -> set[int]:
    """The INDEX (join order, per-shard child) or SHARDS (per-member child) of the
    child a slot runs: what ``restart --index I`` matches."""
    spec = slot.child.spec if slot.child is not None else slot.desired
    if spec is None:
        return set()
    return set(spec.vars.indexes)
