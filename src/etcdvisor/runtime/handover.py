"""The hand-over state of an in-place upgrade: what a member passes to its re-executed self.

``supervisor upgrade`` / SIGUSR2 (:mod:`.upgrade`) re-executes the running member (same
argv, same PID); everything the new code needs to continue without stopping a child
travels in one inherited file descriptor (a ``memfd``, not a file: it may hold the etcd
password), named by ``ETCDVISOR_HANDOVER_FD`` in the new process's environment.

Format: one JSON object, UTF-8, at most :data:`MAX_BYTES`::

    {"format": "etcdvisor-handover", "version": 1, "from_version": "0.9.0",
     "pid": 4242, "written": <unix time>, "state": {...}}

``version`` is the layout of ``state``; a reader accepts exactly the versions it knows
(:data:`READABLE`) and raises :class:`HandoverError` (one line) for anything else: a
missing or unreadable descriptor, garbage, another format, a newer layout, another
process's state. The new code then stops the children it cannot adopt and exits
non-zero (:func:`etcdvisor.runtime.upgraded.abandon`); it never runs on a guess.

What ``state`` holds (see :mod:`.upgrade` for who writes and reads each part): the
member (id, lease id and TTL, the last confirmed keepalive, start and upgrade times,
the upgrade count), the watchdog helper (pid, the write end of its pipe, its table),
the cgroup base, the control watch position, each role's decision state (shard
sequence key, election key and ``LEADER_TOKEN``, cron runs and cursor, topic claims in
flight, ...), and every child (pid, marker, pipes, restart counts, probe state,
cgroup leaf).
"""

from __future__ import annotations

import json
import os
from typing import Any

FORMAT = "etcdvisor-handover"
VERSION = 1
READABLE = (1,)
ENV = "ETCDVISOR_HANDOVER_FD"
MAX_BYTES = 64 * 1024 * 1024  # far beyond 10,000 children; bounds what a reader takes


class HandoverError(Exception):
    """The hand-over state cannot be read or used; ``str()`` is one line."""


def encode(state: dict[str, Any], *, from_version: str, pid: int, written: float,
           version: int = VERSION) -> bytes:
    """The bytes a member writes for its successor (strict JSON: no NaN)."""
    doc = {"format": FORMAT, "version": version, "from_version": from_version, "pid": pid,
           "written": written, "state": state}
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("utf-8")


def decode(data: bytes, *, pid: int | None = None) -> dict[str, Any]:
    """The envelope (with ``state``) of ``data``, checked: format, a readable version,
    a state object, and (``pid``) written by this very process. Raises HandoverError."""
    if len(data) > MAX_BYTES:
        raise HandoverError(f"hand-over state of {len(data)} bytes is over the {MAX_BYTES} byte limit")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HandoverError(f"hand-over state is not JSON: {_short(exc)}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HandoverError("hand-over state is not an etcdvisor hand-over (no 'format': "
                            f"{FORMAT!r})")
    version = doc.get("version")
    if type(version) is not int or version not in READABLE:
        raise HandoverError(f"hand-over state has version {version!r}; this build reads "
                            f"version {', '.join(map(str, READABLE))} (written by etcdvisor "
                            f"{str(doc.get('from_version'))[:40]})")
    if not isinstance(doc.get("state"), dict):
        raise HandoverError("hand-over state has no 'state' object")
    if pid is not None and doc.get("pid") != pid:
        raise HandoverError(f"hand-over state was written by pid {doc.get('pid')!r}, not by this "
                            f"process ({pid})")
    return doc


def write_fd(data: bytes) -> int:
    """A new inheritable descriptor (memfd) holding ``data``, positioned at 0."""
    fd = os.memfd_create("etcdvisor-handover", 0)  # no MFD_CLOEXEC: the exec'd image reads it
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int) -> bytes:
    """Everything in descriptor ``fd`` (bounded by MAX_BYTES + 1), then close it."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks, total = [], 0
        while total <= MAX_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise HandoverError(f"cannot read the hand-over descriptor {fd}: {exc.strerror or exc}") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def take_from_environ(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any] | None:
    """In a re-executed member: pop ``ETCDVISOR_HANDOVER_FD`` (children never see it),
    read and decode the state. None when the variable is absent (a normal start);
    HandoverError when it is present but unusable."""
    raw = environ.pop(ENV, None)
    if raw is None:
        return None
    if not raw.isdigit():
        raise HandoverError(f"{ENV}={raw[:20]!r} is not a file descriptor number")
    return decode(read_fd(int(raw)), pid=os.getpid())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:120] + "..."
