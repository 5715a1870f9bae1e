"""The decision loop, one turn at a time (issue 8 items 2 and 3).

Every runner's turn is a pure decision: facts in, desired children and
effects out. The harness (``loop_harness``) runs the real loop code over the
memory backend and a fake clock; its tripwire backend fails any test whose
turn touches the store. Effects are run, failed or left hanging by the test.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from etcdvisor.coord.errors import Unavailable
from etcdvisor.events import Wake
from etcdvisor.recipes.sequence import Info
from etcdvisor.recipes.topic import Message
from etcdvisor.roles.handoff import Grant, decode_record
from etcdvisor.roles.job import JobRecord
from etcdvisor.roles.singleton import Deposed, Elected
from etcdvisor.roles.topic import Delivered

from .loop_harness import LoopHarness

BASE = """
cluster: loop
etcd: {endpoints: "memory://loop"}
member: {ttl: 10}
roles:
"""


def harness(roles: str, **kwargs) -> LoopHarness:
    return LoopHarness(BASE + roles, **kwargs)


def elect(h: LoopHarness, role: str) -> int:
    """Make this member the role's leader as the campaign thread would:
    an election key on the lease, then the Elected fact."""
    runner = h.sup.runners[role]
    from etcdvisor.recipes.election import Election

    runner.election = Election(h.store, h.sup.keys.election(role), h.session, "m1")
    key = runner.election.prefix + f"{h.session.lease_id:x}"
    h.store.put(key, b"m1", lease=h.session.lease_id)
    token = h.store.get(key).create_revision
    runner.election._key, runner.election.token = key, token
    h.tell(role, Elected(token))
    return token


CRON = """
  report:
    type: cron
    schedule: "@every 10s"
    command: ["report"]
"""


def claim_due_tick(h: LoopHarness):
    """Elected and resumed, with a tick due: the turn queues its claim."""
    h.turn()
    h.run_effects()
    h.turn()
    runner = h.sup.runners["report"]
    runner.ctx.wall = lambda: 2_000_000_010.0
    runner.cursor = runner._now().replace(second=0)
    h.turn()
    return runner


def test_cron_claims_a_tick_as_an_effect_and_starts_only_after_the_claim_won():
    h = harness(CRON)
    token = elect(h, "report")
    assert h.turn() == {} and h.effect_names() == ["watch leadership", "read tick records"]
    h.run_effects()
    assert h.turn() == {}
    runner = h.sup.runners["report"]
    runner.ctx.wall = lambda: 2_000_000_010.0
    runner.cursor = runner._now().replace(second=0)  # a tick is due
    assert h.turn() == {}, "no child before the claim came back"
    (claim,) = h.effect_names()
    assert claim.startswith("claim tick")
    h.run_effects()
    running = h.turn()
    assert list(running) == ["report"]
    (spec,) = running["report"].values()
    assert spec.environ()["LEADER_TOKEN"] == str(token) and "SCHEDULED_TIME" in spec.environ()


def test_cron_claim_that_fails_runs_nothing_and_is_retried_later():
    h = harness(CRON)
    elect(h, "report")
    runner = claim_due_tick(h)
    h.run_effects(fail=Unavailable("etcd timed out"))
    assert h.turn() == {} and h.effect_names() == []
    assert runner.next_deadline() == pytest.approx(h.clock() + 1.0)
    h.clock.advance(1.0)
    h.turn()
    assert h.effect_names()[0].startswith("claim tick")
    h.run_effects()
    assert list(h.turn()) == ["report"]


def test_cron_claim_outcome_after_losing_leadership_starts_nothing():
    h = harness(CRON)
    elect(h, "report")
    claim_due_tick(h)
    h.tell("report", Deposed("leader key deleted"))
    h.turn()
    h.run_effects()
    assert h.turn() == {}


def test_losing_leadership_starts_no_thread_in_the_turn_and_campaigns_as_an_effect():
    h = harness(CRON)
    elect(h, "report")
    h.turn()
    h.run_effects(only="read tick records")
    before = {t.ident for t in threading.enumerate()}
    h.tell("report", Deposed("leader key deleted"))
    h.turn()
    assert {t.ident for t in threading.enumerate()} <= before, "a turn started a thread"
    assert "campaign" in h.effect_names()


def test_claim_won_in_an_earlier_term_is_dropped_even_when_reelected_with_the_same_token():
    """A member deposed and elected again with the same token (its key survived)
    is in a new term: the claim it issued in the old term must not start a run."""
    h = harness(CRON)
    token = elect(h, "report")
    claim_due_tick(h)
    h.tell("report", Deposed("leader key deleted"))
    h.turn()
    h.tell("report", Elected(token))  # same token, new term
    h.turn()
    h.run_effects(only="claim tick")
    assert "report" not in h.turn() or not h.turn()["report"]


def test_a_deposition_seen_by_an_earlier_terms_watch_does_not_end_the_current_term():
    h = harness(CRON)
    token = elect(h, "report")
    h.turn()
    runner = h.sup.runners["report"]
    old_term = runner.term
    h.tell("report", Deposed("leader key deleted"))
    h.turn()
    h.tell("report", Elected(token))
    h.turn()
    h.tell("report", Deposed("late event of the old watch", old_term))
    h.turn()
    assert runner.leading


JOB = """
  migrate:
    type: job
    command: ["migrate"]
