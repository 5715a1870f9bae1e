"""Upgrade a running member in place: re-execute the supervisor without stopping a child.

Triggers: ``kill -USR2 <pid>`` or ``supervisor upgrade [--member M]`` (a control record,
``control/_supervisor/upgrade``, see :mod:`.control`). Sequence, on the old image:

1. **check** (an effect, off the loop): a child process runs the interpreter the member
   runs, imports the package as it is on disk now (``etcdvisor.runtime.supervisor``) and
   loads the config file; anything but success is one error line
   (``upgrade refused, keeping the running code: ...``) and nothing else happens;
2. **quiesce** (on the loop, bounded by :data:`QUIESCE_BOUND`): wait until no child is
   being stopped and no reload is checked, then drain the effects in flight (store writes:
   a cron claim, a topic ack) and dispatch the events they posted, so that what the store
   holds and what the hand-over says agree. Not quiet within the bound: try again on a
   later turn, give up after :data:`GIVE_UP_AFTER` with one line;
3. **hand over**: one keepalive (a fresh ``t_k``), then the state (:mod:`.handover`) goes
   into a memfd, the descriptors the children and the watchdog need are made inheritable
   and ``os.execv(sys.executable, sys.orig_argv)`` runs the new code: same argv, same PID.

On the new image (:mod:`.upgraded`, from the builder): the state is read and
checked; the lease is kept alive from where it was (``Session.resume``, one keepalive at
once); the watchdog helper is re-attached (never replaced: it never saw its pipe close,
so there is no window in which a dying supervisor leaves children unguarded); runners are
built from the config file as it is now and restored (:mod:`etcdvisor.roles.resume`);
every child is adopted into the slot its runner asks for (same spec: same child, same
pid; a different spec: replaced, as a reload would); the control watch continues from
the revisions already seen. A state the new code cannot read: :func:`abandon` stops the
children (their stop signal to each group, SIGKILL after a bound) and the process exits 1.

The gap: the loop does not turn from the start of the quiesce to the first turn of the
new image; ``upgrade done`` logs it (``loop_gap``) and the keepalive gap (between the last
keepalive confirmed before the exec and the first one after), and so does the member
record (``upgraded``, ``version``); metrics: ``etcdvisor_upgrades_total``.

Not supported: a member running the embedded etcd (``etcd.endpoints: embedded``; the
server is a child the new image cannot take over): refused with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..config import EtcdKind
from ..process import adopt
from ..roles.base import describe
from ..roles.resume import export_state
from . import handover

if TYPE_CHECKING:
    from ..config import Config
    from ..coord.session import Session
    from ..process.manager import ProcessManager
    from ..roles.base import RoleRunner
    from .child_health import ChildHealth
    from .effects import EffectRunner
    from .member import MemberRecord
    from .ops import Operations
    from .readiness import Readiness
    from .reconcile import Reconciler
    from .reload import Reloads
    from .roster import Roster
    from .wiring import SeedWiring

log = logging.getLogger("etcdvisor")


class Member(Protocol):
    """What an upgrade reads and drives of the running member (the loop)."""

    config: Config
    environ: dict[str, str]
    clock: Callable[[], float]
    inbox: queue.SimpleQueue[object]
    stopping: bool
    reloads: Reloads
    effects: EffectRunner
    session: Session
    password: str | None
    record: MemberRecord
    upgrades: int
    manager: ProcessManager
    reconciler: Reconciler
    roster: Roster
    ops: Operations
    child_health: ChildHealth
    readiness: Readiness
    wiring: SeedWiring
    last_status: dict[str, Any]

    @property
    def runners(self) -> dict[str, RoleRunner]: ...

    def dispatch(self, event: object) -> None: ...

    def effect(self, what: str, call: Callable[[], Any],
               done: Callable[[Any, BaseException | None], None] | None = None) -> None: ...

QUIESCE_BOUND = 1.0  # seconds the loop may wait for effects in flight before the exec
GIVE_UP_AFTER = 30.0  # seconds an upgrade waits for stopping children / a quiet moment
CHECK_TIMEOUT = 120.0  # seconds the pre-exec check may take (an import on an overloaded machine)
# blocked across the exec (the mask survives execve; pending signals wait): a SIGTERM while
# the new image starts is acted on once its handlers are in place, never kills it unhandled
HELD_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD})

CHECK_CODE = """\
import base64, pickle, sys
try:
    import etcdvisor
    import etcdvisor.runtime.supervisor
    import etcdvisor.config.isolated
    from etcdvisor.config import ConfigError
    from etcdvisor.config.loader import load
except BaseException as exc:
    print(f"cannot import the new code: {type(exc).__name__}: {exc}".replace("\\n", " "))
    sys.exit(1)
