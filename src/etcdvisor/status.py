"""Cluster state for ``supervisor status``: gather it into a plain dict, render it as text.

:func:`gather` reads everything under ``/etcdvisor/<cluster>/`` (layout in
:mod:`etcdvisor.coord.keys`) at **one store revision** (members first, then every
other prefix at that revision), so the picture is consistent: a leader shown in the
election view and in the member records is the same moment's leader. It needs only a
backend and a cluster name; a loaded config adds role types and roles that nothing
has written yet. Malformed records never fail the command: they show up with an
``"error"`` field instead.

The document (also what ``status --json`` prints; every key is always present, ``null``
when unknown or not applicable)::

    {
      "cluster": "orders",
      "revision": 1234,                      # store revision of the snapshot
      "members": [                           # in join order (create revision)
        {"member": "web-1", "host": "h1", "pid": 42, "started": 1714000000.5,
         "version": "0.1.0", "upgraded": 1714000900.1, "upgrades": 1,  # build; last in-place upgrade
         "lease": 7587..., "roles": {...}}   # roles: the record's raw role status dicts
      ],
      "roles": {                             # union of config, member records and keys
        "worker": {
          "type": "sharded",                 # config, else member records, else keys; or null
          "configured": true,                # named by the -c config
          "assignments": [                   # one per member reporting the role
            {"member": "web-1", "type": "sharded", "state": "running", "failed": null,
             "index": 0, "count": 2, "epoch": 1200,        # sharded (else null)
             "indexes": [0], "shards": null,               # sharded: join-order indexes / fixed shards
             "handoff": "fenced", "stopping": [],          # sharded: mode, own children still stopping
             "waiting": ["3/4 waits for the coordinator's start grant (3/4)"],  # hand-offs in progress
             "coordinator": null,                          # sharded, on the member at position 0:
             # {"state": "idle", "granting": true, "grants": 2,
             #  "waiting": ["web-2:3/4 waits for web-1's child (1/3)"]}  (why grants are held back)
             "leader": null, "token": null,                # singleton/cron/job (else null)
             "next": null, "waiting_for": null,      # cron leader: next tick; barriers still closed
             "registered": [{"service": "api", "id": "web-1.worker.0",   # register: instances
                             "address": "web-1:8000", "port": 8000}],    # (else null)
             "children": {"worker": {"state": "running", "pid": 43, "restarts": 0,
                                     "last_exit": null, "index": 0,
                                     "ready": true,               # probes / sd_notify / min_ready
                                     "restarts_by_reason": {"liveness": 1},  # exit, liveness, startup,
                                     # watchdog, memory, control, config, rollout
                                     "probe_failure": {"probe": "liveness", "at": 1714000000.1,
                                                       "message": "GET ...: timed out"},  # or null
                                     "notify_status": "serving"}}}  # last sd_notify STATUS=, or null
          ],
          "shard": ["web-1", "web-2"],       # roles/<role>/shard/ in join order, or null
          "alive": {"web-1": ["0/2"]},       # fenced sharded: partitions alive per member, or null
          "published": {"epoch": 1200, "shards": 64, "members": [...],
                        "owners": {"web-1": [0, 1]}},   # fixed shards' assignment, or null
          "election": {                      # roles/<role>/election/, or null
            "leader": "web-1", "token": 1201,
            "candidates": [{"member": "web-1", "token": 1201, "lease": 7587...}]},
          "ticks": {                         # roles/<role>/ticks/, or null
            "retained": 12, "missed": 1, "skipped": 0, "running": 0,
            "last": {"id": "2024-05-01T03:00:00Z", "state": "succeeded", "member": "web-1",
                     "token": 1201, "scheduled": "<ISO 8601>", "started": ..., "finished": ...,
                     "exit_code": 0}},       # the latest tick that ran (not missed/skipped)
          "job": {"spec_hash": "ab12", "state": "succeeded", "member": "web-1",
                  "token": 1201, "exit_code": 0, "finished": ...},  # roles/<role>/job, or null
          "control": {"pause": {...}},       # this role's control records (below), or null
          "rollout": {                       # rollouts/<role>: its current or last rollout, or null
            "id": "18c3...-a1b2c3", "trigger": "restart", "who": "ann@laptop", "started": ...,
            "at": "<ISO 8601>", "target": "...", "state": "running",  # running|done|failed|aborted
            "done": ["web-1:0"], "failed": null, "finished": null, "resumed": null,
            "summary": "rollout running",    # "rollout failed" while failed
            "slots": [{"slot": 0, "member": "web-2", "child": "web-2:0"}]}  # slots held now
        }
      },
      "waitgroups": {"warmup.done": 3},      # name -> count
      "control": {                           # control/<role>/<verb>: supervisor pause, restart...
        "worker": {"pause": {"verb": "pause", "role": "worker", "who": "ann@laptop",
                             "host": "laptop", "when": 1714000000.123, "at": "<ISO 8601>",
                             "id": "...", "member": null, "index": null, "revision": 1250}}
      },                                     # a role is paused while its "pause" record exists
      "topics": {                            # topics/<name>/ (and configured topics)
        "images": {"messages": 5, "oldest_id": 900, "newest_id": 1210,
                   "groups": {"thumbs": {"unacked": 2, "claimed": 1}}}
      }
    }

``unacked`` counts retained messages without the group's done marker (claimed ones
included); ``claimed`` counts live claims (being processed now).

Limits: one status reads every key of the cluster except topic payloads (read keys
only), so a cluster with very many retained cron ticks or topic messages makes a
large read; ``gather`` raises :class:`~etcdvisor.coord.errors.CoordError` when the
store does not answer.
"""