"""


def test_job_writes_its_running_record_before_the_child_starts_and_never_reruns_on_success():
    h = harness(JOB)
    elect(h, "migrate")
    h.tell("migrate", JobRecord(None))
    assert h.turn() == {}
    assert h.effect_names() == ["watch leadership", "write job record (running)"]
    assert h.turn() == {} and h.effect_names() == ["watch leadership", "write job record (running)"], \
        "one write in flight"
    h.run_effects()
    assert list(h.turn()) == ["migrate"]
    h.exit("migrate", "run", 0)
    h.turn()
    assert h.effect_names() == ["write job record (succeeded)"]
    assert h.turn() == {} and h.effect_names() == ["write job record (succeeded)"], "not started again"
    h.run_effects()
    assert h.turn() == {}


def test_a_late_watch_event_of_the_running_record_does_not_start_a_finished_job_again():
    """Loaded machine: the job's child exits before the watch delivers the 'running'
    record the runner wrote; that stale event must not make the finished job run again."""
    h = harness(JOB)
    elect(h, "migrate")
    h.tell("migrate", JobRecord(None, revision=1))
    h.turn()
    h.run_effects()  # the 'running' record is written
    running = h.backend.get(h.sup.ctx.keys.job("migrate"))
    assert list(h.turn()) == ["migrate"]
    h.exit("migrate", "run", 0)
    h.turn()
    assert h.effect_names() == ["write job record (succeeded)"]
    h.tell("migrate", JobRecord(json.loads(running.value), revision=running.mod_revision))  # late
    assert h.turn() == {}, "the finished job started again"
    h.run_effects()
    final = h.backend.get(h.sup.ctx.keys.job("migrate"))
    h.tell("migrate", JobRecord(json.loads(running.value), revision=running.mod_revision))
    h.tell("migrate", JobRecord(json.loads(final.value), revision=final.mod_revision))
    assert h.turn() == {} and h.effect_names() == []
    h.tell("migrate", JobRecord(None, revision=final.mod_revision + 1))  # `supervisor rerun`
    h.turn()
    assert h.effect_names() == ["write job record (running)"]


def test_job_record_write_failure_starts_nothing_and_retries():
    h = harness(JOB)
    elect(h, "migrate")
    h.tell("migrate", JobRecord(None))
    h.turn()
    h.run_effects(fail=Unavailable("no leader"))
    assert h.turn() == {} and h.effect_names() == []
    h.clock.advance(1.0)
    h.turn()
    assert h.effect_names() == ["write job record (running)"]


TOPIC = """
  thumbs:
    type: topic
    topic: images
    command: ["thumb"]