try:
    config = load(sys.argv[1])
except ConfigError as exc:
    print(exc.errors[0] if exc.errors else str(exc))
    sys.exit(1)
except BaseException as exc:
    print(f"{sys.argv[1]}: cannot load: {type(exc).__name__}: {exc}".replace("\\n", " "))
    sys.exit(1)
print(etcdvisor.__version__)
print(base64.b64encode(pickle.dumps(config)).decode("ascii"))
"""


@dataclass(frozen=True)
class Checked:
    """What the check of the new code found: its version and the config it loaded
    (pickled by the new code, for the new code: the new image skips loading it again)."""

    version: str
    config: str


def check_new_code(config_path: str, environ: Mapping[str, str], python: str = sys.executable) -> Checked:
    """(Effect) Import the package and load the config in a child process that sees
    only what a config check may see (never the etcd password); UpgradeRefused (one
    line) if either fails."""
    from ..config.isolated import check_environment

    try:
        done = subprocess.run([python, "-c", CHECK_CODE, config_path], stdin=subprocess.DEVNULL,
                              env=check_environment(environ), capture_output=True, timeout=CHECK_TIMEOUT,
                              close_fds=True)
    except subprocess.TimeoutExpired:
        raise UpgradeRefused(f"the check of the new code took over {CHECK_TIMEOUT:g}s") from None
    except OSError as exc:
        raise UpgradeRefused(f"cannot run {python}: {exc.strerror or exc}") from None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0 or len(lines) < 2:
        detail = (lines[-1].strip() if lines else "") or _last_line(done.stderr) or f"exit status {done.returncode}"
        raise UpgradeRefused(detail[:400])
    return Checked(lines[-2].strip()[:100], lines[-1].strip())


def _last_line(data: bytes) -> str:
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


class UpgradeRefused(Exception):
    """The new code or config failed its check; one line."""


class Upgrader:
    """The old image's side: request, check, quiesce, exec (loop thread only)."""

    def __init__(self, sup: Member):
        self.sup = sup
        self.checking = False
        self.ready_since: float | None = None  # checked: hand over at the next quiet turn
        self.new_version: str | None = None
        self.checked: Checked | None = None
        self._postponed: str | None = None

    def request(self, why: str) -> None:
        sup = self.sup
        if sup.stopping:
            return
        if sup.config.etcd.kind is EtcdKind.EMBEDDED:
            log.error("upgrade refused (%s): a member running the embedded etcd cannot re-execute "
                      "itself; restart it instead", why)
            return
        if self.checking or self.ready_since is not None:
            log.info("upgrade requested (%s): one is already in progress", why)
            return
        log.info("upgrade requested (%s): checking the new code and %s", why, sup.config.source_path)
        self.checking = True
        path, environ = sup.config.source_path, dict(sup.environ)
        sup.effect("check the new code for the upgrade", lambda: check_new_code(path, environ), self._checked)

    def _checked(self, checked: Checked | None, error: BaseException | None) -> None:
        self.checking = False
        if error is not None or checked is None:
            text = str(error) if isinstance(error, UpgradeRefused) else describe(error or ValueError("no answer"))
            log.error("upgrade refused, keeping the running code: %s", text)
            return
        self.checked, self.new_version = checked, checked.version
        self.ready_since = self.sup.clock()

    def next_deadline(self) -> float | None:
        return None if self.ready_since is None else self.sup.clock() + 0.05

    def tick(self) -> None:
        """At the end of a turn: hand over if checked and quiet."""
        if self.ready_since is None or self.sup.stopping:
            return
        began = self.sup.clock()
        blocker = self._blocker()
        if blocker is None:
            blocker = self._quiesce(began)
        if blocker is None:
            blocker = self._blocker()
        if blocker is None:
            self._hand_over(began)  # returns only if the exec failed
            self.ready_since = None
            return
        if self.sup.clock() - self.ready_since >= GIVE_UP_AFTER:
            log.error("upgrade abandoned, keeping the running code: still %s after %gs", blocker, GIVE_UP_AFTER)
            self.ready_since = None
        elif blocker != self._postponed:
            log.info("upgrade waits: %s", blocker)
        self._postponed = blocker

    def _blocker(self) -> str | None:
        sup = self.sup
        if sup.reloads.running:
            return "a reload is being checked"
        for _runner, _key, slot in sup.reconciler.children():
            why = adopt.handover_blocker(slot)
            if why is not None:
                return why
        for slot in sup.manager.slots:
            why = adopt.handover_blocker(slot)
            if why is not None:
                return why
        return None

    def _quiesce(self, began: float) -> str | None:
        """Run the effects in flight to completion and act on their outcomes."""
        sup = self.sup
        deadline = began + QUIESCE_BOUND
        while True:
            sup.roster.flush_effects()
            if not sup.effects.drain(max(0.0, deadline - sup.clock())):
                return "store writes in flight"
            busy = False
            while True:
                try:
                    event = sup.inbox.get_nowait()
                except queue.Empty:
                    break
                busy = True
                sup.dispatch(event)
            if sup.stopping:
                return "the member is stopping"
            sup.roster.flush_effects()
            if not busy and sup.effects.pending() == 0:
                return None
            if sup.clock() >= deadline:
                return "store writes in flight"

    def _hand_over(self, began: float) -> None:
        sup = self.sup
        session = sup.session
        session._keepalive_once()  # a fresh t_k: the lease's whole TTL is ahead of the new image
        pump = sup.manager.output
        if pump is not None:  # a child exiting now must not close a pipe whose number is handed over
            pump.hold_pipes(True)
        try:
            self._exec_new_image(began)
        finally:  # still here: the upgrade was abandoned
            if pump is not None:
                pump.hold_pipes(False)

    def _exec_new_image(self, began: float) -> None:
        sup = self.sup
        state = collect_state(sup, began)
        state["config"] = {"path": sup.config.source_path, "pickle": self.checked.config if self.checked else None}
        slots = [doc for docs in state["slots"].values() for doc in [docs]]
        watchdog = state["watchdog"]
        fds = adopt.handed_fds(slots, watchdog)
        state["exec_at"] = sup.clock()  # a few ms before the exec: the new interpreter's start-up is measured from it
        data = handover.encode(state, from_version=__version__, pid=os.getpid(), written=time.time())
        try:
            fd = handover.write_fd(data)
        except OSError as exc:
            log.error("upgrade abandoned, keeping the running code: cannot write the hand-over state: %s", exc)
            return
        argv = list(sys.orig_argv)
        log.info("upgrading to %s: re-executing %s (pid %d, %d children, %d bytes of hand-over state)",
                 self.new_version, " ".join(argv), os.getpid(), len(slots), len(data))
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        try:
            adopt.inherit_fds(fds)
        except OSError as exc:  # never expected (the pipes are held open): never crash the member
            for inherited in fds:
                with contextlib.suppress(OSError):
                    os.set_inheritable(inherited, False)
            os.close(fd)
            log.error("upgrade abandoned, keeping the running code: cannot hand over the children's "
                      "descriptors: %s", exc.strerror or exc)
            return
        # the environment the member started with (not what imports added since, e.g. grpc's
        # settings: children of the new image must get the environment the old ones got)
        environ = {**sup.environ, handover.ENV: str(fd)}
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, argv, environ)
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
            for inherited in fds:
                os.set_inheritable(inherited, False)
            os.close(fd)
            log.error("upgrade abandoned, keeping the running code: exec failed: %s", exc.strerror or exc)


