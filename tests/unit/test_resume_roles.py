"""Role runners' decision state across an in-place upgrade (roles/resume.py): what the old
image exports survives the JSON hand-over and comes back equal in a fresh runner; a state
of another role type, or an unreadable one, is one line (ResumeError)."""

import collections
import json
from types import SimpleNamespace

import pytest

from etcdvisor.process.spawn import ChildVars
from etcdvisor.recipes.sequence import Info
from etcdvisor.recipes.topic_format import Message
from etcdvisor.roles import resume
from etcdvisor.roles.assignment import Part
from etcdvisor.roles.handoff import Child
from etcdvisor.roles.sharded import Phase
from etcdvisor.roles.topic import _Run


def travel(doc):
    return json.loads(json.dumps(doc, allow_nan=False))


def fake(kind, **attrs):
    return SimpleNamespace(name="r", spec=SimpleNamespace(type=SimpleNamespace(value=kind)),
                           failed_reason=None, ctx=SimpleNamespace(clock=lambda: 5.0), **attrs)


def test_sharded_state_round_trip():
    child = Child("1/3", frozenset({Part(1, 3)}), ChildVars(index=1, count=3, epoch=120))
    old = fenced(phase=Phase.RUNNING, applied=Info(1, 3, 120, ("a", "b", "c")),
                 latest=Info(1, 3, 131, ("a", "b", "c")), running={"1/3": child}, target={"1/3": child},
                 live={"1/3"}, record=frozenset({Part(1, 3)}), record_rev=125, since={Part(1, 3): 125})
    doc = travel(resume.export_state(old))
    new = fenced()
    resume.restore_state(new, doc)
    assert (new.phase, new.applied, new.latest, new.live, new.record, new.record_rev) == \
        (Phase.RUNNING, old.applied, old.latest, {"1/3"}, old.record, 125)
    assert new.running == old.running  # the same child spec
    assert new.running["1/3"].vars == ChildVars(index=1, count=3, epoch=120)


def fenced(**attrs):
    base = dict(phase=Phase.JOINING, applied=None, latest=None, running={}, target={}, live=set(), record=None,
                record_rev=0, stopping={}, approved={}, since={})
    return fake("sharded", **{**base, **attrs})


def test_fenced_sharded_state_carries_stopping_approved_and_announcement_revisions():
    """The coordinator protocol's member side survives the hand-over: a child being stopped
    stays in the alive record until reaped (else the next record write would drop its
    partition while it is alive and the coordinator could grant it elsewhere); an approved
    child waits for a keepalive of the new image; ``since`` is what the grant is checked
    against (without it a part already announced is never covered: the child never starts)."""
    going = Child("0/2", frozenset({Part(0, 2)}), ChildVars(index=0, count=2, epoch=120))
    coming = Child("1/3", frozenset({Part(1, 3)}), ChildVars(index=1, count=3, epoch=131))
    old = fenced(phase=Phase.HANDOFF, applied=Info(1, 3, 131, ("a", "b", "c")), target={"1/3": coming},
                 live={"0/2"}, stopping={"0/2": going}, approved={"1/3": (coming, 4.0)},
                 record=frozenset({Part(0, 2), Part(1, 3)}), record_rev=140,
                 since={Part(0, 2): 118, Part(1, 3): 140})
    doc = travel(resume.export_state(old))
    new = fenced()
    resume.restore_state(new, doc)
    assert new.stopping == {"0/2": going} and new.approved == {"1/3": (coming, 5.0)}
    assert new.since == {Part(0, 2): 118, Part(1, 3): 140} and new.record == old.record
    # a grant decided on the record write of revision 140 covers the announced child
    from etcdvisor.roles.handoff import Grant
    assert Grant(131, 140, frozenset({Part(1, 3)})).covers(coming.parts, new.since)


def test_a_sharded_state_without_announcement_revisions_announces_the_record_again():
    """From an image that did not carry ``since``: the record is written anew (a fresh
    revision the coordinator grants on) instead of waiting for a grant nothing can match."""
    doc = travel(resume.export_state(fenced(record=frozenset({Part(0, 1)}), record_rev=9, since={Part(0, 1): 9})))
    del doc["since"], doc["stopping"], doc["approved"]
    new = fenced()
    resume.restore_state(new, doc)
    assert (new.record, new.since, new.stopping, new.approved) == (None, {}, {}, {})


