"""Fenced hand-off for ``sharded`` roles: records and decisions, purely.

Cluster-wide knowledge of living children comes from *alive records*: each
member keeps ``roles/<role>/alive/<member>`` on its lease, listing the
partitions (:class:`~etcdvisor.roles.assignment.Part`) of every child it is
running, still stopping, or wants to start (its *announced* target). A
partition is in the record (and the write has come back) BEFORE its child
starts, and leaves it only AFTER the child was reaped (or, never started,
when it left the target).

Starts are granted by the role's coordinator (:mod:`.shard_coordinator`, the
member first in join order), which alone watches the alive records:
:func:`decide_grants` grants a member's announced partition when no other
alive partition intersects it, and the grant (:class:`Grant`) names the mod
revision of the member's record it decided on. A member starts a child only
for partitions announced continuously since that revision
(:meth:`Grant.covers`). Of two intersecting announcements the later one is
written after any snapshot that granted the earlier, so a snapshot that
grants the later shows the earlier until its child is reaped: no fence key,
no per-member rounds, and a stale grant covers nothing announced after it.

A member that dies leaves its record until its lease expires. Its children are
gone before that (docs/safety.md, rule 1: the watchdog kills lease-bound children at
``t_k + ttl*(1-rho) - margin - kill_bound`` at the latest), and the
coordinator still waits ``KILL_BOUND`` after seeing a non-empty record vanish
(the *graveyard*) as the margin for a kill that took long.

Records are decoded strictly (coord/records.py ``SHARD_ALIVE``,
``SHARD_GRANT``). Everything here is pure: the runner feeds snapshots and
clocks in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..coord.records import SHARD_ALIVE, SHARD_GRANT, RecordError
from ..coord.types import KeyValue
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


def _parts_of(doc: dict[str, Any]) -> frozenset[Part]:
    return frozenset(Part(index, int(count)) for count, indexes in doc["parts"].items() for index in indexes)


def decode_record(raw: bytes) -> frozenset[Part]:
    """The partitions of an alive record (strict: coord/records.py ``SHARD_ALIVE``);
    raises BadRecord for garbage (the caller then treats the member as holding
    everything)."""
    try:
        return _parts_of(SHARD_ALIVE.decode(raw))
    except RecordError as exc:
        raise BadRecord(str(exc)) from None


@dataclass(frozen=True)
class Grant:
    """The coordinator's start grant for one member: ``parts`` of that member's
    alive record as it stood at mod revision ``record`` intersected no other
    alive partition (decided on a snapshot that showed that record).
    ``epoch``: the membership revision of the plan it was decided under."""

    epoch: int
    record: int
    parts: frozenset[Part]
    coordinator: str = ""

    def encode(self) -> bytes:
        doc = json.loads(encode_record(self.parts))
        return json.dumps({"epoch": self.epoch, "record": self.record, "parts": doc["parts"],
                           "coordinator": self.coordinator}, separators=(",", ":")).encode()

    def covers(self, parts: Iterable[Part], since: Mapping[Part, int]) -> bool:
        """True when every one of ``parts`` is granted AND has been in our alive
        record continuously since a revision no later than the one the grant was
        decided on (``since``: part -> revision of the write that added it). A
        grant for an earlier announcement of a part (dropped and announced
        again since) or from a coordinator that decided on an older record does
        not cover it."""
        return all(p in self.parts and p in since and since[p] <= self.record for p in parts)


NO_GRANT = Grant(0, 0, frozenset())


def decode_grant(raw: bytes) -> Grant | None:
    """A grant record (strict: coord/records.py ``SHARD_GRANT``), or None for garbage (no grant)."""
    try:
        return grant_of(SHARD_GRANT.decode(raw))
    except RecordError:
        return None


def read_grant(kv: KeyValue) -> Grant:
    """The grant in ``kv``; a bad one is no grant, with one warning naming its key."""
    doc = SHARD_GRANT.read(kv)
    return NO_GRANT if doc is None else grant_of(doc)


def grant_of(doc: dict[str, Any]) -> Grant:
    return Grant(doc["epoch"], doc["record"], _parts_of(doc), doc.get("coordinator") or "")


EVERYTHING = frozenset({Part(-1, 0)})  # intersects every partition (count 0 never matches)


@dataclass(frozen=True)
class ClusterAlive:
    """One snapshot of the alive records: member -> partitions, member -> the
    record's mod revision, and the store revision the snapshot reflects."""

    records: Mapping[str, frozenset[Part]]
    mods: Mapping[str, int] = field(default_factory=dict)
    revision: int = 0


