"""Cluster state for ``supervisor status``: read the records into one plain document.

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
             "topic": null, "delivery": null,              # topic: its topic, queue|broadcast,
             "running": null, "processed": null, "given_up": null,  # runs in flight, messages finished
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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..coord.base import Backend
from ..coord.errors import Compacted, CoordError
from ..coord.keys import ClusterKeys
from ..coord.records import JOB, MEMBER, TICK, RecordError, RecordKind, warn_skipped
from ..coord.types import KeyValue, direct_children_by_create
from ..runtime import rollout_store
from ..runtime.control import read_records as read_control

if TYPE_CHECKING:
    from ..config import Config, RoleSpec

SHARDED_FIELDS = ("index", "count", "epoch", "indexes", "shards", "handoff", "waiting", "stopping", "coordinator")
EXTRA_FIELDS = ("next", "waiting_for", "registered")  # a cron leader's next tick; barriers not yet
# open; the service instances its running children registered (role register:)
LEADER_FIELDS = ("leader", "token")
TOPIC_FIELDS = ("topic", "delivery", "running", "processed", "given_up")
TICK_FIELDS = ("state", "member", "token", "scheduled", "started", "finished", "exit_code")
JOB_FIELDS = ("spec_hash", "state", "member", "token", "exit_code", "finished")
RAN_STATES = ("running", "succeeded", "failed")


# --- gathering -----------------------------------------------------------------------
def gather(backend: Backend, cluster: str, config: Config | None = None) -> dict[str, Any]:
    """The status document of ``cluster`` (shape in the module docstring).

    ``config`` (an :class:`etcdvisor.config.Config`, optional) adds role types and
    configured roles/topics. Retries once if the snapshot revision was compacted
    between the reads."""
    try:
        return _gather_once(backend, ClusterKeys(cluster), config)
    except Compacted:
        return _gather_once(backend, ClusterKeys(cluster), config)


def _gather_once(backend: Backend, keys: ClusterKeys, config: Config | None) -> dict[str, Any]:
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


def _load(kind: RecordKind, kv: KeyValue) -> tuple[dict[str, Any], str | None]:
    """The record through the strict decoder, or ({}, why) for a bad one (warned once)."""
    try:
        return kind.decode(kv.value), None
    except RecordError as exc:
        warn_skipped(kind.name, kv.key, kv.mod_revision, str(exc))
        return {}, f"unreadable record: {exc}"


def _member(kv: KeyValue, prefix: str) -> dict[str, Any]:
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


LEASE_LOOKUPS = 256  # members whose lease is asked about (one request each); more: not judged
KEEPALIVE_SLACK = 3  # seconds a lease may run down before its member counts as not keeping it alive


def _lease_health(backend: Backend, members: list[dict[str, Any]]) -> None:
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


def _roles(members: list[dict[str, Any]], kvs: Sequence[KeyValue], keys: ClusterKeys,
           config: Config | None) -> dict[str, Any]:
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


def _role_type(spec: RoleSpec | None, assignments: list[dict[str, Any]], kvs: Sequence[KeyValue],
               keys: ClusterKeys, name: str) -> str | None:
    if spec is not None:
        return spec.type.value
    for assignment in assignments:
        kind = assignment.get("type")
        if isinstance(kind, str):
            return kind
    for kind, prefix in (("cron", keys.ticks(name)), ("job", keys.job(name)), ("sharded", keys.shard(name))):
        segment = prefix.rstrip("/")  # the key itself or anything below it
        if any(kv.key == segment or kv.key.startswith(segment + "/") for kv in kvs):
            return kind
    return None


def _assignment(member: str, role_status: dict[str, Any]) -> dict[str, Any]:
    entry = {"member": member, "type": role_status.get("type"), "state": role_status.get("state"),
             "failed": role_status.get("failed")}
    for field in SHARDED_FIELDS + LEADER_FIELDS + EXTRA_FIELDS + TOPIC_FIELDS:
        entry[field] = role_status.get(field)
    children = role_status.get("children")
    entry["children"] = children if isinstance(children, dict) else {}
    return entry


def _shard(kvs: Sequence[KeyValue], prefix: str) -> list[str] | None:
    found = direct_children_by_create(prefix, kvs)
    return [kv.key[len(prefix):] for kv in found] if found else None


def _alive(kvs: Sequence[KeyValue], prefix: str) -> dict[str, Any] | None:
    """Fenced sharded roles: member -> partitions its children hold ("i/N")."""
    from ..roles.handoff import BadRecord, decode_record

    found: dict[str, Any] = {}
    for kv in direct_children_by_create(prefix, kvs):
        try:
            found[kv.key[len(prefix):]] = [str(p) for p in sorted(decode_record(kv.value))]
        except BadRecord as exc:
            found[kv.key[len(prefix):]] = {"error": str(exc)}
    return found or None


def _published(kvs: Sequence[KeyValue], key: str) -> dict[str, Any] | None:
    """Fixed shards: the coordinator's published assignment."""
    from ..roles.shard_plan import decode_published

    for kv in kvs:
        if kv.key == key:
            pub = decode_published(kv.value, kv.mod_revision)
            if pub is None:
                return {"error": "malformed assignment record"}
            return {"epoch": pub.epoch, "shards": pub.shards, "members": list(pub.members),
                    "owners": {m: list(s) for m, s in pub.owners.items()}}
    return None


def _election(kvs: Sequence[KeyValue], prefix: str) -> dict[str, Any] | None:
    found = direct_children_by_create(prefix, kvs)
    if not found:
        return None
    candidates = [{"member": kv.value.decode("utf-8", "replace"), "token": kv.create_revision,
                   "lease": kv.lease or None} for kv in found]
    return {"leader": candidates[0]["member"], "token": candidates[0]["token"],
            "candidates": candidates}


def _ticks(kvs: Sequence[KeyValue], prefix: str) -> dict[str, Any] | None:
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


def _job(kvs: Sequence[KeyValue], key: str) -> dict[str, Any] | None:
    for kv in kvs:
        if kv.key == key:
            doc, error = _load(JOB, kv)
            if error:
                return {**{f: None for f in JOB_FIELDS}, "error": error}
            return {f: doc.get(f) for f in JOB_FIELDS}
    return None


def _waitgroups(kvs: Sequence[KeyValue], prefix: str) -> dict[str, Any]:
    """Each wait group's count, read as the ``wait_for:`` barrier reads it."""
    from ..recipes.counter import parse_count

    groups: dict[str, int | None] = {}
    for kv in direct_children_by_create(prefix, kvs):
        try:
            groups[kv.key[len(prefix):]] = parse_count(kv)
        except ValueError:
            groups[kv.key[len(prefix):]] = None  # not a counter (the barrier stays closed): shown as unknown
    return groups


def _topics(kvs: Sequence[KeyValue], prefix: str, config: Config | None) -> dict[str, Any]:
    """Backlog per topic from its keys (layout in :mod:`etcdvisor.recipes.topic`)."""
    from ..recipes.topic_format import topic_backlog

    by_topic: dict[str, list[KeyValue]] = {}
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
