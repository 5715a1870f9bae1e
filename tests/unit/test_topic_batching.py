"""Topic role: messages claimed ahead of free run slots, batched acks, one
loop turn at a time (the harness of test_loop_turns: no store I/O in turns)."""

from __future__ import annotations

from etcdvisor.recipes.topic import Message
from etcdvisor.roles.topic import PREFETCH_HOLD, SHORT_RUN, Delivered

from .test_loop_turns import harness

TOPIC = """
  thumbs:
    type: topic
    topic: images
    command: ["thumb"]
    concurrency: 2
"""


class Source:
    """Records what the runner asks of its queue consumer."""

    def __init__(self):
        self.acked: list[list[int]] = []
        self.released: list[int] = []

    def ack(self, message):
        self.acked.append([message.id])
        return True

    def ack_many(self, messages):
        self.acked.append([m.id for m in messages])
        return [True] * len(messages)

    def release(self, message):
        self.released.append(message.id)
        return True

    def close(self):
        pass


def setup(count: int):
    h = harness(TOPIC)
    runner = h.sup.runners["thumbs"]
    runner.source = Source()
    runner._held = count  # as the fetch thread reserved them
    for i in range(1, count + 1):
        h.tell("thumbs", Delivered(Message(id=i, data=b"%d" % i, published_at=0.0)))
    return h, runner


def test_runs_never_exceed_concurrency_and_start_in_id_order():
    h, runner = setup(5)
    assert sorted(h.turn()["thumbs"]) == ["msg-1", "msg-2"]  # 3 wait for a slot
    h.exit("thumbs", "msg-1", 0)
    assert sorted(h.turn()["thumbs"]) == ["msg-2", "msg-3"]
    h.exit("thumbs", "msg-2", 0)
    h.exit("thumbs", "msg-3", 0)
    assert sorted(h.turn()["thumbs"]) == ["msg-4", "msg-5"]
    assert runner._held == 2  # three finished: room for three more claims
    assert runner.status()["running"] == 2


def test_acks_of_runs_ending_during_an_ack_write_go_together():
    h, runner = setup(4)
    h.turn()
    h.exit("thumbs", "msg-1", 0)
    h.turn()
    assert h.effect_names() == ["acknowledge message 1"]  # queued, not run yet
    h.exit("thumbs", "msg-2", 0)
    h.turn()
    h.exit("thumbs", "msg-3", 0)
    h.turn()
    assert h.effect_names() == ["acknowledge message 1"]  # one ack write at a time
    h.run_effects()
    h.turn()
    assert h.effect_names() == ["acknowledge messages 2, 3"]
    h.run_effects()
    h.turn()
    assert runner.source.acked == [[1], [2, 3]] and h.effect_names() == []


def test_a_failed_ack_write_is_logged_and_the_next_one_still_goes(caplog):
    h, runner = setup(3)
    h.turn()
    h.exit("thumbs", "msg-1", 0)
    h.turn()
    h.exit("thumbs", "msg-2", 0)
    h.turn()
    h.run_effects(fail=ConnectionError("etcd away"))
    h.turn()
    assert "acknowledging failed" in caplog.text
    assert h.effect_names() == ["acknowledge message 2"]


def test_messages_claimed_ahead_are_released_when_no_slot_frees_in_time():
    h, runner = setup(4)
    h.turn()
    assert runner.next_deadline() == runner.runs["msg-3"].delivered_at + PREFETCH_HOLD
    h.clock.advance(PREFETCH_HOLD + 0.1)
    assert sorted(h.turn()["thumbs"]) == ["msg-1", "msg-2"]
    assert sorted(h.effect_names()) == ["release message 3", "release message 4"]
    h.run_effects()
    h.turn()  # the outcomes come back: their claims are over
    assert runner.source.released == [3, 4] and runner._held == 2
    assert set(runner.runs) == {"msg-1", "msg-2"}


def test_claiming_ahead_follows_the_average_run_time():
    h, runner = setup(0)
    runner._stop.set()  # _reserve must not wait
    assert runner._reserve() == 2  # concurrency: nothing known about run times yet
    runner._free(2)
    for _ in range(3):
        runner._note_run_time(SHORT_RUN / 10)
    assert runner._ahead and runner._reserve() == 4  # short runs: as many again, ahead
    runner._free(4)
    for _ in range(10):
        runner._note_run_time(SHORT_RUN * 10)
    assert not runner._ahead and runner._reserve() == 2


def test_a_message_that_could_not_be_given_back_runs_here():
    h, runner = setup(3)
    h.turn()
    h.clock.advance(PREFETCH_HOLD + 0.1)
    h.turn()
    assert h.effect_names() == ["release message 3"]
    h.run_effects(fail=ConnectionError("etcd away"))  # we still hold its claim
    h.turn()
    assert "msg-3" in runner.runs and runner._held == 3
    h.clock.advance(PREFETCH_HOLD * 5)
    h.turn()
    assert h.effect_names() == [] and runner.next_deadline() is None  # not given back again
    h.exit("thumbs", "msg-1", 0)
    assert sorted(h.turn()["thumbs"]) == ["msg-2", "msg-3"]


def test_a_lost_lease_leaves_messages_not_running_to_the_group():
    from etcdvisor.coord.session import SessionEvent, SessionEventKind

    h, runner = setup(4)
    assert sorted(h.turn()["thumbs"]) == ["msg-1", "msg-2"]
    h.exit("thumbs", "msg-2", 3)  # fails: waits to retry, keeping its slot
    assert sorted(h.turn()["thumbs"]) == ["msg-1"]
    assert runner.runs["msg-2"].retry_at is not None and not runner.runs["msg-3"].slot
    runner.on_session(SessionEvent(SessionEventKind.LOST, 0, 10, 0.0))
    assert set(runner.runs) == {"msg-1"} and runner._held == 1  # 2, 3 and 4 are no longer ours
    h.clock.advance(60)
    h.exit("thumbs", "msg-1", 0)
    assert h.turn().get("thumbs", {}) == {}  # none of them runs here any more
    assert runner._held == 0
