"""Cluster-wide control verbs: records in etcd, watched by every member.

``supervisor restart|pause|resume|reset|trigger ROLE`` (see :mod:`etcdvisor.cli.control`)
writes one record per role and verb::

    /etcdvisor/<cluster>/control/<role>/<verb>   {"verb", "role", "id", "who", "host",
                                                  "when", "at", "member", "index"}

``who`` is ``user@host`` of the operator, ``when`` a Unix time and ``at`` the same in
ISO 8601; ``member``/``index`` narrow ``restart``/``reset`` (null: every member/child).
The records are permanent (not on a lease) and are what ``status`` shows.

``pause`` is a *state*: the key ``control/<role>/pause`` exists while the role is
paused; ``resume`` deletes it and records itself, in one transaction. The other verbs
are *one-shot commands*: every put of their key (a new mod revision) is one command.

Every member runs one :class:`ControlWatch` (a ``PrefixWatcher`` on ``control/``): its
thread only posts :class:`ControlChanged` on the inbox. On the loop,
:class:`ControlState` turns each change into the paused set and the list of *new*
commands: records already present when the member started (its first snapshot) are
history, not commands, except ``trigger`` records younger than ``TRIGGER_MAX_AGE``
(a cron leader elected right after a trigger still runs it; the run is claimed with
the tick fencing, so it never runs twice). The loop applies them (``ops.py``, on ``loop.py``):

* paused role: its runner's ``desired`` is not asked (``while_paused`` is, so a cron
  leader records due ticks as ``paused``), its children are stopped, nothing starts;
* ``restart``: the role's running children here (``member``/``index`` permitting)
  are stopped and started again with the same spec (lease rules still apply);
* ``reset``: a role FAILED here gets a fresh runner (it rejoins the sequence /
  campaigns again), like a reload of that role;
* ``trigger``: handed to the cron runner, whose leader claims one manual run;
* ``upgrade`` (``control/_supervisor/upgrade``, ``member`` or null for every member):
  the member re-executes itself with the code on disk (runtime/upgrade.py).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..coord.base import Backend
from ..coord.errors import CoordError, PermissionDenied
from ..coord.keys import ClusterKeys
from ..coord.records import CONTROL, CONTROL_VERBS, RecordError, dumps, warn_skipped
from ..coord.types import Delete, KeyValue, Put
from ..coord.watcher import Change, PrefixWatcher

log = logging.getLogger("etcdvisor")

PAUSE, RESUME, RESTART, RESET, TRIGGER = "pause", "resume", "restart", "reset", "trigger"
UPGRADE = "upgrade"  # of the member itself, not of a role: control/_supervisor/upgrade (runtime/upgrade.py)
SUPERVISOR_SCOPE = "_supervisor"  # the "role" of member-wide verbs: no role name starts with "_"
VERBS = CONTROL_VERBS  # (PAUSE, RESUME, RESTART, RESET, TRIGGER, UPGRADE)
COMMANDS = (RESTART, RESET, TRIGGER, UPGRADE)  # one-shot verbs; pause/resume are state
TRIGGER_MAX_AGE = 60.0  # seconds: an older trigger is history, never run


def control_prefix(keys: ClusterKeys) -> str:
    return keys.control


def control_key(keys: ClusterKeys, role: str, verb: str) -> str:
    return f"{control_prefix(keys)}{role}/{verb}"


def operator() -> tuple[str, str]:
    """(``user@host``, host) of whoever runs the CLI."""
    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in a container: the uid says enough
        user = str(os.getuid())
    return f"{user}@{host}", host


def make_record(verb: str, role: str, *, member: str | None = None, index: int | None = None,
                now: float | None = None, who: str | None = None) -> dict[str, Any]:
    """``who``: ``user@host`` of the operator by default; the dashboard gives
    ``http:<remote address>``."""
    when = time.time() if now is None else now
    user, host = operator()
    who = user if who is None else who
    return {"verb": verb, "role": role, "id": f"{int(when * 1000):x}-{os.urandom(3).hex()}",
            "who": who, "host": host, "when": round(when, 3),
            "at": datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="milliseconds"),
            "member": member, "index": index}


def issue(backend: Backend, keys: ClusterKeys, record: dict[str, Any]) -> int:
    """Write ``record`` (``resume`` also deletes the pause key, atomically); returns the
    store revision of the write."""
    role, verb = record["role"], record["verb"]
    ops: list[Put | Delete] = [Put(control_key(keys, role, verb), dumps(record).encode())]
    if verb == RESUME:
        ops.append(Delete(control_key(keys, role, PAUSE)))
    elif verb == PAUSE:
        ops.append(Delete(control_key(keys, role, RESUME)))
    return backend.txn([], ops).revision


def read_records(kvs: Iterable[KeyValue], prefix: str, *,
                 errors: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """role -> verb -> record (with ``revision``), from the keys under ``control/``.

    Every record goes through the strict decoder (:data:`~etcdvisor.coord.records.CONTROL`)
    and must name the role and verb of its key: a bad one is skipped with one warning
    naming its key (``errors``: kept as ``{"error": reason, "revision": n}`` instead,
    for ``status``), so it never acts and never stops the watcher."""
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for kv in kvs:
        role, _, verb = kv.key[len(prefix):].partition("/")
        if verb not in VERBS:
            continue
        try:
            record = CONTROL.decode(kv.value)
            if (record["role"], record["verb"]) != (role, verb):
                raise RecordError(f"names {record['verb']} of role {record['role']!r:.80}, "
                                  f"not the {verb} of {role!r} its key says")
        except RecordError as exc:
            warn_skipped(CONTROL.name, kv.key, kv.mod_revision, str(exc), log)
            if errors:
                records.setdefault(role, {})[verb] = {"error": f"unreadable control record: {exc}",
                                                      "revision": kv.mod_revision}
            continue
        records.setdefault(role, {})[verb] = {**record, "revision": kv.mod_revision}
    return records


# --- the member side ----------------------------------------------------------------------
@dataclass(frozen=True)
class ControlChanged:
    """Posted by the watch thread: every control record, and whether this is the first look."""

    records: dict[str, Any]  # role -> verb -> record (with revision)
    initial: bool


@dataclass(frozen=True)
class Command:
    verb: str
    role: str
    record: dict[str, Any]

    def describe(self) -> str:
        return f"{self.verb} by {self.record.get('who')} at {self.record.get('at')}"


class ControlWatch:
    """The watch thread; ``start(wait)`` blocks until the first snapshot was posted."""

    def __init__(self, backend: Backend, keys: ClusterKeys, post: Callable[[object], None],
                 on_error: Callable[[CoordError], None] | None = None):
        self.prefix = control_prefix(keys)
        self.post = post
        self._on_error = on_error
        self._denied_logged = False
        self.watcher = PrefixWatcher(backend, self.prefix, self._on_change, name="control",
                                     on_error=self._error)

    def _error(self, error: CoordError) -> None:  # watch thread
        """A refusal is said once (one line naming key and user), never only counted."""
        if isinstance(error, PermissionDenied) and not self._denied_logged:
            self._denied_logged = True
            log.error("control records: %s; restart, pause, reset and trigger do not reach this "
                      "member until it may read them (docs/etcd-auth.md)", error)
        if self._on_error is not None:
            self._on_error(error)

    def start(self, wait: float = 5.0) -> ControlWatch:
        self.watcher.start(wait=wait)
        return self

    def _on_change(self, change: Change) -> None:  # watch thread: only post
        self.post(ControlChanged(read_records(change.snapshot.values(), self.prefix), change.initial))

    def stop(self) -> None:
        self.watcher.stop(2.0)


@dataclass
class ControlState:
    """Pure: control records in, paused roles and new commands out (on the loop)."""

    wall: Callable[[], float] = time.time
    paused: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> its pause record
    seen: dict[tuple[str, str], int] = field(default_factory=dict)  # (role, verb) -> revision
    synced: bool = False

    def update(self, event: ControlChanged) -> list[Command]:
        first = not self.synced
        self.synced = True
        self.paused = {role: verbs[PAUSE] for role, verbs in event.records.items() if PAUSE in verbs}
        commands = []
        for role, verbs in event.records.items():
            for verb in COMMANDS:
                record = verbs.get(verb)
                if record is None or self.seen.get((role, verb), 0) >= record["revision"]:
                    continue
                self.seen[(role, verb)] = record["revision"]
                if first and not self._fresh_trigger(verb, record):
                    continue  # history from before this member started
                commands.append(Command(verb, role, record))
        return commands

    def _fresh_trigger(self, verb: str, record: dict[str, Any]) -> bool:
        when = record.get("when")
        return verb == TRIGGER and isinstance(when, (int, float)) and \
            self.wall() - when <= TRIGGER_MAX_AGE

    def is_paused(self, role: str) -> bool:
        return role in self.paused
