"""The member record is written once per transition, not at each of its steps
(runtime/member.py; issue 17: every write reaches every member watching members/)."""

from etcdvisor.coord.memory import MemoryBackend
from etcdvisor.runtime.member import MemberRecord, in_transition


def _status(state, child="running", **extra):
    return {"worker": {"type": "sharded", "state": state, "stopping": [], **extra,
                       "children": {"0": {"name": "worker[0]", "state": child}}}}


def _record():
    store = MemoryBackend()
    record = MemberRecord(store, "/m/x", "x", min_interval=1.0, transition_hold=10.0, clock=lambda: 0.0)
    record.register(store.lease_grant(10).id, _status("running"))
    return record


def _writes(record, steps):
    """Turn through ``steps`` of (now, roles); the times of the writes made."""
    written = []
    for now, roles in steps:
        body, _retry = record.plan_update(roles, now)
        if body is not None:
            record.write(body)
            record.written(roles, True)
            written.append(now)
    return written


def test_a_reshard_is_one_write_once_it_is_over():
    record = _record()
    steps = [(10.0, _status("settling")), (11.1, _status("handoff", child="stopping")),
             (12.2, _status("handoff", child="stopped")), (13.3, _status("handoff")),
             (14.4, _status("running", index=1)), (15.5, _status("running", index=1))]
    assert _writes(record, steps) == [14.4]


def test_a_long_transition_still_shows_where_it_waits_after_the_hold():
    record = _record()
    steps = [(10.0, _status("handoff", waiting=["a"])), (15.0, _status("handoff", waiting=["b"])),
             (20.0, _status("handoff", waiting=["c"])), (21.0, _status("handoff", waiting=["d"]))]
    assert _writes(record, steps) == [20.0]


def test_a_stable_change_is_written_at_once_and_rate_limited():
    record = _record()
    assert _writes(record, [(10.0, _status("running", index=3))]) == [10.0]
    body, retry = record.plan_update(_status("running", index=4), 10.5)
    assert body is None and retry == 11.0
    assert _writes(record, [(11.0, _status("running", index=4))]) == [11.0]


def test_urgent_skips_the_hold():
    record = _record()
    body, _ = record.plan_update(_status("handoff"), 10.0, urgent=True)
    assert body is not None


def test_a_role_the_record_does_not_show_is_written_at_once():
    """At start the record is registered with no roles; the first status (a role still
    joining) is written at once, not after the hold or the rate limit, so `supervisor
    status` names every role of a member from its start. A reload that adds a role too."""
    store = MemoryBackend()
    record = MemberRecord(store, "/m/x", "x", min_interval=1.0, transition_hold=10.0, clock=lambda: 0.0)
    record.register(store.lease_grant(10).id, {})
    assert _writes(record, [(0.1, _status("joining"))]) == [0.1]
    added = {**_status("settling"), "tick": {"type": "cron", "state": "follower"}}
    assert _writes(record, [(0.2, added)]) == [0.2]
    assert _writes(record, [(0.3, {**added, "tick": {"type": "cron", "state": "leader"}})]) == []


def test_what_counts_as_a_transition():
    assert in_transition(_status("settling")) and in_transition(_status("joining"))
    assert in_transition(_status("running", child="stopping"))
    assert in_transition({"api": {"type": "singleton", "state": "leader", "stepping_down": 3.0}})
    assert in_transition({"api": {"type": "singleton", "phase": "retiring"}})
    assert not in_transition(_status("running")) and not in_transition({"api": {"failed": None}})


def test_members_are_watched_only_while_a_rollout_is_under_way():
    import time

    from etcdvisor.coord.keys import ClusterKeys
    from etcdvisor.runtime import rollout_store as store
    from etcdvisor.runtime.rollout_watch import MembersChanged, RolloutsChanged, RolloutWatch

    backend, keys, posted = MemoryBackend(), ClusterKeys("c"), []
    backend.put(keys.member("m1"), b"{}")
    watch = RolloutWatch(backend, keys, posted.append).start()

    def wait_for(condition):
        deadline = time.monotonic() + 5
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    try:
        wait_for(lambda: any(isinstance(e, RolloutsChanged) for e in posted))
        assert watch.members is None and not any(isinstance(e, MembersChanged) for e in posted)
        record = store.start(backend, keys, store.new_record("worker", "restart", "test"))
        wait_for(lambda: any(isinstance(e, MembersChanged) and e.known for e in posted))
        assert watch.members is not None
        store.finish(backend, keys, "worker", record.id)
        wait_for(lambda: isinstance(posted[-1], MembersChanged) and not posted[-1].known)
        assert watch.members is None
    finally:
        watch.stop()