from __future__ import annotations

import signal
import textwrap
import time
from datetime import UTC, datetime
from typing import Any

from .coord.base import Backend
from .coord.errors import Compacted, CoordError
from .coord.keys import ClusterKeys
from .coord.records import JOB, MEMBER, TICK, RecordError, RecordKind, dumps, warn_skipped
from .coord.types import KeyValue, direct_children_by_create
from .runtime import rollout_store
from .runtime.control import read_records as read_control

SHARDED_FIELDS = ("index", "count", "epoch", "indexes", "shards", "handoff", "waiting", "stopping", "coordinator")
EXTRA_FIELDS = ("next", "waiting_for", "registered")  # a cron leader's next tick; barriers not yet
# open; the service instances its running children registered (role register:)
LEADER_FIELDS = ("leader", "token")
TICK_FIELDS = ("state", "member", "token", "scheduled", "started", "finished", "exit_code")
JOB_FIELDS = ("spec_hash", "state", "member", "token", "exit_code", "finished")
RAN_STATES = ("running", "succeeded", "failed")


# --- gathering -----------------------------------------------------------------------
def gather(backend: Backend, cluster: str, config=None) -> dict:
    """The status document of ``cluster`` (shape in the module docstring).

    ``config`` (an :class:`etcdvisor.config.Config`, optional) adds role types and
    configured roles/topics. Retries once if the snapshot revision was compacted
    between the reads."""
    try:
        return _gather_once(backend, ClusterKeys(cluster), config)
    except Compacted:
        return _gather_once(backend, ClusterKeys(cluster), config)


def _gather_once(backend: Backend, keys: ClusterKeys, config) -> dict:
    members_read = backend.get_prefix(keys.members)
    revision = members_read.revision
    roles_read = backend.get_prefix(keys.roles, revision=revision)
    groups_read = backend.get_prefix(keys.waitgroups, revision=revision)
    topics_read = backend.get_prefix(keys.topics, revision=revision, keys_only=True)
    control_read = backend.get_prefix(keys.control, revision=revision)
    rollouts_read = backend.get_prefix(keys.rollouts, revision=revision)
    members = [_member(kv, keys.members) for kv in direct_children_by_create(keys.members, members_read.kvs)]
    _lease_health(backend, members)
    control = read_control(control_read.kvs, keys.control, errors=True)
    roles = _roles(members, roles_read.kvs, keys, config)
    rollouts = rollout_store.decode(keys.rollouts, rollouts_read.kvs)
    for name, role in roles.items():
        role["control"] = control.get(name)  # the same records, next to the role
        record = rollouts.records.get(name)
        holds = [{"slot": h.number, "member": h.member, "child": h.child} for h in rollouts.slots.get(name, ())]
        role["rollout"] = None if record is None else {
            **record.to_json(), "summary": f"rollout {record.state}", "slots": holds}
    return {
        "cluster": keys.cluster,
        "revision": revision,
        "members": members,
        "roles": roles,
        "waitgroups": _waitgroups(groups_read.kvs, keys.waitgroups),
        "topics": _topics(topics_read.kvs, keys.topics, config),
        "control": control,
    }


