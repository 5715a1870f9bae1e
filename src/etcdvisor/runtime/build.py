"""The builder of a member: start-up checks, etcd, the lease, and every part, wired.

:class:`Builder` holds what a member has before it joins (the inbox, the effect
runner, metrics and probes, the etcd password); :meth:`Builder.join` checks every
command, connects, builds the runners, takes the lease (or keeps a re-executed
member's: :mod:`.upgraded`), registers the member record and makes the process
layer, the reconciler, the roster, the seed wiring, the rollouts and the barrier
gate, wired to each other, and returns them as one :class:`Parts`. Nothing in
``join`` starts an edge thread but the lease keepalive; :meth:`Builder.start_edges`
starts the watches and the runners. The decision loop (:mod:`.loop`) receives the
parts; a test harness can join with fakes (a memory backend, a fake clock and
process layer, recorded effects) and turn the real loop without the edges.

All or nothing: any failure is a :class:`~.runners.StartupError` (one line), raised
before the member joins or starts a child; :meth:`Builder.close` closes what a
partial start made.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import timing
from ..config import Config, EtcdKind, unresolved_command
from ..coord import open_backend, read_password
from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.keys import ClusterKeys
from ..coord.session import Session
from ..events import Effect, SessionChanged
from ..process._linux import scrub_initial_environ
from ..process.manager import ProcessManager
from ..roles.base import RoleRunner, RuntimeContext
from ..roles.resume import start_restored
from .barriers import BarrierGate
from .child_health import ChildHealth
from .effects import EffectRunner
from .health import HttpError
from .member import MemberRecord
from .member_status import children_health
from .ops import Operations
from .private_files import remove_stale_config_dirs
from .reconcile import Reconciler
from .reload import ConfigFileWatcher
from .rollout_watch import RolloutWatch
from .rollouts import ROLLOUT_LANE, Rollouts
from .roster import Roster
from .runners import StartupError, build_runners
from .stale import clear_dead_members
from .store_health import StoreHealth
from .upgraded import Resume, take
from .wiring import WIRING_LANE, SeedWiring

if TYPE_CHECKING:  # only an embedded etcd needs the launcher (and its HTTP client)
    from ..etcd_server import EtcdServer

log = logging.getLogger("etcdvisor")


@dataclass(eq=False)
class Parts:
    """A joined member: every part made and wired, what the loop turns."""

    config: Config
    environ: dict[str, str]
    clock: Callable[[], float]
    inbox: queue.SimpleQueue[object]
    keys: ClusterKeys
    effects: EffectRunner
    ops: Operations
    child_health: ChildHealth
    store_health: StoreHealth
    backend: Backend
    session: Session
    record: MemberRecord
    manager: ProcessManager
    reconciler: Reconciler
    roster: Roster
    ctx: RuntimeContext
    wiring: SeedWiring
    rollouts: Rollouts
    gate: BarrierGate
    built: list[RoleRunner]  # made from the config; start_edges() starts them into the roster
    url: str = ""
    password: str | None = None
    embedded: EtcdServer | None = None
    resume: Resume | None = None
    rollout_watch: RolloutWatch | None = None  # started by start_edges()
    file_watcher: ConfigFileWatcher | None = None


def make_rollouts(config: Config, backend: Backend, keys: ClusterKeys, session: Session,
                  reconciler: Reconciler, wiring: SeedWiring, child_health: ChildHealth,
                  effects: EffectRunner, clock: Callable[[], float]) -> Rollouts:
    """The rolling-restart controller (after the session, reconciler and wiring)."""
    rollouts = Rollouts(
        config, backend, keys, config.member.id,
        lambda what, call, done=None: effects.submit(Effect(ROLLOUT_LANE, 0, what, call, done)),
        reconciler.children, lambda: session.lease_id, clock, time.time, child_health.readiness.ready_since)
    wiring.config.rolling = True
    rollouts.gate = wiring.config
    return rollouts


class Builder:
    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, watch_config: bool = False,
                 process_layer: Callable[[], ProcessManager] | None = None,
                 inbox: queue.SimpleQueue[object] | None = None, effects: EffectRunner | None = None):
        """``process_layer()`` makes the member's process manager at start (default:
        real children, the supervisor a subreaper); ``environ`` None: this process's
        environment (a secret variable is then scrubbed from ``os.environ`` too).
        ``inbox`` and ``effects``: a test harness's own (events it delivers, effects it runs)."""
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self._own_environ = environ is None
        self.clock = clock
        self.watch_config = watch_config
        self.process_layer = process_layer or functools.partial(ProcessManager, subreaper=True)
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue() if inbox is None else inbox
        self.keys = ClusterKeys(config.cluster)
        self.effects = EffectRunner(self.inbox.put, clock=clock) if effects is None else effects
        self.ops = Operations(config, clock)  # metrics, probes, control verbs (runtime/ops.py)
        # probes, sd_notify, readiness, needs (runtime/child_health.py)
        self.child_health = ChildHealth(self.inbox.put, config.member.id, self.ops.metrics, clock)
        self.store_health = StoreHealth(config.etcd.url or "etcd", timing.KEEPALIVE_INTERVAL, clock=clock)
        self.embedded: EtcdServer | None = None
        self.resume: Resume | None = None  # a re-executed member (upgrade): its hand-over
        self.password: str | None = None  # kept for re-authentication and an upgrade's hand-over
        # made by join() and start_edges(); close() closes what a partial start made
        self.backend: Backend | None = None
        self.session: Session | None = None
        self.manager: ProcessManager | None = None
        self.wiring: SeedWiring | None = None
        self.gate: BarrierGate | None = None
        self.rollout_watch: RolloutWatch | None = None
        self.file_watcher: ConfigFileWatcher | None = None

    # --- checks and etcd ---------------------------------------------------------------
    def check_commands(self) -> None:
        problem = unresolved_command(self.config, list(self.config.roles),
                                     self.environ.get("PATH", os.defpath))
        if problem:
            raise StartupError(problem)

    def take_password(self) -> str | None:
        """Read the etcd password, then drop its variable from every
        environment a child or helper could inherit (docs/safety.md rule 7):
        the supervisor keeps it only in memory, for re-authentication."""
        etcd = self.config.etcd
        try:
            password = read_password(password_file=etcd.password_file, password_env=etcd.password_env)
        except CoordError as exc:
            raise StartupError(f"{self.config.source_path}: etcd: {exc}") from None
        if etcd.password_env:
            self.environ.pop(etcd.password_env, None)
            if self._own_environ:
                os.environ.pop(etcd.password_env, None)
                # the exec-time copy: /proc/<pid>/environ of this process, and of a child
                # between its fork and its exec (the fork path runs a preexec hook)
                scrub_initial_environ(etcd.password_env)
        return password

    def connect(self) -> str:
        etcd = self.config.etcd
        url = etcd.url
        resumed = self.resume is not None and etcd.password_env
        password = self.resume.password if self.resume is not None and resumed else self.take_password()
        self.password = password
        if etcd.kind is EtcdKind.EMBEDDED:
            from .embedded import EmbeddedEtcdError, start_embedded

            data_dir = etcd.data_dir or os.path.join(self.config.member.state_dir or ".etcdvisor", "etcd")
            try:
                self.embedded = start_embedded(data_dir)
            except EmbeddedEtcdError as exc:
                raise StartupError(str(exc)) from None
            url = self.embedded.url
            log.info("embedded etcd listening on %s (data in %s); join it with "
                     "ETCDVISOR_ENDPOINTS=%s", url, data_dir, url)
        try:
            self.backend = open_backend(url, timeout=etcd.timeout, tls=etcd.tls, username=etcd.username,
                                        password=password)
        except CoordError as exc:
            raise StartupError(f"{self.config.source_path}: etcd.endpoints: {exc}") from None
        self.store_health.url = url
        return url

    def open_session(self, session: Session) -> Session:
        """Take the member lease (a re-executed member keeps its own alive)."""
        return session.start() if self.resume is None else self.resume.resume_session(session)

    # --- join --------------------------------------------------------------------------
    def join(self) -> Parts:
        """Check, connect, take the lease, register, make and wire every part. All or
        nothing: commands, etcd and every runner are checked before the member joins
        (lease, member record) or starts a child."""
        handed = take(self.environ)  # a re-executed member (upgrade): its hand-over state
        self.resume = resume = Resume(handed, self.config.member.id) if handed is not None else None
        self.check_commands()
        try:
            self.ops.listen()
        except HttpError as exc:
            raise StartupError(str(exc)) from None
        url = self.connect()
        backend = self.backend
        assert backend is not None  # connect() made it
        config, member, keys, clock, post = self.config, self.config.member, self.keys, self.clock, self.inbox.put
        # runners are built before the lease exists; their __init__ never reads ctx.session
        ctx = RuntimeContext(config=config, backend=backend,
                             session=None,  # type: ignore[arg-type]  # set just below
                             keys=keys, member_id=member.id, endpoints=url, post=post,
                             clock=clock, base_env=self.environ, metrics=self.ops.metrics)
        runners = build_runners(config, ctx, list(config.roles))
        if resume is None:
            # members of a previous run known dead (same host, boot and pid namespace, pids gone):
            # revoke their leases before joining, so nothing waits for them or counts them
            clear_dead_members(backend, keys.members, config.cluster, member_id=member.id)
        else:
            resume.restore_runners(runners)
        try:
            self.session = session = self.open_session(Session(backend, member.ttl, name=member.id))
        except CoordError as exc:
            raise StartupError(f"cannot create the member lease: {exc}") from None
        ctx.session = session
        session.add_listener(lambda ev: post(SessionChanged(ev)))
        record = MemberRecord(backend, keys.member(member.id), member.id, clock=clock, ttl=member.ttl)
        if resume is not None:
            record.started, record.upgraded = resume.started, time.time()
            record.upgrades = resume.upgrades
            self.ops.metrics.upgrades.inc(resume.upgrades)
        try:
            record.register(session.lease_id, resume.state.get("status") or {} if resume else {})
        except CoordError as exc:
            raise StartupError(str(exc)) from None
        self.manager = manager = self.process_layer()
        if resume is not None:
            resume.attach_manager(manager)  # the old image's watchdog helper and cgroup base
        manager.start()
        self.child_health.attach(manager)
        if self.embedded is not None and self.embedded.proc is not None:
            manager.protect_pid(self.embedded.proc.pid)
            if manager.watchdog is not None:
                manager.watchdog.register(self.embedded.proc.pid)
        if manager.watchdog is not None:
            record.set_watchdog(manager.watchdog.pid)
        reconciler = Reconciler(manager)
        reconciler.lease_confirmed(session.last_alive_sent, session.ttl)
        roster = Roster(reconciler, self.effects.submit)
        if resume is not None:
            resume.queue_adoptions(reconciler, manager)
        remove_stale_config_dirs(config.cluster, member.id)
        watchdog = manager.watchdog
        effects = self.effects
        self.wiring = wiring = SeedWiring(
            config, backend, session, member.id, post, clock, reconciler,
            lambda what, call, done=None: effects.submit(Effect(WIRING_LANE, 0, what, call, done)),
            fail_role=roster.fail_role, on_directory=watchdog.remove_on_exit if watchdog is not None else None)
        ctx.config_env = wiring.child_env
        ctx.notify_socket = self.child_health.notify_socket
        readiness = self.child_health.readiness
        ctx.children_health = lambda role: children_health(role, roster.runners, reconciler.children(),
                                                           readiness, clock())
        rollouts = make_rollouts(config, backend, keys, session, reconciler, wiring, self.child_health,
                                 effects, clock)
        if resume is not None:
            resume.reuse_directories(self.child_health, wiring)
        self.gate = gate = BarrierGate(config, keys, backend, post)
        return Parts(config=config, environ=self.environ, clock=clock, inbox=self.inbox, keys=keys,
                     effects=effects, ops=self.ops, child_health=self.child_health,
                     store_health=self.store_health, backend=backend, session=session, record=record,
                     manager=manager, reconciler=reconciler, roster=roster, ctx=ctx, wiring=wiring,
                     rollouts=rollouts, gate=gate, built=runners, url=url, password=self.password,
                     embedded=self.embedded, resume=resume)

    def start_edges(self, parts: Parts) -> None:
        """Start the watches (seed wiring, rollouts, barriers, control records) and the
        runners (a runner that cannot start: StartupError naming its role)."""
        config, resume = parts.config, parts.resume
        parts.wiring.start()
        self.rollout_watch = parts.rollout_watch = RolloutWatch(parts.backend, parts.keys, parts.inbox.put).start()
        parts.gate.start()
        parts.ops.start(parts.session, parts.backend, parts.keys, parts.inbox.put)
        if resume is not None:
            resume.restore_control(parts.ops.control)
        session, member = parts.session, config.member
        log.info("member %s joined cluster %s at %s (lease %x, ttl %ds), roles: %s", member.id,
                 config.cluster, parts.url, session.lease_id, session.ttl,
                 ", ".join(f"{r.name}({r.type.value})" for r in config.roles.values()) or "none")
        bound = {r.name: r.stop_timeout for r in config.roles.values() if r.lease_bound}
        log.info("lease timing: %s", timing.config_tolerance_line(session.ttl, bound))
        for runner in parts.built:
            try:
                start_restored(runner)
            except CoordError as exc:
                raise StartupError(f"role {runner.name}: cannot start: {exc}") from None
            parts.roster.add_started(runner)
        if self.watch_config:
            self.file_watcher = parts.file_watcher = ConfigFileWatcher(
                config.source_path, parts.inbox.put, signal.SIGHUP).start()

    def close(self, *, revoke: bool = True) -> None:
        """Close what a partial start made (a start that failed)."""
        close_parts(self.ops, self.child_health, self.effects, rollout_watch=self.rollout_watch,
                    file_watcher=self.file_watcher, wiring=self.wiring, gate=self.gate, session=self.session,
                    manager=self.manager, backend=self.backend, embedded=self.embedded, revoke=revoke)


def close_parts(ops: Operations, child_health: ChildHealth, effects: EffectRunner, *,
                rollout_watch: RolloutWatch | None, file_watcher: ConfigFileWatcher | None,
                wiring: SeedWiring | None, gate: BarrierGate | None, session: Session | None,
                manager: ProcessManager | None, backend: Backend | None, embedded: EtcdServer | None,
                revoke: bool) -> None:
    """Stop every edge thread and leave (``revoke=False``: the lease is left to expire);
    parts a partial start did not make are None."""
    ops.stop()
    if rollout_watch is not None:
        rollout_watch.stop()
    child_health.close()
    if file_watcher is not None:
        file_watcher.stop()
    if wiring is not None:
        wiring.close()
    if gate is not None:
        gate.stop()
    effects.close()
    if session is not None:
        session.close(revoke=revoke)
    if manager is not None:
        manager.close()
    if backend is not None:
        backend.close()
    if embedded is not None:
        embedded.stop()
