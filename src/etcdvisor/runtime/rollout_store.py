"""Rolling restarts in etcd: the rollout record of a role and its unavailability slots.

::

    /etcdvisor/<cluster>/rollouts/<role>              the role's current rollout (JSON, permanent)
    /etcdvisor/<cluster>/rollouts/<role>/slots/<n>    one unavailability slot, 0 <= n < max_unavailable
                                                      (JSON, on the holder's lease)

The record: ``{"id", "role", "trigger", "who", "started", "at", "target", "state",
"done", "failed", "finished", "resumed"}``. ``trigger`` is ``restart`` (the CLI) or
``config`` (a ``config:`` item with ``on_change: restart`` changed); ``target`` is what
the children are restarted for (the id for ``restart``, a digest of the values for
``config``); ``state`` is ``running``, ``done``, ``failed`` or ``aborted``; ``done`` the
children (``member:slot``) restarted and ready in this rollout; ``failed`` null or
``{"child", "member", "reason", "at"}``. A new trigger replaces the record (it
*supersedes* the running rollout). Every change is a compare-and-swap on the record's
mod revision, retried a few times, so concurrent members never lose each other's writes.

A slot is taken with a transaction that creates ``slots/<n>`` only if it is missing, on
the holder's lease: at most ``max_unavailable`` children hold one, and a member that dies
frees its slots when its lease expires (docs/safety.md, rule 8).

Everything here does store I/O: the loop calls it only from effects; the CLI directly.
Records read from the store are decoded by :func:`decode_record` / :func:`decode_slot`:
bounded, typed, and a bad record is one warning naming its key, then skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..coord.base import Backend
from ..coord.keys import ClusterKeys
from ..coord.records import (
    ROLLOUT,
    ROLLOUT_DONE,
    ROLLOUT_FAILED_FIELDS,
    ROLLOUT_SLOT,
    ROLLOUT_TEXT,
    RecordError,
    check_fields,
    warn_skipped,
)
from ..coord.types import Compare, Delete, KeyValue, Put, missing, mod_revision

log = logging.getLogger("etcdvisor")

RUNNING, DONE, FAILED, ABORTED = "running", "done", "failed", "aborted"
STATES = (RUNNING, DONE, FAILED, ABORTED)
TRIGGERS = ("restart", "config")
DONE_LIMIT = ROLLOUT_DONE  # children listed in ``done``
TEXT_LIMIT = ROLLOUT_TEXT  # any string field
CAS_TRIES = 64  # every round one writer wins: enough for a fleet's members at once



def rollouts_prefix(keys: ClusterKeys) -> str:
    return keys.rollouts


def record_key(keys: ClusterKeys, role: str) -> str:
    return keys.rollout(role)


def slots_prefix(keys: ClusterKeys, role: str) -> str:
    return f"{record_key(keys, role)}/slots/"


def slot_key(keys: ClusterKeys, role: str, number: int) -> str:
    return f"{slots_prefix(keys, role)}{number}"


@dataclass(frozen=True)
class FailedInfo:
    child: str
    member: str
    reason: str
    at: float


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    role: str
    trigger: str
    who: str
    started: float
    target: str
    state: str
    done: tuple[str, ...]
    failed: FailedInfo | None
    finished: float | None
    resumed: float | None
    revision: int = 0  # mod revision of the key it was read from (0: not stored yet)

    def to_json(self) -> dict[str, Any]:
        failed = None if self.failed is None else {
            "child": self.failed.child, "member": self.failed.member, "reason": self.failed.reason,
            "at": self.failed.at}
        return {"id": self.id, "role": self.role, "trigger": self.trigger, "who": self.who,
                "started": self.started, "at": to_iso(self.started), "target": self.target,
                "state": self.state, "done": list(self.done), "failed": failed,
                "finished": self.finished, "resumed": self.resumed}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, allow_nan=False).encode()

    def replace(self, **changes: Any) -> RolloutRecord:
        fields = {**self.__dict__, **changes}
        return RolloutRecord(**fields)


@dataclass(frozen=True)
class SlotHold:
    role: str
    number: int
    member: str
    child: str
    rollout: str
    lease: int


def to_iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="milliseconds")


def new_id(now: float) -> str:
    return f"{int(now * 1000):x}-{os.urandom(3).hex()}"


def new_record(role: str, trigger: str, who: str, target: str | None = None, *,
               now: float | None = None) -> RolloutRecord:
    started = time.time() if now is None else now
    rollout_id = new_id(started)
    return RolloutRecord(id=rollout_id, role=role, trigger=trigger, who=who[:TEXT_LIMIT],
                         started=round(started, 3), target=target or rollout_id, state=RUNNING,
                         done=(), failed=None, finished=None, resumed=None)


# --- decoding: the one decoder (coord/records.py, kinds ROLLOUT and ROLLOUT_SLOT) ----------
class BadRecord(RecordError):
    pass


def warn_once(key: str, revision: int, reason: str) -> None:
    """One warning per key and revision (records.warn_skipped's rule)."""
    warn_skipped("rollout", key, revision, reason, log)


def parse_record(role: str, raw: bytes, revision: int = 0) -> RolloutRecord:
    """The record of ``role`` from its stored bytes; BadRecord says why not."""
    try:
        doc = ROLLOUT.decode(raw)
        failed_doc = doc["failed"]
        failed = None
        if failed_doc is not None:
            check_fields(ROLLOUT_FAILED_FIELDS, failed_doc, where="failed.")
            failed = FailedInfo(child=failed_doc["child"], member=failed_doc["member"],
                                reason=failed_doc["reason"], at=float(failed_doc["at"]))
    except RecordError as exc:
        raise BadRecord(str(exc)) from None
    return RolloutRecord(id=doc["id"], role=role, trigger=doc["trigger"], who=doc["who"] or "",
                         started=float(doc["started"]), target=doc["target"], state=doc["state"],
                         done=tuple(dict.fromkeys(doc["done"])), failed=failed,
                         finished=_seconds(doc["finished"]), resumed=_seconds(doc["resumed"]), revision=revision)


def _seconds(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def parse_slot(role: str, number: int, raw: bytes, lease: int) -> SlotHold:
    try:
        doc = ROLLOUT_SLOT.decode(raw)
    except RecordError as exc:
        raise BadRecord(str(exc)) from None
    return SlotHold(role=role, number=number, member=doc["member"], child=doc["child"],
                    rollout=doc["rollout"], lease=lease)


@dataclass(frozen=True)
class RolloutView:
    """Everything under ``rollouts/``: role -> record, role -> slots held."""

    records: Mapping[str, RolloutRecord]
    slots: Mapping[str, tuple[SlotHold, ...]]


def decode(prefix: str, kvs: Iterable[KeyValue]) -> RolloutView:
    """Decode the keys under ``rollouts/``; bad ones are skipped with one warning each."""
    records: dict[str, RolloutRecord] = {}
    slots: dict[str, list[SlotHold]] = {}
    for kv in kvs:
        rest = kv.key[len(prefix):]
        role, sep, tail = rest.partition("/")
        try:
            if not sep:
                records[role] = parse_record(role, kv.value, kv.mod_revision)
            elif tail.startswith("slots/") and tail[6:].isdigit() and len(tail) < 20:
                hold = parse_slot(role, int(tail[6:]), kv.value, kv.lease)
                slots.setdefault(role, []).append(hold)
            else:
                raise BadRecord("unexpected key under rollouts/")
        except BadRecord as exc:
            warn_once(kv.key, kv.mod_revision, str(exc))
    return RolloutView(records, {r: tuple(sorted(s, key=lambda h: h.number)) for r, s in slots.items()})


def read(backend: Backend, keys: ClusterKeys) -> RolloutView:
    prefix = rollouts_prefix(keys)
    return decode(prefix, backend.get_prefix(prefix).kvs)


def read_record(backend: Backend, keys: ClusterKeys, role: str) -> RolloutRecord | None:
    key = record_key(keys, role)
    kv = backend.get(key)
    if kv is None:
        return None
    try:
        return parse_record(role, kv.value, kv.mod_revision)
    except BadRecord as exc:
        warn_once(key, kv.mod_revision, str(exc))
        return None


# --- writes (compare-and-swap on the record) ---------------------------------------------
def _swap(backend: Backend, keys: ClusterKeys, role: str,
          change: Callable[[RolloutRecord | None], RolloutRecord | None]) -> RolloutRecord | None:
    """Apply ``change`` to the stored record (None: no record or a bad one) until the
    write is not raced; ``change`` returning None writes nothing. Returns the record
    written (with its revision), or None when nothing was written."""
    key = record_key(keys, role)
    for _ in range(CAS_TRIES):
        kv = backend.get(key)
        current = None
        if kv is not None:
            try:
                current = parse_record(role, kv.value, kv.mod_revision)
            except BadRecord as exc:
                warn_once(key, kv.mod_revision, str(exc))
        fresh = change(current)
        if fresh is None:
            return None
        guard: Compare = missing(key) if kv is None else mod_revision(key, "=", kv.mod_revision)
        result = backend.txn([guard], [Put(key, fresh.encode())])
        if result.succeeded:
            return fresh.replace(revision=result.revision)
    raise RuntimeError(f"{key}: too many concurrent writers, gave up")


def start(backend: Backend, keys: ClusterKeys, record: RolloutRecord, *,
          unless_target: bool = False) -> RolloutRecord | None:
    """Store ``record`` as the role's rollout, superseding any other. With
    ``unless_target``: nothing is written when the stored record has the same trigger
    and target (members that saw the same config change write it once)."""
    def change(current: RolloutRecord | None) -> RolloutRecord | None:
        if unless_target and current is not None and current.trigger == record.trigger and \
                current.target == record.target:
            return None
        return record
    return _swap(backend, keys, record.role, change)


def update(backend: Backend, keys: ClusterKeys, role: str, rollout_id: str | None,
           change: Callable[[RolloutRecord], RolloutRecord | None]) -> RolloutRecord | None:
    """Change the stored rollout ``rollout_id`` (None: whichever is stored); nothing
    when another rollout superseded it."""
    def guarded(current: RolloutRecord | None) -> RolloutRecord | None:
        if current is None or (rollout_id is not None and current.id != rollout_id):
            return None
        return change(current)
    return _swap(backend, keys, role, guarded)


def mark_done(backend: Backend, keys: ClusterKeys, role: str, rollout_id: str,
              children: Iterable[str]) -> RolloutRecord | None:
    names = list(children)

    def change(current: RolloutRecord) -> RolloutRecord | None:
        missing_names = [n for n in names if n not in current.done]
        if not missing_names or len(current.done) + len(missing_names) > DONE_LIMIT:
            return None
        return current.replace(done=current.done + tuple(missing_names))
    return update(backend, keys, role, rollout_id, change)


def mark_failed(backend: Backend, keys: ClusterKeys, role: str, rollout_id: str, child: str,
                member: str, reason: str) -> RolloutRecord | None:
    def change(current: RolloutRecord) -> RolloutRecord | None:
        if current.state != RUNNING:
            return None
        return current.replace(state=FAILED, finished=round(time.time(), 3), failed=FailedInfo(
            child=child[:TEXT_LIMIT], member=member[:TEXT_LIMIT], reason=reason[:TEXT_LIMIT],
            at=round(time.time(), 3)))
    return update(backend, keys, role, rollout_id, change)


def finish(backend: Backend, keys: ClusterKeys, role: str, rollout_id: str) -> RolloutRecord | None:
    def change(current: RolloutRecord) -> RolloutRecord | None:
        if current.state != RUNNING:
            return None
        return current.replace(state=DONE, finished=round(time.time(), 3))
    return update(backend, keys, role, rollout_id, change)


def resume(backend: Backend, keys: ClusterKeys, role: str) -> RolloutRecord | None:
    """A failed (or aborted) rollout runs again; None when there is nothing to resume."""
    def change(current: RolloutRecord) -> RolloutRecord | None:
        if current.state not in (FAILED, ABORTED):
            return None
        return current.replace(state=RUNNING, failed=None, finished=None, resumed=round(time.time(), 3))
    return update(backend, keys, role, None, change)


def abort(backend: Backend, keys: ClusterKeys, role: str) -> RolloutRecord | None:
    """A running or failed rollout restarts nothing more; None when none runs."""
    def change(current: RolloutRecord) -> RolloutRecord | None:
        if current.state not in (RUNNING, FAILED):
            return None
        return current.replace(state=ABORTED, finished=round(time.time(), 3))
    return update(backend, keys, role, None, change)


# --- slots --------------------------------------------------------------------------------
def acquire(backend: Backend, keys: ClusterKeys, role: str, numbers: Iterable[int], wanted: int,
            holders: list[tuple[str, str]], lease: int) -> list[tuple[int, str]]:
    """Take up to ``wanted`` free slots among ``numbers`` for the children in ``holders``
    (``(child, rollout id)`` in order), each with a create-if-missing transaction on
    ``lease``; returns ``(number, child)`` of the slots taken."""
    taken: list[tuple[int, str]] = []
    queue = list(holders)
    member = ""
    for number in numbers:
        if len(taken) >= wanted or not queue:
            break
        child, rollout_id = queue[0]
        member = child.partition(":")[0]
        body = json.dumps({"member": member, "child": child, "rollout": rollout_id,
                           "at": round(time.time(), 3)}).encode()
        key = slot_key(keys, role, number)
        if backend.txn([missing(key)], [Put(key, body, lease=lease)]).succeeded:
            taken.append((number, child))
            queue.pop(0)
    return taken


def release(backend: Backend, keys: ClusterKeys, role: str, number: int, lease: int) -> bool:
    """Free slot ``number`` if ``lease`` still holds it."""
    key = slot_key(keys, role, number)
    return backend.txn([Compare(key, "lease", "=", lease)], [Delete(key)]).succeeded
