"""Sequence and election recipes on both backends."""

import queue
import threading
import time

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.session import Session
from etcdvisor.coord.types import KeyValue
from etcdvisor.recipes.election import CampaignCancelled, Election, LeadershipWatch
from etcdvisor.recipes.sequence import Info, Place, Sequence, compute_info, members_in_order

from ..conftest import wait_until


def kv(key, create):
    return KeyValue(key=key, value=b"", create_revision=create, mod_revision=create, version=1)


def test_members_ordered_by_create_revision_not_key():
    kvs = [kv("/g/zeta", 5), kv("/g/alpha", 9), kv("/g/mid", 7), kv("/g/sub/x", 1), kv("/gx/other", 2)]
    assert [k.key for k in members_in_order("/g/", kvs)] == ["/g/zeta", "/g/mid", "/g/alpha"]
    assert compute_info("/g/", "alpha", kvs, 10) == Info(2, 3, 10, ("zeta", "mid", "alpha"))
    assert compute_info("/g/", "nobody", kvs, 10).invalid()
    assert Info(1, 3, 5).equal(Info(1, 3, 9)) and not Info(1, 3, 5).equal(Info(1, 4, 5))


class Member:
    def __init__(self, url, prefix, member_id, ttl=5, follow="members"):
        self.backend = open_backend(url, timeout=2)
        self.session = Session(self.backend, ttl=ttl, interval=0.3, name=member_id).start()
        self.infos = queue.Queue()
        self.seq = Sequence(self.backend, prefix, member_id, self.session, self.infos.put, follow=follow)

    def start(self):
        self.seq.start(wait=5)
        return self

    def close(self, leave=True):
        self.seq.stop(leave=leave)
        self.session.close()
        self.backend.close()


def settled(members, count):
    infos = [m.seq.info for m in members]
    return (all(i.count == count for i in infos)
            and sorted(i.index for i in infos) == list(range(count)))


def test_sequence_join_leave_reshards(backend_url, prefix):
    members = [Member(backend_url, prefix + "g/", f"m{i}").start() for i in range(3)]
    wait_until(lambda: settled(members, 3), message="3 members settled")
    assert [m.seq.info.index for m in members] == [0, 1, 2]  # join order
    start = time.monotonic()
    members[1].close()  # clean leave
    rest = [members[0], members[2]]
    wait_until(lambda: settled(rest, 2), timeout=3, message="reshard after leave")
    assert time.monotonic() - start < 1.5
    assert [m.seq.info.index for m in rest] == [0, 1]
    assert rest[1].seq.info.epoch > 0
    for m in rest:
        m.close()


def test_sequence_handler_gets_updates_in_order_and_slow_handler_does_not_block(backend_url, prefix):
    seen = []
    gate = threading.Event()

    def slow(info):
        gate.wait(5)
        seen.append(info)

    b = open_backend(backend_url)
    session = Session(b, ttl=5, interval=0.3).start()
    seq = Sequence(b, prefix + "g/", "me", session, slow).start(wait=5)
    others = [Member(backend_url, prefix + "g/", f"o{i}").start() for i in range(3)]
    wait_until(lambda: seq.info.count == 4, message="watch not blocked by slow handler")
    gate.set()
    wait_until(lambda: seen and seen[-1].count == 4, message="latest delivered")
    epochs = [i.epoch for i in seen]
    assert epochs == sorted(epochs)  # coalesced, never reordered
    for m in others:
        m.close()
    seq.stop()
    session.close()
    b.close()


def test_sequence_lease_loss_reports_invalid_then_rejoins_at_end(backend_url, prefix):
    a = Member(backend_url, prefix + "g/", "a").start()
    b = Member(backend_url, prefix + "g/", "b").start()
    wait_until(lambda: settled([a, b], 2))
    admin = open_backend(backend_url)
    admin.lease_revoke(a.session.lease_id)  # a's lease is gone on the server
    wait_until(lambda: a.seq.info.invalid() or a.seq.info.index == 1, timeout=5, message="a invalid")
    wait_until(lambda: a.seq.info.index == 1 and b.seq.info.index == 0 and a.seq.info.count == 2,
               timeout=8, message="a rejoined at the end")
    for m in (a, b):
        m.close()
    admin.close()


# --- head mode: only whether this member is first ----------------------------------

