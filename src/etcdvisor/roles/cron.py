"""``type: cron``: a singleton on a schedule, exactly one run per tick.

Only the role's elected leader runs ticks. Before a run's child starts, the
tick is **claimed** with one transaction that creates
``roles/<role>/ticks/<tick-id>`` only if (a) no record of that tick exists
and (b) our election key still has our fencing token as create revision.
So a leader change at the tick cannot run it twice, and a deposed leader
cannot claim anything.

A new leader resumes after the newest tick recorded in the store: ticks it
missed during the failover run late if still within ``starting_deadline``
and are recorded ``missed`` otherwise. Catch-up is bounded: only the newest
``CATCH_UP_LIMIT`` ticks younger than ``CATCH_UP_HORIZON`` (one hour, or the
starting deadline when longer) are looked at; older ones are counted as
missed in one log line. A brand-new cluster starts from now.

``concurrency``:

* ``forbid`` (default): never two runs at once; a tick that comes due while
  a run is active waits for it; if a newer tick comes due meanwhile, the
  waiting one is recorded ``skipped``;
* ``replace``: the active run is stopped and the new tick starts;
* ``allow``: runs overlap.

Retries never delay or skip a tick: a run that failed and is being retried
(``restart: on-failure``) ends when the next tick is due, recorded ``failed``
with its last exit code (a running attempt is stopped), and the tick runs.

Each run's child gets ``SCHEDULED_TIME`` (ISO 8601 in the role's timezone),
``LEADER=1``, ``LEADER_TOKEN``. Tick records end as ``succeeded``,
``failed`` (with ``exit_code``), ``stopped`` (replaced, deposed, shutdown),
``interrupted`` (its leader died mid-run; marked by the next leader),
``missed`` or ``skipped``; the newest ``KEEP_RECORDS`` are kept.

``supervisor pause``: while the role is paused the leader records each due
tick ``paused`` (it is not run late on resume). ``supervisor trigger``: the
leader claims one extra run now, with the same fencing compare as a tick,
under ``ticks/<ISO time of the trigger>-manual`` (record ``manual: true``,
``trigger`` id and ``who``); it runs whatever the concurrency policy, gets
``SCHEDULED_TIME`` = the trigger time and ``MANUAL=1``. Manual records never
move the schedule cursor. A trigger older than ``TRIGGER_MAX_AGE`` is dropped.

Limit: a run is claimed before it starts, so a leader that dies mid-run
does not get the tick re-run (at most once per tick; exactly once when the
leader survives the run).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import RoleSpec
from ..config.schedule import Schedule, is_missed, parse_tick_id
from ..coord.records import TICK, RecordError, check_time, dumps
from ..coord.retry import STORE_RETRY
from ..coord.types import Get, Put, create_revision, missing, mod_revision
from ..process.slot import Exited, Failed, SlotEvent, SpawnFailed, Stopped
from ..process.spawn import ChildSpec
from .base import RuntimeContext
from .singleton import LeaderRunner

log = logging.getLogger("etcdvisor")

CATCH_UP_LIMIT = 100  # at most this many missed ticks run late
CATCH_UP_HORIZON = 3600.0  # without starting_deadline, ticks older than this are not run late
KEEP_RECORDS = 100
MANUAL_SUFFIX = "-manual"
TRIGGER_MAX_AGE = 60.0
FINAL_STATES = ("succeeded", "failed", "stopped", "missed", "skipped", "paused")
CLAIM_RETRY = STORE_RETRY  # a claim that failed (store error, fencing) is tried again


@dataclass
class _Run:
    tick: datetime
    spec: ChildSpec
    manual: bool = False
    last_exit: int | None = None  # set once an attempt failed and the run is being retried


def manual_tick_id(when: datetime) -> str:
    """Key suffix of a manual run: the trigger time to the millisecond, never a tick id."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z{MANUAL_SUFFIX}"


