"""Each role runner's decision state across an in-place upgrade (``runtime/upgrade.py``).

:func:`export_state` turns a runner's state into plain data before the exec;
:func:`restore_state` puts it into a freshly built runner of the new code *before* its
``start()``; :func:`start_restored` then starts it without campaigning or joining anew
where the store still holds what the old image held on the same lease:

* sharded: the sequence key (``roles/<r>/shard/<member>``, on the lease) keeps its create
  revision, so INDEX/COUNT do not change; the settled membership (EPOCH), the children
  in use and the alive record are restored, so ``desired`` asks for the very same
  children (same env) at once. Fenced hand-off: the children still being stopped, the
  ones approved by a grant and the revision each part was announced at (``since``, what
  the coordinator's grant is checked against) are carried too; the grants themselves are
  on the kept lease and are read again by the grant watch, and the coordinator restarts
  from the alive records (waiting out the kill bound before it grants anything);
* singleton, cron (leaders): the election key is ``<prefix><lease hex>``; re-entering with
  the same lease finds it in place with the same create revision, i.e. the same
  ``LEADER_TOKEN``. If the key is gone or its token differs, leadership is *not* resumed
  (the runner campaigns as at a normal start). A cron leader keeps its cursor and its runs
  (one per claimed tick): no tick is claimed twice, and ticks due during the exec are run
  when the loop turns again (catch-up);
* topic: the messages claimed (claims on the lease), running or waiting, and the counters;
  a claim on our lease that the old image took but never saw (the exec cut the fetch
  thread short) is released so that the group gets it again.

A state this code cannot read raises :class:`ResumeError` (one line); the caller stops
the children and exits non-zero.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..coord import types as t
from ..process.spawn import ChildVars
from ..recipes.election import LeadershipWatch
from ..recipes.sequence import Info
from ..recipes.topic_format import Message
from .assignment import Part
from .base import RoleRunner
from .handoff import Child

log = logging.getLogger("etcdvisor")


class ResumeError(Exception):
    """A role's hand-over state cannot be used; one line."""


def export_state(runner: RoleRunner) -> dict[str, Any]:
    kind = runner.spec.type.value
    exporter = _EXPORTERS.get(kind)
    doc: dict[str, Any] = {"type": kind, "failed": runner.failed_reason}
    if exporter is not None and not runner.failed_reason:
        doc.update(exporter(runner))
    return doc


def restore_state(runner: RoleRunner, doc: dict[str, Any]) -> None:
    kind = runner.spec.type.value
    if doc.get("type") != kind:
        raise ResumeError(f"role {runner.name}: handed over as a {doc.get('type')!r} role, configured as {kind!r}")
    restorer = _RESTORERS.get(kind)
    if restorer is None or doc.get("failed"):
        return
    try:
        restorer(runner, doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(f"role {runner.name}: unreadable hand-over state: {type(exc).__name__}: {exc}") from None
    runner._resumed = doc  # type: ignore[attr-defined]  # read by start_restored


def start_restored(runner: RoleRunner) -> None:
    """``runner.start()``, resuming what the store still holds for a restored runner."""
    doc = getattr(runner, "_resumed", None)
    starter = _STARTERS.get(runner.spec.type.value) if doc is not None else None
    if starter is None or doc is None:
        runner.start()
    else:
        starter(runner, doc)


# --- sharded ----------------------------------------------------------------------------------
def _child(c: Child) -> dict[str, Any]:
    return {"key": c.key, "parts": sorted([p.index, p.count] for p in c.parts),
            "vars": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(c.vars).items()}}


_VAR_FIELDS = {item.name for item in dataclasses.fields(ChildVars)}


def _unchild(d: dict[str, Any]) -> Child:
    given = d["vars"]
    if not isinstance(given, dict):
        raise TypeError(f"child {d.get('key')!r}: variables are not an object")
    if not set(given) <= _VAR_FIELDS:
        raise ValueError(f"child {d.get('key')!r}: unknown variables {sorted(set(given) - _VAR_FIELDS)}")
    fields: dict[str, Any] = {k: tuple(int(x) for x in v) if k == "shards" and v is not None else v
                              for k, v in given.items()}
    child_vars = ChildVars(**fields)
    return Child(str(d["key"]), frozenset(Part(int(i), int(n)) for i, n in d["parts"]), child_vars)


def _info(info: Info | None) -> list[Any] | None:
    return None if info is None else [info.index, info.count, info.epoch, list(info.members)]


def _uninfo(d: list[Any] | None) -> Info | None:
    return None if d is None else Info(int(d[0]), int(d[1]), int(d[2]), tuple(str(m) for m in d[3]))


