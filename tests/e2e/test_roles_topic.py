"""``supervisor run`` with topic roles, on real etcd.

Histories come from the children's own records (see ``harness_roles``), keyed by
``MESSAGE_ID``:

* queue, 3 supervisors, concurrency 2, 200 messages: each runs exactly once,
  and every child's stdin holds its payload byte for byte (one payload full of
  shell metacharacters, NUL and non-UTF-8 bytes);
* queue with slow handlers and one supervisor SIGKILLed mid-run: every message
  still completes (at least once); duplicates are counted and printed;
* a failing message is retried with ``ATTEMPT`` 2, 3... until it succeeds, or
  given up (and acknowledged) after ``max_attempts`` runs;
* broadcast: one message (published with the CLI) runs once on every member; an
  oversized payload is refused by ``supervisor publish`` (exit 1, one line) and
  nothing is published.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.recipes.topic import Topic

from .conftest import wait_for
from .harness_roles import cli, duplicates, poll_status, recorder, status_json  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

NASTY = b"$(rm -rf /); `echo` \x00\xff'\"\n"


def topic_of(fleet, name: str) -> Topic:
    return Topic(fleet.backend(), ClusterKeys(fleet.cluster).topic(name))


def completed_ids(recorder, role: str) -> set[int]:
    return {int(r["message_id"]) for r in recorder.ends(role) if r["exit"] == 0}


def all_acked(config, topic: str, group: str) -> bool:
    """``status`` shows no unacknowledged and no claimed message in ``group``."""
    doc = poll_status(config)
    return doc is not None and doc["topics"][topic]["groups"].get(group) == {"unacked": 0, "claimed": 0}


def test_queue_each_message_once_with_payload_on_stdin(fleet, recorder):
    role = recorder.role("topic", topic="jobs", concurrency=2, env={"STDIN_DIR": str(recorder.stdin_dir)})
    config = fleet.write_config({"work": role})
    fleet.start_many(3, config)
    topic = topic_of(fleet, "jobs")
    payloads = {topic.publish(f"message {n}".encode()): f"message {n}".encode() for n in range(200)}
    payloads[topic.publish(NASTY)] = NASTY
    wait_for(lambda: completed_ids(recorder, "work") >= set(payloads), 120, "every message to complete")
    # nothing unacknowledged and nothing claimed: a duplicate run would have started by now
    wait_for(lambda: all_acked(config, "jobs", "work"), 10, "every message acknowledged")

    starts = recorder.starts("work")
    ids = [int(r["message_id"]) for r in starts]
    assert not duplicates(ids), f"messages run more than once: {duplicates(ids)}"
    assert set(ids) == set(payloads)
    assert {r["attempt"] for r in starts} == {"1"}
    assert {r["topic"] for r in starts} == {"jobs"}
    wrong = [i for i, data in payloads.items()
             if (recorder.stdin_dir / f"{i}.bin").read_bytes() != data]
    assert not wrong, f"stdin differs from the payload for messages {wrong[:10]}"
    spread = Counter(r["member_id"] for r in starts)
    print(f"queue: {len(ids)} messages, per member {dict(spread)}")


def test_queue_sigkilled_member_messages_redelivered(fleet, recorder):
    role = recorder.role("topic", topic="slow", concurrency=2, sleep=0.2)
    config = fleet.write_config({"work": role})
    fleet.start_many(3, config)
    topic = topic_of(fleet, "slow")
    published = {topic.publish(b"%d" % n) for n in range(120)}
    wait_for(lambda: len(recorder.ends("work")) >= 30, 60, "30 messages done")
    # the victim: the member with a child running right now (its claims are in flight)
    done_pids = {r["pid"] for r in recorder.ends("work")}
    running = [r for r in recorder.starts("work") if r["pid"] not in done_pids]
    victim = (running[-1] if running else recorder.starts("work")[-1])["member_id"]
    killed_at = fleet.members[victim].kill()

    wait_for(lambda: completed_ids(recorder, "work") >= published, 90, "every message to complete")
    # nothing unacknowledged and nothing claimed: every redelivery has happened
    wait_for(lambda: all_acked(config, "slow", "work"), 10, "every message acknowledged")
    starts = recorder.starts("work")
    ends = [r for r in recorder.ends("work") if r["exit"] == 0]
    assert completed_ids(recorder, "work") == published
    interrupted = {int(r["message_id"]) for r in starts if r["member_id"] == victim
                   and r["pid"] not in {e["pid"] for e in ends}}
    redone = {int(r["message_id"]) for r in starts if r["member_id"] != victim and r["t"] > killed_at}
    assert interrupted <= redone, f"interrupted messages never redelivered: {interrupted - redone}"
    assert not [r for r in starts if r["member_id"] == victim and r["t"] > killed_at + 0.5]
    dup = duplicates(int(r["message_id"]) for r in starts)
    completed_twice = duplicates(int(r["message_id"]) for r in ends)
    print(f"queue with SIGKILL of {victim}: {len(published)} messages, {len(starts)} runs started, "
          f"{len(interrupted)} interrupted by the kill, {len(dup)} messages started more than once, "
          f"{len(completed_twice)} completed more than once")


def test_broadcast_runs_on_every_member_and_oversize_is_refused(fleet, recorder):
    role = recorder.role("topic", topic="news", delivery="broadcast", max_payload="1KiB",
                         env={"STDIN_DIR": str(recorder.stdin_dir)})
    config = fleet.write_config({"news": role})
    members = fleet.start_many(3, config)

    def subscribed():
        doc = poll_status(config)
        if doc is None:
            return False
        reporting = [m["member"] for m in doc["members"] if "news" in m["roles"]]
        return len(reporting) == 3

    wait_for(subscribed, 60, "3 members consuming the broadcast topic")
    payload = b"b" * 1000 + NASTY
    result = cli("publish", "-c", str(config), "news", "-", stdin=payload[:1024])
    assert result.returncode == 0, result.stderr
    message_id = int(result.stdout)
    wait_for(lambda: len(recorder.ends("news")) >= 3, 30, "the message on all 3 members")
    time.sleep(0.5)  # the contract: once per member (a short while to show no second run)
    starts = recorder.starts("news")
    assert sorted(r["member_id"] for r in starts) == sorted(m.id for m in members), starts
    assert {int(r["message_id"]) for r in starts} == {message_id}
    assert (recorder.stdin_dir / f"{message_id}.bin").read_bytes() == payload[:1024]

    refused = cli("publish", "-c", str(config), "news", "-", stdin=b"x" * 1025)
    assert refused.returncode == 1
    assert refused.stdout == b""
    lines = refused.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "max_payload" in lines[0], lines
    topic = topic_of(fleet, "news")
    retained = fleet.backend().get_prefix(topic.prefix + "msg/", keys_only=True).kvs
    # not stored (above), so nothing can run it
    assert [kv.create_revision for kv in retained] == [message_id], "the refused payload was stored"
    assert len(recorder.starts("news")) == 3, "a child ran for the refused payload"


def test_failing_messages_retried_then_given_up(fleet, recorder):
    backoff = {"initial": "0.2s", "max": "0.4s"}
    config = fleet.write_config({
        "flaky": recorder.role("topic", max_attempts=4, backoff=backoff, env={"EXIT_BY_ATTEMPT": "3,3,0"}),
        "broken": recorder.role("topic", max_attempts=3, backoff=backoff, env={"EXIT_BY_ATTEMPT": "3"}),
    })
    fleet.start_many(1, config)
    flaky_id = topic_of(fleet, "flaky").publish(b"flaky")
    broken_id = topic_of(fleet, "broken").publish(b"broken")
    wait_for(lambda: all_acked(config, "flaky", "flaky") and all_acked(config, "broken", "broken"), 60,
             "both messages acknowledged")
    # a run writes its end line before it exits, and the message is acknowledged after that
    flaky = [(r["message_id"], r["attempt"], r["exit"]) for r in recorder.ends("flaky")]
    assert flaky == [(str(flaky_id), "1", 3), (str(flaky_id), "2", 3), (str(flaky_id), "3", 0)], flaky
    broken = [(r["message_id"], r["attempt"], r["exit"]) for r in recorder.ends("broken")]
    assert broken == [(str(broken_id), str(n), 3) for n in (1, 2, 3)], broken
    assert "giving up on message" in fleet.members["m0"].output()
