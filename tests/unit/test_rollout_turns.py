"""Rolling restarts, turn by turn (issue 15, section 3): several members' decision loops
over one memory store and one fake clock.

Each member is a :class:`LoopHarness` (the real loop code; a store call during a turn
fails the test). The test plays the watch threads (it posts what ``rollouts/`` and
``members/`` hold after each round) and runs every effect between turns.
"""

from __future__ import annotations

import time

from etcdvisor.coord.memory import FakeClock, MemoryBackend
from etcdvisor.recipes.sequence import Info
from etcdvisor.runtime import rollout_store as store
from etcdvisor.runtime.rollout_watch import MembersChanged, RolloutsChanged, decode_members

from .loop_harness import LoopHarness

CONFIG = """
cluster: roll
etcd: {endpoints: "memory://roll"}
member: {ttl: 10}
roles:
  worker:
    type: sharded
    command: ["work"]
    settle: 0.2s
    handoff: overlap
    rollout: %s
"""
MIN_READY = 2.0  # the role's default min_ready


class Cluster:
    def __init__(self, members: int, rollout: str):
        self.clock = FakeClock()
        self.store = MemoryBackend(clock=self.clock)
        self.members = [LoopHarness(CONFIG % rollout, member=f"m{i}", backend=self.store, clock=self.clock)
                        for i in range(members)]
        self.keys = self.members[0].sup.keys
        self.dead: set[str] = set()
        for index, h in enumerate(self.members):  # rollouts and the slot observer: wired by the builder
            self._start(h, Info(index=index, count=members, epoch=5, members=tuple(f"m{i}" for i in range(members))))
        self.worst = 0
        self.starts: dict[str, int] = {}
        self.run_until(lambda: self.unready() == 0, 20)
        self.worst = 0
        self.starts = self.pids()

    @staticmethod
    def _start(h: LoopHarness, info: Info) -> None:
        h.tell_plan("worker", info)
        for _ in range(10):
            h.clock.advance(0.1)
            h.session._keepalive_once()
            h.turn()
            h.run_effects()
        assert h.running(), "the member's child did not start"

    def live(self) -> list[LoopHarness]:
        return [h for h in self.members if h.sup.config.member.id not in self.dead]

    def sync(self) -> None:
        view = store.read(self.store, self.keys)
        members = decode_members(self.keys.members, self.store.get_prefix(self.keys.members).kvs)
        for h in self.live():
            h.post(RolloutsChanged(view))
            h.post(MembersChanged(members))

    def step(self, dt: float = 0.1) -> None:
        self.clock.advance(dt)
        for h in self.live():
            h.session._keepalive_once()
            h.turn()
            h.run_effects()
        self.sync()
        for h in self.live():
            h.turn()
            h.run_effects()
        self.worst = max(self.worst, self.unready())

    def run_until(self, condition, seconds: float) -> bool:
        end = self.clock() + seconds
        while self.clock() < end:
            self.step()
            if condition():
                return True
        return False

    def unready(self) -> int:
        """Children of the cluster not ready now (dead members' children are gone)."""
        count = 0
        for h in self.live():
            for runner, _key, slot in h.sup.reconciler.children():
                if runner.name == "worker" and not h.sup.rollouts.ready(slot, self.clock()):
                    count += 1
        return count + len(self.dead)

    def pids(self) -> dict[str, int]:
        return {f"{h.sup.config.member.id}:{key}": slot.child.pid for h in self.live()
                for _r, key, slot in h.sup.reconciler.children() if slot.child is not None}

    def restarted(self) -> dict[str, int]:
        """Child -> 1 if its pid changed since the rollout began."""
        now = self.pids()
        return {child: int(now.get(child) != pid) for child, pid in self.starts.items() if child in now}

    def record(self) -> store.RolloutRecord | None:
        return store.read_record(self.store, self.keys, "worker")

    def restart(self, who: str = "ann@laptop") -> store.RolloutRecord:
        # records carry epoch seconds (the decoder refuses other times)
        record = store.new_record("worker", "restart", who, now=time.time())
        written = store.start(self.store, self.keys, record)
        assert written is not None
        return written


def test_one_at_a_time_never_more_than_one_child_unready_and_every_child_restarts_once():
    cluster = Cluster(4, "{max_unavailable: 1, min_ready: 0.5s}")
    record = cluster.restart()
    assert cluster.run_until(lambda: (cluster.record() or record).state == store.DONE, 60), cluster.record()
    assert cluster.worst == 1
    assert cluster.restarted() == {child: 1 for child in cluster.starts}
    done = cluster.record()
    assert done is not None and sorted(done.done) == sorted(cluster.starts)
    assert store.read(cluster.store, cluster.keys).slots == {}, "every slot released"