"""


def test_topic_run_is_acknowledged_by_an_effect_after_it_exits():
    h = harness(TOPIC)
    runner = h.sup.runners["thumbs"]
    runner.source = type("Source", (), {"ack": lambda self, m: None, "release": lambda self, m: None,
                                        "close": lambda self: None})()
    h.tell("thumbs", Delivered(Message(id=7, data=b"payload", published_at=0.0)))
    running = h.turn()
    (spec,) = running["thumbs"].values()
    assert spec.stdin_data == b"payload" and spec.environ()["MESSAGE_ID"] == "7"
    h.exit("thumbs", "msg-7", 0)
    h.turn()
    assert h.effect_names() == ["acknowledge message 7"]


SHARDED = """
  worker:
    type: sharded
    command: ["work"]
    settle: 0.2s
"""


def grant(h: LoopHarness, role: str = "worker") -> None:
    """The coordinator's start grant for what this member's alive record announces
    (as its grant watch would deliver it; turn tests start no watches)."""
    kv = h.backend.get(f"/etcdvisor/{h.config.cluster}/roles/{role}/alive/{h.sup.ctx.member_id}")
    h.tell(role, Grant(0, kv.mod_revision, decode_record(kv.value), "coordinator"))


def start_sharded(h: LoopHarness, info: Info) -> dict:
    """Settle ``info``, then the fenced hand-off: alive record written (an
    effect), the coordinator's grant, a keepalive sent after it; return what runs."""
    h.tell_plan("worker", info)
    h.clock.advance(0.5)
    h.session._keepalive_once()
    h.turn()
    h.run_effects(only="alive record")
    h.turn()
    grant(h)
    h.turn()
    h.clock.advance(0.1)
    h.session._keepalive_once()
    return h.turn()


def test_sharded_assignment_needs_a_keepalive_sent_after_it_and_no_store_call():
    h = harness(SHARDED)
    h.tell_plan("worker", Info(index=0, count=2, epoch=5))
    assert h.turn() == {}, "not confirmed by a keepalive sent after the change"
    h.clock.advance(0.5)
    h.session._keepalive_once()
    # fenced hand-off (the default): the alive record is written first, as an effect
    assert h.turn() == {}, "started before its alive record was written"
    assert h.effect_names() == ["alive record"]
    h.run_effects()
    assert h.turn() == {}, "record written, but no grant from the coordinator yet"
    grant(h)
    assert h.turn() == {}, "granted, but no keepalive sent after the grant came yet"
    h.clock.advance(0.1)
    h.session._keepalive_once()
    running = h.turn()
    (spec,) = running["worker"].values()
    assert (spec.environ()["INDEX"], spec.environ()["COUNT"], spec.environ()["EPOCH"]) == ("0", "2", "5")


def test_a_plan_waiting_for_its_keepalive_leaves_the_loop_asleep_until_the_keepalive_comes():
    """The plan came, its keepalive has not (a loaded machine: seconds). The loop must sleep
    until the session's event wakes it: a deadline in the past turned it without pause (10
    to 40 turns a second per member in a reshard, which starved a 300-member fleet's
    keepalives on 2 cores until their leases expired)."""
    h = harness(SHARDED)
    h.tell_plan("worker", Info(index=1, count=2, epoch=5))
    for _ in range(3):
        h.clock.advance(0.3)  # past the runner's hold: nothing left to wait for but the keepalive
        assert h.turn() == {}
        deadline = h.sup._next_deadline()
        assert deadline is None or deadline > h.clock(), "the loop would turn again at once"
    h.session._keepalive_once()  # its event wakes the loop; then the alive record is due
    h.turn()
    assert h.effect_names() == ["alive record"]


class Boom(RuntimeError):
    pass