def _load(kind: RecordKind, kv: KeyValue) -> tuple[dict, str | None]:
    """The record through the strict decoder, or ({}, why) for a bad one (warned once)."""
    try:
        return kind.decode(kv.value), None
    except RecordError as exc:
        warn_skipped(kind.name, kv.key, kv.mod_revision, str(exc))
        return {}, f"unreadable record: {exc}"


def _member(kv: KeyValue, prefix: str) -> dict:
    doc, error = _load(MEMBER, kv)
    roles = doc.get("roles") or {}
    entry = {"member": doc.get("member") or kv.key[len(prefix):], "host": doc.get("host"),
             "pid": doc.get("pid"), "started": doc.get("started"), "lease": kv.lease or None,
             "ttl": doc.get("ttl"), "roles": roles,
             # the build it runs and its last in-place upgrade (supervisor upgrade, SIGUSR2)
             "version": doc.get("version"), "upgraded": doc.get("upgraded"), "upgrades": doc.get("upgrades")}
    if error:
        entry["error"] = error
    return entry


WIDTH = 100  # columns of the text view
LEASE_LOOKUPS = 256  # members whose lease is asked about (one request each); more: not judged
KEEPALIVE_SLACK = 3  # seconds a lease may run down before its member counts as not keeping it alive


def _lease_health(backend: Backend, members: list[dict]) -> None:
    """``lease_expires_in`` (seconds left) and ``lease_expiring`` for each member: a member
    keeps its lease renewed to the full TTL every second, so a lease that ran down by more
    than KEEPALIVE_SLACK seconds belongs to a member that stopped (SIGKILL, paused, cut
    off): its record and children look alive until the lease expires."""
    for member in members[:LEASE_LOOKUPS]:
        lease, ttl = member.get("lease"), member.get("ttl")
        if not lease:
            continue
        try:
            left = backend.lease_ttl(lease)
        except CoordError:  # e.g. a user without lease permissions: not judged
            continue
        member["lease_expires_in"] = left if left >= 0 else 0
        if isinstance(ttl, int):
            member["lease_expiring"] = left < ttl - KEEPALIVE_SLACK


def _roles(members: list[dict], kvs, keys: ClusterKeys, config) -> dict:
    by_role: dict[str, list[KeyValue]] = {}
    for kv in kvs:
        name = kv.key[len(keys.roles):].split("/", 1)[0]
        by_role.setdefault(name, []).append(kv)
    names = list(config.roles) if config is not None else []
    for member in members:
        names += [name for name in member["roles"] if name not in names]
    names += sorted(name for name in by_role if name not in names)
    result = {}
    for name in names:
        role_kvs = by_role.get(name, [])
        spec = config.roles.get(name) if config is not None else None
        assignments = [_assignment(m["member"], m["roles"][name]) for m in members
                       if isinstance(m["roles"].get(name), dict)]
        result[name] = {
            "type": _role_type(spec, assignments, role_kvs, keys, name),
            "configured": spec is not None,
            "assignments": assignments,
            "shard": _shard(role_kvs, keys.shard(name)),
            "alive": _alive(role_kvs, keys.alive(name)),
            "published": _published(role_kvs, keys.assignment(name)),
            "election": _election(role_kvs, keys.election(name)),
            "ticks": _ticks(role_kvs, keys.ticks(name)),
            "job": _job(role_kvs, keys.job(name)),
        }
    return result