def test_topic_state_round_trip_keeps_claims_in_flight():
    message = Message(4711, b"\x00payload\xff", 1.5e9, 9)
    run = _Run(message, attempt=2, retry_at=None, slot=True, delivered_at=3.0)
    waiting = _Run(Message(4712, b"next", 1.5e9, 10), delivered_at=4.0)
    old = fake("topic", runs={"msg-4711": run, "msg-4712": waiting}, _waiting=collections.deque(["msg-4712"]),
               processed=7, given_up=1, _run_time=0.4, _ahead=True, _acks=[], queue=True, source=None)
    doc = travel(resume.export_state(old))
    new = fake("topic", runs={}, _waiting=collections.deque(), processed=0, given_up=0, _run_time=None,
               _ahead=False, _acks=[], _held=0)
    resume.restore_state(new, doc)
    assert new.runs["msg-4711"].message == message and new.runs["msg-4711"].attempt == 2
    assert new.runs["msg-4711"].slot and not new.runs["msg-4712"].slot
    assert list(new._waiting) == ["msg-4712"] and (new.processed, new.given_up) == (7, 1)
    assert new._held == 2  # both claims are still ours: the fetcher claims only the rest


def test_a_state_of_another_role_type_is_refused():
    with pytest.raises(resume.ResumeError, match="handed over as a 'cron' role, configured as 'sharded'"):
        resume.restore_state(fake("sharded"), {"type": "cron"})


def test_an_unreadable_state_is_one_line():
    new = fake("topic", runs={}, _waiting=collections.deque())
    with pytest.raises(resume.ResumeError) as err:
        resume.restore_state(new, {"type": "topic", "failed": None, "runs": {"m": {"message": {"id": "x"}}}})
    assert "unreadable hand-over state" in str(err.value) and "\n" not in str(err.value)


def test_a_cron_run_in_flight_resumes_with_the_same_typed_variables():
    """A tick whose child was running when the old image exec'd comes back with the child
    spec CronRunner._run gave it (LEADER, LEADER_TOKEN, SCHEDULED_TIME, MANUAL), so the
    adopted child's spec digest matches (the resume used to call a removed leader_env())."""
    from datetime import UTC, datetime

    from etcdvisor.config.schedule import Schedule
    from etcdvisor.roles import cron
    from etcdvisor.roles.singleton import LeaderState

    def runner(token):
        r = cron.CronRunner.__new__(cron.CronRunner)
        r.schedule, r.policy, r.token = Schedule.parse("@every 1s"), "allow", token
        r.spec = SimpleNamespace(name="c", type=SimpleNamespace(value="cron"))
        r.ctx = SimpleNamespace(child_spec=lambda role, name, child_vars: (name, child_vars), clock=lambda: 5.0)
        r.runs, r.say, r.failed_reason = {}, lambda message: None, None
        return r

    tick = datetime(2026, 12, 7, 15, 34, 50, tzinfo=UTC)
    old = runner(321)
    old.state, old.leader_member, old.stepping_down = LeaderState.LEADER, "m2", None
    old.cursor, old.missed, old.last_outcome, old.triggers, old._retries_ended = tick, 0, None, {}, set()
    old._run(tick, tick, "2026-12-07T15:34:50Z")
    old._run(tick, tick, "2026-12-07T15:34:50.000Zm", manual=True)
    doc = travel(resume.export_state(old))
    new = runner(321)
    resume.restore_state(new, doc)
    resume._cron_resumed(new, doc)
    assert new.runs == old.runs and new.cursor == tick
    name, child_vars = new.runs["2026-12-07T15:34:50Z"].spec
    assert name == "c@2026-12-07T15:34:50Z" and not child_vars.manual
    assert (child_vars.leader, child_vars.leader_token, child_vars.scheduled_time) == \
        (True, 321, old.schedule.format_tick(tick))
    assert new.runs["2026-12-07T15:34:50.000Zm"].spec[1].manual
