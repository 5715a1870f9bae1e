"""Health decisions of the loop, one turn at a time over the memory backend and a
fake clock: ``needs`` holds a role until the roles it needs are ready; a singleton
leader whose child stays unready for ``step_down_after`` stops it, then resigns and
sits out ``backoff.max``; ``on_failed: exit`` stops the member with status 3."""

from __future__ import annotations

from etcdvisor.process.slot import Failed
from etcdvisor.runtime.readiness import NotifyMessage

from .test_loop_turns import elect, harness

NEEDS = """
  db:
    type: singleton
    command: [db]
    health: {notify: true}
  api:
    type: singleton
    command: [api]
    needs: [db]
"""

STEP_DOWN = """
  lead:
    type: singleton
    command: [lead]
    step_down_after: 5s
    backoff: {max: 20s}
    health: {notify: true}
"""


def test_needs_holds_a_role_until_the_needed_children_are_ready():
    h = harness(NEEDS)
    elect(h, "db")
    elect(h, "api")
    assert set(h.turn()) == {"db"}  # db runs, not ready yet: api waits
    h.clock.advance(3)  # (within the lease: the harness sends no keepalives)
    assert set(h.turn()) == {"db"}
    h.post(NotifyMessage("db/db", (("READY", "1"),)))
    assert set(h.turn()) == {"db", "api"}
    assert h.sup.child_ready("db", "db") and h.sup.child_ready_since("db", "db") == h.clock()


def test_an_unready_singleton_leader_steps_down_after_its_child_stopped():
    h = harness(STEP_DOWN)
    elect(h, "lead")
    assert set(h.turn()) == {"lead"}
    runner = h.sup.runners["lead"]
    h.clock.advance(4.9)
    h.turn()
    assert runner.stepping_down is None and runner.next_deadline() is not None
    slot = h.manager.slots["lead/lead"]
    slot.desired = None  # (the fake manager stops at once: make the stop take a turn)
    h.manager.tick = lambda now: []
    h.clock.advance(0.2)
    h.turn()
    assert runner.stepping_down is not None and "resign" not in h.effect_names()  # child alive
    slot.child = None  # it exited
    h.turn()
    assert "resign" in h.effect_names() and not runner.leading
    assert runner.hold_until == h.clock() + 20.0
    h.clock.advance(19.0)
    h.turn()
    assert runner.state.value == "follower"  # no campaign during the hold


def test_a_ready_leader_keeps_the_role():
    h = harness(STEP_DOWN)
    elect(h, "lead")
    h.turn()
    h.post(NotifyMessage("lead/lead", (("READY", "1"), ("STATUS", "leading"))))
    h.turn()
    h.clock.advance(6)
    assert set(h.turn()) == {"lead"}
    assert h.sup.last_status["lead"]["children"]["lead"]["notify_status"] == "leading"


def test_on_failed_exit_stops_the_member_with_status_3():
    h = harness("""
  a:
    type: singleton
    command: [a]
    on_failed: exit
""")
    elect(h, "a")
    h.turn()
    h.sup.runners["a"].on_slot_event("a", Failed("a/a", "crash loop"), h.clock())
    h.turn()
    h.sup.last_status = h.sup._roles_status()
    assert h.sup.child_health.failed_exit(h.config, h.sup.last_status) == "a"


def _record_writes(h) -> list[dict]:
    """Run the member's queued record writes; the roles each one wrote."""
    import json

    bodies = []
    for effect in [e for e in h.effects if e.what == "update the member record"]:
        bodies.append(json.loads(h.store.get(h.sup.record.key).value) if effect.call() is None else None)
    h.run_effects()  # their outcomes (and the role effects) go back to the loop
    return [b["roles"] for b in bodies if b is not None]


def test_a_restarted_child_with_a_known_ready_time_costs_the_record_one_write():
    """Issue 17: a child restarted with min_ready 3 s (no probe) is ready 1 s after the
    2 s transition hold; the record is written once, when it is ready, not once with
    "not ready yet" at the hold and again a second later."""
    h = harness("""
  lead:
    type: singleton
    command: [lead]
    min_ready: 3s
""")
    elect(h, "lead")
    h.turn()
    h.clock.advance(3.0)
    h.turn()
    _record_writes(h)
    h.clock.advance(3.0)
    h.turn()
    _record_writes(h)
    assert h.sup.child_ready("lead", "lead")
    start = h.clock()
    h.manager.slots["lead/lead"].restart_child(start)
    h.turn()  # the new child: not ready until start + 3 s
    assert not h.sup.child_ready("lead", "lead")
    assert _record_writes(h) == []  # in transition: held
    h.clock.advance(2.0)
    h.turn()
    assert _record_writes(h) == []  # the hold ran out, but the child is ready in 1 s
    assert h.sup._record_retry == start + 3.0 and h.sup._next_deadline() <= start + 3.0  # woken then
    h.clock.advance(1.0)
    h.turn()
    (roles,) = _record_writes(h)
    assert roles["lead"]["children"]["lead"]["ready"] is True


def test_a_child_waiting_for_notify_has_no_known_ready_time():
    h = harness(NEEDS + STEP_DOWN)
    elect(h, "db")
    elect(h, "lead")
    h.turn()
    assert not h.sup.child_ready("db", "db")
    assert h.sup.readiness.ready_by(h.clock()) is None  # db waits for READY=1: no time to wait for
    h.post(NotifyMessage("db/db", (("READY", "1"),)))
    h.post(NotifyMessage("lead/lead", (("READY", "1"),)))
    h.turn()
    assert h.sup.readiness.ready_by(h.clock()) is None  # nothing waits
