"""The text view of `supervisor status` (issue 19, 1.7): what an operator reads must be
true and fit 100 columns.

The documents are built by the real ``gather`` over the memory backend, with member
records as the runtime writes them, so the fields the renderer reads are the real ones.
"""

from __future__ import annotations

import json
import time

from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.coord.memory import MemoryBackend
from etcdvisor.runtime.control import issue, make_record
from etcdvisor.status import gather, render_text

KEYS = ClusterKeys("txt")


def member(store, name: str, roles: dict, *, ttl: int = 10) -> int:
    lease = store.lease_grant(ttl).id
    record = {"member": name, "host": "host-" + name, "pid": 100, "started": time.time() - 60, "ttl": ttl,
              "roles": roles}
    store.put(KEYS.member(name), json.dumps(record), lease=lease)
    return lease


def sharded(children: dict, **extra) -> dict:
    return {"type": "sharded", "state": "running", "index": 0, "count": 2, "epoch": 7, "failed": None,
            "children": children, **extra}


def text_of(store) -> str:
    return render_text(gather(store, KEYS.cluster))


def test_a_paused_role_reads_paused_not_running():
    store = MemoryBackend()
    member(store, "m0", {"worker": sharded({"0/2": {"state": "running", "pid": 11}})})
    issue(store, KEYS, make_record("pause", "worker", who="ann@laptop"))
    text = text_of(store)
    assert "role worker (sharded): paused by ann@laptop" in text
    row = next(line for line in text.splitlines() if line.startswith("  m0 "))
    assert " paused " in row and " running " not in row.replace("running pid", ""), row


def test_a_failed_role_names_its_reason_on_lines_of_at_most_100_columns():
    store = MemoryBackend()
    reason = "worker[0]: exited 6 times in a row within 10s of starting (last exit code 1) " * 3
    member(store, "m0", {"worker": sharded({"0/2": {"state": "failed", "last_exit": 1}}, failed=reason)})
    text = text_of(store)
    assert all(len(line) <= 100 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "failed on m0: worker[0]: exited 6 times" in text


def test_many_children_go_under_their_member_within_100_columns():
    store = MemoryBackend()
    children = {f"{i}/64": {"state": "running", "pid": 1000 + i, "ready": True, "last_exit": -15}
                for i in range(12)}
    member(store, "m0", {"worker": sharded(children)})
    text = text_of(store)
    assert all(len(line) <= 100 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "11/64: running pid 1011 ready" in text


def test_a_signal_exit_reads_as_the_log_says_it():
    store = MemoryBackend()
    member(store, "m0", {"worker": sharded({"0/2": {"state": "running", "pid": 5, "last_exit": -15}})})
    text = text_of(store)
    assert "last exit signal SIGTERM" in text and "last exit -15" not in text


def test_a_follower_running_its_standby_child_reads_standby():
    store = MemoryBackend()
    member(store, "m0", {"api": {"type": "singleton", "state": "leader", "leader": True, "token": 3,
                                 "failed": None, "children": {"api": {"state": "running", "pid": 7}}}})
    member(store, "m1", {"api": {"type": "singleton", "state": "campaigning", "leader": False, "token": None,
                                 "failed": None, "children": {"api": {"state": "running", "pid": 8}}}})
    row = next(line for line in text_of(store).splitlines() if line.startswith("  m1 "))
    assert " standby " in row and "campaigning" not in row, row


def test_a_member_that_stopped_keeping_its_lease_alive_is_marked():
    """A SIGKILLed member's record stays until its lease expires: status must not show it
    as healthy meanwhile. A live member renews its lease to the full TTL every second;
    the dead one's lease runs down (here: its record says ttl 10, 4 s are left)."""
    store = MemoryBackend()
    member(store, "live", {})
    lease = store.lease_grant(4).id
    record = {"member": "dead", "host": "h", "pid": 1, "started": time.time() - 60, "ttl": 10, "roles": {}}
    store.put(KEYS.member("dead"), json.dumps(record), lease=lease)
    doc = gather(store, KEYS.cluster)
    marks = {m["member"]: m.get("lease_expiring") for m in doc["members"]}
    assert marks == {"live": False, "dead": True}, marks
    text = render_text(doc)
    dead = next(line for line in text.splitlines() if line.startswith("dead "))
    live = next(line for line in text.splitlines() if line.startswith("live "))
    assert "(no keepalive)" in dead and " ok " in live, text


def test_children_are_named_as_in_the_logs():
    """One name per child (issue 19, 1.3): the member record carries each child's name
    (worker[0]), and the text view uses it, not the slot key (0/2)."""
    store = MemoryBackend()
    member(store, "m0", {"worker": sharded({"0/2": {"name": "worker[0]", "state": "running", "pid": 5,
                                                    "notify_status": "serving"}})})
    text = text_of(store)
    assert "worker[0]: running pid 5" in text and "STATUS= on m0 worker[0]: serving" in text
    assert "0/2:" not in text


def test_a_topic_role_has_its_own_columns_not_the_sharded_ones():
    store = MemoryBackend()
    member(store, "m0", {"mail": {"type": "topic", "state": "consuming", "failed": None, "topic": "mail",
                                  "delivery": "queue", "running": 2, "processed": 41, "given_up": 1,
                                  "children": {"7": {"state": "running", "pid": 12}}}})
    text = text_of(store)
    header = next(line for line in text.splitlines() if line.startswith("  MEMBER"))
    assert header.split()[:7] == ["MEMBER", "STATE", "TOPIC", "RUNNING", "PROCESSED", "GIVEN", "UP"], header
    assert "INDEX" not in header and "None" not in text
    row = next(line for line in text.splitlines() if line.startswith("  m0 "))
    assert row.split()[:7] == ["m0", "consuming", "mail", "(queue)", "2", "41", "1"], row


def test_a_role_state_a_record_does_not_carry_reads_as_a_dash():
    store = MemoryBackend()
    member(store, "m0", {"worker": sharded({}, state=None)})
    row = next(line for line in text_of(store).splitlines() if line.startswith("  m0 "))
    assert row.split()[1] == "-", row