def test_a_runner_that_raises_fails_its_role_only():
    h = harness(SHARDED + JOB)
    h.tell_plan("worker", Info(index=0, count=1, epoch=3))
    h.clock.advance(0.5)
    h.session._keepalive_once()
    elect(h, "migrate")
    h.tell("migrate", JobRecord(None))
    h.turn()
    h.run_effects()
    h.turn()  # the worker's alive record came back: its start waits for its grant
    grant(h)
    h.turn()  # and for one more keepalive
    h.clock.advance(0.1)
    h.session._keepalive_once()
    assert set(h.turn()) == {"worker", "migrate"}

    def broken(now):
        raise Boom("index out of range")

    h.sup.runners["worker"].desired = broken
    running = h.turn()
    assert set(running) == {"migrate"}, "the broken role's child is stopped, the other keeps running"
    status = h.sup._roles_status()
    assert "index out of range" in status["worker"]["failed"]
    assert status["migrate"]["failed"] is None
    h.turn()
    assert "give up coordination" in h.effect_names(), "it leaves once its children are gone"


def test_a_runner_that_raises_on_a_slot_event_fails_its_role_only():
    h = harness(SHARDED + JOB)
    assert set(start_sharded(h, Info(index=0, count=1, epoch=3))["worker"]) == {"0/1"}

    def broken(key, event, now):
        raise Boom("bad event")

    h.sup.runners["worker"].on_slot_event = broken
    h.exit("worker", "0/1", 1)
    h.turn()
    assert "bad event" in h.sup._roles_status()["worker"]["failed"]


def test_member_record_is_written_by_an_effect():
    from etcdvisor.runtime.member import TRANSITION_HOLD

    h = harness(SHARDED)
    h.turn()  # the record registered without roles: the role it does not show is written at once
    assert h.member_effect_names() == ["update the member record"]
    h.run_effects(only="update the member record")
    h.turn()
    assert "update the member record" not in h.member_effect_names()
    h.tell_plan("worker", Info(index=0, count=1, epoch=3))
    h.clock.advance(1.5)
    h.session._keepalive_once()
    h.turn()
    # the role waits in its handoff (no grant here): a transition, written after the hold
    assert "update the member record" not in h.member_effect_names()
    for _ in range(int(TRANSITION_HOLD / 2) + 1):  # keepalives keep the lease meanwhile
        h.clock.advance(2.0)
        h.session._keepalive_once()
        h.turn()
    assert "update the member record" in h.member_effect_names()


def test_reload_check_runs_off_the_loop_and_a_second_sighup_waits_for_it():
    h = harness(SHARDED)
    h.sup.reloads.request()
    h.sup.reloads.request()
    assert h.member_effect_names() == ["check the config file for reload"]
    assert h.sup.reloads.again


def test_while_a_reload_check_hangs_the_loop_keeps_turning_and_lease_deadlines_move():
    from etcdvisor.coord.session import SessionEvent, SessionEventKind
    from etcdvisor.events import SessionChanged

    h = harness(SHARDED)
    running = start_sharded(h, Info(index=0, count=1, epoch=3))
    pid = h.manager.slots["worker/0/1"].child.pid
    h.sup.reloads.request()  # its effect is never run: the check "hangs"
    for _ in range(5):
        h.clock.advance(1.0)
        h.session._keepalive_once()
        h.post(SessionChanged(SessionEvent(SessionEventKind.KEEPALIVE, h.session.lease_id,
                                           h.session.ttl, h.session.last_alive_sent)))
        assert h.turn() == running
        slot = h.manager.slots["worker/0/1"]
        term_at = h.manager.deadline_rule(slot)[0]
        assert term_at > h.clock(), "the stop deadline follows the confirmed keepalives"
    assert h.manager.slots["worker/0/1"].child.pid == pid


def test_a_reload_whose_runner_cannot_be_built_keeps_the_running_config(monkeypatch):
    from dataclasses import replace

    from etcdvisor.runtime import runners as runners_module
    from etcdvisor.runtime.reload import ReloadPlan

    h = harness(SHARDED + JOB)
    before = h.sup.config
    runners_before = dict(h.sup.runners)
    real = runners_module.runner_types

    def refusing():
        types = dict(real())
        original = types[h.sup.config.roles["migrate"].type]

        class Refuses(original):
            def __init__(self, spec, ctx):
                raise ValueError("cannot build this runner")

        types[h.sup.config.roles["migrate"].type] = Refuses
        return types

    monkeypatch.setattr(runners_module, "runner_types", refusing)
    changed = replace(before.roles["migrate"], env={"NEW": "1"})
    plan = ReloadPlan(config=replace(before, roles={**before.roles, "migrate": changed}),
                      retire=("migrate",), start=("migrate",))
    h.sup.reloads.checked(plan, None)
    assert h.sup.config is before and h.sup.runners == runners_before
    assert not h.sup.roster.retiring and not h.sup.roster.pending


