"""Pure sharding math: fixed-shard balance/stickiness, join order with
processes, the intersection rule, and the fenced hand-off blockers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from etcdvisor.coord.types import KeyValue
from etcdvisor.roles.assignment import Part, balance_shards, conflicts, intersects, join_order_parts, moved
from etcdvisor.roles.handoff import (
    EVERYTHING,
    Blockers,
    Child,
    ClusterAlive,
    decode_record,
    encode_record,
    parse_snapshot,
)
from etcdvisor.roles.shard_plan import Published, decode_published, shard_children

NAMES = [f"m{i}" for i in range(12)]


def check_balanced_cover(result, members, shards):
    owned = [s for m in members for s in result[m]]
    assert sorted(owned) == list(range(shards)), "not a disjoint cover"
    sizes = [len(result[m]) for m in members]
    assert max(sizes) - min(sizes) <= 1, sizes


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.lists(st.sampled_from(NAMES), min_size=1, max_size=10, unique=True),
       st.data())
def test_leave_moves_only_the_leavers_shards(shards, members, data):
    before = balance_shards({}, members, shards)
    check_balanced_cover(before, members, shards)
    leaver = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != leaver]
    if not rest:
        return
    after = balance_shards(before, rest, shards)
    check_balanced_cover(after, rest, shards)
    for m in rest:
        assert set(before[m]) <= set(after[m]), f"{m} lost shards when {leaver} left"
    assert moved(before, after) == set(before[leaver])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.lists(st.sampled_from(NAMES), min_size=1, max_size=10, unique=True))
def test_join_takes_only_from_the_most_loaded(shards, members):
    *old, joiner = members
    if not old:
        return
    before = balance_shards({}, old, shards)
    after = balance_shards(before, members, shards)
    check_balanced_cover(after, members, shards)
    for m in old:
        assert set(after[m]) <= set(before[m]), "a member gained shards when another joined"
    givers = [m for m in old if after[m] != before[m]]
    keepers = [m for m in old if after[m] == before[m]]
    if givers and keepers:  # the most loaded give first (balance may need more than one to give)
        assert min(len(before[m]) for m in givers) >= max(len(before[m]) for m in keepers)
    # only what the joiner took moved
    assert moved(before, after) == set(after[joiner])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 100), st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True),
                                      min_size=1, max_size=8))
def test_any_history_stays_balanced_and_deterministic(shards, histories):
    prev: dict = {}
    for members in histories:
        result = balance_shards(prev, members, shards)
        assert result == balance_shards(dict(prev), list(members), shards)  # same input, same output
        check_balanced_cover(result, members, shards)
        prev = result


def test_garbage_previous_assignment_is_repaired():
    prev = {"a": [0, 1, 2, 99, -1], "b": [1, 2, 3], "gone": [4]}
    result = balance_shards(prev, ["a", "b"], 6)
    check_balanced_cover(result, ["a", "b"], 6)
    assert set(result["a"]) <= {0, 1, 2, 4, 5} and 0 in result["a"]


def test_rolling_replace_moves_about_two_shard_sets_per_member():
    members = [f"m{i}" for i in range(10)]
    assignment = balance_shards({}, members, 64)
    total = 0
    for i in range(10):
        old = members[i]
        rest = [m for m in members if m != old]
        after_leave = balance_shards(assignment, rest, 64)
        total += len(moved(assignment, after_leave))
        members = rest + [f"n{i}"]
        after_join = balance_shards(after_leave, members, 64)
        total += len(moved(after_leave, after_join))
        assignment = after_join
    assert total <= 2 * 64 + 20, total


def test_join_order_with_processes():
    assert join_order_parts(0, 3, 2) == [Part(0, 6), Part(1, 6)]
    assert join_order_parts(2, 3, 2) == [Part(4, 6), Part(5, 6)]
    assert join_order_parts(3, 3, 2) == []
    everyone = [p for pos in range(4) for p in join_order_parts(pos, 4, 3)]
    assert sorted(p.index for p in everyone) == list(range(12))


def test_intersection_rule():
    assert not intersects(Part(0, 2), Part(1, 2))
    assert intersects(Part(0, 2), Part(0, 2))
    assert intersects(Part(0, 2), Part(2, 3))  # different counts always share keys
    assert conflicts([Part(1, 4)], [Part(0, 4), Part(1, 4), Part(0, 3)]) == [Part(1, 4), Part(0, 3)]


def test_record_round_trip_and_garbage():
    parts = frozenset({Part(3, 64), Part(17, 64), Part(0, 2)})
    assert decode_record(encode_record(parts)) == parts
    kvs = [KeyValue("/p/alive/a", b"{not json", 1, 1, 1, lease=5),
           KeyValue("/p/alive/b", encode_record(parts), 2, 2, 1, lease=6),
           KeyValue("/p/alive", b"", 3, 7, 1), KeyValue("/p/alive/x/deeper", b"", 4, 4, 1, lease=5),
           KeyValue("/p/alive/nolease", b"{not json", 5, 5, 1)]
    snap = parse_snapshot("/p/alive/", kvs, 9)
    assert snap.records["b"] == parts and snap.records["a"] is EVERYTHING and snap.revision == 9
    assert snap.mods == {"a": 1, "b": 2}
    assert set(snap.records) == {"a", "b"}, "deeper keys and records on no lease are not members' records"
    for bad in (b'{"parts": {"4": [9]}}', b'{"parts": {"x": [1]}}', b'[]', b'{"parts": {"4": [true]}}',
                b"x" * (600 * 1024)):
        try:
            decode_record(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad[:40]!r}")


def test_blockers_other_members_graveyard_and_own_stopping():
    cluster = ClusterAlive({"me": frozenset({Part(0, 3)}), "b": frozenset({Part(1, 3)}),
                            "c": frozenset({Part(5, 6)})})
    new0 = Child("0/2", frozenset({Part(0, 2)}))
    blockers = Blockers("me", cluster, {"dead": frozenset({Part(1, 2)})}, {"0/3": frozenset({Part(0, 3)})})
    waits = blockers.waits_for(new0)
    assert {(w.member, w.what.split()[0]) for w in waits} == {("b", "child"), ("c", "child"), ("me", "own")}
    new1 = Child("1/2", frozenset({Part(1, 2)}))
    assert any(w.member == "dead" for w in blockers.waits_for(new1))
    # a child that keeps its slot never blocks itself; disjoint same-count parts do not block
    same = Blockers("me", ClusterAlive({"b": frozenset({Part(1, 2)})}), {}, {"0/2": frozenset({Part(0, 2)})})
    assert same.waits_for(new0) == []
    garbage = Blockers("me", ClusterAlive({"b": EVERYTHING}), {}, {})
    assert garbage.waits_for(new0)


def test_blockers_scale_to_4096_shards():
    import time

    records = {f"m{i}": frozenset(Part(s, 4096) for s in range(i, 4096, 10)) for i in range(10)}
    blockers = Blockers("m0", ClusterAlive(records), {}, {})
    start = time.perf_counter()
    free = [s for s in range(4096) if not blockers.waits_for(Child(f"shard-{s}", frozenset({Part(s, 4096)})))]
    assert time.perf_counter() - start < 2.0
    assert free == list(range(0, 4096, 10))


def test_shard_children_keep_their_env_and_per_member_set():
    first = shard_children((1, 3), 8, False, 10, {})
    assert first["shard-1"].vars.environ() == {"INDEX": "1", "COUNT": "8", "EPOCH": "10"}
    again = shard_children((1, 3, 5), 8, False, 11, first)
    assert again["shard-1"] is first["shard-1"] and again["shard-5"].vars.environ()["EPOCH"] == "11"
    member = shard_children((17, 3, 42), 64, True, 5, {})
    (child,) = member.values()
    assert child.vars.environ() == {"SHARDS": "3,17,42", "COUNT": "64", "EPOCH": "5"}
    assert shard_children((3, 17, 42), 64, True, 6, member) == member
    assert shard_children((), 64, True, 6, member) == {}


def test_published_round_trip_and_garbage():
    pub = Published(12, ("a", "b"), {"a": (0, 1), "b": (2,)}, 3)
    back = decode_published(pub.encode(), 40)
    assert back == Published(12, ("a", "b"), {"a": (0, 1), "b": (2,)}, 3, 40)
    assert decode_published(b"{}", 1) is None
    assert decode_published(b"\xff", 1) is None