def _export_sharded(r: Any) -> dict[str, Any]:
    return {"phase": r.phase.value, "applied": _info(r.applied), "latest": _info(r.latest),
            "running": [_child(c) for c in r.running.values()],
            "target": [_child(c) for c in r.target.values()],
            "live": sorted(r.live),
            "record": None if r.record is None else sorted([p.index, p.count] for p in r.record),
            "record_rev": r.record_rev,
            # fenced hand-off (the coordinator protocol): children still being stopped stay in
            # the alive record until reaped; a child approved by the grant waits for a fresh
            # keepalive again; "since" (part -> revision that announced it) is what a grant is
            # checked against, without it a part already announced would never be covered
            "stopping": [_child(c) for c in r.stopping.values()],
            "approved": [_child(c) for c, _ in r.approved.values()],
            "since": sorted([p.index, p.count, rev] for p, rev in r.since.items())}


def _restore_sharded(r: Any, d: dict[str, Any]) -> None:
    from .sharded import Phase

    r.applied = _uninfo(d["applied"])
    latest = _uninfo(d["latest"])
    if latest is not None:
        r.latest, r.latest_at = latest, r.ctx.clock()
    r.running = {c.key: c for c in map(_unchild, d["running"])}
    r.target = {c.key: c for c in map(_unchild, d["target"])}
    r.live = set(map(str, d["live"]))
    r.record = None if d["record"] is None else frozenset(Part(int(i), int(n)) for i, n in d["record"])
    r.record_rev = int(d["record_rev"])
    r.stopping = {c.key: c for c in map(_unchild, d.get("stopping", ()))}
    now = r.ctx.clock()  # an approved child starts after a keepalive sent by the new image
    r.approved = {c.key: (c, now) for c in map(_unchild, d.get("approved", ()))}
    if "since" in d:
        r.since = {Part(int(i), int(n)): int(rev) for i, n, rev in d["since"]}
    else:  # handed over by an image that did not carry it: announce the record again
        r.record, r.since = None, {}
    r.phase = Phase(d["phase"])  # restored by the new image: its first state, not a transition


# --- leaders (singleton, cron) ----------------------------------------------------------------
def _export_leader(r: Any) -> dict[str, Any]:
    return {"state": r.state.value, "token": r.token, "leader_member": r.leader_member,
            "stepping_down": r.stepping_down}


def _restore_leader(r: Any, d: dict[str, Any]) -> None:
    r.leader_member = d["leader_member"]
    if d["state"] == "leader" and d["stepping_down"] is None and int(d["token"]) > 0:
        r._handed_token = int(d["token"])


def _start_leader(r: Any, d: dict[str, Any], on_resumed: Any = None) -> None:
    """Re-enter the election on the same lease; lead again if the token is unchanged."""
    from ..recipes.election import Election
    from .singleton import LeaderState

    token = getattr(r, "_handed_token", 0)
    if not token:
        r.start()
        return
    r.election = Election(r.ctx.backend, r.ctx.keys.election(r.name), r.ctx.session, r.ctx.member_id,
                          name=f"{r.name}:election")
    entry = r.election._enter()  # idempotent for the same lease: same key, same create revision
    if entry.token != token or not r.election._still_ours():
        log.warning("role %s: election key changed across the upgrade (token %d, now %d): campaigning",
                    r.name, token, entry.token)
        r._campaign()
        _start_extra(r)
        return
    r.state, r.token = LeaderState.LEADER, token
    r.term += 1
    r.leader_member = r.ctx.member_id
    r._watch = LeadershipWatch(r.election, functools.partial(r._on_deposed, r.term)).start()
    if on_resumed is not None:
        on_resumed(r, d)
    log.info("role %s: leadership resumed after the upgrade (LEADER_TOKEN=%d)", r.name, token,
             extra={"role": r.name})
    _start_extra(r)


def _start_extra(r: Any) -> None:
    """What a runner's start() does besides campaigning (the singleton's standby observer)."""
    if r.spec.type.value == "singleton" and r.spec.standby and r.election is not None:
        r._observer = r.election.observe(r._on_topology)


def _export_singleton(r: Any) -> dict[str, Any]:
    return {**_export_leader(r), "standby_on": r._standby_on}


def _export_cron(r: Any) -> dict[str, Any]:
    runs = {tick_id: {"tick": run.tick.isoformat(), "manual": run.manual, "last_exit": run.last_exit}
            for tick_id, run in r.runs.items()}
    return {**_export_leader(r), "cursor": r.cursor.isoformat() if r.cursor is not None else None,
            "runs": runs, "missed": r.missed, "last_outcome": r.last_outcome, "triggers": r.triggers,
            "retries_ended": sorted(r._retries_ended)}


def _restore_cron(r: Any, d: dict[str, Any]) -> None:
    _restore_leader(r, d)
    r.missed = int(d["missed"])
    r.last_outcome = d["last_outcome"]
    r.triggers = dict(d["triggers"])


def _cron_resumed(r: Any, d: dict[str, Any]) -> None:
    from .cron import _Run

    r.cursor = datetime.fromisoformat(d["cursor"]) if d["cursor"] is not None else None
    r._retries_ended = set(d["retries_ended"])
    for tick_id, run in d["runs"].items():
        tick = datetime.fromisoformat(run["tick"])
        # the same typed variables CronRunner._run gave the run (its spec digest must match)
        run_vars = dataclasses.replace(r.leader_vars(), scheduled_time=r.schedule.format_tick(tick),
                                       manual=bool(run["manual"]))
        spec = r.ctx.child_spec(r.spec, f"{r.name}@{tick_id}", run_vars)
        r.runs[tick_id] = _Run(tick, spec, bool(run["manual"]), run["last_exit"])
    if r.cursor is None:
        r._resume()  # it was reading its tick records: read them again


