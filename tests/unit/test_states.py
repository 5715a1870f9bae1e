"""State machines change state through one table per enum (process/states.py)."""

import enum
import logging

import pytest

from etcdvisor.process import states
from etcdvisor.process.child import CHILD_STATES, ChildState
from etcdvisor.process.slot import SLOT_STATES, SlotState
from etcdvisor.process.states import InvalidTransition, Transitions
from etcdvisor.roles.singleton import LEADER_STATES, LeaderState


def _pairs(table):
    return {(old, new) for old, targets in table.allowed.items() for new in targets}


def _check(table, allowed, forbidden):
    assert _pairs(table) == allowed
    for old, new in allowed:
        assert table.change("x", old, new) is new
    for state in table.allowed:  # staying put is always fine
        assert table.change("x", state, state) is state
    for old, new in forbidden:
        with pytest.raises(InvalidTransition, match=f"x: invalid {table.name} transition {old.name} -> {new.name}"):
            table.change("x", old, new)


def test_child_table():
    S = ChildState
    _check(CHILD_STATES, {
        (S.STARTING, S.RUNNING), (S.STARTING, S.EXITED),
        (S.RUNNING, S.STOPPING), (S.RUNNING, S.KILLED), (S.RUNNING, S.EXITED),
        (S.STOPPING, S.KILLED), (S.STOPPING, S.EXITED), (S.KILLED, S.EXITED),
    }, [(S.EXITED, S.RUNNING), (S.KILLED, S.STOPPING), (S.STOPPING, S.RUNNING), (S.STARTING, S.STOPPING)])


def test_slot_table():
    S = SlotState
    _check(SLOT_STATES, {
        (S.STOPPED, S.RUNNING), (S.STOPPED, S.BACKOFF), (S.STOPPED, S.FAILED),
        (S.RUNNING, S.STOPPING), (S.RUNNING, S.STOPPED), (S.RUNNING, S.EXITED), (S.RUNNING, S.FAILED),
        (S.RUNNING, S.BACKOFF),
        (S.STOPPING, S.STOPPED), (S.STOPPING, S.EXITED), (S.STOPPING, S.FAILED), (S.STOPPING, S.BACKOFF),
        (S.BACKOFF, S.RUNNING), (S.BACKOFF, S.FAILED), (S.BACKOFF, S.STOPPED),
        (S.EXITED, S.STOPPED), (S.FAILED, S.STOPPED),
    }, [(S.FAILED, S.RUNNING), (S.EXITED, S.RUNNING), (S.STOPPING, S.RUNNING), (S.BACKOFF, S.STOPPING)])


def test_leader_table():
    S = LeaderState
    _check(LEADER_STATES, {
        (S.CAMPAIGNING, S.LEADER), (S.CAMPAIGNING, S.FAILED), (S.CAMPAIGNING, S.STOPPED),
        (S.LEADER, S.FOLLOWER), (S.LEADER, S.FAILED), (S.LEADER, S.STOPPED),
        (S.FOLLOWER, S.CAMPAIGNING), (S.FOLLOWER, S.LEADER), (S.FOLLOWER, S.FAILED), (S.FOLLOWER, S.STOPPED),
        (S.FAILED, S.STOPPED),
    }, [(S.FAILED, S.CAMPAIGNING), (S.STOPPED, S.CAMPAIGNING), (S.FAILED, S.LEADER), (S.LEADER, S.CAMPAIGNING)])


class Light(enum.Enum):
    RED = 1
    GREEN = 2


def test_a_table_covers_every_state_of_one_enum():
    with pytest.raises(ValueError, match="no row for GREEN"):
        Transitions("light", {Light.RED: (Light.GREEN,)})
    with pytest.raises(ValueError, match="exactly one enum"):
        Transitions("mixed", {Light.RED: (), Light.GREEN: (), ChildState.EXITED: ()})


def test_changes_log_at_debug_and_invalid_ones_as_errors_in_production(monkeypatch, caplog):
    table = Transitions("light", {Light.RED: (Light.GREEN,), Light.GREEN: ()})
    caplog.set_level(logging.DEBUG, logger="etcdvisor")
    assert table.change("crossing", Light.RED, Light.GREEN, "timer") is Light.GREEN
    assert ("etcdvisor", logging.DEBUG, "crossing: light RED -> GREEN (timer)") in caplog.record_tuples
    monkeypatch.setattr(states, "STRICT", False)
    assert table.change("crossing", Light.GREEN, Light.RED) is Light.RED  # the state still changes
    assert ("etcdvisor", logging.ERROR,
            "crossing: invalid light transition GREEN -> RED (a bug: please report it)") in caplog.record_tuples