class CronRunner(LeaderRunner):
    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        super().__init__(spec, ctx)
        if self.spec.schedule is None:  # the config loader parses one for every cron role
            raise ValueError(f"role {self.name}: a cron role needs a schedule")
        self.schedule: Schedule = self.spec.schedule  # parsed once by the config loader: what validated runs
        self.policy = self.spec.concurrency or "forbid"
        self.runs: dict[str, _Run] = {}
        self.cursor: datetime | None = None  # None: not leading, or resuming
        self.claiming: str | None = None  # a tick whose claim is in flight
        self.retry_at: float | None = None  # a failed claim is tried again then
        self.last_outcome: dict[str, Any] | None = None
        self.missed = 0
        self.triggers: dict[str, dict[str, Any]] = {}  # trigger id -> control record, until claimed
        self._retries_ended: set[str] = set()  # runs whose retries a newer tick ended: already recorded

    # --- leadership ------------------------------------------------------------
    def handle(self, payload: object, at: float) -> None:
        was_leading = self.leading
        super().handle(payload, at)
        if self.leading and not was_leading:
            self._resume()
        elif was_leading and not self.leading:
            self.runs.clear()  # lease-bound: the loop stops them
            self.cursor = None
            self.claiming = None

    def _resume(self) -> None:
        token, term = self.token, self.term

        def done(newest: datetime | None, error: BaseException | None) -> None:
            if not self.in_term(term):
                return  # the term ended while the records were read
            now = self._now()
            if error is not None:
                log.warning("role %s: cannot read tick records (%s); starting from now", self.name, error)
                newest = None
            self.cursor = newest if newest is not None and newest <= now else now
            if newest is not None:
                self.say(f"leader resumes after tick {self.schedule.tick_id(newest)}")

        self.effect("read tick records", lambda: self._newest_record(token), done)

    def _newest_record(self, token: int) -> datetime | None:
        """(Effect) The newest recorded tick; runs left 'running' by an earlier
        leader (it died mid-run) are marked 'interrupted'."""
        result = self.ctx.backend.get_prefix(self.ctx.keys.ticks(self.name))
        for kv in result.kvs:
            record = TICK.read(kv)  # a bad record: skipped, one warning naming its key
            if record is None:
                continue
            if record["state"] == "running" and (record["token"] or 0) < token:
                record["state"] = "interrupted"
                self.ctx.backend.txn([mod_revision(kv.key, "=", kv.mod_revision)],
                                     [Put(kv.key, dumps(record).encode())])
        ids = [kv.key.rsplit("/", 1)[-1] for kv in result.kvs]
        ids = [tick_id for tick_id in ids if not tick_id.endswith(MANUAL_SUFFIX)]
        for tick_id in sorted(ids, reverse=True):
            try:
                return parse_tick_id(tick_id)
            except ValueError:  # a key not written by a cron leader
                log.warning("role %s: ignoring tick record %s: not a tick id", self.name,
                            self.ctx.keys.tick(self.name, tick_id)[:200])
        return None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.ctx.wall(), tz=UTC)

    # --- the schedule ------------------------------------------------------------
    def desired(self, now: float) -> dict[str, ChildSpec]:
        self.leader_turn(now)
        if not self.leading or self.failed_reason or self.cursor is None:
            return {}
        if self.claiming is None and (self.retry_at is None or now >= self.retry_at):
            self.retry_at = None
            self._process_due_ticks()
            if self.claiming is None:
                self._claim_trigger()
        return {tick_id: run.spec for tick_id, run in self.runs.items()}

    def _process_due_ticks(self) -> None:
        now = self._now()
        due = self._due_ticks(now)
        if due:
            self._end_retries(self.schedule.tick_id(due[-1]))
        for position, tick in enumerate(due):
            newest_due = position == len(due) - 1
            if is_missed(tick, now, self.spec.starting_deadline):
                self.missed += 1
                self._record(tick, {"state": "missed"}, quiet=False)
            elif self.runs and self.policy == "forbid":
                if not newest_due:
                    self._record(tick, {"state": "skipped"}, quiet=False)
                else:
                    return  # wait for the active run; re-checked when it exits
            else:
                self._claim(tick, now)
                return  # the cursor moves when the claim's outcome is known
            self.cursor = tick

    def _end_retries(self, due_id: str) -> None:
        """Retries of a run never delay or skip the next tick: when a newer tick is
        due, a scheduled run that failed and is being retried (waiting for its next
        attempt, or in one) ends, recorded ``failed`` with its last exit code; a
        running attempt is stopped with the role's stop rules."""
        for tick_id, run in list(self.runs.items()):
            if run.manual or run.last_exit is None:
                continue
            del self.runs[tick_id]
            self._retries_ended.add(tick_id)
            self._record(run.tick, {"state": "failed", "exit_code": run.last_exit, "finished": self.ctx.wall(),
                                    "error": f"retries ended: tick {due_id} is due"}, tick_id=tick_id)
            self.say(f"tick {tick_id}: failed (exit {run.last_exit}); retries ended: tick {due_id} is due")

    def _due_ticks(self, now: datetime) -> list[datetime]:
        """Ticks after the cursor up to now: at most the newest CATCH_UP_LIMIT,
        none older than the catch-up horizon (CATCH_UP_HORIZON, or
        starting_deadline when longer). The caller records those past
        their starting_deadline as missed; ticks beyond the limit or the
        horizon are counted as missed with one log line, not a record each."""
        assert self.cursor is not None  # asked only while leading with a cursor (desired, while_paused)
        horizon = now - timedelta(seconds=max(CATCH_UP_HORIZON, self.spec.starting_deadline or 0))
        start, dropped = self.cursor, 0
        if start < horizon:
            jump = self.schedule.latest_tick(horizon - timedelta(microseconds=1))
            if jump is not None and jump > start:
                dropped += len(self.schedule.ticks_between(start, jump, limit=CATCH_UP_LIMIT))
                start = self.cursor = jump
        due: list[datetime] = []
        while True:
            chunk = self.schedule.ticks_between(start, now, limit=CATCH_UP_LIMIT)
            merged = due + chunk
            dropped += max(0, len(merged) - CATCH_UP_LIMIT)
            due = merged[-CATCH_UP_LIMIT:]
            if len(chunk) < CATCH_UP_LIMIT:
                break
            start = chunk[-1]
        if dropped:
            self.missed += dropped
            self.say(f"{dropped}{'+' if dropped >= CATCH_UP_LIMIT else ''} ticks since "
                     f"{self.schedule.tick_id(self.cursor)} are too old to run late: missed")
        return due

    def _claim(self, tick: datetime, now: datetime, trigger: dict[str, Any] | None = None) -> None:
        """Claim ``tick`` (or the manual run of ``trigger``) with a transaction fenced
        by our token (an effect); the run starts when the claim comes back won."""
        tick_id = manual_tick_id(tick) if trigger else self.schedule.tick_id(tick)
        key = self.ctx.keys.tick(self.name, tick_id)
        token, term = self.token, self.term
        extra = {"manual": True, "trigger": trigger["id"], "who": trigger.get("who")} if trigger else {}
        record = {"state": "running", "member": self.ctx.member_id, "token": token,
                  "scheduled": tick.isoformat(), "started": now.timestamp(), **extra}
        election_key = self.started_election.key

        def claim() -> bool | None:
            """True: ours to run. False: already recorded by someone. None: we
            may no longer lead (the fencing compare failed)."""
            res = self.ctx.backend.txn([missing(key), create_revision(election_key, "=", token)],
                                       [Put(key, dumps(record).encode())], [Get(key)])
            if res.succeeded:
                self._trim()
                return True
            if res.responses and res.responses[0]:
                return False
            return None

        def done(claimed: bool | None, error: BaseException | None) -> None:
            self.claiming = None
            if trigger is not None and (error is not None or claimed is None):
                self.trigger(trigger)  # try again (this leader after CLAIM_RETRY, or the next one)
            if not self.in_term(term):
                return
            if error is not None:
                log.warning("role %s: cannot claim tick %s: %s", self.name, tick_id, error)
                self.retry_at = self.ctx.clock() + CLAIM_RETRY.delay(1)
                return
            if claimed is None:
                self.say(f"tick {tick_id}: claim refused (no longer the leader)")
                self.retry_at = self.ctx.clock() + CLAIM_RETRY.delay(1)
                return
            if trigger is None:
                self.cursor = tick
            if claimed:
                self._run(tick, now, tick_id, manual=trigger is not None)

        self.claiming = tick_id
        self.effect(f"claim tick {tick_id}", claim, done)

    def _run(self, tick: datetime, claimed_at: datetime, tick_id: str, manual: bool = False) -> None:
        if self.runs and self.policy == "replace" and not manual:
            self.say(f"tick {tick_id}: replacing the active run(s) {', '.join(self.runs)}")
            self.runs.clear()
        run_vars = dataclasses.replace(self.leader_vars(), scheduled_time=self.schedule.format_tick(tick),
                                       manual=manual)
        spec = self.ctx.child_spec(self.spec, f"{self.name}@{tick_id}", run_vars)
        self.runs[tick_id] = _Run(tick, spec, manual)
        late = (claimed_at - tick).total_seconds()
        self.say(f"tick {tick_id}: claimed, starting run" + (f" ({late:.1f}s late)" if late > 1 else ""))

    def _record(self, tick: datetime, fields: dict[str, Any], *, quiet: bool = True,
                tick_id: str | None = None) -> None:
        tick_id = tick_id or self.schedule.tick_id(tick)
        key = self.ctx.keys.tick(self.name, tick_id)
        record = {"member": self.ctx.member_id, "token": self.token, "scheduled": tick.isoformat(),
                  **fields}
        backend = self.ctx.backend
        if self.ctx.metrics is not None and fields.get("state") in FINAL_STATES:
            self.ctx.metrics.cron_outcome(self.name, fields["state"], tick_id.endswith(MANUAL_SUFFIX))

        def write() -> None:
            if fields.get("state") in ("missed", "skipped", "paused"):
                backend.txn([missing(key)], [Put(key, dumps(record).encode())])
                return
            old = backend.get(key)
            try:
                merged = {**TICK.decode(old.value), **fields} if old is not None else record
            except RecordError:  # overwritten by someone: our outcome replaces it
                merged = record
            backend.put(key, dumps(merged))

        self.effect(f"record tick {tick_id} {fields.get('state')}", write)
        if not quiet:
            self.say(f"tick {tick_id}: {fields['state']}")
        self.last_outcome = {"tick": tick_id, **fields}

    def _trim(self) -> None:
        prefix = self.ctx.keys.ticks(self.name)
        result = self.ctx.backend.get_prefix(prefix, keys_only=True)
        if len(result.kvs) > KEEP_RECORDS + KEEP_RECORDS // 5:
            keys = sorted(kv.key for kv in result.kvs)
            self.ctx.backend.delete(keys[0], keys[-KEEP_RECORDS])

    # --- runs ------------------------------------------------------------------------
    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        self.run_health(event)
        run = self.runs.get(key)
        if key in self._retries_ended:  # recorded when its retries ended; only its stop is left
            if isinstance(event, (Stopped, Exited, Failed)):
                self._retries_ended.discard(key)
            return
        if isinstance(event, Exited) and event.restart_at is not None and run is not None:
            run.last_exit = event.code  # retried after a backoff, unless a newer tick is due first
        elif isinstance(event, Exited) and event.restart_at is None and run is not None:
            state = "succeeded" if event.code == 0 else "failed"
            self._record(run.tick, {"state": state, "exit_code": event.code,
                                    "finished": self.ctx.wall()}, quiet=False, tick_id=key)
            del self.runs[key]
        elif isinstance(event, Stopped) and event.code is not None:
            if run is not None or not key.endswith(MANUAL_SUFFIX):
                tick = run.tick if run is not None else parse_tick_id(key)
                self._record(tick, {"state": "stopped", "finished": self.ctx.wall()}, quiet=False,
                             tick_id=key)
            self.runs.pop(key, None)
        elif isinstance(event, (Failed, SpawnFailed)) and run is not None:
            reason = event.reason if isinstance(event, Failed) else event.message
            self._record(run.tick, {"state": "failed", "error": reason, "finished": self.ctx.wall()},
                         tick_id=key)
            del self.runs[key]
            if isinstance(event, SpawnFailed):
                self.give_up(reason)

    def restart_policy(self, key: str) -> str:
        return self.spec.restart.value

    # --- supervisor pause / trigger (runtime/control.py) ----------------------------------
    def while_paused(self, now: float) -> None:
        """Due ticks are recorded 'paused', never run late after the resume."""
        if not self.leading or self.failed_reason or self.cursor is None or self.claiming:
            return
        for tick in self._due_ticks(self._now()):
            self._record(tick, {"state": "paused"}, quiet=False)
            self.cursor = tick

    def trigger(self, record: dict[str, Any]) -> None:
        """A 'supervisor trigger' control record: every member keeps it (a leader
        elected within TRIGGER_MAX_AGE still runs it); the leader claims it."""
        try:
            check_time("when", record.get("when"))  # decoded already (coord/records.py); belt and braces
        except RecordError as exc:
            log.warning("role %s: ignoring trigger %s: %s", self.name, record.get("id"), exc)
            return
        if isinstance(record.get("id"), str):
            self.triggers[record["id"]] = record
            if len(self.triggers) > 16:  # a flood of triggers: keep the newest
                del self.triggers[min(self.triggers, key=lambda k: self.triggers[k]["when"])]

    def _claim_trigger(self) -> None:
        for trigger_id, record in sorted(self.triggers.items(), key=lambda item: item[1]["when"]):
            del self.triggers[trigger_id]
            if self.ctx.wall() - record["when"] <= TRIGGER_MAX_AGE:
                self.say(f"manual run requested by {record.get('who')}: claiming")
                self._claim(datetime.fromtimestamp(record["when"], tz=UTC), self._now(), record)
                return

    def next_deadline(self) -> float | None:
        leader = self.leader_deadline(self.ctx.clock())
        if not self.leading or self.cursor is None or self.claiming is not None:
            return leader
        if leader is not None:
            return min(leader, self._schedule_deadline())
        return self._schedule_deadline()

    def _schedule_deadline(self) -> float:
        assert self.cursor is not None  # next_deadline asks only while leading with a cursor
        if self.retry_at is not None:
            return self.retry_at
        now = self._now()
        nxt = self.schedule.next_tick(max(self.cursor, now))
        return self.ctx.clock() + max(0.0, (nxt - now).total_seconds()) + 0.001

    def status(self) -> dict[str, Any]:
        upcoming = None
        if self.cursor is not None:
            upcoming = self.schedule.next_tick(max(self.cursor, self._now())).isoformat()
        return {**super().status(), "schedule": self.schedule.expression, "next": upcoming,
                "running": sorted(self.runs), "last": self.last_outcome, "missed": self.missed}
