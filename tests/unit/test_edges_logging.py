"""Log lines an operator relies on (issue 19, section 1: items 1, 2, 6, 9)."""

from __future__ import annotations

import logging

from etcdvisor.coord.memory import FakeClock
from etcdvisor.coord.session import SessionEvent, SessionEventKind
from etcdvisor.runtime.store_health import StoreHealth


def _event(kind, detail=""):
    return SessionEvent(kind, 0xAB, 10, 0.0, detail)


def test_etcd_unreachable_is_said_once_per_backoff_step_not_per_attempt(caplog):
    clock = FakeClock()
    health = StoreHealth("http://127.0.0.1:2379", 1.0, clock=clock, wall=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="etcdvisor")
    for second in range(120):  # a failed keepalive every second for two minutes
        health.on_session(_event(SessionEventKind.ERROR, "Connection refused"), clock())
        if second == 10:
            health.on_session(_event(SessionEventKind.EXPIRED), clock())
        health.tick(clock(), 10.0 - second if second < 10 else None)
        clock.advance(1.0)
    lines = [r.getMessage() for r in caplog.records if "unreachable since" in r.getMessage()]
    assert 6 <= len(lines) <= 9, lines  # at 1, 2, 4, 8, 16, 32, 64, 124... seconds
    assert lines[0].startswith("etcd at http://127.0.0.1:2379 unreachable since 00:00:00Z; "
                               "lease-bound children stop at lease expiry (in 9s); retrying every 1s")
    assert "; children stopped at lease expiry; retrying every 1s (Connection refused)" in lines[-1]
    health.on_session(_event(SessionEventKind.KEEPALIVE), clock())
    assert "etcd at http://127.0.0.1:2379 reachable again after 120.0s" in caplog.records[-1].getMessage()
    assert health.next_deadline() is None


def test_a_single_failed_keepalive_says_nothing(caplog):
    clock = FakeClock()
    health = StoreHealth("http://e:2379", 1.0, clock=clock)
    caplog.set_level(logging.INFO, logger="etcdvisor")
    health.on_session(_event(SessionEventKind.ERROR, "timeout"), clock())
    clock.advance(0.5)
    health.tick(clock(), 5.0)
    health.on_session(_event(SessionEventKind.KEEPALIVE), clock())
    clock.advance(5)
    health.tick(clock(), 5.0)
    assert not caplog.records


# --- waits are logged (1.2) ------------------------------------------------------------------

def _harness(roles: str, **kwargs):
    from .loop_harness import LoopHarness

    return LoopHarness("cluster: loop\netcd: {endpoints: \"memory://loop\"}\nmember: {ttl: 10}\nroles:\n"
                       + roles, **kwargs)


SHARDED = """
  worker:
    type: sharded
    command: ["work"]
    settle: 0.2s
"""