def collect_state(sup: Member, began: float) -> dict[str, Any]:
    session = sup.session
    manager = sup.manager
    watchdog = adopt.export_watchdog(manager.watchdog) if manager.watchdog is not None else None
    cgroups = manager.tracker.cgroups
    slots = {name: adopt.export_slot(slot) for name, slot in
             ((slot.name, slot) for _r, _k, slot in sup.reconciler.children())}
    password = sup.password if sup.config.etcd.password_env else None
    control = sup.ops.control
    notify = sup.child_health.notify
    return {
        "member": {"id": sup.config.member.id, "lease": session.lease_id, "ttl": session.ttl,
                   "last_alive_sent": session.last_alive_sent, "started": sup.record.started,
                   "upgrades": sup.upgrades + 1, "password": password},
        "loop_stopped_at": began,
        "watchdog": watchdog,
        "cgroups": {"base": cgroups.base, "count": cgroups._count} if cgroups is not None else None,
        "control": {"synced": control.synced, "seen": [[r, v, rev] for (r, v), rev in control.seen.items()],
                    "paused": control.paused},
        "roles": {name: export_state(runner) for name, runner in sup.runners.items()},
        "slots": slots,
        "probes": {name: _export_probe(run) for name, run in sup.readiness.runs.items()},
        "directories": {"notify": notify.directory if notify is not None else None,
                        "config": sup.wiring.config.directory},
        "status": sup.last_status,  # the member record keeps showing it until the new image rewrites it
    }


def _export_probe(run: Any) -> dict[str, Any]:
    return {"tag": run.tag, "startup_done": run.startup_done, "notify_ready": run.notify_ready,
            "ready_since": run.ready_since, "healthy": run.healthy,
            "checks": {kind: {"successes": c.successes, "failures": c.failures, "passed": c.passed,
                              "ever_passed": c.ever_passed, "next_at": c.next_at}
                       for kind, c in run.checks.items()}}
