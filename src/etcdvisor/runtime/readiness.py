"""Readiness and health of every child of this member, decided on the loop.

One :class:`ChildRun` per running child (a new run per start, told apart by the
child's tag). Semantics, as Kubernetes defines them:

- without a ``readiness`` probe or ``notify``, a child is ready once it has run
  ``min_ready`` (and passed its ``startup`` probe, if any) without exiting;
- with them, it is ready while its readiness probe passes (``success_threshold``
  successes in a row make it ready, ``failure_threshold`` failures unready) and,
  with ``notify``, once it sent ``READY=1`` (``STOPPING=1`` and ``RELOADING=1`` make it
  unready until the next ``READY=1``);
- ``liveness`` and ``readiness`` probes start after ``startup`` succeeded (each after
  its ``initial_delay``); ``startup`` failing ``failure_threshold`` times in a row,
  ``liveness`` failing ``failure_threshold`` times in a row, no ``WATCHDOG=1`` for
  ``watchdog``, or the tree's RSS above ``memory`` restart the child through
  ``Slot.fail_child`` (stop_signal, stop_timeout, backoff; counts toward
  ``start_retries``: a child that was never healthy counts as a quick exit).

Probes are run by :class:`~.probes.ProbeRunner` (never on the loop); their results
and sd_notify messages come back as inbox events (``ProbeDone``,
``NotifyMessage``). A stopping child is not ready. What survives a restart, per slot:
the last probe failure (kind, wall time, one line) and the last ``STATUS=`` text.

Read by the loop (status, metrics, /readyz) and by rollouts:
:meth:`Readiness.ready_since` (``None``: not ready) and :meth:`Readiness.ready`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config.health import expand
from ..config.model import ProbeSpec, RoleSpec
from ..process.child import ChildState
from ..process.slot import Slot
from .probes import ProbeDone, ProbeRunner

log = logging.getLogger("etcdvisor")

PROBE_KINDS = ("startup", "readiness", "liveness")
MEMORY_PERIOD = 1.0  # seconds between RSS samples without a liveness probe


@dataclass(frozen=True)
class NotifyMessage:
    """sd_notify fields one child sent (an inbox event, from runtime.notify)."""

    slot: str
    fields: tuple[tuple[str, str], ...]


@dataclass
class _Check:
    spec: ProbeSpec
    next_at: float | None  # None: not started (waits for startup)
    successes: int = 0
    failures: int = 0
    in_flight: bool = False
    passed: bool = False
    ever_passed: bool = False


@dataclass
class ChildRun:
    """The health of one run of one child."""

    slot: Slot
    role: RoleSpec
    tag: str
    pid: int
    started_at: float
    checks: dict[str, _Check] = field(default_factory=dict)
    startup_done: bool = True
    notify_ready: bool = False
    watchdog_at: float | None = None
    memory_at: float | None = None
    memory_in_flight: bool = False
    ready_since: float | None = None  # readiness-checked runs: since when ready
    healthy: bool = False  # passed startup and was ready once: a later failure is not "quick"
    min_ready_passed: bool = False  # (without readiness checks) the loop woke up for min_ready
    failing: bool = False  # fail_child was asked

    @property
    def checked(self) -> bool:
        return self.role.health.readiness_checked


class Readiness:
    """Owned by the supervisor loop; every method runs on the loop thread."""

    def __init__(self, runner: ProbeRunner, *, member: str, metrics: Any = None,
                 host: str | None = None, wall: Callable[[], float] = time.time):
        self.runner = runner
        self.member = member
        self.host = host or socket.gethostname()
        self.metrics = metrics
        self.wall = wall
        self.runs: dict[str, ChildRun] = {}  # slot name -> current run
        self.last_failure: dict[str, dict[str, Any]] = {}  # slot name -> {probe, at, message}
        self.notify_status: dict[str, str] = {}  # slot name -> last STATUS=
        self.wanted: set[str] = set()  # slots of readiness-checked roles that should run a child

    # --- following children ------------------------------------------------------------
    def sync(self, children: Iterable[tuple[RoleSpec, Slot]], now: float) -> None:
        """Start a run for each newly started child; forget the ones gone."""
        seen, known, wanted = set(), set(), set()
        for role, slot in children:
            child = slot.child
            known.add(slot.name)
            if role.health.readiness_checked and slot.desired is not None:
                wanted.add(slot.name)
            if child is None or child.pid is None or not child.alive:
                continue
            run = self.runs.get(slot.name)
            if run is not None and run.tag == child.tag:
                seen.add(slot.name)  # running, or stopping: kept until gone (not ready)
            elif child.state is ChildState.RUNNING:
                seen.add(slot.name)
                self.runs[slot.name] = self._new_run(role, slot, child.tag, child.pid,
                                                     child.started_at or now)
        for name in [n for n in self.runs if n not in seen]:
            del self.runs[name]
            self.runner.cancel(name)
        self.wanted = wanted
        self.forget([n for n in {*self.last_failure, *self.notify_status} if n not in known])

    def forget(self, names: Iterable[str]) -> None:
        """Slots that are gone for good (their history too)."""
        for name in names:
            self.runs.pop(name, None)
            self.last_failure.pop(name, None)
            self.notify_status.pop(name, None)

    def _new_run(self, role: RoleSpec, slot: Slot, tag: str, pid: int, started: float) -> ChildRun:
        health = role.health
        run = ChildRun(slot=slot, role=role, tag=tag, pid=pid, started_at=started)
        run.startup_done = health.startup is None
        for kind in PROBE_KINDS:
            spec = getattr(health, kind)
            if spec is not None:
                first = started + spec.initial_delay if kind == "startup" or run.startup_done else None
                run.checks[kind] = _Check(spec, first)
        if health.notify and health.watchdog is not None:
            run.watchdog_at = started + health.watchdog
        if health.memory is not None:
            run.memory_at = started
        self.notify_status.pop(slot.name, None)
        return run

    # --- readiness ------------------------------------------------------------------------
    def ready_since(self, slot_name: str, now: float) -> float | None:
        """Since when the child of ``slot_name`` is ready (monotonic), None when it
        is not (not running, stopping, not started, not ready yet)."""
        run = self.runs.get(slot_name)
        if run is None or run.slot.child is None or run.slot.child.tag != run.tag \
                or run.slot.child.state is not ChildState.RUNNING or run.failing:
            return None
        if not run.startup_done:
            return None
        if run.checked:
            return run.ready_since
        at = run.started_at + run.role.min_ready
        return at if now >= at else None

    def ready_by(self, now: float) -> float | None:
        """When every running child that is not ready yet will be ready on its
        ``min_ready`` timer alone (monotonic; the member record waits for it rather
        than show "not ready" for a moment): None when none is waiting, or one waits
        for a probe, ``notify`` or a startup probe (no known time)."""
        latest: float | None = None
        for name, run in self.runs.items():
            child = run.slot.child
            if run.failing or child is None or child.tag != run.tag or child.state is not ChildState.RUNNING \
                    or self.ready_since(name, now) is not None:
                continue
            if run.checked or not run.startup_done:
                return None
            at = run.started_at + run.role.min_ready
            latest = at if latest is None else max(latest, at)
        return latest

    def ready(self, slot_name: str, now: float) -> bool:
        return self.ready_since(slot_name, now) is not None

    def unready_checked(self, now: float) -> list[str]:
        """Slot names of wanted children with a readiness check (probe or notify)
        that are not ready (starting, failing, stopping, in backoff)."""
        return sorted(name for name in self.wanted | {n for n, r in self.runs.items() if r.checked}
                      if self.ready_since(name, now) is None)

    def status(self, slot_name: str, now: float) -> dict[str, Any]:
        """Fields of one child in the member record: ready, probe_failure, notify_status."""
        return {"ready": self.ready(slot_name, now),
                "probe_failure": self.last_failure.get(slot_name),
                "notify_status": self.notify_status.get(slot_name)}

    def _update_ready(self, run: ChildRun, now: float) -> None:
        if not run.checked or not run.startup_done:
            return
        check = run.checks.get("readiness")
        ok = (check is None or check.passed) and (run.notify_ready or not run.role.health.notify)
        if ok and run.ready_since is None:
            run.ready_since = now
            run.healthy = True
        elif not ok:
            run.ready_since = None

    # --- timers and probes ----------------------------------------------------------------
    def next_deadline(self) -> float | None:
        times: list[float] = []
        for run in self.runs.values():
            child = run.slot.child
            if run.failing or child is None or child.state is not ChildState.RUNNING:
                continue
            if not run.checked and run.startup_done and not run.min_ready_passed:
                times.append(run.started_at + run.role.min_ready)
            times.extend(c.next_at for c in run.checks.values() if c.next_at is not None and not c.in_flight)
            if run.watchdog_at is not None:
                times.append(run.watchdog_at)
            if run.memory_at is not None and not run.memory_in_flight:
                times.append(run.memory_at)
        pending = self.runner.next_deadline()
        if pending is not None:
            times.append(pending)
        return min(times) if times else None

    def run_due(self, now: float) -> None:
        """Start every probe that is due; act on an expired watchdog."""
        self.runner.tick(now)
        for name, run in list(self.runs.items()):
            child = run.slot.child
            if run.failing or child is None or child.state is not ChildState.RUNNING:
                continue
            if not run.min_ready_passed and now >= run.started_at + run.role.min_ready:
                run.min_ready_passed = True  # its readiness changed: no more wake-ups for it
            if run.watchdog_at is not None and now >= run.watchdog_at:
                self._fail(run, "watchdog", f"no WATCHDOG=1 for {run.role.health.watchdog:g}s", now)
                continue
            for kind, check in run.checks.items():
                if check.next_at is not None and now >= check.next_at and not check.in_flight:
                    check.in_flight = True
                    check.next_at = now + check.spec.period
                    self._launch(name, run, kind, check.spec, now)
            memory = run.role.health.memory
            if memory is not None and run.memory_at is not None and now >= run.memory_at \
                    and not run.memory_in_flight:
                run.memory_in_flight = True
                liveness = run.role.health.liveness
                run.memory_at = now + (liveness.period if liveness is not None else MEMORY_PERIOD)
                self.runner.memory(ProbeDone(name, run.tag, "memory", False), run.pid, memory)

    def _launch(self, name: str, run: ChildRun, kind: str, spec: ProbeSpec, now: float) -> None:
        done = ProbeDone(name, run.tag, kind, False)
        child = run.slot.child
        if spec.kind == "exec":
            if child is not None:
                self.runner.exec(done, spec.argv, child.spec, spec.timeout, now)
            return
        index = child.spec.vars.first_index if child is not None else 0
        target = expand(spec.target, index=index, member=self.member, host=self.host)
        if spec.kind == "http":
            self.runner.http(done, target, spec.timeout)
        else:
            self.runner.tcp(done, target, spec.timeout)

    # --- outcomes ------------------------------------------------------------------------------
    def on_probe(self, result: ProbeDone, now: float) -> None:
        run = self.runs.get(result.slot)
        if run is None or run.tag != result.tag:
            return  # a run that is gone
        if result.probe == "memory":
            run.memory_in_flight = False
            if not result.ok and not run.failing:
                self._fail(run, "memory", result.message, now)
            return
        check = run.checks.get(result.probe)
        if check is None:
            return
        check.in_flight = False
        if result.ok:
            check.ever_passed = True
            check.successes, check.failures = check.successes + 1, 0
            if check.successes >= check.spec.success_threshold:
                check.passed = True
        else:
            check.successes, check.failures = 0, check.failures + 1
            self._record_failure(run, result.probe, result.message)
            if check.failures >= check.spec.failure_threshold:
                check.passed = False
        if result.probe == "startup":
            self._after_startup(run, check, now)
        elif result.probe == "liveness" and not check.passed and check.failures >= check.spec.failure_threshold:
            self._fail(run, "liveness", result.message, now)
        self._update_ready(run, now)

    def _after_startup(self, run: ChildRun, check: _Check, now: float) -> None:
        if check.passed and not run.startup_done:
            run.startup_done = True
            check.next_at = None  # startup probes stop once they passed
            for kind, other in run.checks.items():
                if kind != "startup":
                    other.next_at = now + other.spec.initial_delay
            if not run.checked:
                run.healthy = True
        elif not check.passed and check.failures >= check.spec.failure_threshold and not run.failing:
            self._fail(run, "startup", f"failed {check.failures} times: {self.last_failure[run.slot.name]['message']}",
                       now)

    def on_notify(self, message: NotifyMessage, now: float) -> None:
        run = self.runs.get(message.slot)
        for key, value in message.fields:
            if key == "STATUS":
                self.notify_status[message.slot] = value
            if run is None:
                continue
            if key == "READY" and value == "1":
                run.notify_ready = True
            elif key in ("STOPPING", "RELOADING") and value == "1":
                run.notify_ready = False  # ready again with the next READY=1
            elif key == "WATCHDOG" and value == "1" and run.role.health.watchdog is not None:
                run.watchdog_at = now + run.role.health.watchdog
            elif key == "WATCHDOG" and value == "trigger":
                self._fail(run, "watchdog", "the child sent WATCHDOG=trigger", now)
        if run is not None:
            self._update_ready(run, now)

    def _record_failure(self, run: ChildRun, probe: str, message: str) -> None:
        self.last_failure[run.slot.name] = {"probe": probe, "at": round(self.wall(), 3), "message": message}
        if self.metrics is not None:
            self.metrics.probe_failures.labels(run.role.name, probe).inc()

    def _fail(self, run: ChildRun, reason: str, message: str, now: float) -> None:
        if run.failing:
            return
        if reason in ("watchdog", "memory"):
            self._record_failure(run, reason, message)
        liveness = run.checks.get("liveness")
        was_ready = run.healthy or self.ready_since(run.slot.name, now) is not None
        quick = not (was_ready and (liveness is None or liveness.ever_passed))
        run.failing = True
        run.ready_since = None
        self.runner.cancel(run.slot.name)
        log.warning("%s: %s check failed (%s): restarting it", run.slot.name, reason, message,
                    extra={"role": run.role.name})
        run.slot.fail_child(now, reason, quick)
