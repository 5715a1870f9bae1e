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

On the new image (:func:`take` from ``Supervisor.start``): the state is read and
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

import base64
import contextlib
import functools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..config import EtcdKind
from ..process import adopt
from ..process.cgroup import CgroupPool
from ..process.slot import Slot
from ..process.spawn import ChildSpec
from ..roles.base import describe
from ..roles.resume import ResumeError, export_state, restore_state
from . import handover
from .notify import NotifyHub

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("etcdvisor")

QUIESCE_BOUND = 1.0  # seconds the loop may wait for effects in flight before the exec
GIVE_UP_AFTER = 30.0  # seconds an upgrade waits for stopping children / a quiet moment
CHECK_TIMEOUT = 120.0  # seconds the pre-exec check may take (an import on an overloaded machine)
ADOPT_GRACE = 10.0  # seconds a handed-over child waits for its runner to ask for it
ABANDON_BOUND = 10.0  # seconds children get to stop when the state cannot be read
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

    def __init__(self, sup: Supervisor):
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
        sup._effect("check the new code for the upgrade", lambda: check_new_code(path, environ), self._checked)

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
        if sup._reload_running:
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
                sup._dispatch(event)
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


def collect_state(sup: Supervisor, began: float) -> dict[str, Any]:
    session = sup.session
    manager = sup.manager
    watchdog = adopt.export_watchdog(manager.watchdog) if manager.watchdog is not None else None
    cgroups = manager.tracker.cgroups
    slots = {name: adopt.export_slot(slot) for name, slot in
             ((slot.name, slot) for _r, _k, slot in sup.reconciler.children())}
    password = sup._password if sup.config.etcd.password_env else None
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
                        "config": sup.wiring.config.directory if sup.wiring is not None else None},
        "status": sup._last_status,  # the member record keeps showing it until the new image rewrites it
    }


def _export_probe(run: Any) -> dict[str, Any]:
    return {"tag": run.tag, "startup_done": run.startup_done, "notify_ready": run.notify_ready,
            "ready_since": run.ready_since, "healthy": run.healthy,
            "checks": {kind: {"successes": c.successes, "failures": c.failures, "passed": c.passed,
                              "ever_passed": c.ever_passed, "next_at": c.next_at}
                       for kind, c in run.checks.items()}}


# --- the new image ----------------------------------------------------------------------------
_taken: list[dict[str, Any] | None] = []  # the hand-over, once read (the descriptor is read once)


def _handed() -> dict[str, Any] | None:
    if not _taken:
        try:
            _taken.append(handover.take_from_environ(os.environ))
        except handover.HandoverError as exc:
            abandon(str(exc))
    return _taken[0]


def handed_config(path: str) -> Any:
    """``supervisor run`` of a re-executed member: the config the pre-exec check loaded
    (the new code read ``path`` moments ago), or None (a normal start: load it)."""
    doc = _handed()
    config = (doc or {}).get("state", {}).get("config") or {}
    if not config.get("pickle") or config.get("path") != path:
        return None
    import pickle

    from ..config import isolated  # noqa: F401 - registers the read-only mapping reducer

    try:
        return pickle.loads(base64.b64decode(config["pickle"]))
    except Exception as exc:  # noqa: BLE001 - any failure: load the file as usual
        log.warning("upgrade: the checked config cannot be used (%s); loading %s again", describe(exc), path)
        return None


def take(sup: Supervisor) -> dict[str, Any] | None:
    """The hand-over state of a re-executed member (None: a normal start). The
    variable is removed from every environment a child could inherit."""
    sup.environ.pop(handover.ENV, None)
    return _handed()


def abandon(reason: str) -> NoReturn:
    """The new image cannot continue: stop every child cleanly, then exit 1. Children
    are found as this process's children (they stayed ours through the exec); the
    watchdog helper is left alone: it kills whatever is left when we are gone."""
    log.error("upgrade failed: %s; stopping the children and exiting", reason)
    me = os.getpid()
    helper_marks = ("etcdvisor.process.watchdog_main", "watchdog_main.py")
    groups = []
    for pid in _children_of(me):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in helper_marks):
            continue
        groups.append(pid)
        try:
            os.killpg(pid, signal.SIGTERM)
            os.killpg(pid, signal.SIGCONT)
        except OSError:
            pass
    deadline = time.monotonic() + ABANDON_BOUND
    waiting = set(groups)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                waiting.discard(pid)
        if waiting:
            threading.Event().wait(0.05)  # no loop, no events: the process is on its way out
    for pid in waiting:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    logging.shutdown()
    os._exit(1)  # the helper sees its pipe close and kills anything that escaped


def _children_of(pid: int) -> list[int]:
    found = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            found = [int(p) for p in fh.read().split()]
    except OSError:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as fh:
                        if int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                            found.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
    return found