def _role_type(spec, assignments: list[dict], kvs, keys: ClusterKeys, name: str) -> str | None:
    if spec is not None:
        return spec.type.value
    for assignment in assignments:
        if isinstance(assignment.get("type"), str):
            return assignment["type"]
    for kind, prefix in (("cron", keys.ticks(name)), ("job", keys.job(name)), ("sharded", keys.shard(name))):
        segment = prefix.rstrip("/")  # the key itself or anything below it
        if any(kv.key == segment or kv.key.startswith(segment + "/") for kv in kvs):
            return kind
    return None


def _assignment(member: str, role_status: dict) -> dict:
    entry = {"member": member, "type": role_status.get("type"), "state": role_status.get("state"),
             "failed": role_status.get("failed")}
    for field in SHARDED_FIELDS + LEADER_FIELDS + EXTRA_FIELDS:
        entry[field] = role_status.get(field)
    children = role_status.get("children")
    entry["children"] = children if isinstance(children, dict) else {}
    return entry


def _shard(kvs, prefix: str) -> list[str] | None:
    found = direct_children_by_create(prefix, kvs)
    return [kv.key[len(prefix):] for kv in found] if found else None


def _alive(kvs, prefix: str) -> dict | None:
    """Fenced sharded roles: member -> partitions its children hold ("i/N")."""
    from .roles.handoff import BadRecord, decode_record

    found: dict[str, Any] = {}
    for kv in direct_children_by_create(prefix, kvs):
        try:
            found[kv.key[len(prefix):]] = [str(p) for p in sorted(decode_record(kv.value))]
        except BadRecord as exc:
            found[kv.key[len(prefix):]] = {"error": str(exc)}
    return found or None


def _published(kvs, key: str) -> dict | None:
    """Fixed shards: the coordinator's published assignment."""
    from .roles.shard_plan import decode_published

    for kv in kvs:
        if kv.key == key:
            pub = decode_published(kv.value, kv.mod_revision)
            if pub is None:
                return {"error": "malformed assignment record"}
            return {"epoch": pub.epoch, "shards": pub.shards, "members": list(pub.members),
                    "owners": {m: list(s) for m, s in pub.owners.items()}}
    return None


def _election(kvs, prefix: str) -> dict | None:
    found = direct_children_by_create(prefix, kvs)
    if not found:
        return None
    candidates = [{"member": kv.value.decode("utf-8", "replace"), "token": kv.create_revision,
                   "lease": kv.lease or None} for kv in found]
    return {"leader": candidates[0]["member"], "token": candidates[0]["token"],
            "candidates": candidates}


def _ticks(kvs, prefix: str) -> dict | None:
    found = direct_children_by_create(prefix, kvs)
    if not found:
        return None
    counts = {"missed": 0, "skipped": 0, "running": 0}
    last = None
    for kv in sorted(found, key=lambda kv: kv.key):  # tick ids are UTC ISO times: key order is time order
        doc, error = _load(TICK, kv)
        tick = {"id": kv.key[len(prefix):], **{f: doc.get(f) for f in TICK_FIELDS}}
        if error:
            tick["error"] = error
        if tick["state"] in counts:
            counts[tick["state"]] += 1
        if tick["state"] in RAN_STATES:
            last = tick
    return {"retained": len(found), **counts, "last": last}


def _job(kvs, key: str) -> dict | None:
    for kv in kvs:
        if kv.key == key:
            doc, error = _load(JOB, kv)
            if error:
                return {**{f: None for f in JOB_FIELDS}, "error": error}
            return {f: doc.get(f) for f in JOB_FIELDS}
    return None


def _waitgroups(kvs, prefix: str) -> dict:
    """Each wait group's count, read as the ``wait_for:`` barrier reads it."""
    from .recipes.counter import parse_count

    groups = {}
    for kv in direct_children_by_create(prefix, kvs):
        try:
            groups[kv.key[len(prefix):]] = parse_count(kv)
        except ValueError:
            groups[kv.key[len(prefix):]] = None  # not a counter (the barrier stays closed): shown as unknown
    return groups


