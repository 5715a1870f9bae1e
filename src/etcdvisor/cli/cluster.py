"""What a cluster knows, checked before a verb acts on it: shared by the operator and
control verbs and by the dashboard's actions (:mod:`etcdvisor.dashboard`).

Errors are one line: a cluster with nothing under its prefix is a :class:`Failure`
(exit 1, naming the clusters that exist); a role nobody knows, or a verb that does
not fit the role, is a :class:`UsageError` (exit 2).
"""

from __future__ import annotations

from typing import Any

from .kit import CLUSTER_NAME, Failure, Target, UsageError, check_name


def existing_clusters(backend: Any) -> list[str]:
    """Names of the clusters that have any key under ``/etcdvisor/`` (not ``_shared``,
    the global config scope: no cluster name starts with ``_``)."""
    from ..coord.keys import ROOT

    names = set()
    for kv in backend.get_prefix(ROOT, keys_only=True).kvs:
        names.add(kv.key[len(ROOT):].split("/", 1)[0])
    return sorted(name for name in names if CLUSTER_NAME.fullmatch(name))


def require_cluster(target: Target) -> None:
    """Failure unless the cluster has at least one live member."""
    from ..coord.keys import ROOT

    if target.backend.get_prefix(target.keys.members, keys_only=True).kvs:
        return
    others = [name for name in existing_clusters(target.backend) if name != target.cluster]
    known = ", ".join(others) if others else "none"
    raise Failure(f"cluster {target.cluster!r} has no members at {target.url} "
                  f"(clusters under {ROOT}: {known})")


def require_known_cluster(target: Target) -> None:
    """Failure unless anything at all is stored under the cluster's prefix (a control
    record may be written before the members start, e.g. pause before a deploy)."""
    from ..coord.keys import ROOT

    if target.backend.get_prefix(target.keys.base, keys_only=True).kvs:
        return
    known = ", ".join(existing_clusters(target.backend)) or "none"
    raise Failure(f"no cluster {target.cluster!r} at {target.url} (clusters under {ROOT}: {known})")


def member_records(target: Target) -> list[tuple[str, dict[str, Any]]]:
    """(key, record) of every live member whose record decodes (a bad record: skipped,
    one warning naming its key)."""
    from ..coord.records import MEMBER

    found = []
    for kv in target.backend.get_prefix(target.keys.members).kvs:
        record = MEMBER.read(kv)
        if record is not None:
            found.append((kv.key, record))
    return found


def reported_roles(target: Target) -> dict[str, str | None]:
    """role -> type, from the config if given, else from live member records and
    the role keys in the store (type None when only keys say the role exists)."""
    if target.config is not None:
        return {name: spec.type.value for name, spec in target.config.roles.items()}
    roles: dict[str, str | None] = {}
    for _key, doc in member_records(target):
        for name, status in doc["roles"].items():
            kind = status.get("type")
            roles[name] = roles.get(name) or (kind if isinstance(kind, str) else None)
    prefix = target.keys.roles
    for kv in target.backend.get_prefix(prefix, keys_only=True).kvs:
        roles.setdefault(kv.key[len(prefix):].split("/", 1)[0], None)
    return roles


def require_role(target: Target, role: str) -> str | None:
    """The role's type; UsageError naming the known roles if nobody knows it."""
    check_name("role", role)
    roles = reported_roles(target)
    if role not in roles:
        where = target.config.source_path if target.config is not None else f"cluster {target.cluster}"
        raise UsageError(f"no role {role!r} in {where} (roles: {', '.join(sorted(roles)) or 'none'})")
    return roles[role]


def role_count(target: Target, role: str) -> int | None:
    """The sharded role's COUNT as live members report it (None: nobody reports one)."""
    counts = set()
    for _key, record in member_records(target):
        status = record.get("roles", {}).get(role)
        if isinstance(status, dict) and isinstance(status.get("count"), int) and status["count"] > 0:
            counts.add(status["count"])
    return max(counts) if counts else None  # during a reshard: the larger, not a false refusal


def issue_control(target: Target, verb: str, role: str, *, member: str | None = None,
                  index: int | None = None, who: str | None = None) -> tuple[dict[str, Any], int]:
    """Check and write one control record (what ``supervisor VERB ROLE`` and the
    dashboard's ``POST /api/roles/ROLE/VERB`` do): UsageError (one line) for a role
    nobody knows, a verb that does not fit the role, a bad ``member``/``index``;
    ``who`` overrides the record's ``user@host``. Returns (record, revision)."""
    from ..runtime import control

    kind = require_role(target, role)
    if verb == control.TRIGGER and kind not in ("cron", None):
        raise UsageError(f"role {role} is a {kind} role; trigger applies to cron roles only")
    if index is not None and kind not in ("sharded", None):
        raise UsageError(f"role {role} is a {kind} role; --index applies to sharded roles only")
    if index is not None and index < 0:
        raise UsageError("--index must be >= 0")
    if index is not None:
        count = role_count(target, role)
        if count is not None and index >= count:
            raise UsageError(f"role {role} has COUNT={count}: --index {index} names no child (0..{count - 1})")
    if member is not None:
        check_name("member", member)
        if target.backend.get(target.keys.member(member)) is None:
            raise UsageError(f"no live member {member!r} in cluster {target.cluster}")
    record = control.make_record(verb, role, member=member, index=index, who=who)
    return record, control.issue(target.backend, target.keys, record)