class Resume:
    """The new image's side, driven by ``Supervisor.start`` and the first turns."""

    def __init__(self, sup: Supervisor, doc: dict[str, Any]):
        self.sup = sup
        self.doc = doc
        self.state: dict[str, Any] = doc["state"]
        self.from_version = str(doc.get("from_version"))
        self.pending: dict[str, dict[str, Any]] = {}
        self.grace_until: float | None = None
        self.probes: dict[str, dict[str, Any]] = dict(self.state.get("probes") or {})
        self.reported = False
        self.read_at = time.monotonic()  # the new image has read its state (interpreter started, imports done)
        try:
            member = self.state["member"]
            self.lease, self.ttl = int(member["lease"]), int(member["ttl"])
            self.last_alive_sent = float(member["last_alive_sent"])
            self.started = float(member["started"])
            self.upgrades = int(member["upgrades"])
            self.password = member.get("password")
            if member["id"] != sup.config.member.id:
                raise ValueError(f"member id {member['id']!r}, the config now says {sup.config.member.id!r}")
        except (KeyError, TypeError, ValueError) as exc:
            abandon(f"unreadable hand-over state: {type(exc).__name__}: {exc}")

    # --- start ----------------------------------------------------------------------
    def resume_session(self, session: Any) -> Any:
        """Keep the old image's lease alive (one keepalive at once)."""
        return session.resume(self.lease, self.ttl, self.last_alive_sent)

    def attach_manager(self) -> None:
        """Before ``manager.start()``: the helper and the cgroup base of the old image."""
        manager = self.sup.manager
        cgroups = self.state.get("cgroups")
        if cgroups is not None and manager._use_cgroups:
            pool = CgroupPool(cgroups["base"])
            pool._count = int(cgroups["count"])
            manager.tracker.cgroups = pool
        watchdog = self.state.get("watchdog")
        if watchdog is not None and manager.watchdog is not None:
            adopt.attach_watchdog(manager.watchdog, watchdog)
        for doc in self.state["slots"].values():
            child = doc.get("child")
            if child:
                manager.protect_pid(int(child["pid"]))

    def reuse_directories(self) -> None:
        """The children's NOTIFY_SOCKET and config file paths stay what they were."""
        directories = self.state.get("directories") or {}
        notify, config = directories.get("notify"), directories.get("config")
        sup = self.sup
        if notify and os.path.isdir(notify) and sup.child_health.notify is None:
            sup.child_health.notify = NotifyHub(sup.child_health.post, directory=notify)
        if config and os.path.isdir(config) and sup.wiring is not None:
            sup.wiring.config.reuse_directory = config

    def restore_runners(self, runners: list[Any]) -> None:
        roles = self.state["roles"]
        for runner in runners:
            doc = roles.get(runner.name)
            if doc is None:
                continue
            try:
                restore_state(runner, doc)
            except ResumeError as exc:
                abandon(str(exc))

    def restore_control(self) -> None:
        control = self.sup.ops.control
        doc = self.state["control"]
        control.synced = bool(doc["synced"])
        control.seen = {(str(r), str(v)): int(rev) for r, v, rev in doc["seen"]}
        control.paused = dict(doc["paused"])

    def queue_adoptions(self) -> None:
        reconciler = self.sup.reconciler
        for name, doc in self.state["slots"].items():
            self.pending[name] = doc
            reconciler.adoptions[name] = functools.partial(self._adopt, name, doc)

    def _adopt(self, name: str, doc: dict[str, Any], slot: Slot, spec: ChildSpec | None) -> None:
        self.pending.pop(name, None)
        manager = self.sup.manager
        adopt.adopt_slot(manager, slot, doc, spec)
        child = slot.child
        if child is not None:
            child.set_lease_deadlines(*slot._lease, sync_watchdog=True)
            manager.unprotect_pid(int(child.pid or 0))
            if child.spec is not spec:
                differs = adopt.spec_difference(spec, doc["child"]["digest"])
                log.info("%s: pid %s differs from what the new code wants here (%s): replacing it",
                         child.spec.name, child.pid, ", ".join(differs[:8]))

    # --- each turn ----------------------------------------------------------------------
    def after_turn(self, now: float) -> None:
        """Adopt leftovers (never asked for within the grace, or of a role gone from the
        config) as slots that stop their child; restore probe state; log the gap once."""
        if not self.reported:
            self.reported = True
            self._report(now)
        if self.grace_until is None:
            self.grace_until = now + ADOPT_GRACE
        for name, doc in list(self.pending.items()):
            role = name.split("/", 1)[0]
            if role in self.sup.runners and now < self.grace_until:
                continue
            self.sup.reconciler.adoptions.pop(name, None)
            self.pending.pop(name, None)
            slot = self.sup.manager.new_slot(None, name=name)
            self._adopt(name, doc, slot, None)
            log.info("%s: no role asks for this child after the upgrade: stopping it", name)
        self._restore_probes()

    def _restore_probes(self) -> None:
        runs = self.sup.readiness.runs
        for name, doc in list(self.probes.items()):
            run = runs.get(name)
            if run is None:
                if name not in self.pending:
                    del self.probes[name]
                continue
            del self.probes[name]
            if run.tag != doc["tag"]:
                continue
            run.startup_done, run.notify_ready = doc["startup_done"], doc["notify_ready"]
            run.ready_since, run.healthy = doc["ready_since"], doc["healthy"]
            for kind, check in doc["checks"].items():
                mine = run.checks.get(kind)
                if mine is not None:
                    mine.successes, mine.failures = check["successes"], check["failures"]
                    mine.passed, mine.ever_passed = check["passed"], check["ever_passed"]
                    mine.next_at = check["next_at"]

    def next_deadline(self) -> float | None:
        if not self.pending and not self.probes:
            return None
        return self.grace_until if self.grace_until is not None else 0.0

    def _report(self, now: float) -> None:
        stopped = float(self.state.get("loop_stopped_at") or now)
        session = self.sup.session
        exec_at = float(self.state.get("exec_at") or stopped)
        figures = {"from": self.from_version, "to": __version__,
                   "loop_gap": round(now - stopped, 3), "quiesce": round(exec_at - stopped, 3),
                   "interpreter": round(self.read_at - exec_at, 3), "rejoin": round(now - self.read_at, 3),
                   "keepalive_gap": round(session.last_alive_sent - self.last_alive_sent, 3),
                   "children": sum(1 for d in self.state["slots"].values() if d.get("child"))}
        self.sup.last_upgrade = figures
        log.info("upgrade done: %s", json.dumps(figures, sort_keys=True))