def _messages(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_fenced_handoff_wait_is_logged_once_when_it_lasts_a_second_and_when_it_ends(caplog):
    from etcdvisor.recipes.sequence import Info
    from etcdvisor.roles.assignment import Part
    from etcdvisor.roles.handoff import Grant

    caplog.set_level(logging.INFO, logger="etcdvisor")
    h = _harness(SHARDED)
    h.tell_plan("worker", Info(index=1, count=2, epoch=5, members=("vm-3", "m1")))
    h.clock.advance(0.5)
    h.session._keepalive_once()
    assert h.turn() == {}
    h.run_effects(only="alive record")  # 1/2 announced; vm-3, the coordinator, has not granted it
    for _ in range(5):  # 0.5 s more: not yet a line
        h.clock.advance(0.1)
        h.turn()
    assert not _messages(caplog, "waits for the coordinator"), "a wait under a second is not logged"
    deadline = h.sup._next_deadline()
    assert deadline is not None and deadline <= h.clock() + 0.5, "the loop wakes up to log it on time"
    for _ in range(10):
        h.clock.advance(0.2)
        h.turn()
    began = _messages(caplog, "waits for the coordinator")
    assert len(began) == 1 and began[0].startswith(
        "role worker: 1/2 waits for the coordinator's start grant (1/2) (1."), began
    record = h.backend.get("/etcdvisor/loop/roles/worker/alive/m1").mod_revision
    h.tell("worker", Grant(5, record, frozenset({Part(1, 2)}), "vm-3"))
    h.clock.advance(0.3)
    h.turn()
    ended = _messages(caplog, "done waiting")
    assert len(ended) == 1 and ended[0].startswith("role worker: done waiting after 2.")
    assert ended[0].endswith("1/2 waits for the coordinator's start grant (1/2)")
    assert len(_messages(caplog, "waits for the coordinator")) == 2, "one line when it began, one when it ended"


def test_a_role_held_by_a_barrier_logs_what_it_waits_for_and_when_it_opens(caplog):
    from etcdvisor.runtime.barriers import BarrierFact

    caplog.set_level(logging.INFO, logger="etcdvisor")
    h = _harness("""
  batch:
    type: singleton
    wait_for: [uploads]
    command: ["batch"]
""")
    h.turn()
    h.clock.advance(1.5)
    h.turn()
    assert _messages(caplog, "waits for") == [
        "role batch: start held back by barriers: waits for waitgroup:uploads (1.5s so far)"]
    h.post(BarrierFact("waitgroup:uploads", True))
    h.clock.advance(0.5)
    h.turn()
    assert _messages(caplog, "done waiting") == [
        "role batch: done waiting after 2.0s: start held back by barriers: waits for waitgroup:uploads"]


# --- a standby child is not started only to be replaced (1.9) ---------------------------------

STANDBY = """
  db:
    type: singleton
    standby: true
    command: ["db"]
"""


def _elect(h, role):
    from etcdvisor.recipes.election import Election
    from etcdvisor.roles.singleton import Elected

    runner = h.sup.runners[role]
    runner.election = Election(h.store, h.sup.keys.election(role), h.session, "m1")
    h.tell(role, Elected(7))


def test_a_member_about_to_win_starts_no_standby_child(caplog):
    caplog.set_level(logging.INFO, logger="etcdvisor")
    h = _harness(STANDBY)
    assert h.turn() == {}, "no other leader seen: the standby child waits for the election"
    h.clock.advance(0.03)
    _elect(h, "db")
    (spec,) = h.turn()["db"].values()
    assert spec.environ()["LEADER"] == "1"
    assert not any(slot.restarts for slot in h.manager.slots.values()), "no standby child was replaced"
    assert not _messages(caplog, "standby child replaced")


def test_a_follower_runs_its_standby_child_and_says_when_the_leader_child_replaces_it(caplog):
    from etcdvisor.roles.singleton import LeaderSeen

    caplog.set_level(logging.INFO, logger="etcdvisor")
    h = _harness(STANDBY)
    h.tell("db", LeaderSeen("m2"))
    (spec,) = h.turn()["db"].values()
    assert (spec.environ()["LEADER"], spec.environ()["LEADER_MEMBER"]) == ("0", "m2")
    _elect(h, "db")
    (spec,) = h.turn()["db"].values()
    assert spec.environ()["LEADER"] == "1"
    assert _messages(caplog, "standby child replaced") == [
        "role db: standby child replaced by the leader child (LEADER=1)"]


def test_with_no_leader_in_sight_the_standby_child_starts_after_the_hold(caplog):
    from etcdvisor.roles.singleton import STANDBY_HOLD

    h = _harness(STANDBY)
    assert h.turn() == {}
    assert h.sup.runners["db"].next_deadline() == h.clock() + STANDBY_HOLD
    h.clock.advance(STANDBY_HOLD)
    (spec,) = h.turn()["db"].values()
    assert (spec.environ()["LEADER"], spec.environ()["LEADER_MEMBER"]) == ("0", "")


# --- reset says what it does (1.9) --------------------------------------------------------------

def test_reset_of_a_failed_role_does_not_say_reload(caplog):
    from etcdvisor.runtime.control import Command

    caplog.set_level(logging.INFO, logger="etcdvisor")
    h = _harness(SHARDED)
    runner = h.sup.runners["worker"]
    h.sup.roster.refuse(runner, "crash loop")
    h.turn()
    h.sup.ops._reset(Command("reset", "worker", {"who": "ops@host", "at": "2026-12-07T10:00:00Z"}))
    for _ in range(3):
        h.turn()
        h.run_effects()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "reload" not in text, text
    assert "role worker: the failed runner left (reset); a fresh one starts" in text
    assert "role worker: started after reset" in text


# --- members of a previous run known dead (1.1) --------------------------------------------------

HERE = {"host": "vm", "boot": "b-1", "pidns": "pid:[4026531836]", "pid": 100}
DEAD = {"host": "vm", "boot": "b-1", "pidns": "pid:[4026531836]", "pid": 200, "pid_start": 5000,
        "watchdog": 201, "watchdog_start": 5001}


def _running(table):
    return lambda pid: table.get(pid)


def test_only_a_member_whose_pids_are_gone_on_this_machine_boot_and_pid_namespace_is_known_dead():
    from etcdvisor.runtime.stale import known_dead

    assert known_dead(DEAD, HERE, _running({}))
    assert known_dead(DEAD, HERE, _running({200: 9999, 201: 8888})), "both pids reused by later processes"
    assert not known_dead(DEAD, HERE, _running({200: 5000})), "its supervisor runs (maybe frozen)"
    assert not known_dead(DEAD, HERE, _running({201: 5001})), "its watchdog still runs: children may live"
    for field, other in (("host", "vm2"), ("boot", "b-2"), ("pidns", "pid:[1]")):
        assert not known_dead({**DEAD, field: other}, HERE, _running({})), f"another {field}: unknown"
        assert not known_dead({**DEAD, field: None}, HERE, _running({})), f"no {field}: unknown"
    assert not known_dead({**DEAD, "pid_start": None}, HERE, _running({})), "an older record: unknown"
    assert not known_dead({**DEAD, "pid": 100}, HERE, _running({})), "our own pid"
    assert not known_dead(DEAD, {**HERE, "boot": None}, _running({})), "no /proc here: never"
    assert known_dead({k: v for k, v in DEAD.items() if not k.startswith("watchdog")}, HERE, _running({}))


def test_the_member_record_carries_who_wrote_it():
    import os

    from etcdvisor.coord.memory import MemoryBackend
    from etcdvisor.coord.records import MEMBER
    from etcdvisor.runtime.member import MemberRecord
    from etcdvisor.runtime.stale import identity, known_dead, process_start

    store = MemoryBackend()
    record = MemberRecord(store, "/m/x", "x")
    record.ttl = 10
    lease = store.lease_grant(10).id
    record.register(lease, {})
    doc = MEMBER.decode(store.get("/m/x").value)
    assert doc["pid"] == os.getpid() and doc["ttl"] == 10 and doc["pid_start"] == process_start(os.getpid())
    assert doc["boot"] == identity()["boot"] and doc["pidns"] == identity()["pidns"]
    here = {**identity(), "host": doc["host"], "pid": 1}
    assert not known_dead(doc, here), "this very process is alive"


# --- --log-level debug shows each decision (1.6) ---------------------------------------------------

def test_debug_shows_assignment_fence_effects_and_control_records(caplog):
    from etcdvisor.recipes.sequence import Info
    from etcdvisor.roles.assignment import Part
    from etcdvisor.roles.handoff import Grant
    from etcdvisor.runtime.control import ControlChanged

    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    h = _harness(SHARDED)
    h.tell_plan("worker", Info(index=0, count=1, epoch=3))
    h.clock.advance(0.5)
    h.session._keepalive_once()
    h.turn()
    h.run_effects()
    h.turn()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "role worker: assignment computed: [0/1] (membership 0 of 1, epoch 3)" in debug, debug
    assert any(m.startswith("role worker: grant (record 0) covers []; waits: 0/1 waits for the coordinator")
               for m in debug), debug
    written = [m for m in debug if m.startswith("role worker: alive record written at revision")]
    assert written, debug
    h.tell("worker", Grant(3, int(written[0].split()[7].rstrip(":")), frozenset({Part(0, 1)}), "m1"))
    h.turn()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("role worker: grant (record ") and "covers [0/1]" in m for m in debug), debug
    caplog.clear()
    h.sup.ops.control.synced = True  # not the first look: a record is a command to act on
    h.sup.ops.on_control(ControlChanged({"worker": {"reset": {"revision": 9, "who": "ops@h", "at": "now"}}},
                                        initial=False))
    assert "control record: reset worker (reset by ops@h at now)" in [r.getMessage() for r in caplog.records]