def test_percentage_rounds_down_to_at_least_one_and_100_percent_takes_all_at_once():
    cluster = Cluster(4, "{max_unavailable: '50%', min_ready: 0.5s}")
    cluster.restart()
    assert cluster.run_until(lambda: cluster.record().state == store.DONE, 60)
    assert cluster.worst == 2
    everything = Cluster(3, "{max_unavailable: '100%', min_ready: 0.5s}")
    everything.restart()
    assert everything.run_until(lambda: everything.record().state == store.DONE, 60)
    assert everything.worst == 3


def test_a_child_unready_for_another_reason_takes_a_slot_of_the_budget():
    cluster = Cluster(4, "{max_unavailable: 2, min_ready: 0.5s}")
    m3 = cluster.members[3]
    cluster.step()
    m3.exit("worker", "3/4", 1)  # crashed: stays down (the fake slot does not restart it)
    cluster.step()
    cluster.step(1.5)  # m3's record says so
    cluster.restart()
    cluster.run_until(lambda: len(cluster.record().done) >= 2, 30)
    assert cluster.worst <= 2, "the crashed child counts against max_unavailable"


def test_a_rollout_starts_even_when_max_unavailable_children_are_already_unready():
    """With max_unavailable 1 and one running child already unready (its readiness probe
    fails), the budget is used up: that child is restarted first (restarting it makes
    nothing less available), instead of the rollout waiting for ever."""
    cluster = Cluster(2, "{max_unavailable: 1, min_ready: 0.5s}")
    m0, m1 = cluster.members

    def never_ready(name, now):
        return None

    m1.sup.readiness.ready_since = never_ready  # what a failing readiness probe gives
    m1.sup.rollouts.ready_since = never_ready
    cluster.step(1.5)  # m1's record says so
    cluster.restart()
    assert cluster.run_until(lambda: "p0" in m1.sup.rollouts.roles["worker"].holds, 10), \
        "the unready child gets the slot"
    assert not m0.sup.rollouts.roles["worker"].holds, "and only it: max_unavailable 1"


def test_a_second_trigger_supersedes_the_running_rollout():
    cluster = Cluster(4, "{max_unavailable: 1, min_ready: 0.5s}")
    first = cluster.restart()
    cluster.run_until(lambda: len(cluster.record().done) >= 2, 30)
    cluster.starts = cluster.pids()
    second = cluster.restart("bob@laptop")
    assert second.id != first.id
    assert cluster.run_until(lambda: cluster.record().state == store.DONE, 60)
    final = cluster.record()
    assert final.id == second.id and final.who == "bob@laptop"
    assert cluster.restarted() == {child: 1 for child in cluster.starts}, "each child once for the newer one"
    assert cluster.worst == 1


def test_a_replacement_not_ready_within_the_deadline_fails_the_rollout_and_restarts_nothing_more():
    cluster = Cluster(4, "{max_unavailable: 1, min_ready: 0.5s, deadline: 5s}")
    cluster.restart()
    cluster.run_until(lambda: any(h.sup.rollouts.roles["worker"].holds for h in cluster.members), 10)
    holder = next(h for h in cluster.members if h.sup.rollouts.roles["worker"].holds)
    (key,) = holder.sup.rollouts.roles["worker"].holds

    def crash_loop() -> bool:  # the replacement exits as soon as it runs: never ready
        holder.exit("worker", key, 1)
        return cluster.record().state == store.FAILED

    before = cluster.pids()
    assert cluster.run_until(crash_loop, 10)
    failed = cluster.record()
    assert failed.failed is not None and failed.failed.child == f"{holder.sup.config.member.id}:{key}"
    assert "not ready within 5s" in failed.failed.reason
    cluster.run_until(lambda: crash_loop() and False, 5)
    others = {c: p for c, p in cluster.pids().items() if not c.startswith(holder.sup.config.member.id)}
    assert others == {c: p for c, p in before.items() if c in others}, "nothing more restarted"
    assert cluster.worst == 1
    status = holder.sup._roles_status()["worker"]["rollout"]
    assert status["state"] == "failed" and "not ready" in status["failed"]
    # resume: the rollout goes on (the failed child keeps its slot until it is ready)
    assert store.resume(cluster.store, cluster.keys, "worker") is not None
    cluster.run_until(lambda: False, 2)
    assert cluster.record().state in (store.RUNNING, store.FAILED)


def test_aborting_releases_the_slots_and_restarts_nothing_more():
    cluster = Cluster(4, "{max_unavailable: 1, min_ready: 0.5s}")
    cluster.restart()
    cluster.run_until(lambda: bool(store.read(cluster.store, cluster.keys).slots), 10)
    assert store.abort(cluster.store, cluster.keys, "worker") is not None
    cluster.run_until(lambda: not store.read(cluster.store, cluster.keys).slots, 5)
    before = cluster.pids()
    cluster.run_until(lambda: False, 5)
    assert cluster.pids() == before
    assert cluster.record().state == store.ABORTED