class Follower(Member):
    """A member of the group in head mode, with every Place its handler received."""

    def __init__(self, url, prefix, member_id, ttl=5):
        super().__init__(url, prefix, member_id, ttl, follow="head")

    @property
    def places(self) -> list[Place]:
        return list(self.infos.queue)


def heads(members):
    return [m.seq.place.head for m in members]


def test_head_mode_knows_only_who_is_first_and_the_next_one_takes_over(backend_url, prefix):
    members = [Follower(backend_url, prefix + "h/", f"m{i}").start() for i in range(4)]
    wait_until(lambda: heads(members) == [True, False, False, False], message="m0 first, nobody else")
    joined = [m.seq.place.joined for m in members]
    assert joined == sorted(joined) and len(set(joined)) == 4  # create revisions: join order
    members[2].close()  # a leave in the middle: m3 now waits on m1, nobody else changes
    members[0].close()  # the head leaves: m1 is first
    rest = [members[1], members[3]]
    wait_until(lambda: heads(rest) == [True, False], timeout=5, message="m1 first after m0 left")
    assert rest[0].seq.place.joined == joined[1]  # the same key: its place did not change
    rest[0].close()
    wait_until(lambda: heads([members[3]]) == [True], timeout=5, message="m3 first at last")
    # each member heard of its own place only: never a Place per join or leave of another
    assert [p.head for p in members[3].places] == [False, True]
    members[3].close()


def test_head_mode_lease_loss_is_invalid_at_once_then_rejoins_at_the_end(backend_url, prefix):
    a = Follower(backend_url, prefix + "h/", "a").start()
    b = Follower(backend_url, prefix + "h/", "b").start()
    wait_until(lambda: heads([a, b]) == [True, False], message="a first")
    first = a.seq.place.joined
    admin = open_backend(backend_url)
    admin.lease_revoke(a.session.lease_id)  # a's lease (and key) gone on the server
    wait_until(lambda: heads([a, b]) == [False, True] and not a.seq.place.invalid(), timeout=8,
               message="b first, a rejoined behind it")
    assert a.seq.place.joined > b.seq.place.joined > first
    assert any(p.invalid() for p in a.places), "a said it was no member while its lease was gone"
    for m in (a, b):
        m.close()
    admin.close()


def test_head_mode_a_deleted_key_is_noticed_when_kicked_and_rejoined(backend_url, prefix):
    a = Follower(backend_url, prefix + "h/", "a").start()
    b = Follower(backend_url, prefix + "h/", "b").start()
    wait_until(lambda: heads([a, b]) == [True, False], message="a first")
    admin = open_backend(backend_url)
    admin.delete(b.seq.key)  # by hand, b's lease lives: b watches a, not itself
    old = b.seq.place.joined
    b.seq.kick()  # what the sharded role does when a plan newer than b's key leaves b out
    wait_until(lambda: b.seq.place.joined > old and not b.seq.place.head, timeout=5, message="b rejoined")
    assert admin.get(b.seq.key).create_revision == b.seq.place.joined
    for m in (a, b):
        m.close()
    admin.close()


def test_head_mode_rejects_an_unknown_follow_value(backend_url, prefix):
    b = open_backend(backend_url)
    session = Session(b, ttl=5)
    with pytest.raises(ValueError, match="follow"):
        Sequence(b, prefix + "h/", "x", session, follow="everyone")  # type: ignore[arg-type]
    b.close()


# --- election -------------------------------------------------------------------

class Node:
    def __init__(self, url, prefix, name, ttl=5):
        self.backend = open_backend(url, timeout=2)
        self.session = Session(self.backend, ttl=ttl, interval=0.3, name=name).start()
        self.election = Election(self.backend, prefix, self.session, name.encode(), name=name)

    def close(self):
        self.election.close()
        self.session.close()
        self.backend.close()


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_election_single_leader_and_succession(backend_url, prefix):
    nodes = [Node(backend_url, prefix + "e/", f"n{i}") for i in range(3)]
    history = []  # (event, node, token, time) recorded by the candidates themselves
    lock = threading.Lock()
    stop = threading.Event()

    def run(node):
        while not stop.is_set():
            try:
                token = node.election.campaign(timeout=10, cancel=stop)
            except CampaignCancelled:
                return
            with lock:
                history.append(("start", node, token, time.monotonic()))
            time.sleep(0.3)  # lead for a while
            with lock:
                history.append(("end", node, token, time.monotonic()))
            node.election.resign()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    wait_until(lambda: sum(1 for h in history if h[0] == "end") >= 6, timeout=20, message="6 terms")
    stop.set()
    for t in threads:
        t.join(10)
    # the recorded history never has two leaders at once, and tokens grow
    current = None
    tokens = []
    for event, node, token, _ in history:
        if event == "start":
            assert current is None, "two leaders at once"
            current = node
            tokens.append(token)
        else:
            assert current is node
            current = None
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    for n in nodes:
        n.close()


