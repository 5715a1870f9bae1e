"""Pure assignment math for ``sharded`` roles: no clocks, no I/O.

Two modes:

* **join order** (``processes: k``): the member at join position ``p`` of
  ``M`` members runs ``k`` children, ``INDEX = p*k + j`` (``j < k``) and
  ``COUNT = M*k`` (:func:`join_order_parts`);
* **fixed shards** (``shards: N``): ``COUNT`` is always ``N`` and members own
  disjoint shard sets covering ``0..N-1`` (:func:`balance_shards`).

A *partition* is a :class:`Part` ``(index, count)``: the keys ``k`` with
``hash(k) % count == index``. Two partitions intersect unless their counts are
equal and their indexes differ (:func:`intersects`); a fixed shard ``s`` of
``N`` is ``Part(s, N)``, so "same shard" is the same rule.

:func:`balance_shards` guarantees, for members given in join order and any
previous assignment ``prev``:

* the result is a partition of ``0..N-1`` over the members (disjoint cover);
* balanced: shard counts differ by at most one;
* deterministic: the same inputs give the same output on every member;
* sticky: a member keeps every shard of ``prev`` it owned unless it holds more
  than its quota; quotas go to the members that already hold the most, so
  when a member leaves (a balanced ``prev``) only the leaver's shards move,
  and when a member joins it takes shards only from the most loaded members.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Part:
    """One partition: keys with ``hash % count == index``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def intersects(a: Part, b: Part) -> bool:
    """True when some key falls in both partitions (``hash % count`` rule):
    only equal counts with different indexes are disjoint."""
    return not (a.count == b.count and a.index != b.index)


def conflicts(parts: Iterable[Part], others: Iterable[Part]) -> list[Part]:
    """The partitions of ``others`` that intersect any of ``parts`` (linear
    time: by count, then by index)."""
    indexes_by_count: dict[int, set[int]] = {}
    for part in parts:
        indexes_by_count.setdefault(part.count, set()).add(part.index)
    found = []
    for other in others:
        for count, indexes in indexes_by_count.items():
            if count != other.count or other.index in indexes:
                found.append(other)
                break
    return found


def join_order_parts(position: int, members: int, processes: int) -> list[Part]:
    """The ``processes`` partitions of the member at join ``position``."""
    if not 0 <= position < members or processes < 1:
        return []
    count = members * processes
    return [Part(position * processes + j, count) for j in range(processes)]


def quotas(members: Sequence[str], held: Mapping[str, int], shards: int) -> dict[str, int]:
    """Each member's share (``shards // M`` or one more); the ``shards % M``
    larger shares go to the members holding the most now (ties: join order),
    which is what keeps a reassignment from moving more than it must."""
    if not members:
        return {}
    base, extra = divmod(shards, len(members))
    position = {m: i for i, m in enumerate(members)}
    ranked = sorted(members, key=lambda m: (-held.get(m, 0), position[m]))
    return {m: base + (1 if rank < extra else 0) for rank, m in enumerate(ranked)}


def balance_shards(prev: Mapping[str, Iterable[int]], members: Sequence[str],
                   shards: int) -> dict[str, tuple[int, ...]]:
    """The sticky, balanced assignment of ``shards`` over ``members`` (join
    order) starting from ``prev`` (member -> shards; may be empty, stale,
    unbalanced or even overlapping: an earlier member keeps a doubly-owned
    shard). See the module docstring for the guarantees."""
    if len(set(members)) != len(members):
        raise ValueError("duplicate member ids")
    owned: dict[str, list[int]] = {m: [] for m in members}
    taken: set[int] = set()
    for member in members:
        for shard in sorted(set(prev.get(member, ()))):
            if 0 <= shard < shards and shard not in taken:
                owned[member].append(shard)
                taken.add(shard)
    share = quotas(members, {m: len(s) for m, s in owned.items()}, shards)
    pool = [s for s in range(shards) if s not in taken]
    for member in members:
        surplus = len(owned[member]) - share[member]
        if surplus > 0:  # give up the highest shards: deterministic
            pool.extend(owned[member][-surplus:])
            del owned[member][-surplus:]
    pool.sort(reverse=True)
    for member in members:
        while len(owned[member]) < share[member]:
            owned[member].append(pool.pop())
    return {m: tuple(sorted(s)) for m, s in owned.items()}


def moved(before: Mapping[str, Iterable[int]], after: Mapping[str, Iterable[int]]) -> set[int]:
    """Shards whose owner differs between two assignments (for tests and the bench)."""
    def owner(assignment: Mapping[str, Iterable[int]]) -> dict[int, str]:
        return {s: m for m, shards in assignment.items() for s in shards}

    old, new = owner(before), owner(after)
    return {s for s in set(old) | set(new) if old.get(s) != new.get(s)}