def test_a_reload_check_that_raises_keeps_the_running_config():
    h = harness(SHARDED)
    before = h.sup.config
    h.sup.reloads.request()
    h.run_effects(fail=OSError("config file vanished"))
    h.turn()
    assert h.sup.config is before and not h.sup.reloads.running


def test_cron_retries_of_a_failed_run_end_when_the_next_tick_is_due():
    """Issue 19, 1.8: a failing run with on-failure is retried, but its retries never
    delay or skip the next tick (concurrency forbid would otherwise wait for them)."""
    from etcdvisor.process.slot import Exited

    h = harness(CRON)
    elect(h, "report")
    runner = claim_due_tick(h)
    h.run_effects()
    (first,) = h.turn()["report"]
    runner.on_slot_event(first, Exited(f"report/{first}", 3, 0.5, h.clock() + 30.0), h.clock())
    assert first in runner.runs, "between attempts the run is still the active one"
    runner.ctx.wall = lambda: 2_000_000_021.0  # the next tick is due, the retry is 30 s away
    h.turn()
    names = h.effect_names()
    assert any(n == f"record tick {first} failed" for n in names), names
    assert any(n.startswith("claim tick") and first not in n for n in names), names
    h.run_effects()
    running = h.turn()["report"]
    assert first not in running and len(running) == 1, running
    # the stop of the ended run is not recorded a second time
    runner.on_slot_event(first, Exited(f"report/{first}", -15, 0.1, None), h.clock())
    assert h.turn() is not None and not any("record tick" in n and first in n for n in h.effect_names())


def test_a_deadline_stuck_in_the_past_cannot_turn_the_loop_without_pause(caplog):
    """The class of the N = 300 meltdown: whatever deadline stays in the past, the loop
    turns at most SPIN_TURNS times in a row without a pause, then waits SPIN_PAUSE before
    each such turn, and says so once (a bug report, not a silent burnt core)."""
    import logging
    import queue as queue_mod

    from etcdvisor.runtime import loop as loop_mod

    caplog.set_level(logging.WARNING, logger="etcdvisor")
    h = harness(SHARDED)
    h.sup.inbox = queue_mod.SimpleQueue()
    h.sup.roster.next_deadline = lambda: 0.0  # a runner whose deadline never moves
    for _ in range(loop_mod.SPIN_TURNS):
        h.sup._turn()
    started = time.monotonic()
    for _ in range(10):
        h.sup._turn()
    assert time.monotonic() - started >= 10 * loop_mod.SPIN_PAUSE * 0.9
    warned = [r for r in caplog.records if "woken" in r.getMessage()]
    assert len(warned) == 1
    h.sup.inbox.put(Wake("news"))  # an event resets the count: no pause for a turn with news
    h.sup._turn()
    assert h.sup._empty_turns == 0


def test_a_join_order_member_keeps_its_children_while_no_plan_is_published():
    """The plan key deleted by hand, or a coordinator of an earlier version that published
    no join-order plan (an in-place upgrade of a fleet, member by member): a member that
    has its place keeps it and its child (same pid) until a plan says otherwise."""
    from etcdvisor.recipes.sequence import Place
    from etcdvisor.roles.shard_plan import Published

    h = harness(SHARDED)
    running = start_sharded(h, Info(index=0, count=1, epoch=3))
    children = {key: slot.child for _r, key, slot in h.sup.reconciler.children()}
    assert running["worker"] and all(children.values())
    h.tell("worker", Published(0, ()))  # the assignment key is absent
    h.tell("worker", Place(head=False, joined=3))
    assert h.turn() == running
    assert {key: slot.child for _r, key, slot in h.sup.reconciler.children()} == children  # not replaced
    assert h.sup.runners["worker"].latest.count == 1
