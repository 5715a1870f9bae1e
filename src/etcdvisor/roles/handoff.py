"""Fenced hand-off for ``sharded`` roles: who may start which child, purely.

Cluster-wide knowledge of living children comes from *alive records*: each
member keeps ``roles/<role>/alive/<member>`` on its lease, listing the
partitions (:class:`~etcdvisor.roles.assignment.Part`) of every child it is
running, about to start, or still stopping. A partition is added to the record
(and the write has come back) BEFORE its child starts, and removed only AFTER
the child was reaped.

Writes that add partitions are serialized by a *fence* key
(``roles/<role>/alive``, no trailing slash, inside the watched range): the
write is a transaction ``mod(fence) == F`` -> put fence, put record, where
``F`` is the fence's mod revision in the snapshot the decision was made on.
Every snapshot at revision ``R`` with fence ``F`` shows every addition up to
``R``; success proves none was made after it. So two members can never both
decide, from snapshots that did not see each other, to start intersecting
children. Removals are plain puts (they can only unblock others).

A member that dies leaves its record until its lease expires. Its children are
gone before that (docs/safety.md, rule 1: the watchdog kills lease-bound children at
``t_k + ttl*(1-rho) - margin - kill_bound`` at the latest), and we still wait
``KILL_BOUND`` after seeing a non-empty record vanish (the *graveyard*) as the
margin for a kill that took long.

Everything here is pure: the runner feeds snapshots and clocks in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..coord.records import RecordError, decimal, parse_json
from ..process.spawn import ChildVars
from .assignment import Part

MAX_RECORD_BYTES = 512 * 1024  # a record larger than this is garbage: treat it as "everything"


@dataclass(frozen=True)
class Child:
    """One desired child: its slot key, the partitions it covers, its variables."""

    key: str
    parts: frozenset[Part]
    vars: ChildVars = field(default_factory=ChildVars, compare=False, hash=False)


@dataclass(frozen=True)
class Wait:
    """Why ``child`` cannot start yet: ``member``'s ``what`` (``child``,
    ``lease`` or ``kill bound``) still holds ``parts``."""

    child: str
    member: str
    what: str
    parts: tuple[Part, ...]

    def describe(self) -> str:
        shown = ",".join(str(p) for p in self.parts[:4]) + ("..." if len(self.parts) > 4 else "")
        return f"{self.child} waits for {self.member}'s {self.what} ({shown})"


def encode_record(parts: Iterable[Part]) -> bytes:
    """``{"parts": {"<count>": [indexes ascending]}}``: compact for 4096 shards."""
    grouped: dict[str, list[int]] = {}
    for part in sorted(parts):
        grouped.setdefault(str(part.count), []).append(part.index)
    return json.dumps({"parts": grouped}, separators=(",", ":")).encode()


class BadRecord(ValueError):
    pass


def decode_record(raw: bytes) -> frozenset[Part]:
    """The partitions of an alive record; raises BadRecord for garbage (the
    caller then treats the member as holding everything)."""
    try:
        grouped = parse_json(raw, max_bytes=MAX_RECORD_BYTES)["parts"]
        parts = set()
        for count, indexes in grouped.items():
            n = decimal(count)
            if n is None:
                raise BadRecord(f"count {count!r:.40} is not an integer")
            for index in indexes:
                if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
                    raise BadRecord(f"index {index!r} out of range for count {n}")
                parts.add(Part(index, n))
        return frozenset(parts)
    except (RecordError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadRecord(str(exc)) from None


EVERYTHING = frozenset({Part(-1, 0)})  # intersects every partition (count 0 never matches)


@dataclass(frozen=True)
class ClusterAlive:
    """One snapshot of the alive records: member -> partitions, and the fence."""

    records: Mapping[str, frozenset[Part]]
    fence_mod: int = 0
    revision: int = 0


def parse_snapshot(prefix: str, fence_key: str, kvs: Iterable, revision: int) -> ClusterAlive:
    """Build a :class:`ClusterAlive` from a watched snapshot (``prefix`` ends
    with ``/``; ``fence_key`` is ``prefix`` without it). A garbage record
    counts as holding everything (until its lease goes); a record on no lease
    is ignored."""
    records: dict[str, frozenset[Part]] = {}
    fence_mod = 0
    for kv in kvs:
        if kv.key == fence_key:
            fence_mod = kv.mod_revision
        elif kv.key.startswith(prefix) and "/" not in kv.key[len(prefix):] and kv.lease:
            # (a record on no lease is nobody's: members write theirs on their lease, and
            # honouring it would block its partitions forever)
            try:
                records[kv.key[len(prefix):]] = decode_record(kv.value)
            except BadRecord:
                records[kv.key[len(prefix):]] = EVERYTHING
    return ClusterAlive(records, fence_mod, revision)


class Blockers:
    """Every alive partition that could block a start, indexed once per turn
    so that checking thousands of children stays linear.

    Holders: other members' alive records (their children, until reaped or
    until their lease expires), records that vanished less than the kill bound
    ago (``graveyard``), and this member's own children that are still alive
    (``own_busy``: slot key -> parts)."""

    def __init__(self, me: str, cluster: ClusterAlive, graveyard: Mapping[str, frozenset[Part]],
                 own_busy: Mapping[str, frozenset[Part]], members: Iterable[str] | None = None):
        self._holders: list[tuple[str, str, str]] = []  # (member, what, own slot key or "")
        self._by_part: dict[Part, list[int]] = {}
        self._by_count: dict[int, dict[int, list[Part]]] = {}
        present = None if members is None else set(members)
        for member, parts in sorted(cluster.records.items()):
            if member == me:
                continue
            if present is None:
                what = "child or lease"
            else:  # a member that left the group but still holds a record: alive children or a lease
                what = "child" if member in present else "lease expiry (left the group)"
            self._add(member, what, "", parts)
        for member, parts in sorted(graveyard.items()):
            self._add(member, "kill bound after lease expiry", "", parts)
        for key, parts in sorted(own_busy.items()):
            self._add(me, f"own child {key} stopping", key, parts)

    def _add(self, member: str, what: str, own_key: str, parts: frozenset[Part]) -> None:
        holder = len(self._holders)
        self._holders.append((member, what, own_key))
        for part in parts:
            self._by_part.setdefault(part, []).append(holder)
            self._by_count.setdefault(part.count, {}).setdefault(holder, []).append(part)

    def waits_for(self, child: Child) -> list[Wait]:
        """What must end before ``child`` may start (empty: it may start now).
        The child's own slot (a child that keeps running) never blocks it."""
        hits: dict[int, set[Part]] = {}
        counts = {p.count for p in child.parts}
        for part in child.parts:
            for holder in self._by_part.get(part, ()):
                hits.setdefault(holder, set()).add(part)
        for count, holders in self._by_count.items():
            if counts - {count}:  # a different count intersects everything of this count
                for holder, parts in holders.items():
                    hits.setdefault(holder, set()).update(parts)
        found = []
        for holder in sorted(hits):
            member, what, own_key = self._holders[holder]
            if own_key != child.key:
                found.append(Wait(child.key, member, what, tuple(sorted(hits[holder]))))
        return found