def _topics(kvs, prefix: str, config) -> dict:
    """Backlog per topic from its keys (layout in :mod:`etcdvisor.recipes.topic`)."""
    from .recipes.topic_format import topic_backlog

    by_topic: dict[str, list] = {}
    for kv in kvs:
        by_topic.setdefault(kv.key[len(prefix):].partition("/")[0], []).append(kv)
    if config is not None:
        for spec in config.roles.values():
            if spec.topic:
                by_topic.setdefault(spec.topic, [])
    topics = {}
    for name in sorted(by_topic):
        found = topic_backlog(by_topic[name], f"{prefix}{name}/")
        ids = found.ids
        topics[name] = {
            "messages": len(ids), "oldest_id": ids[0] if ids else None,
            "newest_id": ids[-1] if ids else None,
            "groups": {g: {"unacked": found.unacked(g), "claimed": found.claimed.get(g, 0)}
                       for g in sorted(found.groups)},
        }
    return topics


# --- rendering -----------------------------------------------------------------------
def render_json(doc: dict) -> str:
    """What ``status --json`` prints and the dashboard's ``GET /api/status`` answers."""
    return dumps(doc, indent=2, sort_keys=True)


def render_text(doc: dict, now: float | None = None) -> str:
    """A readable multi-section view of a :func:`gather` document."""
    now = time.time() if now is None else now
    lines = [f"cluster {doc['cluster']} (revision {doc['revision']}): "
             f"{_plural(len(doc['members']), 'member')}"]
    if doc["members"]:
        rows = [[m["member"], m["host"], m["pid"], _age(m["started"], now), m.get("version") or "-",
                 f"{_age(m['upgraded'], now)} ago" if m.get("upgraded") else "-", _lease_text(m),
                 _fit(", ".join(m["roles"]) or "-", 32)] for m in doc["members"]]
        lines += [""] + _table(["MEMBER", "HOST", "PID", "UP", "VERSION", "UPGRADED", "LEASE", "ROLES"], rows)
    for name, role in doc["roles"].items():
        lines += [""] + _render_role(name, role, now)
    if doc["waitgroups"]:
        lines += ["", "wait groups:"]
        lines += _table(["NAME", "COUNT"], [[n, c] for n, c in doc["waitgroups"].items()], indent=2)
    if doc["topics"]:
        lines += ["", "topics:"]
        rows = []
        for name, topic in doc["topics"].items():
            span = f"{topic['oldest_id']}..{topic['newest_id']}" if topic["messages"] else "-"
            groups = topic["groups"] or {"-": {"unacked": None, "claimed": None}}
            for group, counts in groups.items():
                rows.append([name, topic["messages"], span, group, counts["unacked"], counts["claimed"]])
                name, span = "", ""
        lines += _table(["TOPIC", "MESSAGES", "IDS", "GROUP", "UNACKED", "CLAIMED"], rows, indent=2)
    if doc.get("control"):
        lines += ["", "control (supervisor pause/resume/restart/reset/trigger):"]
        rows = []
        for role, verbs in doc["control"].items():
            for verb, rec in sorted(verbs.items(), key=lambda item: item[1].get("when") or 0):
                scope = ", ".join(f"{k} {rec[k]}" for k in ("member", "index") if rec.get(k) is not None)
                rows.append([role, verb + (" (in effect)" if verb == "pause" else ""), rec.get("who"),
                             rec.get("at"), _age(rec.get("when"), now), scope or "-"])
        lines += _table(["ROLE", "VERB", "WHO", "WHEN", "AGO", "SCOPE"], rows, indent=2)
    return "\n".join(lines) + "\n"


def _lease_text(member: dict) -> str:
    if member.get("lease_expiring"):
        return f"expiring in {member.get('lease_expires_in')}s (no keepalive)"
    return "ok" if "lease_expires_in" in member else "-"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _wrap(text: str, first: str, rest: str = "      ") -> list[str]:
    """``text`` as lines of at most WIDTH columns, after ``first`` (then ``rest``)."""
    return textwrap.wrap(" ".join(str(text).split()), WIDTH, initial_indent=first, subsequent_indent=rest) or [first]


