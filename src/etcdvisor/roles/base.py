"""What every role runner shares: the runtime context and the runner contract.

A runner turns cluster facts (membership, leadership, schedules...) into the
set of children that should run on this member *now*. It never touches
processes itself: the decision loop asks ``desired(now)`` and reconciles the
process slots, then hands slot events back through ``on_slot_event``.
Runners' coordination threads only post events on the inbox; ``handle``,
``desired`` and ``on_slot_event`` run on the loop thread and are pure
decisions: they never wait for etcd, a subprocess or a file. Such I/O is
queued with :meth:`RoleRunner.effect`; the loop runs it off its thread after
the turn and calls ``done(result, error)`` back on the loop thread.

Lifecycle: ``__init__`` builds all state and checks what can fail without
I/O (so a bad role fails before the member joins); ``start`` begins
coordination and may block on the store (the loop runs it as an effect after
a reload); ``stop`` gives coordination up once the role's children are gone.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, RoleSpec
from ..config.model import OutputFile
from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.keys import ClusterKeys
from ..coord.records import dumps
from ..coord.session import Session, SessionEvent
from ..events import Effect, EffectDone, RoleEvent
from ..process.logfile import LogFileSpec
from ..process.slot import SlotEvent
from ..process.spawn import ChildSpec, ChildVars

log = logging.getLogger("etcdvisor")
_SERIALS = itertools.count(1)
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass
class RuntimeContext:
    config: Config
    backend: Backend
    session: Session
    keys: ClusterKeys
    member_id: str
    endpoints: str  # what children get in ETCDVISOR_ENDPOINTS
    post: Callable[[object], None]  # put an event on the loop's inbox
    clock: Callable[[], float]
    base_env: Mapping[str, str] = field(default_factory=dict)
    wall: Callable[[], float] = time.time  # wall clock (schedules, records)
    metrics: Any = None  # runtime.metrics.Metrics when the supervisor runs (counters only)
    config_env: Callable[[RoleSpec, str, ChildVars], dict[str, str]] | None = None  # role config:
    notify_socket: Callable[[str], str] | None = None  # child name -> its sd_notify socket path
    # role name -> {slot key: (child alive, ready)}; ready None: nothing to judge (no child
    # running, starting or in backoff). Wired by the builder (runtime/build.py, runtime/member_status.py).
    children_health: Callable[[str], dict[str, tuple[bool, bool | None]]] | None = None

    @property
    def cluster(self) -> str:
        return self.config.cluster

    def child_spec(self, role: RoleSpec, name: str, child_vars: ChildVars | None = None,
                   stdin_data: bytes | None = None) -> ChildSpec:
        """The ChildSpec of one child of ``role``: the supervisor's environment, the
        role's ``env`` and its ``config`` variables, and the etcdvisor variables, typed
        (``child_vars`` completed with ROLE, MEMBER_ID, CLUSTER, ETCDVISOR_ENDPOINTS),
        which win: the role env cannot override them; they become strings only at
        spawn. With ``health.notify`` the child gets its own ``NOTIFY_SOCKET`` (and
        ``WATCHDOG_USEC`` with ``health.watchdog``); the supervisor's own sd_notify
        variables are never passed on."""
        env = dict(self.base_env)
        for name_ in NOTIFY_ENV:  # the supervisor's own (under systemd) is not the child's
            env.pop(name_, None)
        env.update(role.env)
        if role.health.notify and self.notify_socket is not None:
            env["NOTIFY_SOCKET"] = self.notify_socket(name)
            if role.health.watchdog is not None:
                env["WATCHDOG_USEC"] = str(int(role.health.watchdog * 1_000_000))
        child_vars = dataclasses.replace(child_vars or ChildVars(), role=role.name, member_id=self.member_id,
                                         cluster=self.cluster, endpoints=self.endpoints)
        if self.config_env is not None:
            env.update(self.config_env(role, name, child_vars))
        cwd = self.config.role_cwd(role)
        return ChildSpec(name=name, argv=role.command, env=env, cwd=cwd,
                         stop_signal=int(role.stop_signal), stop_timeout=role.stop_timeout,
                         stdin_data=stdin_data, lease_bound=role.lease_bound,
                         stdout_file=self._log_file(role, role.stdout, cwd, child_vars),
                         stderr_file=self._log_file(role, role.stderr, cwd, child_vars),
                         memory_max=role.health.memory, vars=child_vars)

    def _log_file(self, role: RoleSpec, output: OutputFile | None, cwd: str,
                  child_vars: ChildVars) -> LogFileSpec | None:
        """Where one stream of a child goes (None: the supervisor's own); ``{index}``
        is the child's INDEX, 0 without one (as for ``register.port``)."""
        if output is None:
            return None
        index = child_vars.index if child_vars.index is not None else 0
        path = output.path(cwd, role=role.name, member=self.member_id, index=str(index))
        return LogFileSpec(path=path, root=cwd, max_size=output.max_size, backups=output.backups,
                           role=role.name)


class RoleRunner(abc.ABC):
    """The contract between a role type and the decision loop."""

    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        self.spec = spec
        self.ctx = ctx
        self.failed_reason: str | None = None
        self.serial = next(_SERIALS)  # tells this runner's events from a predecessor's
        self._effects: list[Effect] = []

    @property
    def name(self) -> str:
        return self.spec.name

    def post(self, payload: Any) -> None:
        """From a coordination thread: hand ``payload`` to this runner's
        ``handle`` on the loop thread."""
        self.ctx.post(RoleEvent(self.name, payload, self.ctx.clock(), source=self.serial))

    def effect(self, what: str, call: Callable[[], Any],
               done: Callable[[Any, BaseException | None], None] | None = None) -> None:
        """Queue I/O to run off the loop thread after this turn. ``done(result,
        error)`` runs later on the loop thread; without ``done`` an error is
        logged as a warning naming ``what``."""
        self._effects.append(Effect(self.name, self.serial, what, call, done))

    def take_effects(self) -> list[Effect]:
        """The loop takes the effects queued this turn."""
        effects, self._effects = self._effects, []
        return effects

    def deliver(self, payload: Any, at: float) -> None:
        """The loop hands over one event: an effect's outcome or a payload
        for :meth:`handle`."""
        if isinstance(payload, EffectDone):
            if payload.effect.done is not None:
                payload.effect.done(payload.result, payload.error)
            elif payload.error is not None:
                log.warning("role %s: %s failed: %s", self.name, payload.effect.what,
                            describe(payload.error))
            return
        self.handle(payload, at)

    def say(self, message: str) -> None:
        """One log line per decision, with its reason."""
        log.info("role %s: %s", self.name, message)

    @abc.abstractmethod
    def start(self) -> None:
        """Start coordination (join, campaign...). Must not block long."""

    def handle(self, payload: Any, at: float) -> None:
        """A RoleEvent payload for this role (from its own threads)."""

    def on_session(self, event: SessionEvent) -> None:
        """A session event (keepalive, expired, lost, new lease)."""

    @abc.abstractmethod
    def desired(self, now: float) -> dict[str, ChildSpec]:
        """Slot key -> ChildSpec of every child that should run now."""

    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        """A child started, exited, failed..."""

    def next_deadline(self) -> float | None:
        """When ``desired`` may change without any event (a timer)."""
        return None

    def while_paused(self, now: float) -> None:
        """Called instead of ``desired`` while the role is paused (``supervisor
        pause``): the loop runs none of its children. Cron records due ticks."""

    def describe_waits(self, now: float) -> list[str]:
        """What this role's children wait for now (``"1/2 waits for m3's child (1/2)"``):
        the loop logs a wait that lasts over a second, and its end (runtime/waitlog.py)."""
        return []

    def restart_policy(self, key: str) -> str:
        return self.spec.restart.value

    def leaving(self) -> None:
        """The member is shutting down and has begun stopping this role's
        children. A role whose hand-off is fenced by other means may let the
        others start re-planning now (queue it as an effect); by default
        nothing happens until :meth:`stop`."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Give up coordination (leave, resign). Called after this role's
        children are gone, so nobody else can start before they stopped."""

    def record_done(self, count: int, index: int, code: int) -> None:
        """Record a final exit of a one-shot child for ``after:`` barriers
        (``roles/<role>/done/<count>/<index>``; permanent, not on the lease)."""
        key = self.ctx.keys.done_record(self.name, count, index)
        body = dumps({"member": self.ctx.member_id, "exit_code": code, "finished": self.ctx.wall()})
        self.effect(f"record completion {count}/{index}", lambda: self.ctx.backend.put(key, body))

    def status(self) -> dict[str, Any]:
        return {"type": self.spec.type.value, "failed": self.failed_reason}


def describe(error: BaseException) -> str:
    """One line for a log or a status field (the store's own errors read as
    they are; anything else with its type)."""
    if isinstance(error, CoordError):
        return str(error)
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
