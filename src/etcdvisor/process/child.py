"""One run of one child: an enum state machine driven by the decision loop.

States and transitions (each marked ``# A -> B`` in the code)::

    STARTING --start()--> RUNNING --stop(now)--> STOPPING --deadline/kill()--> KILLED
    STARTING --SpawnError--> EXITED
    RUNNING  --kill()--> KILLED
    RUNNING | STOPPING | KILLED --poll() reaps--> EXITED

Guarantees:

- every method returns promptly; ``poll(now)`` never blocks (WNOHANG) and is the only
  place that reaps, through ``Popen.poll`` so ``subprocess`` keeps the exit status;
- ``stop(now)`` sends ``stop_signal`` to the whole process group, then SIGCONT (so that
  a stopped process gets it, as systemd does), and remembers the kill deadline
  ``now + stop_timeout``; ``poll(now)`` escalates to ``kill()`` once it passed;
- every run carries a random tag (``ETCDVISOR_CHILD_TAG`` in its environment) and, where
  possible, its own cgroup (``tracking.TreeTracker``): ``stop`` sends ``stop_signal`` to
  the group *and* to every tracked process outside it (setsid daemons, re-parented
  orphans), ``kill()`` SIGKILLs all of them, rescanning while new ones appear;
- a stopped leader that exits while members of its group still run keeps its zombie
  until they are gone or the stop deadline passed (they had the stop signal too);
  tracked processes outside the group get SIGKILL when the leader is reaped;
- when the leader exits (on its own or after a stop), whatever is left of its tree gets
  SIGKILL before the leader is reaped: the zombie leader pins the pgid, so the signal
  cannot hit an unrelated group that reused the number. Tracked processes outside the
  group are killed at once after a stop; after a leader exited on its own (no stop
  asked), by the cgroup thread (its leaf) and the tracker's census (marked ones),
  within ``tracking.CENSUS_INTERVAL``;
- lease deadlines (``set_lease_deadlines``, lease-bound children only) are enforced in
  ``poll(now)``: stop at ``term_at``, SIGKILL at ``kill_at``; they are mirrored to the
  watchdog, together with the stop deadline, so a frozen supervisor still kills in time.

Limits: see ``tracking`` (a daemon that execs with a clean environment before the first
census, outside a cgroup, is not recognised). Tree scans read /proc: a stop costs a
few milliseconds.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from etcdvisor.process.cgroup import AttachState
from etcdvisor.process.output import child_role_slot
from etcdvisor.process.spawn import ChildSpec, SpawnError, spawn
from etcdvisor.process.states import Transitions
from etcdvisor.process.tracking import TAG_ENV, TreeTracker, new_tag, signal_pids

log = logging.getLogger("etcdvisor")

LINGER_RECHECK = 0.2  # seconds between checks of a lingering group
SETTLE_RECHECK = 0.005  # seconds between checks of a pending cgroup move

# Used when no manager provides one: no subreaper, so escapees are found in all of /proc.
_STANDALONE_TRACKER = TreeTracker(lambda _pid: False, subreaper=False)

if TYPE_CHECKING:
    from etcdvisor.process.cgroup import Attachment
    from etcdvisor.process.output import OutputPump
    from etcdvisor.process.watchdog import Watchdog


class ChildState(enum.Enum):
    STARTING = "starting"  # created, not spawned yet
    RUNNING = "running"    # spawned, not asked to stop
    STOPPING = "stopping"  # stop_signal sent to the group, waiting for exit or deadline
    KILLED = "killed"      # SIGKILL sent, waiting to reap
    EXITED = "exited"      # reaped (returncode set) or never started (spawn failed)


CHILD_STATES = Transitions("child", {
    ChildState.STARTING: (ChildState.RUNNING, ChildState.EXITED),  # spawned, or the spawn failed
    ChildState.RUNNING: (ChildState.STOPPING, ChildState.KILLED, ChildState.EXITED),
    ChildState.STOPPING: (ChildState.KILLED, ChildState.EXITED),
    ChildState.KILLED: (ChildState.EXITED,),
    ChildState.EXITED: (),
})


def _min_deadline(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


class ChildProcess:
    """One run of ``spec``. Create, ``start()``, then ``poll(now)`` on every tick."""

    def __init__(self, spec: ChildSpec, *, output: OutputPump | None = None,
                 watchdog: Watchdog | None = None, tracker: TreeTracker | None = None):
        self.spec = spec
        self.tag = new_tag()
        self.state = ChildState.STARTING
        self.pid: int | None = None
        self.pgid: int | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.exited_at: float | None = None
        self.stop_requested = False   # True once stop() or kill() was asked for
        self.spawn_error: str | None = None
        self._output = output
        self._watchdog = watchdog
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop_kill_at: float | None = None
        self._stop_sent_at: float | None = None  # when stop() sent the stop signal
        self._recheck_at: float | None = None  # while a stopped leader's group lingers
        self._lease_term_at: float | None = None
        self._lease_kill_at: float | None = None
        self._tracker = tracker if tracker is not None else _STANDALONE_TRACKER
        self._attachment: Attachment | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self, now: float | None = None) -> int:
        """Spawn the child; return its pid. Raises ``SpawnError`` (state becomes EXITED)."""
        if self.state is not ChildState.STARTING:
            raise RuntimeError(f"{self.spec.name}: start() in state {self.state.name}")
        # Lease-bound children (rare starts) keep the kernel's parent-death signal as
        # well: they die with the supervisor even if the watchdog is slow to be
        # scheduled, and they move into their cgroup leaf before exec (a daemon they fork
        # at once cannot start outside it). The frequent one-shot topic runs take the
        # vfork path and are moved just after (docs/safety.md).
        fork_path = self._watchdog is None or self.spec.lease_bound
        # only the fork path can use a leaf before exec; a vfork child's leaf is chosen
        # by the cgroup thread, off the loop (reserving may mkdir)
        leaf = self._tracker.reserve_leaf(self.spec.memory_max) if fork_path else None
        if self._watchdog is not None and self.spec.lease_bound:
            # the helper knows the child's deadlines before it exists (by its marker):
            # a supervisor frozen right after the fork cannot leave it unguarded
            self._watchdog.pending(self.tag, self._lease_term_at, self._lease_kill_at, self.spec.stop_signal)
        try:
            proc = spawn(self.spec, capture_output=self._output is not None,
                         extra_env={TAG_ENV: self.tag}, parent_death=fork_path,
                         cgroup_procs=os.path.join(leaf, "cgroup.procs") if leaf else None)
        except SpawnError as exc:
            self._tracker.unreserve_leaf(leaf)
            if self._watchdog is not None:
                self._watchdog.spawn_failed(self.tag)
            self.spawn_error = str(exc)
            self._set_state(ChildState.EXITED)
            raise
        self._proc = proc
        self.pid = self.pgid = proc.pid
        self.started_at = time.monotonic() if now is None else now
        self._set_state(ChildState.RUNNING)
        self._attachment = self._tracker.child_started(self.tag, proc.pid, leaf, self.spec.memory_max)
        if self._output is not None:
            self._output.add(self.spec.name, proc.stdout, proc.stderr,  # type: ignore[arg-type]
                             files=(self.spec.stdout_file, self.spec.stderr_file))
        if self._watchdog is not None:
            term_at, kill_at = self.guard_deadlines()
            self._watchdog.register(self.pgid, term_at, kill_at, self.spec.stop_signal,
                                    tag=self.tag)
        return proc.pid

    def _set_state(self, new: ChildState) -> None:
        self.state = CHILD_STATES.change(self.spec.name, self.state, new)

    def stop(self, now: float) -> None:
        """Send ``stop_signal`` to the group; SIGKILL follows at ``now + stop_timeout``.

        Idempotent: a second call does not move the deadline. No-op unless RUNNING.
        """
        if self.state is not ChildState.RUNNING:
            return
        self.stop_requested = True
        self._stop_kill_at = _min_deadline(now + self.spec.stop_timeout, self._lease_kill_at)
        self._stop_sent_at = now
        self._set_state(ChildState.STOPPING)
        self._signal_group(self.spec.stop_signal)
        outside = self._outside_group()
        signal_pids(outside, self.spec.stop_signal)
        if self.spec.stop_signal not in (signal.SIGKILL, signal.SIGCONT):
            # as systemd does: a stopped (SIGSTOP) process gets the signal only once
            # continued; without this, a hung child that stopped itself waits for SIGKILL
            self._signal_group(signal.SIGCONT)
            signal_pids(outside, signal.SIGCONT)
        self._sync_watchdog()
        grace = self.spec.stop_timeout if self._stop_kill_at is None else max(0.0, self._stop_kill_at - now)
        log.info("%s: sent %s to pid %s; waiting up to %.1fs before SIGKILL", self.spec.name,
                 signal_name(self.spec.stop_signal), self.pid, grace, extra=self._log_fields())

    def _log_fields(self) -> dict[str, str | None]:
        """``role`` and ``slot`` of this child's stop lines, as on its other lines (JSON log)."""
        role, slot = child_role_slot(self.spec.name)
        return {"role": role, "slot": slot}

    def send_signal(self, signum: int) -> bool:
        """Send ``signum`` to the child's group (a config change, not a stop);
        True if the child was RUNNING."""
        if self.state is not ChildState.RUNNING:
            return False
        self._signal_group(signum)
        return True

    def kill(self) -> None:
        """SIGKILL the group and every descendant (also escaped ones). No-op once reaped."""
        if self.state not in (ChildState.RUNNING, ChildState.STOPPING, ChildState.KILLED):
            return
        self.stop_requested = True
        self._signal_group(signal.SIGKILL)
        self._tracker.kill_tree(self.tag, self.pid, self._attachment)
        self._set_state(ChildState.KILLED)

    def poll(self, now: float) -> int | None:
        """Reap without blocking; return the exit code (negative = signal) or None.

        Also applies deadlines: the stop deadline and lease ``kill_at`` escalate to
        ``kill()``, the lease ``term_at`` starts ``stop(now)``.
        """
        if self.state is ChildState.EXITED or self._proc is None:
            return self.returncode
        pid = self._proc.pid
        try:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            exited = True  # reaped elsewhere; Popen.poll below records what it can
        if not exited or self._lingering(now):
            self._apply_deadlines(now)
            return None
        cgroups = self._tracker.cgroups
        if self._attachment is not None and cgroups is not None \
                and not cgroups.settle(self._attachment):
            self._recheck_at = now + SETTLE_RECHECK  # the cgroup thread is moving this pid
            return None
        if self._lease_term_at is not None and now >= self._lease_term_at:
            # The watchdog helper may have delivered the lease stop before we did.
            self.stop_requested = True
        # The zombie pins the pgid: kill leftovers of the tree before reaping.
        self._signal_group(signal.SIGKILL)
        if self.stop_requested:
            self._tracker.kill_tree(self.tag, self.pid, self._attachment)
        # else (a leader that exited on its own, the hot path of one-shot runs): no /proc
        # scan here; the cgroup thread empties the leaf and the census kills marked
        # leftovers within CENSUS_INTERVAL.
        self.returncode = self._proc.poll()
        self._recheck_at = None
        self._tracker.child_reaped(self.tag)
        if self._attachment is not None and cgroups is not None and self._in_cgroup():
            cgroups.release(self._attachment)
        self.exited_at = now
        self._set_state(ChildState.EXITED)
        if self._watchdog is not None:
            self._watchdog.unregister(pid)
        return self.returncode

    def _lingering(self, now: float) -> bool:
        """A stopped leader exited but others of its group still run: keep its
        zombie (which pins the pgid) and give them the rest of the grace
        period before the group is killed (docs/safety.md, rule 4: grace, then SIGKILL)."""
        if self.state is not ChildState.STOPPING or self._stop_kill_at is None \
                or self.pgid is None or self.pid is None \
                or now >= self._stop_kill_at or not _group_has_live_members(self.pgid, self.pid):
            self._recheck_at = None
            return False
        self._recheck_at = now + LINGER_RECHECK
        return True

    def _apply_deadlines(self, now: float) -> None:
        if self.state is ChildState.KILLED:
            return
        kill_at = _min_deadline(self._stop_kill_at, self._lease_kill_at)
        if kill_at is not None and now >= kill_at:
            if self.state is ChildState.STOPPING and self._stop_sent_at is not None:
                log.warning("%s: pid %s still running %.1fs after %s; sending SIGKILL", self.spec.name, self.pid,
                            now - self._stop_sent_at, signal_name(self.spec.stop_signal), extra=self._log_fields())
            else:
                log.warning("%s: lease kill deadline reached; sending SIGKILL to pid %s", self.spec.name, self.pid,
                            extra=self._log_fields())
            self.kill()  # STOPPING | RUNNING -> KILLED (via kill)
        elif self._lease_term_at is not None and now >= self._lease_term_at:
            self.stop(now)  # RUNNING -> STOPPING (lease term reached)

    # -- deadlines ---------------------------------------------------------------

    def set_lease_deadlines(self, term_at: float | None, kill_at: float | None, *,
                            sync_watchdog: bool = True) -> None:
        """Set (or clear, with None) the lease deadlines. Ignored unless ``spec.lease_bound``."""
        if not self.spec.lease_bound:
            return
        self._lease_term_at, self._lease_kill_at = term_at, kill_at
        if self.state is ChildState.STOPPING:
            self._stop_kill_at = _min_deadline(self._stop_kill_at, kill_at)
        if sync_watchdog:
            self._sync_watchdog()

    def guard_deadlines(self) -> tuple[float | None, float | None]:
        """(term_at, kill_at) the watchdog should enforce for this child."""
        term_at = self._lease_term_at if self.state is ChildState.RUNNING else None
        return term_at, _min_deadline(self._stop_kill_at, self._lease_kill_at)

    def next_deadline(self) -> float | None:
        """When ``poll`` must run next at the latest (exit itself is signalled by SIGCHLD)."""
        if self.state is ChildState.RUNNING:  # _recheck_at: a pending cgroup move
            return _min_deadline(self._lease_term_at, self._lease_kill_at, self._recheck_at)
        if self.state is ChildState.KILLED:
            return self._recheck_at
        if self.state is ChildState.STOPPING:
            return _min_deadline(self._stop_kill_at, self._lease_kill_at, self._recheck_at)
        return None

    @property
    def alive(self) -> bool:
        """True from start until reaped."""
        return self.state in (ChildState.RUNNING, ChildState.STOPPING, ChildState.KILLED)

    # -- helpers -----------------------------------------------------------------

    def _sync_watchdog(self) -> None:
        if self._watchdog is not None and self.alive and self.pgid is not None:
            self._watchdog.extend(self.pgid, *self.guard_deadlines())

    def _signal_group(self, signum: int) -> None:
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # group already empty

    def _outside_group(self) -> set[int]:
        """Live tracked processes of this run that left its process group."""
        outside = set()
        for pid in self._tracker.members(self.tag, self.pid, self._attachment):
            try:
                if os.getpgid(pid) != self.pgid:
                    outside.add(pid)
            except OSError:
                pass
        return outside

    def _in_cgroup(self) -> bool:
        return self._attachment is not None and self._attachment.state is AttachState.ATTACHED

    def __repr__(self) -> str:
        return f"<ChildProcess {self.spec.name} pid={self.pid} {self.state.name}>"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _group_has_live_members(pgid: int, leader: int) -> bool:
    """True if a process other than ``leader`` in group ``pgid`` is not a zombie."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == leader:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False