def _render_role(name: str, role: dict, now: float) -> list[str]:
    kind = role["type"] or "unknown type"
    pause = (role.get("control") or {}).get("pause")
    lines = [f"role {name} ({kind})"]
    if pause:
        lines[0] += f": paused by {pause.get('who')} {_age(pause.get('when'), now)} ago"
    if role["election"]:
        election = role["election"]
        lines.append(f"  election: leader {election['leader']}, token {election['token']}, "
                     f"{_plural(len(election['candidates']), 'candidate')}")
    if role["shard"]:
        lines.append(f"  shard members (join order): {', '.join(role['shard'])}")
    if role["assignments"]:
        leader_like = role["type"] in ("singleton", "cron", "job")
        headers = ["MEMBER", "STATE"] + (["LEADER", "TOKEN"] if leader_like else ["INDEX", "COUNT", "EPOCH"])
        rows, below = [], {}
        for a in role["assignments"]:
            fields = [a["leader"], a["token"]] if leader_like else [_indexes(a), a["count"], a["epoch"]]
            state = _state(role, a, pause)
            if a.get("waiting_for"):
                state += f" (waiting for {', '.join(a['waiting_for'])})"
            children = _children(a["children"])
            rows.append([a["member"], state] + fields + [children])
            below[a["member"]] = children
        table = _table(headers + ["CHILDREN"], rows, indent=2)
        if max(len(line) for line in table) > WIDTH:  # children on lines of their own
            table = _table(headers, [row[:-1] for row in rows], indent=2)
            by_member = dict(zip([a["member"] for a in role["assignments"]], table[1:]))
            table = table[:1]
            for member, line in by_member.items():
                table.append(line)
                for child in below[member].split("; "):
                    table += _wrap(child, "      ", "        ")
        lines += table
        for a in role["assignments"]:
            if a["failed"]:
                lines += _wrap(f"failed on {a['member']}: {a['failed']}", "  ", "    ")
            lines += _child_health(a)
            for inst in a.get("registered") or ():
                lines.append(f"  registered: {inst.get('service')} {inst.get('id')} at {inst.get('address')}")
    elif not (role["ticks"] or role["job"]):
        lines.append("  no member runs it")
    lines += _render_handoff(role)
    lines += _render_rollout(name, role.get("rollout"), now)
    if role["ticks"]:
        ticks, last = role["ticks"], role["ticks"]["last"]
        ran = "never" if last is None else (
            f"tick {last['id']} {last['state']} on {last['member']}"
            + (f", exit {last['exit_code']}" if last["exit_code"] is not None else "")
            + (f", finished {_when(last['finished'])}" if last["finished"] is not None else ""))
        lines.append(f"  last run: {ran}")
        upcoming = [a["next"] for a in role["assignments"] if a.get("leader") and a.get("next")]
        if upcoming:
            lines.append(f"  next run: {upcoming[0]}")
        lines.append(f"  retained ticks: {ticks['retained']} (missed {ticks['missed']}, "
                     f"skipped {ticks['skipped']}, running {ticks['running']})")
    if role["job"]:
        job = role["job"]
        text = f"  job: {job['state']} on {job['member']}, token {job['token']}"
        if job["exit_code"] is not None:
            text += f", exit {job['exit_code']}"
        if job["finished"] is not None:
            text += f", finished {_when(job['finished'])}"
        lines.append(text + f", spec {job['spec_hash']}")
    elif role["type"] == "job":
        lines.append("  job: no record (not run yet, or rerun requested)")
    return lines


def _state(role: dict, a: dict, pause: dict | None) -> str:
    """What a member's runner of the role is doing, as an operator names it."""
    if a["failed"]:
        return "failed"
    if pause:
        return "paused"
    running = any(isinstance(c, dict) and c.get("state") == "running" for c in (a.get("children") or {}).values())
    if role["type"] == "singleton" and not a.get("leader") and running:
        return "standby"  # a follower's standby child (LEADER=0) while another member leads
    return str(a["state"])