# --- topic ---------------------------------------------------------------------------------------
def _message(m: Message) -> dict[str, Any]:
    return {"id": m.id, "data": base64.b64encode(m.data).decode("ascii"), "published_at": m.published_at,
            "seq": m.seq}


def _export_topic(r: Any) -> dict[str, Any]:
    runs = {key: {"message": _message(run.message), "attempt": run.attempt, "retry_at": run.retry_at,
                  "slot": run.slot, "delivered_at": run.delivered_at, "may_give_back": run.may_give_back}
            for key, run in r.runs.items()}
    return {"runs": runs, "waiting": list(r._waiting), "processed": r.processed, "given_up": r.given_up,
            "run_time": r._run_time, "ahead": r._ahead,
            "acks": [_message(m) for m in r._acks],
            "next_seq": _next_seq(r.source) if not r.queue else None}


def _next_seq(source: Any) -> int | None:
    """Where a broadcast subscription stands: the first message it fetched but did not
    hand out yet, else the next it would fetch."""
    buffered = list(getattr(source, "_buffer", ()))
    if buffered and buffered[0].seq:
        return int(buffered[0].seq)
    return getattr(source, "_next_seq", None)


def _unmessage(d: dict[str, Any]) -> Message:
    return Message(int(d["id"]), base64.b64decode(d["data"]), float(d["published_at"]), int(d["seq"]))


def _restore_topic(r: Any, d: dict[str, Any]) -> None:
    from .topic import _Run

    for key, run in d["runs"].items():
        r.runs[str(key)] = _Run(_unmessage(run["message"]), attempt=int(run["attempt"]), retry_at=run["retry_at"],
                                slot=bool(run["slot"]), delivered_at=float(run["delivered_at"]),
                                may_give_back=bool(run["may_give_back"]))
    r._waiting = collections.deque(k for k in d["waiting"] if k in r.runs)
    r.processed, r.given_up = int(d["processed"]), int(d["given_up"])
    r._run_time, r._ahead = d["run_time"], bool(d["ahead"])
    r._acks = [_unmessage(m) for m in d["acks"]]
    r._held = len(r.runs) + len(r._acks)  # claims still held: the fetcher claims only the rest


def _start_topic(r: Any, d: dict[str, Any]) -> None:
    if not r.queue:
        _start_broadcast(r)
        return
    r.start()
    if r.source is None:
        return
    lease = r.ctx.session.lease_id
    for run in r.runs.values():
        r.source._in_flight[run.message.id] = lease
    for message in r._acks:
        r.source._in_flight[message.id] = lease
    if r._acks:
        r._queue_ack_effect()
    known = {run.message.id for run in r.runs.values()} | {m.id for m in r._acks}
    prefix = r.source._claims_prefix
    stray = []
    for kv in r.ctx.backend.get_prefix(prefix).kvs:
        tail = kv.key[len(prefix):]
        if kv.lease == lease and tail.isdigit() and int(tail) not in known:
            stray.append(kv.key)
    for key in stray:  # claimed by the old image's fetcher, never seen by its loop
        r.ctx.backend.txn([t.Compare(key, "lease", "=", lease)], [t.Delete(key)])
    if stray:
        log.info("role %s: released %d message claim(s) the upgrade cut short", r.name, len(stray),
                 extra={"role": r.name})


def _start_broadcast(r: Any) -> None:
    """Subscribe after the newest message the old image's loop had (running, waiting or
    done): the ones in flight are restored, none is delivered twice, none skipped
    (the fetch thread hands messages over in id order)."""
    import threading

    from ..recipes.topic_subscribe import Subscription

    cursor = r._broadcast_cursor() or 0
    after = max([cursor, *(run.message.id for run in r.runs.values())])
    handed = r._resumed.get("next_seq")
    if after or not handed:
        r.source = r.topic.subscribe(after or None)
    else:  # nothing delivered yet: continue where the old subscription stood
        r.source = Subscription(r.topic, next_seq=int(handed), after_id=0, watch_from=0)
    threading.Thread(target=r._fetch_loop, daemon=True, name=f"topic:{r.name}").start()


Starter = Callable[[Any, dict[str, Any]], None]
_EXPORTERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "sharded": _export_sharded, "singleton": _export_singleton, "cron": _export_cron, "topic": _export_topic}
_RESTORERS: dict[str, Starter] = {
    "sharded": _restore_sharded, "singleton": _restore_leader, "cron": _restore_cron, "topic": _restore_topic}
_STARTERS: dict[str, Starter] = {
    "singleton": _start_leader, "cron": functools.partial(_start_leader, on_resumed=_cron_resumed),
    "topic": _start_topic}
