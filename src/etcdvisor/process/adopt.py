"""Children and the watchdog helper across an in-place upgrade (``runtime/upgrade.py``).

The supervisor re-executes itself with ``os.execv`` (same PID), so its children stay
its children: only the Python objects that described them are gone. This module turns
those objects into plain data before the exec (:func:`export_slot`,
:func:`export_watchdog`) and back after it (:func:`adopt_slot`, :func:`attach_watchdog`).

Guarantees:

- the descriptors a child or the helper needs (the read ends of a child's output pipes,
  the write end of the helper's command pipe) are made inheritable by
  :func:`inherit_fds` right before the exec and nothing else is (every other descriptor
  keeps ``FD_CLOEXEC``); the helper sees no EOF, so it keeps guarding every child, with
  the deadlines it already has, while the new image starts; if the process dies during
  the hand-over (even SIGKILL) the pipe's last write end closes and the helper kills
  every child, as it would without an upgrade (docs/safety.md, rule 4);
- an adopted child is reaped like any other (``os.waitid``/``waitpid`` on its pid, by
  :class:`AdoptedProcess`, which stands in for the ``Popen`` the old image had); its
  marker, cgroup leaf and watchdog entry are the ones it was started with;
- a slot comes back with its counters (restarts, restarts by reason, consecutive quick
  exits, last exit) and its child in RUNNING; only RUNNING children are handed over (the
  upgrade waits until no child is stopping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from etcdvisor.process.cgroup import Attachment, AttachState
from etcdvisor.process.child import ChildProcess, ChildState
from etcdvisor.process.slot import Slot, SlotState
from etcdvisor.process.spawn import ChildSpec

if TYPE_CHECKING:
    from etcdvisor.process.manager import ProcessManager
    from etcdvisor.process.watchdog import Watchdog


class AdoptedProcess:
    """The parts of ``subprocess.Popen`` the child and watchdog code use, for a process
    this image did not start (pid known, it is our child)."""

    def __init__(self, pid: int, stdin_fd: int | None = None):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = open(stdin_fd, "wb", buffering=0) if stdin_fd is not None else None  # noqa: SIM115 - owned

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.returncode = 0  # reaped elsewhere: what Popen reports too
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            _pause(pause)  # bounded and growing: only the watchdog's stop() waits here (2 s at most)
            pause = min(0.05, pause * 2)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pause(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def spec_digest(spec: ChildSpec) -> dict[str, str]:
    """Field -> digest of its value, for every field that makes two specs different
    children (the hand-over compares the spec the new code wants with the one the
    child was started from; env variables one by one, so a difference can be named)."""
    digests = {}
    for item in dataclasses.fields(spec):
        if item.name == "vars":  # rendered into the environment below: compared variable by variable
            continue
        value = getattr(spec, item.name)
        if item.name == "env":
            for name, text in spec.environ().items():
                digests[f"env.{name}"] = _digest(text)
            continue
        digests[item.name] = _digest(hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else value)
    return digests


def _digest(value: object) -> str:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def spec_difference(spec: ChildSpec | None, digests: dict[str, str]) -> list[str]:
    """The fields (``env.NAME`` for variables) in which ``spec`` differs from ``digests``."""
    if spec is None:
        return ["(no child wanted)"]
    if not isinstance(digests, dict):
        return ["(unreadable digest)"]
    mine = spec_digest(spec)
    return sorted(name for name in {*mine, *digests} if mine.get(name) != digests.get(name))


# --- before the exec ----------------------------------------------------------------------
def handover_blocker(slot: Slot) -> str | None:
    """Why ``slot`` cannot be handed over now (a child being stopped), or None."""
    child = slot.child
    if child is not None and child.state is not ChildState.RUNNING:
        return f"{slot.child_name} is {child.state.value}"
    if slot.state is SlotState.STOPPING:
        return f"{slot.child_name} is stopping"
    return None


def export_slot(slot: Slot) -> dict[str, Any]:
    """A slot as plain data: its counters, and its running child if any."""
    doc: dict[str, Any] = {
        "state": slot.state.value, "restarts": slot.restarts,
        "restarts_by_reason": dict(slot.restarts_by_reason), "last_exit": slot.last_exit,
        "failures": slot._failures, "restart_at": slot.restart_at, "child": None,
    }
    child = slot.child
    if not isinstance(child, ChildProcess) or child.pid is None:  # no run, or a stand-in (process/layer.py)
        return doc
    proc = child._proc
    stdout = getattr(proc, "stdout", None)
    stderr = getattr(proc, "stderr", None)
    attachment = child._attachment
    spec = child.spec
    doc["child"] = {
        "pid": child.pid, "tag": child.tag, "started_at": child.started_at,
        "stdout_fd": stdout.fileno() if stdout is not None and not stdout.closed else None,
        "stderr_fd": stderr.fileno() if stderr is not None and not stderr.closed else None,
        "leaf": attachment.path if attachment is not None and attachment.state is AttachState.ATTACHED else None,
        "digest": spec_digest(spec),
        "spec": {"name": spec.name, "argv": list(spec.argv), "stop_signal": int(spec.stop_signal),
                 "stop_timeout": spec.stop_timeout, "lease_bound": spec.lease_bound},
    }
    return doc


def export_watchdog(watchdog: Watchdog) -> dict[str, Any] | None:
    """The helper's pid, the write end of its pipe and the table it enforces."""
    proc = watchdog._proc
    if proc is None or proc.poll() is not None or proc.stdin is None:
        return None
    watchdog.flush()
    return {"pid": proc.pid, "fd": proc.stdin.fileno(),
            "table": [[pgid, *entry] for pgid, entry in watchdog._table.items()],
            "pending": [[tag, *entry] for tag, entry in watchdog._pending.items()],
            "dirs": sorted(watchdog._dirs), "cgroup_base": watchdog._cgroup_base,
            "queued": bytes(watchdog._queued).decode("utf-8", "surrogateescape")}


