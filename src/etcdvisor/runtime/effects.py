"""Run runners' effects off the decision loop thread.

The loop never waits for etcd, a subprocess or a file: runners queue
:class:`~etcdvisor.events.Effect` objects during their turn and the loop
hands them to an :class:`EffectRunner` afterwards. A small pool of worker
threads runs them; effects of one *lane* (a role) run one at a time and in
order, so a runner's writes reach the store in the order it decided them,
while a slow effect of one role never delays another role's. Each outcome is
posted back to the loop as ``RoleEvent(role, EffectDone(...))``.

Workers block on a condition variable while idle (no periodic wake-ups) and
are started lazily, at most ``workers`` of them. An effect that raises is
reported as the ``error`` of its outcome; nothing here retries (the runner
decides). ``drain`` waits, with a bound, for queued effects at shutdown.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from ..events import Effect, EffectDone, RoleEvent

log = logging.getLogger("etcdvisor")


class EffectRunner:
    def __init__(self, post: Callable[[object], None], *, workers: int = 4,
                 clock: Callable[[], float] = time.monotonic):
        self.post = post
        self.clock = clock
        self.max_workers = workers
        self._lock = threading.Condition()
        self._lanes: dict[str, collections.deque[tuple[Effect, float]]] = {}  # (effect, queued at)
        self._busy: set[str] = set()  # lanes with an effect in progress
        self._threads: list[threading.Thread] = []
        self._idle_workers = 0
        self._closed = False

    def submit(self, effect: Effect) -> None:
        with self._lock:
            if self._closed:
                log.warning("role %s: %s dropped: shutting down", effect.role, effect.what)
                return
            self._lanes.setdefault(effect.role, collections.deque()).append((effect, self.clock()))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: effect queued: %s", _lane(effect.role), effect.what)
            if self._idle_workers == 0 and len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"effects-{len(self._threads) + 1}")
                self._threads.append(thread)
                thread.start()
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._lanes.values()) + len(self._busy)

    def _next(self) -> tuple[Effect, float] | None:
        """Under the lock: the first effect of a lane that is not busy."""
        for lane, queue in self._lanes.items():
            if queue and lane not in self._busy:
                self._busy.add(lane)
                item = queue.popleft()
                if not queue:
                    del self._lanes[lane]
                return item
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                item = self._next()
                while item is None:
                    if self._closed:
                        return
                    self._idle_workers += 1
                    self._lock.wait()
                    self._idle_workers -= 1
                    item = self._next()
            effect, queued = item
            began = self.clock()
            try:
                outcome = EffectDone(effect, effect.call())
            except BaseException as exc:  # noqa: BLE001 - reported to the runner that asked
                outcome = EffectDone(effect, None, exc)
            if log.isEnabledFor(logging.DEBUG):
                ended = self.clock()
                result = (f"failed: {type(outcome.error).__name__}: {outcome.error}" if outcome.error is not None
                          else f"-> {_short(outcome.result)}")
                log.debug("%s: effect done in %.1f ms (queued %.1f ms before): %s %s", _lane(effect.role),
                          1000 * (ended - began), 1000 * (began - queued), effect.what, result)
            with self._lock:
                self._busy.discard(effect.role)
                self._lock.notify_all()
            self.post(RoleEvent(effect.role, outcome, self.clock(), source=effect.serial))

    def drain(self, timeout: float) -> bool:
        """Wait until every queued effect ran (at most ``timeout`` s); True if so."""
        deadline = self.clock() + timeout
        with self._lock:
            while any(self._lanes.values()) or self._busy:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()


def _lane(role: str) -> str:
    return role if role.startswith("(") else f"role {role}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
