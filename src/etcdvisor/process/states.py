"""State machines with their allowed transitions (as supervisord's ``change_state``).

Each state enum has one :class:`Transitions` table; code changes a state only
through :meth:`Transitions.change`, never by assigning it raw. A change is logged at
debug level (``<owner>: <machine> RUNNING -> STOPPING``); staying in the same state
is always allowed and says nothing. A transition the table does not allow is a bug:
it raises :class:`InvalidTransition` when :data:`STRICT` is on (the test suite turns it
on) and is logged as an error otherwise, the state still changing as asked (a
supervisor in production keeps supervising).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

log = logging.getLogger("etcdvisor")

STRICT = False  # raise on an invalid transition (tests) instead of logging an error

S = TypeVar("S", bound=enum.Enum)


class InvalidTransition(RuntimeError):
    """A state change its machine's table does not allow (a bug)."""


class Transitions(Generic[S]):
    """The allowed transitions of one state enum: ``{state: states it may go to}``.
    Every member of the enum must be a key (a final state maps to nothing)."""

    def __init__(self, name: str, allowed: Mapping[S, Iterable[S]]):
        self.name = name
        self.allowed: dict[S, frozenset[S]] = {state: frozenset(to) for state, to in allowed.items()}
        states = {type(state) for state in self.allowed}
        if len(states) != 1:
            raise ValueError(f"{name}: the table must cover exactly one enum")
        (kind,) = states
        missing = [state.name for state in kind if state not in self.allowed]
        if missing:
            raise ValueError(f"{name}: no row for {', '.join(missing)}")

    def allows(self, old: S, new: S) -> bool:
        return new is old or new in self.allowed[old]

    def change(self, owner: str, old: S, new: S, why: str = "") -> S:
        """Check ``old -> new`` for ``owner`` (a child or role name) and return ``new``
        (``self.state = TABLE.change(self.name, self.state, NEW)``)."""
        if new is old:
            return new
        suffix = f" ({why})" if why else ""
        if new not in self.allowed[old]:
            message = f"{owner}: invalid {self.name} transition {old.name} -> {new.name}{suffix}"
            if STRICT:
                raise InvalidTransition(message)
            log.error("%s (a bug: please report it)", message)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s %s -> %s%s", owner, self.name, old.name, new.name, suffix)
        return new
