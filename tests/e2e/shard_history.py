"""The history checker for sharded roles (issue 9's invariants).

Children record ``start``/``stop`` lines themselves (``examples/worker.py``);
a child killed with SIGKILL gets, as its end, the first moment the fleet's
liveness watcher saw it dead (an upper bound, so the checks stay strict).
Each child covers partitions ``Part(index, count)``: ``INDEX``/``COUNT`` for
join-order and per-shard children, every shard of ``SHARDS`` for per-member
children. The checks:

* :func:`assert_no_intersecting_overlap`: no two children whose partitions
  intersect were ever alive at the same moment (join order: (i, N) and (j, M)
  intersect unless N == M and i != j; fixed shards: the same shard);
* :func:`assert_exact_cover`: at a settled moment the live partitions are
  exactly ``0..count-1``, each once, all with one COUNT;
* :func:`assert_kept_pids`: children of members that stayed kept their pids,
  except for the partitions that moved to them.
"""

from __future__ import annotations

from etcdvisor.roles.assignment import Part, intersects

from .conftest import History, Interval


def parts_of(interval: Interval) -> frozenset[Part]:
    count = int(interval.env["count"])
    shards = interval.env.get("shards")
    if shards is not None:
        return frozenset(Part(int(s), count) for s in shards.split(",") if s)
    return frozenset({Part(int(interval.env["index"]), count)})


def overlaps_with_intersection(history: History, role: str) -> list[tuple[Interval, Interval]]:
    children = sorted(history.of(role), key=lambda i: i.start)
    found = []
    for pos, a in enumerate(children):
        a_end = float("inf") if a.end is None else a.end
        a_parts = parts_of(a)
        for b in children[pos + 1:]:
            if b.start >= a_end:
                break  # sorted by start: nothing later overlaps a
            if any(intersects(p, q) for p in a_parts for q in parts_of(b)):
                found.append((a, b))
    return found


def max_overlap(history: History, role: str) -> float:
    """Longest time two intersecting children were alive at once (seconds)."""
    worst = 0.0
    for a, b in overlaps_with_intersection(history, role):
        a_end = float("inf") if a.end is None else a.end
        b_end = float("inf") if b.end is None else b.end
        worst = max(worst, min(a_end, b_end) - max(a.start, b.start))
    return worst


def assert_no_intersecting_overlap(history: History, role: str) -> None:
    bad = overlaps_with_intersection(history, role)
    assert not bad, "intersecting children alive at once: " + "; ".join(
        f"{a.member} pid {a.pid} {sorted(map(str, parts_of(a)))} [{a.start:.3f}, {a.end}] and "
        f"{b.member} pid {b.pid} {sorted(map(str, parts_of(b)))} [{b.start:.3f}, {b.end}]"
        for a, b in bad[:5])


def live_cover(history: History, role: str, t: float | None = None) -> list[Part]:
    live = history.live(role) if t is None else history.live_at(t, role)
    return sorted(p for i in live for p in parts_of(i))


def is_exact_cover(history: History, role: str, count: int, members: set[str] | None = None,
                   t: float | None = None) -> bool:
    live = history.live(role) if t is None else history.live_at(t, role)
    if members is not None and {i.member for i in live} != members:
        return False
    return live_cover(history, role, t) == [Part(i, count) for i in range(count)]


def assert_exact_cover(history: History, role: str, count: int, t: float) -> None:
    live = history.live_at(t, role)
    described = sorted((i.member, sorted(map(str, parts_of(i)))) for i in live)
    assert live_cover(history, role, t) == [Part(i, count) for i in range(count)], described


def pids_by_part(history: History, role: str, t: float) -> dict[Part, tuple[str, int]]:
    return {p: (i.member, i.pid) for i in history.live_at(t, role) for p in parts_of(i)}


def assert_kept_pids(history: History, role: str, before: float, after: float, stayed: set[str]) -> int:
    """Every partition a staying member ran at ``before`` is run by the same
    pid at ``after`` if that member still owns it; returns how many children
    of staying members were (re)started in between (moved-in partitions)."""
    old, new = pids_by_part(history, role, before), pids_by_part(history, role, after)
    for part, (member, pid) in old.items():
        if member in stayed and new.get(part, (None,))[0] == member:
            assert new[part][1] == pid, f"{member} restarted {part} (pid {pid} -> {new[part][1]})"
    return len({pid for part, (member, pid) in new.items() if member in stayed and old.get(part) != (member, pid)})
