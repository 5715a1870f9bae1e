"""``type: job``: run once per cluster (per spec), on the leader, to completion.

The outcome lives in ``roles/<role>/job`` as JSON ``{spec_hash, state,
member, token, exit_code, finished}``. The leader runs the job unless the
record says ``succeeded`` (or ``failed`` after its retries) for the current
``spec_hash`` (a hash of command, env and cwd): so it does not run again on
restarts or on other members, and a changed spec runs it again. Failures
follow ``restart`` with backoff (the process slot's policy); when the slot
gives up, the record says ``failed``. ``supervisor rerun ROLE`` deletes the
record, and the leader, which watches it, runs the job again.

Records are written with a fencing compare on the leader's election key, so
a deposed leader cannot claim a run. A run interrupted by a leader change is
run again by the next leader (at-least-once; exactly once when the leader
survives the run).

States: WAITING (not leader) -> RUNNING -> DONE (succeeded | failed);
DONE -> RUNNING on a spec change or a rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from ..config import RoleSpec
from ..coord.records import JOB, dumps
from ..coord.retry import STORE_RETRY
from ..coord.types import Put, create_revision
from ..coord.watcher import Change, PrefixWatcher
from ..process.slot import Exited, Failed, SlotEvent, SpawnFailed
from ..process.spawn import ChildSpec
from .base import RuntimeContext
from .singleton import LeaderRunner

log = logging.getLogger("etcdvisor")
FINAL_WRITE_ATTEMPTS = 5  # a job's outcome is written again this often when the store fails


def spec_hash(spec: RoleSpec) -> str:
    """What makes a job 'the same job': its command, environment and cwd."""
    body = json.dumps({"command": list(spec.command), "env": dict(spec.env), "cwd": spec.cwd},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def job_done(record: dict[str, Any] | None, expected_hash: str) -> bool:
    return record is not None and record.get("spec_hash") == expected_hash and \
        record.get("state") in ("succeeded", "failed")


class JobRecord:
    """Payload: the job record changed (None = deleted), as of store ``revision``."""

    def __init__(self, record: dict[str, Any] | None, revision: int = 0):
        self.record = record
        self.revision = revision


class JobRunner(LeaderRunner):
    def __init__(self, spec: RoleSpec, ctx: RuntimeContext):
        super().__init__(spec, ctx)
        self.hash = spec_hash(self.spec)
        self.record: dict[str, Any] | None = None
        self.record_known = False
        # the revision of the newest record this runner knows; a watch event older than
        # that is stale (our 'running' write seen after the run ended: never run again)
        self.record_revision = 0
        self.running = False
        self.writing = False  # the 'running' record is being written
        self.retry_at: float | None = None  # a failed 'running' write is tried again then
        self._watcher: PrefixWatcher | None = None

    def start(self) -> None:
        self._watcher = PrefixWatcher(self.ctx.backend, self.ctx.keys.job(self.name), self._on_change,
                                      name=f"{self.name}:job")
        self._watcher.start()
        super().start()

    def _on_change(self, change: Change) -> None:  # watch thread: only post
        kv = change.snapshot.get(self.ctx.keys.job(self.name))
        # a bad record (skipped, one warning naming its key) counts as none: the job runs
        self.post(JobRecord(JOB.read(kv) if kv else None, change.revision))

    def handle(self, payload: object, at: float) -> None:
        if isinstance(payload, JobRecord):
            self.record_known = True
            if payload.revision >= self.record_revision:
                self.record, self.record_revision = payload.record, payload.revision
            return
        super().handle(payload, at)
        if not self.leading:
            self.running = False

    def desired(self, now: float) -> dict[str, ChildSpec]:
        self.leader_turn(now)
        if not self.leading or self.failed_reason or not self.record_known:
            return {}
        if self.running:
            return {"run": self.ctx.child_spec(self.spec, self.name, self.leader_vars())}
        if self.retry_at is not None and now < self.retry_at:
            return {}
        if not job_done(self.record, self.hash) and not self.writing:
            self.writing, self.retry_at = True, None
            term = self.term

            def done(written: bool, error: BaseException | None) -> None:
                self.writing = False
                if written and self.in_term(term):
                    self.running = True
                    self.say(f"running job (spec {self.hash})")
                elif error is not None:
                    self.retry_at = self.ctx.clock() + STORE_RETRY.delay(1)

            self._write({"state": "running"}, done)
        return {}

    def next_deadline(self) -> float | None:
        times = [t for t in (self.retry_at, self.leader_deadline(self.ctx.clock())) if t is not None]
        return min(times) if times else None

    def _write(self, fields: dict[str, Any],
               done: Callable[[bool, BaseException | None], None] | None = None) -> None:
        """(Effect) Write the job record, fenced by our election key."""
        record = {"spec_hash": self.hash, "member": self.ctx.member_id, "token": self.token,
                  "updated": self.ctx.wall(), **fields}
        election_key, token, key = self.started_election.key, self.token, self.ctx.keys.job(self.name)
        backend = self.ctx.backend

        def write() -> int | None:
            res = backend.txn([create_revision(election_key, "=", token)], [Put(key, dumps(record).encode())])
            return res.revision if res.succeeded else None

        def written(revision: int | None, error: BaseException | None) -> None:
            ok = error is None and revision is not None
            if error is not None:
                log.warning("role %s: cannot write job record: %s", self.name, error)
            elif revision is not None and revision >= self.record_revision:
                self.record, self.record_revision = record, revision
            if done is not None:
                done(ok, error)

        self.effect(f"write job record ({fields.get('state')})", write, written)

    def on_slot_event(self, key: str, event: SlotEvent, now: float) -> None:
        self.run_health(event)
        if isinstance(event, Exited) and event.restart_at is None:
            state = "succeeded" if event.code == 0 else "failed"
            self._finish(state, exit_code=event.code)
        elif isinstance(event, Failed):
            self._finish("failed", error=event.reason)
        elif isinstance(event, SpawnFailed):
            self._finish("failed", error=event.message)
            self.give_up(event.message)

    def _finish(self, state: str, **fields: int | str) -> None:
        if not self.running:
            return
        self.running = False
        final = {"state": state, "finished": self.ctx.wall(), **fields}
        # known done at once: the job must not start again while the record is written,
        # nor on a late watch event of the 'running' record (older than what we know now)
        self.record = {"spec_hash": self.hash, **final}
        self.record_revision += 1

        def retry(ok: bool, error: BaseException | None, attempt: int = 1) -> None:
            if error is not None and attempt < FINAL_WRITE_ATTEMPTS and self.leading:
                self._write(final, lambda ok2, err2: retry(ok2, err2, attempt + 1))

        self._write(final, retry)
        self.say(f"job {state}" + (f" (exit {fields['exit_code']})" if "exit_code" in fields else ""))

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        super().stop()

    def status(self) -> dict[str, Any]:
        return {**super().status(), "spec_hash": self.hash, "record": self.record}