def test_a_member_that_dies_holding_a_slot_frees_it_with_its_lease():
    cluster = Cluster(4, "{max_unavailable: 1, min_ready: 0.5s}")
    cluster.restart()
    cluster.run_until(lambda: bool(store.read(cluster.store, cluster.keys).slots), 10)
    (hold,) = store.read(cluster.store, cluster.keys).slots["worker"]
    victim = next(h for h in cluster.members if h.sup.config.member.id == hold.member)
    cluster.dead.add(hold.member)
    cluster.store.lease_revoke(victim.session.lease_id)  # its lease ends: its slot and record go
    assert cluster.run_until(lambda: cluster.record().state == store.DONE, 60), cluster.record()
    survivors = {f"{h.sup.config.member.id}:{k}" for h in cluster.live() for _r, k, _s in
                 h.sup.reconciler.children()}
    assert survivors <= set(cluster.record().done), "every surviving child was restarted"
    assert store.read(cluster.store, cluster.keys).slots == {}


def test_bad_rollout_records_are_skipped_with_one_warning(caplog):
    from etcdvisor.coord.keys import ClusterKeys

    backend = MemoryBackend()
    keys = ClusterKeys("roll")
    backend.put(store.record_key(keys, "a"), b"not json")
    backend.put(store.record_key(keys, "b"), b'{"id": 1}')
    backend.put(store.slot_key(keys, "a", 0), b"[]")
    good = store.new_record("c", "restart", "me")
    store.start(backend, keys, good)
    view = store.read(backend, keys)
    assert set(view.records) == {"c"} and view.slots == {}
    warnings = [r.getMessage() for r in caplog.records if "skipping rollout record" in r.getMessage()]
    assert len(warnings) == 3 and all("/rollouts/" in w for w in warnings)
    store.read(backend, keys)
    assert len([r for r in caplog.records if "skipping rollout record" in r.getMessage()]) == 3, "once per record"


def test_a_slot_of_ours_that_no_child_holds_is_released():
    cluster = Cluster(2, "{max_unavailable: 1, min_ready: 0.5s}")
    m0 = cluster.members[0]
    key = store.slot_key(cluster.keys, "worker", 0)  # taken, but the reply was lost
    cluster.store.put(key, b'{"member": "m0", "child": "m0:p0", "rollout": "x"}', lease=m0.session.lease_id)
    assert cluster.run_until(lambda: cluster.store.get(key) is None, 5)


def test_a_failed_slot_write_is_tried_again_without_any_other_event():
    cluster = Cluster(2, "{max_unavailable: 1, min_ready: 0.5s}")
    cluster.restart()
    cluster.sync()
    failed = 0
    for h in cluster.live():
        h.turn()
        if not any("take rollout slots" in effect.what for effect in h.effects):
            continue  # (a member whose budget the other's not-yet-ready record holds takes none now)
        h.run_effects(fail=ConnectionError("etcd unreachable"))
        h.turn()  # the failure is handled: a retry is due in a second, not now
        assert h.sup.rollouts.next_deadline() is not None
        failed += 1
    assert failed >= 1, "some member tried to take a slot"
    assert cluster.run_until(lambda: cluster.record().state == store.DONE, 30)


def test_a_whole_role_restart_record_from_an_older_cli_becomes_one_rollout():
    from etcdvisor.runtime import control

    cluster = Cluster(2, "{max_unavailable: 1, min_ready: 0.5s}")
    record = {**control.make_record(control.RESTART, "worker"), "revision": 99}
    for h in cluster.live():
        h.post(control.ControlChanged({}, initial=True))
        h.post(control.ControlChanged({"worker": {"restart": record}}, initial=False))
    assert cluster.run_until(lambda: cluster.record() is not None and cluster.record().state == store.DONE, 30)
    assert cluster.record().target == f"control:{record['id']}", "written once, whichever member saw it first"
    assert cluster.restarted() == {child: 1 for child in cluster.starts}
    assert cluster.worst == 1
    # a record the new CLI wrote next to its rollout is left to that rollout
    fresh = {**control.make_record(control.RESTART, "worker"), "revision": 120, "rollout": "abc"}
    before = cluster.record()
    for h in cluster.live():
        h.post(control.ControlChanged({"worker": {"restart": fresh}}, initial=False))
    cluster.run_until(lambda: False, 2)
    assert cluster.record() == before


def test_a_replacement_past_its_deadline_fails_the_rollout_that_superseded_its_own():
    cluster = Cluster(3, "{max_unavailable: 1, min_ready: 0.5s, deadline: 5s}")
    cluster.restart()
    cluster.run_until(lambda: any(h.sup.rollouts.roles["worker"].holds for h in cluster.members), 10)
    holder = next(h for h in cluster.members if h.sup.rollouts.roles["worker"].holds)
    (key,) = holder.sup.rollouts.roles["worker"].holds

    def crash_loop() -> bool:
        holder.exit("worker", key, 1)
        return False

    cluster.run_until(crash_loop, 1)
    newer = cluster.restart("bob@laptop")
    assert cluster.run_until(lambda: crash_loop() or cluster.record().state == store.FAILED, 10)
    failed = cluster.record()
    assert failed.id == newer.id and failed.failed.child.endswith(key)
    assert cluster.worst == 1