def _render_rollout(name: str, rollout: dict | None, now: float) -> list[str]:
    if not rollout:
        return []
    state = "rollout failed" if rollout["state"] == "failed" else f"rollout {rollout['state']}"
    line = (f"  {state}: {rollout['id']} ({rollout['trigger']} by {rollout['who']}, "
            f"{_age(rollout['started'], now)} ago), {len(rollout['done'])} children restarted")
    if rollout["slots"]:
        line += "; slots held by " + ", ".join(h["child"] for h in rollout["slots"])
    lines = [line]
    if rollout.get("failed"):
        lines.append(f"  rollout failed: {rollout['failed']['reason']} "
                     f"(supervisor rollout resume|abort {name})")
    return lines


def _indexes(a: dict) -> str | None:
    listed = a.get("shards") if a.get("shards") is not None else a.get("indexes")
    if isinstance(listed, list):
        return _ranges(listed) or "-"
    return a.get("index")


def _ranges(values: list) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (4096 shards stay readable)."""
    nums = sorted(v for v in values if isinstance(v, int))
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


def _render_handoff(role: dict) -> list[str]:
    """Fenced hand-offs in progress: who waits for which member's child or lease."""
    lines = []
    if role.get("published") and not role["published"].get("error"):
        pub = role["published"]
        lines.append(f"  published assignment (EPOCH {pub['epoch']}, {pub['shards']} shards): "
                     + "; ".join(f"{m}: {_ranges(s)}" for m, s in pub["owners"].items()))
    for a in role["assignments"]:
        coordinator = a.get("coordinator") if isinstance(a.get("coordinator"), dict) else {}
        for wait in (coordinator.get("waiting") or [])[:10]:
            lines.append(f"  hand-off (coordinator {a['member']}): {wait}")
        for wait in (a.get("waiting") or [])[:10]:
            lines.append(f"  hand-off on {a['member']}: {wait}")
        if a.get("stopping"):
            lines.append(f"  hand-off on {a['member']}: stopping {', '.join(a['stopping'])}")
    return lines


def _child_health(a: dict) -> list[str]:
    """One line per child with a last probe failure or an sd_notify STATUS= text."""
    lines = []
    for key, child in (a.get("children") or {}).items():
        if not isinstance(child, dict):
            continue
        failure = child.get("probe_failure")
        name = child.get("name") or key
        if isinstance(failure, dict):
            lines.append(f"  last probe failure on {a['member']} {name}: {failure.get('probe')} at "
                         f"{_when(failure.get('at'))}: {failure.get('message')}")
        if child.get("notify_status"):
            lines.append(f"  STATUS= on {a['member']} {name}: {child['notify_status']}")
    return lines


def _children(children: dict) -> str:
    parts = []
    for key, child in children.items():
        if not isinstance(child, dict):
            continue
        text = f"{child.get('name') or key}: {child.get('state')}"
        if child.get("pid"):
            text += f" pid {child['pid']}"
        if child.get("ready") is not None:
            text += " ready" if child["ready"] else " not ready"
        by_reason = child.get("restarts_by_reason")
        if isinstance(by_reason, dict) and by_reason:
            total = sum(n for n in by_reason.values() if isinstance(n, int))
            text += f", {total} restarts (" + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())) + ")"
        elif child.get("restarts"):
            text += f", {child['restarts']} restarts"
        if child.get("last_exit") is not None:
            text += f", last exit {_exit_text(child['last_exit'])}"
        parts.append(text)
    return "; ".join(parts) or "-"


def _exit_text(code) -> str:
    """-15 -> "signal SIGTERM" (as the log says), 3 -> "status 3"."""
    if isinstance(code, int) and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _table(headers: list[str], rows: list[list], indent: int = 0) -> list[str]:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return [pad + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _age(started, now: float) -> str:
    if not isinstance(started, (int, float)):
        return "-"
    seconds = max(0, int(now - started))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _when(value) -> str:
    """Unix seconds as UTC ISO time; anything else as given."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)