def parse_snapshot(prefix: str, kvs: Iterable[KeyValue], revision: int) -> ClusterAlive:
    """Build a :class:`ClusterAlive` from a watched snapshot of ``prefix``
    (ends with ``/``). A garbage record counts as holding everything (until
    its lease goes); a record on no lease is ignored."""
    records: dict[str, frozenset[Part]] = {}
    mods: dict[str, int] = {}
    for kv in kvs:
        if kv.key.startswith(prefix) and "/" not in kv.key[len(prefix):] and kv.lease:
            # (a record on no lease is nobody's: members write theirs on their lease, and
            # honouring it would block its partitions forever)
            member = kv.key[len(prefix):]
            mods[member] = kv.mod_revision
            try:
                records[member] = decode_record(kv.value)
            except BadRecord:
                records[member] = EVERYTHING
    return ClusterAlive(records, mods, revision)


def decide_grants(plan: Mapping[str, frozenset[Part]], cluster: ClusterAlive,
                  graveyard: Mapping[str, frozenset[Part]], *, members: Iterable[str] | None = None,
                  max_waits: int = 20) -> tuple[dict[str, frozenset[Part]], list[Wait]]:
    """The coordinator's decision (pure, linear in the number of alive partitions).

    ``plan``: member -> the partitions the current plan gives it. A partition
    ``p`` of member ``m`` is granted when ``m``'s alive record announces ``p``
    and no other alive partition intersects ``p``: not one of another count
    anywhere (a garbage record holds everything), not ``p`` held by another
    member, not one held by a record that vanished less than the kill bound
    ago (``graveyard``). Returns member -> granted partitions (members with
    none left out) and, for status, up to ``max_waits`` reasons why announced
    partitions are not granted yet (``members``: the current membership, to tell a
    member that left the group, whose record waits for its children or its lease)."""
    present = plan if members is None else set(members)
    sources = [(m, "child" if m in present else "child or lease (left the group)", parts)
               for m, parts in cluster.records.items()]
    sources += [(m, "kill bound after lease expiry", parts) for m, parts in graveyard.items()]
    by_count: dict[int, int] = {}
    example: dict[int, tuple[str, str, Part]] = {}  # count -> one holder of it, for the reasons
    for member, what, parts in sources:
        for part in parts:
            by_count[part.count] = by_count.get(part.count, 0) + 1
            if part.count not in example:
                example[part.count] = (member, what, part)
    total = sum(by_count.values())
    planned_counts = {p.count for parts in plan.values() for p in parts}
    free_counts = {c for c in planned_counts if total - by_count.get(c, 0) == 0}
    # who holds each partition of a count that nothing else blocks (the same partition twice)
    holders: dict[Part, list[tuple[str, str]]] = {}
    if free_counts:
        for member, what, parts in sources:
            for part in parts:
                if part.count in free_counts:
                    holders.setdefault(part, []).append((member, what))
    granted: dict[str, frozenset[Part]] = {}
    waits: list[Wait] = []
    for member, planned in plan.items():
        if not free_counts and len(waits) >= max_waits:
            break  # nothing can be granted (an old COUNT is alive): the reasons are enough
        announced = cluster.records.get(member, frozenset()) & planned
        ok = []
        for part in sorted(announced):
            if part.count in free_counts:
                others = [h for h in holders.get(part, ()) if h[0] != member or h[1].startswith("kill")]
                if not others:
                    ok.append(part)
                    continue
                if len(waits) < max_waits:
                    waits.append(Wait(f"{member}:{part}", others[0][0], others[0][1], (part,)))
            elif len(waits) < max_waits:
                holder, what, held = next(e for c, e in sorted(example.items()) if c != part.count)
                waits.append(Wait(f"{member}:{part}", holder, what, (held,)))
        if ok:
            granted[member] = frozenset(ok)
    return granted, waits


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
