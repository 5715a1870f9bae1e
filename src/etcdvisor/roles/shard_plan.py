"""What children a ``sharded`` member should run, from the facts it has (pure).

* join order: :func:`join_order_children` from this member's settled
  :class:`~etcdvisor.recipes.sequence.Info` and ``processes``;
* fixed shards: the assignment is *published* at ``roles/<role>/assignment``
  (:class:`Published`) by the first member in join order (the coordinator),
  computed with :func:`~etcdvisor.roles.assignment.balance_shards` from the
  previously published assignment and the settled membership, and written with
  a compare-and-swap on the key's mod revision. Every member computes the same
  thing from the same snapshot; the coordinator's write makes the previous
  assignment (the input of stickiness) one value for the whole cluster, so a
  new coordinator after a failover continues from it.
  :func:`shard_children` turns this member's shards into children.

A child keeps its slot key (and so its process) as long as its partitions do
not change: ``i/N`` for join order, ``shard-s`` per shard, and for a
per-member child a key derived from its whole set.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..coord.records import RecordError, parse_json
from ..process.spawn import ChildVars
from .assignment import Part, join_order_parts
from .handoff import Child

MAX_ASSIGNMENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Published:
    """A published fixed-shard assignment (``epoch``: the membership revision
    it was computed from; ``mod``: the key's mod revision, for the CAS)."""

    epoch: int
    members: tuple[str, ...]
    owners: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    shards: int = 0
    mod: int = 0

    def encode(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "members": list(self.members), "shards": self.shards,
                           "owners": {m: list(s) for m, s in self.owners.items()}},
                          separators=(",", ":")).encode()


def decode_published(raw: bytes, mod: int) -> Published | None:
    """The published assignment, or None for garbage (then it is recomputed
    from scratch, which is safe: hand-off is fenced anyway). Strict: bounded
    (coord/records.py), integers are integers, member names are strings."""
    try:
        doc = parse_json(raw, max_bytes=MAX_ASSIGNMENT_BYTES)
        epoch, shards, members, owners = doc["epoch"], doc["shards"], doc["members"], doc["owners"]
        if not (_is_int(epoch) and _is_int(shards) and isinstance(members, list)
                and all(isinstance(m, str) for m in members) and isinstance(owners, dict)):
            return None
        owned: dict[str, tuple[int, ...]] = {}
        for member, owned_shards in owners.items():
            if not isinstance(owned_shards, list) or not all(_is_int(s) for s in owned_shards):
                return None
            owned[member] = tuple(owned_shards)
        return Published(epoch, tuple(members), owned, shards, mod)
    except (RecordError, TypeError, KeyError):
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def join_order_children(position: int, members: int, processes: int, epoch: int,
                        keep: Mapping[str, Child], *, by_position: bool = False) -> dict[str, Child]:
    """Children for join ``position`` among ``members``; a child already in
    ``keep`` under the same key and partitions keeps its env (its EPOCH stays
    the one it was started with). Keys are the partition (``i/N``: fenced
    hand-off tracks old and new children apart) or, with ``by_position``
    (overlap hand-off), the member's j-th process (``p<j>``), so that a new
    assignment replaces the child in place instead of starting next to it."""
    children = {}
    for j, part in enumerate(join_order_parts(position, members, processes)):
        key = f"p{j}" if by_position else f"{part.index}/{part.count}"
        old = keep.get(key)
        if old is not None and old.parts == frozenset({part}):
            children[key] = old
        else:
            children[key] = Child(key, frozenset({part}), ChildVars(index=part.index, count=part.count, epoch=epoch))
    return children


def shard_children(shards: tuple[int, ...], count: int, per_member: bool, epoch: int,
                   keep: Mapping[str, Child]) -> dict[str, Child]:
    """Children for this member's fixed ``shards`` of ``count``: one per shard
    (INDEX=shard) or one for the whole set (SHARDS="3,17,42")."""
    if not shards:
        return {}
    if per_member:
        listed = ",".join(str(s) for s in sorted(shards))  # as in SHARDS
        key = f"shards-{len(shards)}-{zlib.crc32(listed.encode()):08x}"
        parts = frozenset(Part(s, count) for s in shards)
        old = keep.get(key)
        if old is not None and old.parts == parts:
            return {key: old}
        return {key: Child(key, parts, ChildVars(shards=tuple(shards), count=count, epoch=epoch))}
    children = {}
    for shard in sorted(shards):
        key = f"shard-{shard}"
        child_vars = ChildVars(index=shard, count=count, epoch=epoch)
        children[key] = keep.get(key) or Child(key, frozenset({Part(shard, count)}), child_vars)
    return children