def inherit_fds(fds: list[int]) -> None:
    """Clear FD_CLOEXEC on ``fds`` (right before the exec)."""
    for fd in fds:
        os.set_inheritable(fd, True)


def handed_fds(slots: list[dict[str, Any]], watchdog: dict[str, Any] | None) -> list[int]:
    fds = [watchdog["fd"]] if watchdog is not None else []
    for doc in slots:
        child = doc.get("child")
        if child:
            fds += [fd for fd in (child.get("stdout_fd"), child.get("stderr_fd")) if fd is not None]
    return fds


# --- after the exec -----------------------------------------------------------------------
def attach_watchdog(watchdog: Watchdog, doc: dict[str, Any]) -> None:
    """Make ``watchdog`` the client of the helper the previous image started (no new
    helper, no window: the helper never saw its pipe close)."""
    os.set_inheritable(doc["fd"], False)
    watchdog._proc = AdoptedProcess(int(doc["pid"]), int(doc["fd"]))  # type: ignore[assignment]
    os.set_blocking(int(doc["fd"]), False)
    watchdog._table = {int(row[0]): (row[1], row[2], int(row[3]), row[4]) for row in doc["table"]}
    watchdog._pending = {str(row[0]): (row[1], row[2], int(row[3])) for row in doc["pending"]}
    watchdog._dirs = set(doc["dirs"])
    watchdog._cgroup_base = doc["cgroup_base"]
    watchdog._queued = bytearray(doc.get("queued", "").encode("utf-8", "surrogateescape"))
    watchdog.flush()


def minimal_spec(doc: dict[str, Any]) -> ChildSpec:
    """The spec an adopted child is known by until the new code asks for it (enough
    to stop it: name, stop signal and timeout, lease binding)."""
    return ChildSpec(name=str(doc["name"]), argv=tuple(doc["argv"]), env={},
                     stop_signal=int(doc["stop_signal"]), stop_timeout=float(doc["stop_timeout"]),
                     lease_bound=bool(doc["lease_bound"]))


def adopt_slot(manager: ProcessManager, slot: Slot, doc: dict[str, Any], spec: ChildSpec | None) -> None:
    """Fill a fresh slot with the handed-over counters and child. ``spec``: what the new
    code wants in this slot (None: nothing, the child is stopped by the next tick)."""
    slot.restarts = int(doc["restarts"])
    slot.restarts_by_reason = {str(k): int(v) for k, v in doc["restarts_by_reason"].items()}
    slot.last_exit = doc["last_exit"]
    slot._failures = int(doc["failures"])
    child_doc = doc.get("child")
    if not child_doc:
        if doc["state"] in (SlotState.BACKOFF.value, SlotState.EXITED.value, SlotState.FAILED.value) \
                and spec is not None:
            slot._spec = spec
            slot.state = SlotState(doc["state"])  # STOPPED -> BACKOFF | EXITED | FAILED (handed over)
            slot.restart_at = doc["restart_at"]
        return
    matches = spec is not None and not spec_difference(spec, child_doc["digest"])
    child_spec = spec if matches and spec is not None else minimal_spec(child_doc["spec"])
    child = ChildProcess(child_spec, output=manager.output, watchdog=manager.watchdog, tracker=manager.tracker)
    child.pid = child.pgid = int(child_doc["pid"])
    child.tag = str(child_doc["tag"])
    child.started_at = child_doc["started_at"]
    child.state = ChildState.RUNNING  # STARTING -> RUNNING (adopted, started by the previous image)
    stdout_fd, stderr_fd = child_doc.get("stdout_fd"), child_doc.get("stderr_fd")
    child._proc = AdoptedProcess(child.pid)  # type: ignore[assignment]
    tracker = manager.tracker
    tracker._live.add(child.tag)
    leaf = child_doc.get("leaf")
    if leaf is not None and tracker.cgroups is not None:
        attachment = Attachment(child.pid, child_spec.memory_max)
        attachment.path, attachment.state = leaf, AttachState.ATTACHED
        child._attachment = attachment
    if manager.output is not None and (stdout_fd is not None or stderr_fd is not None):
        pipes = [open(fd, "rb", buffering=0) if fd is not None else None  # noqa: SIM115 - the pump owns them
                 for fd in (stdout_fd, stderr_fd)]
        for fd in (stdout_fd, stderr_fd):
            if fd is not None:
                os.set_inheritable(fd, False)
        manager.output.add(child_spec.name, pipes[0], pipes[1],
                           files=(child_spec.stdout_file, child_spec.stderr_file))
    slot._child = child
    slot._spec = child_spec
    slot.state = SlotState.RUNNING  # STOPPED -> RUNNING (adopted)
    slot._dirty = True
    if not matches:
        slot._desired = spec  # differs (or None): the next tick stops it, and starts what is wanted