def test_debug_shows_effects_queued_and_done_with_durations(caplog):
    import threading

    from etcdvisor.events import Effect
    from etcdvisor.runtime.effects import EffectRunner

    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    done = threading.Event()
    runner = EffectRunner(lambda event: done.set())
    runner.submit(Effect("worker", 1, "alive record", lambda: 42))
    assert done.wait(10)
    runner.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "role worker: effect queued: alive record" in messages
    assert any(m.startswith("role worker: effect done in ") and m.endswith("alive record -> 42") for m in messages)


def test_without_debug_no_effect_line_is_formatted(caplog):
    import threading

    from etcdvisor.events import Effect
    from etcdvisor.runtime import effects

    caplog.set_level(logging.INFO, logger="etcdvisor")
    done = threading.Event()
    calls = []
    real = effects._short
    effects._short = lambda value: calls.append(value) or real(value)
    try:
        runner = effects.EffectRunner(lambda event: done.set())
        runner.submit(Effect("worker", 1, "alive record", lambda: 42))
        assert done.wait(10)
        runner.close()
    finally:
        effects._short = real
    assert not calls and not caplog.records


def test_at_start_dead_members_are_revoked_and_stale_ones_named_once(caplog, monkeypatch):
    from etcdvisor.coord.memory import FakeClock, MemoryBackend
    from etcdvisor.coord.records import dumps
    from etcdvisor.runtime import stale

    caplog.set_level(logging.INFO, logger="etcdvisor")
    clock = FakeClock()
    store = MemoryBackend(clock=clock)
    here = stale.identity()
    monkeypatch.setattr(stale.socket, "gethostname", lambda: "vm")
    dead, quiet, live = (store.lease_grant(10).id for _ in range(3))
    base = {"host": "vm", "boot": here["boot"], "pidns": here["pidns"], "ttl": 10, "roles": {}}
    store.put("/m/dead", dumps({**base, "pid": 2 ** 22 + 7, "pid_start": 1}).encode(), lease=dead)
    store.put("/m/quiet", dumps({**base, "host": "other", "pid": 5, "pid_start": 1}).encode(), lease=quiet)
    clock.advance(6)  # 'quiet' stops renewing; 'live' keeps alive
    store.lease_keepalive(live)
    store.put("/m/live", dumps({**base, "host": "other", "pid": 6, "pid_start": 1}).encode(), lease=live)
    assert stale.clear_dead_members(store, "/m/", "c1") == ["dead"]
    assert store.get("/m/dead") is None and store.get("/m/quiet") is not None and store.get("/m/live") is not None
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("member dead of a previous run (host vm, pid 4194311) is gone: revoked its lease")
    assert len(lines) == 2 and lines[1].startswith(
        "waiting on members that stopped renewing their lease (a previous run?): quiet (host other, pid 5, "
        "not renewed for 6s, expires in 4s)"), lines


