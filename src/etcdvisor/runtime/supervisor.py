"""``supervisor run``: the container entrypoint, a member from its start to its exit.

:class:`Supervisor` is a thin facade over the two halves of a member: the builder
(:mod:`.build`: start-up checks, etcd, the lease, every part made and wired) and the
decision loop (:mod:`.loop`: the turn, the record, reloads, signals, the shutdown).

Lifecycle: start-up checks (every command resolvable, etcd reachable, member
id free) happen before anything is started, so a bad start never half-
applies. On SIGTERM/SIGINT: stop every child (each with its own
stop_timeout, in parallel), then leave/resign and revoke the lease so others
react at once, then exit 0. A second SIGTERM/SIGINT kills the children at
once. As PID 1 (or anywhere) the supervisor is a child subreaper and reaps
orphaned grandchildren without stealing its own children's statuses.
"""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable, Mapping

from ..config import Config
from ..coord.base import Backend
from ..coord.keys import ClusterKeys
from ..coord.session import Session
from ..events import Signalled, Wake
from ..process.manager import ProcessManager
from ..roles.base import RoleRunner
from .build import Builder
from .child_health import ChildHealth
from .loop import Loop
from .ops import Operations
from .readiness import Readiness
from .rollouts import Rollouts
from .runners import StartupError
from .upgrade import HELD_SIGNALS
from .upgraded import abandon

__all__ = ["StartupError", "Supervisor", "install_signals"]


def install_signals(post: Callable[[object], None]) -> None:
    """Signals become inbox events (main thread only)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: post(Signalled(s)))
    signal.signal(signal.SIGHUP, lambda s, _f: post(Signalled(s)))
    signal.signal(signal.SIGUSR2, lambda s, _f: post(Signalled(s)))  # upgrade in place
    signal.signal(signal.SIGCHLD, lambda s, _f: post(Wake("SIGCHLD")))
    # a re-executed member (upgrade) starts with these blocked: what came meanwhile is acted on now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


class Supervisor:
    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 watch_config: bool = False,
                 process_layer: Callable[[], ProcessManager] | None = None):
        """``process_layer()`` makes the member's process manager at start (default:
        real children, the supervisor a subreaper); the fleet simulator passes a
        manager whose runs are records (``etcdvisor.testing.fake_process``)."""
        self.builder = Builder(config, environ=environ, clock=clock, watch_config=watch_config,
                               process_layer=process_layer)
        self.loop: Loop | None = None  # once joined
        self._crashed = False  # crash() before the loop exists

    # --- the member before it joins (the same objects once it has) ------------------------
    @property
    def config(self) -> Config:
        return self.loop.config if self.loop is not None else self.builder.config

    @property
    def environ(self) -> dict[str, str]:
        return self.builder.environ

    @property
    def clock(self) -> Callable[[], float]:
        return self.builder.clock

    @property
    def inbox(self) -> queue.SimpleQueue[object]:
        return self.builder.inbox

    @property
    def ops(self) -> Operations:
        return self.builder.ops

    @property
    def child_health(self) -> ChildHealth:
        return self.builder.child_health

    @property
    def readiness(self) -> Readiness:
        return self.builder.child_health.readiness

    @property
    def backend(self) -> Backend | None:
        """The store client (None before ``connect``)."""
        return self.builder.backend

    # --- the joined member ---------------------------------------------------------------
    @property
    def joined(self) -> Loop:
        if self.loop is None:
            raise RuntimeError("the supervisor has not joined yet")
        return self.loop

    @property
    def runners(self) -> dict[str, RoleRunner]:
        return self.loop.runners if self.loop is not None else {}

    @property
    def keys(self) -> ClusterKeys:
        return self.builder.keys

    @property
    def session(self) -> Session:
        return self.joined.session

    @property
    def stopping(self) -> bool:
        return self.loop is not None and self.loop.stopping

    @property
    def exit_status(self) -> int:
        return self.joined.exit_status

    # --- start-up --------------------------------------------------------------------------
    def check_commands(self) -> None:
        self.builder.check_commands()

    def _take_password(self) -> str | None:
        return self.builder.take_password()

    def connect(self) -> str:
        return self.builder.connect()

    def start(self) -> None:
        """All or nothing: commands, etcd and every runner are checked before
        the member joins (lease, member record) or starts a child."""
        parts = self.builder.join()
        self.builder.start_edges(parts)
        self.loop = loop = Loop(parts)
        if self._crashed:
            loop.crash()

    def install_signals(self) -> None:
        install_signals(self.inbox.put)

    def run(self, *, signals: bool = True) -> int:
        """Start, turn the loop until a stop, stop the children, leave. ``signals``:
        install the signal handlers (main thread only; the fleet simulator runs
        members in threads and posts ``Signalled`` events itself)."""
        if signals:
            self.install_signals()
        try:
            self.start()
        except StartupError as exc:
            if self.builder.resume is not None:  # re-executed by an upgrade: never leave its children behind
                abandon(f"cannot continue after the upgrade: {exc}")
            self.close()
            raise
        return self.joined.run()

    def crash(self) -> None:
        """(Any thread) end ``run`` as SIGKILL would: children killed at once, no
        record or lease cleanup: the lease stays until it expires, so the others
        see the member go only then. For the fleet simulator and tests."""
        self._crashed = True
        loop = self.loop
        if loop is not None:
            loop.crash()
        else:
            self.inbox.put(Wake("crash"))

    # --- the loop's ------------------------------------------------------------------------
    def shutdown(self) -> int:
        return self.joined.shutdown()

    def close(self, *, revoke: bool = True) -> None:
        if self.loop is not None:
            self.loop.close(revoke=revoke)
        else:
            self.builder.close(revoke=revoke)

    def attach_rollouts(self) -> Rollouts:
        return self.joined.attach_rollouts()

    def child_ready_since(self, role: str, key: str) -> float | None:
        return self.joined.child_ready_since(role, key)

    def child_ready(self, role: str, key: str) -> bool:
        return self.joined.child_ready(role, key)
