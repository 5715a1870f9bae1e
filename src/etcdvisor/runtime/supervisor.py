"""``supervisor run``: the container entrypoint and its decision loop.

Edge threads (lease keepalive, watches, campaign threads) and signal
handlers only put immutable events on the inbox; this loop is the only code
that changes state. Each turn it takes the pending events, lets every role
runner update itself, asks each for the children it wants now, reconciles
the process slots and carries out the actions, one log line per decision.

Lifecycle: start-up checks (every command resolvable, etcd reachable, member
id free) happen before anything is started, so a bad start never half-
applies. On SIGTERM/SIGINT: stop every child (each with its own
stop_timeout, in parallel), then leave/resign and revoke the lease so others
react at once, then exit 0. A second SIGTERM/SIGINT kills the children at
once. As PID 1 (or anywhere) the supervisor is a child subreaper and reaps
orphaned grandchildren without stealing its own children's statuses.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .. import timing
from ..config import Config, EtcdKind, RoleType, unresolved_command
from ..coord import open_backend, read_password
from ..coord.base import Backend
from ..coord.errors import CoordError, PermissionDenied
from ..coord.keys import ClusterKeys
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..events import Effect, EffectDone, RoleEvent, SessionChanged, Signalled, Wake
from ..process._linux import scrub_initial_environ
from ..process.manager import ProcessManager
from ..process.slot import SlotEvent, SlotState
from ..roles.base import RoleRunner, RuntimeContext, describe
from ..roles.resume import start_restored as start_runner
from .barriers import BarrierFact, BarrierGate
from .child_health import ChildHealth
from .control import ControlChanged
from .effects import EffectRunner
from .health import HttpError
from .joined import Joined, present
from .member import MemberRecord
from .ops import Operations
from .private_files import remove_stale_config_dirs
from .reconcile import Reconciler
from .reload import ConfigFileWatcher, ReloadPlan, plan_reload
from .rollout_watch import MembersChanged, RolloutsChanged, RolloutWatch
from .rollouts import ROLLOUT_LANE, Rollouts
from .roster import Roster
from .stale import clear_dead_members
from .store_health import StoreHealth
from .upgrade import HELD_SIGNALS, Resume, Upgrader, abandon, take
from .waitlog import WaitLog
from .wiring import WIRING_LANE, SeedWiring

if TYPE_CHECKING:  # only an embedded etcd needs the launcher (and its HTTP client)
    from ..etcd_server import EtcdServer

log = logging.getLogger("etcdvisor")

IDLE_WAKEUP = 30.0  # the loop sleeps at most this long with nothing to do
SUPERVISOR_LANE = "(supervisor)"  # effect lane of the member's own I/O (record, reload)


class StartupError(Exception):
    """One line explaining why the supervisor cannot start."""


def build_runners(config: Config, ctx: RuntimeContext, names: Iterable[str]) -> list[RoleRunner]:
    """Construct the runners of ``names`` (no I/O); every check that can fail
    without the store happens here, before anything joins or starts. Raises
    StartupError naming the role."""
    types = runner_types()
    built = []
    for name in names:
        role = config.roles[name]
        if role.type not in types:
            raise StartupError(f"{config.source_path}: roles.{name}.type: "
                               f"{role.type.value!r} roles are not supported by this build")
        try:
            built.append(types[role.type](role, ctx))
        except Exception as exc:  # noqa: BLE001 - any refusal is one line naming the role
            raise StartupError(f"{config.source_path}: roles.{name}: {describe(exc)}") from None
    return built


def runner_types() -> dict[RoleType, type[RoleRunner]]:
    from ..roles.cron import CronRunner
    from ..roles.job import JobRunner
    from ..roles.sharded import ShardedRunner
    from ..roles.singleton import SingletonRunner
    from ..roles.topic import TopicRunner

    return {RoleType.SHARDED: ShardedRunner, RoleType.SINGLETON: SingletonRunner,
            RoleType.CRON: CronRunner, RoleType.JOB: JobRunner, RoleType.TOPIC: TopicRunner}


class Supervisor:
    # made by start() (or by a test harness): see runtime/joined.py
    backend: Joined[Backend] = Joined()
    session: Joined[Session] = Joined()
    manager: Joined[ProcessManager] = Joined()
    reconciler: Joined[Reconciler] = Joined()
    roster: Joined[Roster] = Joined()
    record: Joined[MemberRecord] = Joined()
    gate: Joined[BarrierGate] = Joined()
    ctx: Joined[RuntimeContext] = Joined()

    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 watch_config: bool = False,
                 process_layer: Callable[[], ProcessManager] | None = None):
        """``process_layer()`` makes the member's process manager at start (default:
        real children, the supervisor a subreaper); the fleet simulator passes a
        manager whose runs are records (``etcdvisor.testing.fake_process``)."""
        self.config = config
        self._process_layer = process_layer or functools.partial(ProcessManager, subreaper=True)
        self._crashed = False  # crash(): leave as a killed supervisor would
        self.environ = dict(os.environ if environ is None else environ)
        self._own_environ = environ is None  # scrub secrets from os.environ too
        self.clock = clock
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.keys = ClusterKeys(config.cluster)
        self.effects = EffectRunner(self.inbox.put, clock=clock)
        self.stopping = False
        self.escalated = False
        self.embedded: EtcdServer | None = None
        self.watch_config = watch_config
        self.file_watcher: ConfigFileWatcher | None = None
        self.wiring: SeedWiring | None = None
        self._record_retry: float | None = None
        self._reload_running = False  # a reload is being checked off the loop
        self._last_status: dict[str, Any] = {}
        self.ops = Operations(self)  # metrics, probes, control verbs (runtime/ops.py)
        # probes, sd_notify, readiness, needs (runtime/child_health.py)
        self.child_health = ChildHealth(self.inbox.put, config.member.id, self.ops.metrics, clock)
        self.readiness = self.child_health.readiness
        self.exit_status = 0  # 3: a role with on_failed: exit went FAILED
        self._reload_again = False  # another SIGHUP came meanwhile
        self.rollouts: Rollouts | None = None  # rolling restarts (runtime/rollouts.py)
        self.rollout_watch: RolloutWatch | None = None
        # etcd unreachable: one line per backoff step (the url is known once connected)
        self.wait_log = WaitLog()  # waits over a second: one line when they begin, one when they end
        self.store_health = StoreHealth(config.etcd.url or "etcd", timing.KEEPALIVE_INTERVAL, clock=clock)
        # in-place upgrade (runtime/upgrade.py): the old image's side, and the new image's
        self.upgrader = Upgrader(self)
        self.resume: Resume | None = None
        self.upgrades = 0  # in-place upgrades of this member since it joined
        self.last_upgrade: dict[str, Any] | None = None
        self._password: str | None = None  # kept for re-authentication and an upgrade's hand-over

    @property
    def runners(self) -> dict[str, RoleRunner]:
        roster = present(self, "roster")
        return roster.runners if roster is not None else {}

    # --- start-up ------------------------------------------------------------
    def check_commands(self) -> None:
        problem = unresolved_command(self.config, list(self.config.roles),
                                     self.environ.get("PATH", os.defpath))
        if problem:
            raise StartupError(problem)

    def _take_password(self) -> str | None:
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
        password = self.resume.password if self.resume is not None and resumed else self._take_password()
        self._password = password
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

    def start(self) -> None:
        """All or nothing: commands, etcd and every runner are checked before
        the member joins (lease, member record) or starts a child."""
        handed = take(self)  # a re-executed member (upgrade): its hand-over state
        self.resume = Resume(self, handed) if handed is not None else None
        self.check_commands()
        try:
            self.ops.listen()
        except HttpError as exc:
            raise StartupError(str(exc)) from None
        url = self.connect()
        member = self.config.member
        # runners are built before the lease exists; their __init__ never reads ctx.session
        self.ctx = RuntimeContext(config=self.config, backend=self.backend,
                                  session=None,  # type: ignore[arg-type]  # set just below
                                  keys=self.keys,
                                  member_id=member.id, endpoints=url, post=self.inbox.put,
                                  clock=self.clock, base_env=self.environ, metrics=self.ops.metrics)
        runners = build_runners(self.config, self.ctx, list(self.config.roles))
        resume = self.resume
        if resume is None:
            # members of a previous run known dead (same host, boot and pid namespace, pids gone):
            # revoke their leases before joining, so nothing waits for them or counts them
            clear_dead_members(self.backend, self.keys.members, self.config.cluster)
        else:
            resume.restore_runners(runners)
        try:
            session = Session(self.backend, member.ttl, name=member.id)
            self.session = session.start() if resume is None else resume.resume_session(session)
        except CoordError as exc:
            raise StartupError(f"cannot create the member lease: {exc}") from None
        self.ctx.session = self.session
        self.session.add_listener(lambda ev: self.inbox.put(SessionChanged(ev)))
        self.record = MemberRecord(self.backend, self.keys.member(member.id), member.id, clock=self.clock,
                                   ttl=member.ttl)
        if resume is not None:
            self.record.started, self.record.upgraded = resume.started, time.time()
            self.upgrades = self.record.upgrades = resume.upgrades
            self.ops.metrics.upgrades.inc(resume.upgrades)
        try:
            self.record.register(self.session.lease_id, resume.state.get("status") or {} if resume else {})
        except CoordError as exc:
            raise StartupError(str(exc)) from None
        self.manager = self._process_layer()
        if resume is not None:
            resume.attach_manager()  # the old image's watchdog helper and cgroup base
        self.manager.start()
        self.child_health.attach(self.manager)
        if self.embedded is not None and self.embedded.proc is not None:
            self.manager.protect_pid(self.embedded.proc.pid)
            if self.manager.watchdog is not None:
                self.manager.watchdog.register(self.embedded.proc.pid)
        if self.manager.watchdog is not None:
            self.record.set_watchdog(self.manager.watchdog.pid)
        self.reconciler = Reconciler(self.manager)
        self.reconciler.observer = self._on_slot_event
        self.reconciler.lease_confirmed(self.session.last_alive_sent, self.session.ttl)
        self.roster = Roster(self.reconciler, self.effects.submit)
        if resume is not None:
            resume.queue_adoptions()
        remove_stale_config_dirs(self.config.cluster, member.id)
        watchdog = self.manager.watchdog
        self.wiring = SeedWiring(self.config, self.backend, self.session, member.id, self.inbox.put,
                                 self.clock, self.reconciler,
                                 lambda what, call, done=None: self.effects.submit(
                                     Effect(WIRING_LANE, 0, what, call, done)),
                                 fail_role=self._fail_role,
                                 on_directory=watchdog.remove_on_exit if watchdog is not None else None)
        self.ctx.config_env = self.wiring.child_env
        self.ctx.notify_socket = self.child_health.notify_socket
        self.ctx.children_health = self._children_health
        self.attach_rollouts()
        if resume is not None:
            resume.reuse_directories()
        self.wiring.start()
        self.rollout_watch = RolloutWatch(self.backend, self.keys, self.inbox.put).start()
        self.gate = BarrierGate(self.config, self.keys, self.backend, self.inbox.put)
        self.gate.start()
        self.ops.start()
        if resume is not None:
            resume.restore_control()
        log.info("member %s joined cluster %s at %s (lease %x, ttl %ds), roles: %s", member.id,
                 self.config.cluster, url, self.session.lease_id, self.session.ttl,
                 ", ".join(f"{r.name}({r.type.value})" for r in self.config.roles.values()) or "none")
        bound = {r.name: r.stop_timeout for r in self.config.roles.values() if r.lease_bound}
        log.info("lease timing: %s", timing.config_tolerance_line(self.session.ttl, bound))
        for runner in runners:
            try:
                start_runner(runner)
            except CoordError as exc:
                raise StartupError(f"role {runner.name}: cannot start: {exc}") from None
            self.roster.add_started(runner)
        if self.watch_config:
            self.file_watcher = ConfigFileWatcher(self.config.source_path, self.inbox.put,
                                                  signal.SIGHUP).start()

    def _fail_role(self, name: str, what: str, error: BaseException) -> None:
        """A role's wiring cannot work (store refused a key, path escape): FAILED once."""
        runner = self.runners.get(name)
        if runner is None or runner.failed_reason is not None:
            return
        hint = " (the grants each feature needs: docs/etcd-auth.md)" if isinstance(error, PermissionDenied) else ""
        text = " ".join(str(error).split()) or describe(error)  # our own errors: the message says it all
        self.roster.refuse(runner, f"{what}: {text}{hint}")

    def attach_rollouts(self) -> Rollouts:
        """Make the rolling-restart controller (after the session, reconciler and wiring)."""
        session = self.session
        self.rollouts = Rollouts(
            self.config, self.backend, self.keys, self.config.member.id,
            lambda what, call, done=None: self.effects.submit(Effect(ROLLOUT_LANE, 0, what, call, done)),
            self.reconciler.children, lambda: session.lease_id, self.clock, time.time, self.readiness.ready_since)
        if self.wiring is not None:
            self.wiring.config.rolling = True
            self.rollouts.gate = self.wiring.config
        return self.rollouts

    def _on_slot_event(self, role: str, event: SlotEvent) -> None:
        self.ops.on_slot_event(role, event)
        if self.rollouts is not None:
            self.rollouts.observe(role, event)

    # --- the loop ------------------------------------------------------------
    def install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: self.inbox.put(Signalled(s)))
        signal.signal(signal.SIGHUP, lambda s, _f: self.inbox.put(Signalled(s)))
        signal.signal(signal.SIGUSR2, lambda s, _f: self.inbox.put(Signalled(s)))  # upgrade in place
        signal.signal(signal.SIGCHLD, lambda s, _f: self.inbox.put(Wake("SIGCHLD")))
        # a re-executed member (upgrade) starts with these blocked: what came meanwhile is acted on now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)

    def run(self, *, signals: bool = True) -> int:
        """Start, turn the loop until a stop, stop the children, leave. ``signals``:
        install the signal handlers (main thread only; the fleet simulator runs
        members in threads and posts ``Signalled`` events itself)."""
        if signals:
            self.install_signals()
        try:
            self.start()
        except StartupError as exc:
            if self.resume is not None:  # re-executed by an upgrade: never leave its children behind
                abandon(f"cannot continue after the upgrade: {exc}")
            self.close()
            raise
        try:
            while not self.stopping and not self._crashed:
                self._turn()
            if self._crashed:
                return self._abandon()
            return self.shutdown()
        except BaseException:
            self._emergency_stop()
            raise

    def crash(self) -> None:
        """(Any thread) end ``run`` as SIGKILL would: children killed at once, no
        record or lease cleanup: the lease stays until it expires, so the others
        see the member go only then. For the fleet simulator and tests."""
        self._crashed = True
        self.inbox.put(Wake("crash"))

    def _abandon(self) -> int:
        self._kill_children()  # no tick after: the slots would start them again
        self.close(revoke=False)
        return 137

    def _turn(self) -> None:
        now = self.clock()
        deadline = self._next_deadline()
        timeout = IDLE_WAKEUP if deadline is None else min(IDLE_WAKEUP, max(0.0, deadline - now))
        events = []
        try:
            events.append(self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait())
        except queue.Empty:
            pass
        while True:
            try:
                events.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for event in events:
            self._dispatch(event)
        self._reconcile(self.clock())
        if not self.stopping and self.child_health.failed_exit(self.config, self._last_status):
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
                          self._last_status)
        if self.resume is not None:
            self.resume.after_turn(after)
        self.upgrader.tick()  # re-executes here when an upgrade is checked and the member quiet

    def _next_deadline(self) -> float | None:
        deadlines = [self.reconciler.next_deadline(), self._record_retry, self.roster.next_deadline(),
                     self.store_health.next_deadline(), self.wait_log.next_deadline(),
                     self.wiring.next_deadline() if self.wiring is not None else None,
                     self.child_health.next_deadline(),
                     self.rollouts.next_deadline() if self.rollouts is not None else None,
                     self.upgrader.next_deadline(), self.resume.next_deadline() if self.resume is not None else None]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def _dispatch(self, event: object) -> None:
        if isinstance(event, Signalled):
            self._on_signal(event.signum)
        elif isinstance(event, SessionChanged):
            self._on_session(event.event)
        elif isinstance(event, BarrierFact):
            self.gate.update(event)
            if event.denied is not None:
                for role in self.gate.waiting(event.name):
                    self._fail_role(role, f"barrier {event.name}", event.denied)
        elif isinstance(event, ControlChanged):
            self.ops.on_control(event)
        elif isinstance(event, (RolloutsChanged, MembersChanged)):
            if self.rollouts is not None:
                self.rollouts.handle(event)
        elif self.child_health.handles(event):
            pass
        elif self.wiring is not None and self.wiring.owns(event):
            self.wiring.handle(event)
        elif isinstance(event, RoleEvent):
            if event.role in (SUPERVISOR_LANE, WIRING_LANE, ROLLOUT_LANE):
                self._supervisor_effect_done(event.payload)
            else:
                self.roster.deliver(event)

    def _effect(self, what: str, call: Callable[[], Any],
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
                self._request_reload()
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
            self._effect("re-register the member", lambda: self.record.register(event.lease_id, roles))
            if self.wiring is not None:
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

    # --- reload ------------------------------------------------------------------
    def _request_reload(self) -> None:
        """Check the file off the loop (it may take seconds); children keep
        running meanwhile and lease deadlines keep moving."""
        if self._reload_running:
            self._reload_again = True
            return
        self._reload_running = True
        log.debug("reload: checking %s off the loop", self.config.source_path)
        config, environ = self.config, dict(self.environ)
        self._effect("check the config file for reload", lambda: plan_reload(config, environ),
                     self._reload_checked)

    def _reload_checked(self, plan: ReloadPlan | None, error: BaseException | None) -> None:
        self._reload_running = False
        if plan is not None:
            log.debug("reload check done: retire %s, start %s", list(plan.retire), list(plan.start))
        elif error is None:
            log.debug("reload check done: nothing to apply")
        if error is not None:
            log.error("reload refused, keeping the running config: %s", describe(error))
        elif plan is not None and not self.stopping:
            self._apply_reload(plan)
        if self._reload_again and not self.stopping:
            self._reload_again = False
            self._request_reload()

    def _apply_reload(self, plan: ReloadPlan) -> None:
        try:
            fresh = build_runners(plan.config, self.ctx, plan.start)
        except StartupError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.config = self.ctx.config = plan.config
        if self.wiring is not None:
            self.wiring.reconfigure(plan.config)
        if self.rollouts is not None:
            self.rollouts.config = plan.config
        self.roster.retire(plan.retire)
        self.roster.queue(fresh)
        self.gate = self.gate.rebuild(self.config)

    # --- reconcile ---------------------------------------------------------------
    def _reconcile(self, now: float) -> None:
        lease_ok = self.session.alive
        self.child_health.needs_wake = None
        self.roster.settle()
        wiring = self.wiring  # None: a loop built without start() (tests)
        if wiring is not None:
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
                self.roster.apply(runner, wiring.gate(runner, desired) if wiring else desired)
            events = self.reconciler.tick(now)
            if wiring is not None:
                wiring.after_tick(events)
            if not events:
                break
            now = self.clock()
        self.child_health.after_reconcile(self.reconciler.children(), now)
        if self.rollouts is not None:
            self.rollouts.tick(now)
        self._last_status = self._roles_status(now)
        self._log_waits(now)
        self._update_record(now if lease_ok else None)

    def _log_waits(self, now: float) -> None:
        waits = []
        for name, runner in self.runners.items():
            held = self.gate.waiting_on(name)
            if held:
                waits.append((name, "start held back by barriers: waits for " + ", ".join(held)))
            if self.ops.paused(name):
                continue
            found: list[str] = self.roster.call(runner, "describe_waits",
                                                   functools.partial(runner.describe_waits, now), [])
            waits += [(name, what) for what in found]
        self.wait_log.update(waits, now)

    def _update_record(self, now: float | None) -> None:
        """Rewrite the member record when the roles' status changed (rate-
        limited, off the loop); never while the store is known unreachable."""
        if now is None:
            self._record_retry = None
            return
        roles = self._last_status
        urgent = self.rollouts is not None and self.rollouts.record_wanted
        body, self._record_retry = self.record.plan_update(roles, now, urgent=urgent,
                                                           ready_by=self.readiness.ready_by)
        if body is not None:
            self._effect("update the member record", lambda: self.record.write(body),
                         lambda _r, error: self.record.written(roles, error is None))

    def _roles_status(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        status = {name: self.roster.status(runner) for name, runner in self.runners.items()}
        for name in status:
            waiting = self.gate.waiting_on(name)
            if waiting:
                status[name]["waiting_for"] = waiting
            if self.ops.paused(name):
                status[name]["paused"] = True
            registered = self.wiring.status(name) if self.wiring is not None else None
            if registered:
                status[name]["registered"] = registered
            rollout = self.rollouts.status(name) if self.rollouts is not None else None
            if rollout:
                status[name]["rollout"] = rollout
        for runner, key, slot in self.reconciler.children():
            if runner.name not in status or self.runners.get(runner.name) is not runner:
                continue  # a runner retiring after a reload
            child = slot.child
            entry = status[runner.name].setdefault("children", {})
            spec = child.spec if child else slot.desired
            entry[key] = {"name": slot.child_name, "state": slot.state.value, "pid": child.pid if child else None,
                          "restarts": slot.restarts, "last_exit": slot.last_exit,
                          "index": spec.vars.index if spec is not None else None,
                          "restarts_by_reason": dict(slot.restarts_by_reason),
                          **self.readiness.status(slot.name, now)}
        return status

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

    def _children_health(self, role: str) -> dict[str, tuple[bool, bool | None]]:
        """(RuntimeContext.children_health) slot key -> (child alive, ready or None).
        Readiness is judged for a running child only: a crash-looping one (in backoff)
        ends FAILED through ``start_retries``, it does not make its leader step down."""
        now = self.clock()
        health = {}
        for runner, key, slot in self.reconciler.children():
            if runner.name == role and self.runners.get(role) is runner:
                judged = slot.state is SlotState.RUNNING and slot.child is not None
                health[key] = (slot.child is not None, self.readiness.ready(slot.name, now) if judged else None)
        return health

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
            self.ops.end_turn(self.clock(), 0.5, self._last_status)  # still alive while stopping

    def close(self, *, revoke: bool = True) -> None:
        """Stop every edge thread and leave; ``revoke=False`` leaves the lease to
        expire (``crash``)."""
        self.ops.stop()
        if self.rollout_watch is not None:
            self.rollout_watch.stop()
        self.child_health.close()
        if self.file_watcher is not None:
            self.file_watcher.stop()
        if self.wiring is not None:
            self.wiring.close()
        gate, session = present(self, "gate"), present(self, "session")
        if gate is not None:
            gate.stop()
        self.effects.close()
        if session is not None:
            session.close(revoke=revoke)
        for name in ("manager", "backend"):  # whatever a partial start made
            part = present(self, name)
            if part is not None:
                part.close()
        if self.embedded is not None:
            self.embedded.stop()

    def _emergency_stop(self) -> None:
        """An unexpected error in the loop: never leave children behind."""
        log.exception("supervisor loop crashed; killing children")
        if present(self, "reconciler") is not None:
            self._kill_children()
        self.close()

    def _kill_children(self) -> None:
        """SIGKILL every child's group (and escaped descendants) now."""
        for _, _, slot in self.reconciler.children():
            if slot.child is not None:
                slot.child.kill()
