"""Upgrade in place, the new image's side (the old image's: :mod:`.upgrade`).

A re-executed member finds its hand-over state (:func:`take`, read once); the builder
(:mod:`.build`) keeps the lease alive from where it was, re-attaches the watchdog helper
and the cgroup base, restores the runners and queues every child for adoption
(:class:`Resume`); the first turns of the loop adopt what no role asks for and restore
the probes' state. A state the new code cannot read: :func:`abandon` stops the
children and the process exits 1.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..coord.session import Session
from ..process import adopt
from ..process.cgroup import CgroupPool
from ..process.manager import ProcessManager
from ..process.slot import Slot
from ..process.spawn import ChildSpec
from ..roles.base import RoleRunner, describe
from ..roles.resume import ResumeError, restore_state
from . import handover
from .control import ControlState
from .notify import NotifyHub

if TYPE_CHECKING:
    from .child_health import ChildHealth
    from .readiness import Readiness
    from .reconcile import Reconciler
    from .wiring import SeedWiring

log = logging.getLogger("etcdvisor")

ADOPT_GRACE = 10.0  # seconds a handed-over child waits for its runner to ask for it
ABANDON_BOUND = 10.0  # seconds children get to stop when the state cannot be read

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


def take(environ: dict[str, str]) -> dict[str, Any] | None:
    """The hand-over state of a re-executed member (None: a normal start). The
    variable is removed from ``environ``, the one children inherit."""
    environ.pop(handover.ENV, None)
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
    """The new image's side, driven by the builder (:mod:`.build`) and the first turns."""

    def __init__(self, doc: dict[str, Any], member_id: str):
        self.doc = doc
        self.figures: dict[str, Any] | None = None  # the ``upgrade done`` line's, once logged
        self._reconciler: Reconciler | None = None  # set by queue_adoptions()
        self._manager: ProcessManager | None = None
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
            if member["id"] != member_id:
                raise ValueError(f"member id {member['id']!r}, the config now says {member_id!r}")
        except (KeyError, TypeError, ValueError) as exc:
            abandon(f"unreadable hand-over state: {type(exc).__name__}: {exc}")

    # --- start ----------------------------------------------------------------------
    def resume_session(self, session: Session) -> Session:
        """Keep the old image's lease alive (one keepalive at once)."""
        return session.resume(self.lease, self.ttl, self.last_alive_sent)

    def attach_manager(self, manager: ProcessManager) -> None:
        """Before ``manager.start()``: the helper and the cgroup base of the old image."""
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

    def reuse_directories(self, child_health: ChildHealth, wiring: SeedWiring) -> None:
        """The children's NOTIFY_SOCKET and config file paths stay what they were."""
        directories = self.state.get("directories") or {}
        notify, config = directories.get("notify"), directories.get("config")
        if notify and os.path.isdir(notify) and child_health.notify is None:
            child_health.notify = NotifyHub(child_health.post, directory=notify)
        if config and os.path.isdir(config):
            wiring.config.reuse_directory = config

    def restore_runners(self, runners: list[RoleRunner]) -> None:
        roles = self.state["roles"]
        for runner in runners:
            doc = roles.get(runner.name)
            if doc is None:
                continue
            try:
                restore_state(runner, doc)
            except ResumeError as exc:
                abandon(str(exc))

    def restore_control(self, control: ControlState) -> None:
        doc = self.state["control"]
        control.synced = bool(doc["synced"])
        control.seen = {(str(r), str(v)): int(rev) for r, v, rev in doc["seen"]}
        control.paused = dict(doc["paused"])

    def queue_adoptions(self, reconciler: Reconciler, manager: ProcessManager) -> None:
        self._reconciler, self._manager = reconciler, manager
        for name, doc in self.state["slots"].items():
            self.pending[name] = doc
            reconciler.adoptions[name] = functools.partial(self._adopt, name, doc)

    def _adopt(self, name: str, doc: dict[str, Any], slot: Slot, spec: ChildSpec | None) -> None:
        self.pending.pop(name, None)
        manager = self._manager
        assert manager is not None  # queue_adoptions() came first
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
    def after_turn(self, now: float, runners: Mapping[str, RoleRunner], readiness: Readiness,
                   session: Session) -> None:
        """Adopt leftovers (never asked for within the grace, or of a role gone from the
        config) as slots that stop their child; restore probe state; log the gap once."""
        reconciler, manager = self._reconciler, self._manager
        assert reconciler is not None and manager is not None  # queue_adoptions() came first
        if not self.reported:
            self.reported = True
            self._report(now, session)
        if self.grace_until is None:
            self.grace_until = now + ADOPT_GRACE
        for name, doc in list(self.pending.items()):
            role = name.split("/", 1)[0]
            if role in runners and now < self.grace_until:
                continue
            reconciler.adoptions.pop(name, None)
            self.pending.pop(name, None)
            slot = manager.new_slot(None, name=name)
            self._adopt(name, doc, slot, None)
            log.info("%s: no role asks for this child after the upgrade: stopping it", name)
        self._restore_probes(readiness)

    def _restore_probes(self, readiness: Readiness) -> None:
        runs = readiness.runs
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

    def _report(self, now: float, session: Session) -> None:
        stopped = float(self.state.get("loop_stopped_at") or now)
        exec_at = float(self.state.get("exec_at") or stopped)
        figures = {"from": self.from_version, "to": __version__,
                   "loop_gap": round(now - stopped, 3), "quiesce": round(exec_at - stopped, 3),
                   "interpreter": round(self.read_at - exec_at, 3), "rejoin": round(now - self.read_at, 3),
                   "keepalive_gap": round(session.last_alive_sent - self.last_alive_sent, 3),
                   "children": sum(1 for d in self.state["slots"].values() if d.get("child"))}
        self.figures = figures
        log.info("upgrade done: %s", json.dumps(figures, sort_keys=True))