def test_debug_shows_a_topic_message_claimed(caplog):
    from etcdvisor.recipes.topic import Message
    from etcdvisor.roles.topic import Delivered

    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    h = _harness("""
  thumbs:
    type: topic
    topic: images
    command: ["thumb"]
""")
    h.sup.runners["thumbs"].source = type("Source", (), {"ack": lambda self, m: None,
                                                         "release": lambda self, m: None,
                                                         "close": lambda self: None})()
    h.tell("thumbs", Delivered(Message(id=7, data=b"payload", published_at=0.0)))
    h.turn()
    assert "role thumbs: message 7 claimed (7 bytes): waiting for a run slot (1 waiting)" in [
        r.getMessage() for r in caplog.records]


def test_a_dead_member_whose_child_still_runs_keeps_its_lease(caplog, monkeypatch):
    import subprocess
    import sys

    from etcdvisor.coord.memory import MemoryBackend
    from etcdvisor.coord.records import dumps
    from etcdvisor.runtime import stale

    caplog.set_level(logging.INFO, logger="etcdvisor")
    store = MemoryBackend()
    here = stale.identity()
    monkeypatch.setattr(stale.socket, "gethostname", lambda: "vm")
    lease = store.lease_grant(10).id
    store.put("/m/ghost", dumps({"host": "vm", "boot": here["boot"], "pidns": here["pidns"], "ttl": 10,
                                 "pid": 2 ** 22 + 9, "pid_start": 1}).encode(), lease=lease)
    env = {"ETCDVISOR_CHILD_TAG": "t1", "ETCDVISOR_MEMBER_ID": "ghost", "ETCDVISOR_CLUSTER": "c1"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert stale.children_left("c1", "ghost") == [child.pid]
        assert stale.children_left("c2", "ghost") == [] and stale.children_left("c1", "ghos") == []
        assert stale.clear_dead_members(store, "/m/", "c1") == []
        assert store.get("/m/ghost") is not None, "an escaped child of the dead member still runs"
        assert f"1 of its children still run (pids {child.pid})" in caplog.text
    finally:
        child.kill()
        child.wait()
    assert stale.clear_dead_members(store, "/m/", "c1") == ["ghost"]


def test_a_big_fleet_start_reads_a_bounded_number_of_member_records_and_always_its_own(monkeypatch):
    """Issue 17: a thousand members starting at once, each reading every member record,
    would move N^2 records out of etcd. A start reads MAX_RECORDS_READ of them, plus the
    record of its own id (a restart after a crash must not wait out the old lease)."""
    from etcdvisor.coord.memory import MemoryBackend
    from etcdvisor.coord.records import dumps
    from etcdvisor.runtime import stale

    store = MemoryBackend()
    here = stale.identity()
    monkeypatch.setattr(stale.socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(stale, "MAX_RECORDS_READ", 5)
    live = store.lease_grant(10).id
    for i in range(20):
        store.put(f"/m/a{i:02d}", dumps({"host": "other", "pid": 5, "ttl": 10}).encode(), lease=live)
    me = store.lease_grant(10).id  # our own id's record from before a crash, its supervisor gone
    store.put("/m/zz-me", dumps({"host": "vm", "boot": here["boot"], "pidns": here["pidns"], "ttl": 10,
                                 "pid": 2 ** 22 + 11, "pid_start": 1}).encode(), lease=me)
    returned = []
    real_range = store.range

    def counting_range(*args, **kwargs):
        result = real_range(*args, **kwargs)
        returned.append(len(result.kvs))
        return result

    monkeypatch.setattr(store, "range", counting_range)
    assert stale.clear_dead_members(store, "/m/", "c1", member_id="zz-me") == ["zz-me"]
    assert sum(returned) == 6, returned  # the first 5 records and our own


def test_a_member_record_younger_than_its_ttl_costs_no_lease_look_up_at_start(monkeypatch):
    """A fleet starting together: every record is seconds old, none can have stopped
    renewing for long; looking their leases up cost 32 calls per start."""
    import time as time_mod

    from etcdvisor.coord.memory import MemoryBackend
    from etcdvisor.coord.records import dumps
    from etcdvisor.runtime import stale

    store = MemoryBackend()
    lease = store.lease_grant(10).id
    for i in range(10):
        store.put(f"/m/n{i}", dumps({"host": "other", "pid": 5, "ttl": 10, "started": time_mod.time()}).encode(),
                  lease=lease)
    store.put("/m/old", dumps({"host": "other", "pid": 5, "ttl": 10, "started": time_mod.time() - 60}).encode(),
              lease=lease)
    looked = []
    real_ttl = store.lease_ttl
    monkeypatch.setattr(store, "lease_ttl", lambda lease_id: looked.append(lease_id) or real_ttl(lease_id))
    assert stale.clear_dead_members(store, "/m/", "c1") == []
    assert looked == [lease]  # the old record's only
