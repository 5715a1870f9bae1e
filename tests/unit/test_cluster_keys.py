"""One key layout (coord/keys.py) and one topic backlog count (recipes/topic_format.py)."""

import re
from pathlib import Path

from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.coord.memory import MemoryBackend
from etcdvisor.recipes.topic import Topic
from etcdvisor.recipes.topic_format import topic_backlog
from etcdvisor.status.read import _topics

SRC = Path(__file__).resolve().parents[2] / "src" / "etcdvisor"


def test_the_documented_layout():
    keys = ClusterKeys("prod")
    base = "/etcdvisor/prod/"
    assert (keys.base, keys.members, keys.member("m1")) == (base, base + "members/", base + "members/m1")
    assert (keys.roles, keys.role("w")) == (base + "roles/", base + "roles/w/")
    assert keys.shard("w") == base + "roles/w/shard/" and keys.election("w") == base + "roles/w/election/"
    assert keys.role_status("w") == base + "roles/w/status/"
    assert keys.tick("c", "2026-05-01T03:00") == base + "roles/c/ticks/2026-05-01T03:00"
    assert keys.job("j") == base + "roles/j/job"
    assert keys.done("j") == base + "roles/j/done/" and keys.done_record("j", 4, 2) == base + "roles/j/done/4/2"
    assert keys.alive("w") == base + "roles/w/alive/"
    assert keys.grant("w", "m1") == base + "roles/w/grants/m1/grant"
    assert keys.assignment("w") == base + "roles/w/assignment"
    assert (keys.waitgroups, keys.waitgroup("g")) == (base + "waitgroups/", base + "waitgroups/g")
    assert (keys.topics, keys.topic("t")) == (base + "topics/", base + "topics/t/")
    assert keys.topic_messages("t") == base + "topics/t/msg/"
    assert keys.topic_done("t", "grp") == base + "topics/t/done/grp/"
    assert keys.topic_cursor("t", "r", "m1") == base + "topics/t/cursors/r/m1"
    assert (keys.control, keys.rollouts, keys.rollout("w")) == (base + "control/", base + "rollouts/",
                                                               base + "rollouts/w")


SEGMENT = re.compile(r"""(["}])(roles|members|control|topics|waitgroups|rollouts|shard|election|ticks|done|alive"""
                     r"""|grants|cursors)/""")


def test_no_cluster_key_is_spelled_outside_coord_keys():
    """Runners, status, metrics, ops and the CLI build cluster keys with ClusterKeys only
    (the topic recipe's own layout inside a topic's prefix is the recipe's)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel == "coord/keys.py" or rel.startswith("recipes/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SEGMENT.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []


def test_one_backlog_count_for_status_and_metrics():
    backend = MemoryBackend()
    keys = ClusterKeys("c")
    topic = Topic(backend, keys.topic("jobs"))
    ids = [topic.publish(f"m{i}".encode()) for i in range(5)]
    backend.put(keys.topic_done("jobs", "workers") + f"{ids[0]:020d}", b"")
    backend.put(keys.topic_done("jobs", "workers") + f"{ids[3]:020d}", b"")
    backend.put(keys.topic("jobs") + f"claims/workers/{ids[1]:020d}", b"")
    backend.put(keys.topic("jobs") + "groups/idle", b"")
    kvs = backend.get_prefix(keys.topic("jobs"), keys_only=True).kvs
    found = topic_backlog(kvs, keys.topic("jobs"))
    assert found.ids == tuple(sorted(ids))
    assert (found.unacked("workers"), found.unacked("idle"), found.unacked("never")) == (3, 5, 5)
    assert found.claimed == {"workers": 1} and found.groups == frozenset({"workers", "idle"})
    assert (found.after(0), found.after(ids[2])) == (5, 2)
    # status shows the same count
    doc = _topics(backend.get_prefix(keys.topics, keys_only=True).kvs, keys.topics, None)
    assert doc["jobs"]["groups"] == {"idle": {"unacked": 5, "claimed": 0}, "workers": {"unacked": 3, "claimed": 1}}
    assert (doc["jobs"]["messages"], doc["jobs"]["oldest_id"], doc["jobs"]["newest_id"]) == (5, min(ids), max(ids))
    backend.close()


def test_status_reads_a_wait_group_as_its_barrier_does():
    from etcdvisor.coord.types import KeyValue
    from etcdvisor.recipes.counter import parse_count
    from etcdvisor.status.read import _waitgroups

    keys = ClusterKeys("c")
    kvs = [KeyValue(keys.waitgroup(name), value, create_revision=n + 1, mod_revision=n + 1, version=1)
           for n, (name, value) in enumerate([("ready", b"3"), ("empty", b""), ("junk", b"x")])]
    assert _waitgroups(kvs, keys.waitgroups) == {"ready": 3, "empty": None, "junk": None}
    assert parse_count(kvs[0]) == 3  # the barrier's reading (runtime/barriers.py)
