"""The fixed-shard coordinator: the first member in join order publishes.

Whenever the settled membership (``settle`` without change) differs from the
members of the published assignment, the coordinator computes
:func:`~etcdvisor.roles.assignment.balance_shards` from the published
assignment and the membership snapshot, and writes it to
``roles/<role>/assignment`` with a compare-and-swap on the key's mod revision
(a stale coordinator's write fails; it retries from the newer value). The key
is not on a lease: it is the previous assignment the next coordinator starts
from, so stickiness survives a coordinator's death. A wrong or stale
publication is never unsafe: every start is fenced by the alive records.

States: IDLE -> SETTLING (membership changed) -> PUBLISHING -> IDLE.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from ..coord import types as t
from ..coord.retry import STORE_RETRY
from .assignment import balance_shards, moved
from .shard_plan import Published

if TYPE_CHECKING:
    from .sharded import ShardedRunner

log = logging.getLogger("etcdvisor")
WATCH_GRACE = 2.0  # after a successful publish, wait this long for the watch to show it


class CoordinatorState(enum.Enum):
    IDLE = "idle"
    SETTLING = "settling"
    PUBLISHING = "publishing"


class Coordinator:
    def __init__(self, runner: ShardedRunner):
        self.runner = runner
        self.state = CoordinatorState.IDLE
        self.due_at: float | None = None
        self.retry_at: float | None = None
        self.key = runner.ctx.keys.role(runner.name) + "assignment"
        self.sent: tuple[tuple[str, ...], float] | None = None  # members published, until when to trust it

    def tick(self, now: float) -> None:
        """Publish if this member leads and the settled membership changed."""
        runner = self.runner
        info, pub = runner.latest, runner.published
        if info.invalid() or info.index != 0 or self.state is CoordinatorState.PUBLISHING:
            self.due_at = None
            return
        if pub is not None and pub.members == info.members and pub.shards == runner.shards:
            self.state, self.due_at, self.sent = CoordinatorState.IDLE, None, None
            return
        if self.sent is not None and self.sent[0] == info.members and now < self.sent[1]:
            self.due_at = self.sent[1]  # written; its watch event is on the way
            return
        self.state = CoordinatorState.SETTLING  # IDLE -> SETTLING
        self.due_at = max(runner.latest_at + (runner.spec.settle or 0.0), self.retry_at or 0.0)
        if now < self.due_at:
            return
        prev = pub.owners if pub is not None and pub.shards == runner.shards else {}
        owners = balance_shards(prev, info.members, runner.shards)
        new = Published(info.epoch, info.members, owners, runner.shards)
        backend, mod, body = runner.ctx.backend, runner.published_mod, new.encode()
        self.state, self.due_at = CoordinatorState.PUBLISHING, None  # SETTLING -> PUBLISHING
        runner.say(f"coordinator: publishing the assignment for {len(info.members)} members "
                   f"(EPOCH={info.epoch}, {len(moved(prev, owners)) if prev else runner.shards} shards move)")

        def call() -> bool:
            return backend.txn([t.mod_revision(self.key, "=", mod)], [t.Put(self.key, body)]).succeeded

        runner.effect("publish assignment", call, lambda ok, error: self._published(info.members, ok, error))

    def _published(self, members: tuple[str, ...], ok, error) -> None:
        self.state = CoordinatorState.IDLE  # PUBLISHING -> IDLE
        self.runner._due = True
        if ok and error is None:
            self.sent = (members, self.runner.ctx.clock() + WATCH_GRACE)
        if error is not None or not ok:
            log.warning("role %s: coordinator: publish %s; retrying", self.runner.name,
                        f"failed: {error}" if error else "lost a race (the assignment changed)")
            self.retry_at = self.runner.ctx.clock() + (STORE_RETRY.delay(1) if error else 0.2)
        else:
            self.retry_at = None

    def next_deadline(self) -> float | None:
        return self.due_at

    def status(self) -> dict:
        return {"state": self.state.value, "due_at": self.due_at}