def test_a_started_child_is_written_once_ready_not_before():
    record = _record()
    starting = _status("running", index=2)
    starting["worker"]["children"]["0"].update(ready=False, probe_failure=None)
    ready = _status("running", index=2)
    ready["worker"]["children"]["0"].update(ready=True, probe_failure=None)
    failing = _status("running", index=2)
    failing["worker"]["children"]["0"].update(ready=False, probe_failure="http 500")
    assert _writes(record, [(10.0, starting), (11.5, ready)]) == [11.5]
    assert not in_transition(failing) and _writes(record, [(13.0, failing)]) == [13.0]


def _starting(ready=False, **child):
    status = _status("running", index=2)
    status["worker"]["children"]["0"].update(ready=ready, probe_failure=None, **child)
    return status


def _hold2(roles=None):
    store = MemoryBackend()
    record = MemberRecord(store, "/m/x", "x", min_interval=1.0, transition_hold=2.0, ready_hold=2.0,
                          clock=lambda: 0.0)
    record.register(store.lease_grant(10).id, roles or _status("running"))
    return record


def _writes_ready_by(record, steps):
    """As _writes, with the children's known ready time: steps of (now, roles, ready_by)."""
    written = []
    for now, roles, ready_by in steps:
        body, _retry = record.plan_update(roles, now, ready_by=lambda _now, at=ready_by: at)
        if body is not None:
            record.write(body)
            record.written(roles, True)
            written.append((now, roles))
    return written


def test_a_reshard_whose_children_are_ready_soon_after_the_hold_is_one_write():
    """Issue 17: settle (1 s), the hand-off, then the new child's min_ready (2 s) take
    longer than the 2 s hold; the child's ready time is known (no probe), so the record
    waits for it rather than show "started, not ready yet" and be written again."""
    record = _hold2()
    steps = [(10.0, _status("settling"), None), (11.1, _status("handoff", child="stopping"), None),
             (11.25, _starting(), 13.25), (12.0, _starting(), 13.25)]
    assert _writes_ready_by(record, steps) == []
    body, retry = record.plan_update(_starting(), 12.0, ready_by=lambda now: 13.25)
    assert body is None and retry == 13.25  # the loop wakes up then
    written = _writes_ready_by(record, [(13.25, _starting(ready=True), None)])
    assert [(now, roles["worker"]["children"]["0"]["ready"]) for now, roles in written] == [(13.25, True)]


def test_the_record_does_not_wait_for_a_ready_time_too_far_or_unknown():
    # too far beyond the hold (min_ready 30 s): "started, not ready" shows at the hold
    assert [now for now, _ in _writes_ready_by(_hold2(), [(10.0, _status("settling"), None),
                                                          (11.25, _starting(), 41.25),
                                                          (12.0, _starting(), 41.25)])] == [12.0]
    # unknown (a readiness probe to pass): as before
    assert [now for now, _ in _writes_ready_by(_hold2(), [(10.0, _status("settling"), None),
                                                          (11.25, _starting(), None),
                                                          (12.0, _starting(), None)])] == [12.0]


def test_the_record_waits_for_ready_children_only_when_nothing_else_is_in_transition():
    # another role still hands off: where it waits shows at the hold
    busy = {**_starting(), "other": {"type": "sharded", "state": "handoff", "stopping": []}}
    shown = {**_status("running"), "other": {"type": "sharded", "state": "running", "stopping": []}}
    assert [now for now, _ in _writes_ready_by(_hold2(shown), [(10.0, busy, 13.0), (12.0, busy, 13.0)])] == [12.0]
    stopping = _starting()
    stopping["worker"]["children"]["1"] = {"name": "worker[1]", "state": "stopping"}
    assert [now for now, _ in _writes_ready_by(_hold2(), [(10.0, stopping, 13.0), (12.0, stopping, 13.0)])] \
        == [12.0]