def test_election_campaign_timeout_withdraws(backend_url, prefix):
    a = Node(backend_url, prefix + "e/", "a")
    b = Node(backend_url, prefix + "e/", "b")
    token = a.election.campaign(timeout=5)
    with pytest.raises(CampaignCancelled):
        b.election.campaign(timeout=0.5)
    assert [c.key for c in a.election.topology().candidates] == [a.election.key]
    assert a.election.is_leader() and a.election.leader().token == token
    a.election.proclaim("new-value")
    assert b.election.leader().value == b"new-value"
    a.close()
    b.close()


def test_a_campaign_cancelled_by_a_signal_ends_at_once_and_nothing_polls_meanwhile(backend_url, prefix):
    """A waiting candidate given a Signal as ``cancel`` has no guard thread polling it (a
    follower of every singleton role used to wake ten times a second for it), and the
    signal still ends its campaign at once."""
    from etcdvisor.recipes.queue_wait import Signal

    a = Node(backend_url, prefix + "e/", "a")
    b = Node(backend_url, prefix + "e/", "b")
    a.election.campaign(timeout=5)
    stop, outcome = Signal(), []

    def campaign():
        try:
            b.election.campaign(cancel=stop)
        except CampaignCancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=campaign, daemon=True)
    thread.start()
    wait_until(lambda: len(a.election.topology().candidates) == 2, message="b waits in line")
    time.sleep(0.3)  # (b is watching its predecessor now)
    assert not [t.name for t in threading.enumerate() if t.name.endswith(":guard")]
    started = time.monotonic()
    stop.set()
    thread.join(3)
    assert outcome and time.monotonic() - started < 1.0
    a.close()
    b.close()


def test_election_leader_lease_revoked_next_leader_has_larger_token(backend_url, prefix):
    a = Node(backend_url, prefix + "e/", "a")
    b = Node(backend_url, prefix + "e/", "b")
    token_a = a.election.campaign(timeout=5)
    deposed = threading.Event()
    LeadershipWatch(a.election, lambda reason: deposed.set()).start()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("token", b.election.campaign(timeout=10)))
    t.start()
    time.sleep(0.3)
    assert "token" not in result
    admin = open_backend(backend_url)
    admin.lease_revoke(a.session.lease_id)
    assert deposed.wait(3)
    t.join(10)
    assert result["token"] > token_a
    for n in (a, b):
        n.close()
    admin.close()


def test_election_observe_callbacks(backend_url, prefix):
    a = Node(backend_url, prefix + "e/", "a")
    b = Node(backend_url, prefix + "e/", "b")
    events = queue.Queue()
    a.election.campaign(timeout=5)
    b.election._enter()  # b is a (waiting) candidate before observing
    watcher = b.election.observe(
        on_elected=lambda t: events.put("elected"),
        on_follower=lambda t: events.put("follower"),
        on_peer_join=lambda c, t: events.put(("join", c.value)),
        on_peer_leave=lambda c, t: events.put(("leave", c.value)))
    got = [events.get(timeout=5), events.get(timeout=5)]
    assert set(got) == {"follower", ("join", b"a")}
    a.election.resign()
    got = [events.get(timeout=5), events.get(timeout=5)]
    assert set(got) == {"elected", ("leave", b"a")}
    watcher.stop()
    for n in (a, b):
        n.close()


def test_resigning_after_the_store_handle_closed_is_quiet(backend_url, prefix, caplog):
    """A leaving member closes its store handle while its campaign thread still resigns:
    the candidate key goes with the lease, so that is said at debug level, not warned
    about at every leave."""
    import logging

    node = Node(backend_url, prefix + "e/", "a")
    node.election.campaign(timeout=5)
    node.session.close()
    node.backend.close()
    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    node.election.resign()
    assert "could not withdraw candidacy" not in caplog.text
    assert "candidacy left to the lease revoke" in caplog.text
    node.election.close()
