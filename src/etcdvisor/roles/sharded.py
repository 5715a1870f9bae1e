"""``type: sharded``: every member runs the role's child with INDEX/COUNT.

The member joins the role's sequence (``roles/<role>/shard/``) with its
lease. Each membership snapshot gives this member ``Info(index, count,
epoch)``. Rules:

* a new assignment is applied only after membership stayed unchanged for
  ``settle`` seconds and a keepalive sent after it was observed came back
  alive (docs/safety.md, rule 2);
* only a change of INDEX or COUNT restarts the child; a new epoch alone does
  not (the running child keeps the EPOCH it was started with);
* an invalid assignment (lease expired/lost, member key gone) stops the child
  at once, without settling;
* a child that crash-loops marks the role failed here and the member leaves
  the group, so the others reshard around it.

States: JOINING -> SETTLING -> RUNNING -> (SETTLING -> RUNNING)*,
any -> INVALID (lease trouble) -> SETTLING, any -> FAILED -> (left),
any -> STOPPED.

Limit: during a transition (at most ``settle`` + ``stop_timeout``) a child
with the old COUNT may still run next to one started with the new COUNT;
children that must never overlap should fence with ``EPOCH``.
"""

from __future__ import annotations

from ..process.slot import Exited, Failed, SlotEvent, SpawnFailed
from ..process.spawn import ChildSpec
from ..recipes.sequence import INVALID, Info, Sequence
from .base import RoleRunner


class ShardedRunner(RoleRunner):
    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.latest: Info = INVALID
        self.latest_at = 0.0
        self.applied: Info | None = None
        self.settle_until = 0.0
        self.state = "joining"
        self.sequence: Sequence | None = None

    def start(self) -> None:
        self.sequence = Sequence(self.ctx.backend, self.ctx.keys.shard(self.name), self.ctx.member_id,
                                 self.ctx.session, self._on_info, name=f"{self.name}:shard")
        self.sequence.start(wait=0)

    def _on_info(self, info: Info) -> None:  # dispatcher thread: only post
        self.post(info)

    def handle(self, payload, at: float) -> None:
        if not isinstance(payload, Info) or self.failed_reason:
            return
        self.latest, self.latest_at = payload, at
        if payload.invalid():
            if self.applied is not None:
                self.say(f"stop: no longer a member (count={payload.count})")
            self.applied = None
            self.state = "invalid"
            return
        if self.applied is not None and payload.equal(self.applied):
            return  # same INDEX/COUNT: the child keeps running untouched
        self.settle_until = at + (self.spec.settle or 0.0)
        self.state = "settling"
        self.ctx.session.request_keepalive()

    def desired(self, now: float) -> dict[str, ChildSpec]:
        if self.failed_reason or self.latest.invalid():
            return {}
        if self.applied is None or not self.latest.equal(self.applied):
            confirmed = self.ctx.session.alive and self.ctx.session.last_alive_sent > self.latest_at
            if now >= self.settle_until and confirmed:
                old = self.applied
                self.applied = self.latest
                self.state = "running"
                self.say(f"assign INDEX={self.applied.index} COUNT={self.applied.count} "
                         f"EPOCH={self.applied.epoch}"
                         + (f" (was {old.index}/{old.count})" if old else "") + ": membership settled")
        if self.applied is None:
            return {}
        info = self.applied
        env = {"INDEX": str(info.index), "COUNT": str(info.count), "EPOCH": str(info.epoch)}
        return {self.name: self.ctx.child_spec(self.spec, f"{self.name}[{info.index}]", env)}

    def next_deadline(self) -> float | None:
        if self.state == "settling":
            return self.settle_until
        return None

    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        if isinstance(event, Exited) and event.restart_at is None and self.applied is not None:
            self.say(f"child INDEX={self.applied.index} finished with status {event.code}")
            self.record_done(self.applied.count, self.applied.index, event.code)
        if isinstance(event, (Failed, SpawnFailed)) and not self.failed_reason:
            reason = event.reason if isinstance(event, Failed) else event.message
            self.failed_reason = reason
            self.state = "failed"
            self.say(f"failed ({reason}); leaving the group so the others reshard")
            self.effect("leave the group", lambda: self.sequence.stop(leave=True))

    def stop(self) -> None:
        if self.state != "stopped":
            self.state = "stopped"
            if self.sequence is not None:
                self.sequence.stop(leave=True)

    def status(self) -> dict:
        info = self.applied
        return {**super().status(), "state": self.state,
                "index": info.index if info else None, "count": info.count if info else None,
                "epoch": info.epoch if info else None}
