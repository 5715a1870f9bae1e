"""Semantic checks on a schema-valid document, and construction of the model.

Subtrees that already failed the schema are skipped (their shape cannot be
trusted); everything else is checked so that ``validate`` can list as many
problems as possible in one go. Checks here: endpoint URLs, TLS/endpoint
agreement, member id defaults, role names, and the ``after`` graph (unknown
roles, self references, roles that never complete, cycles). Per-role checks
are in :mod:`.roles`.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from typing import Any

from ..coord.errors import InvalidURL
from ..coord.url import TLSOptions, parse_url
from .durations import parse_duration
from .errors import Document, KeyPath, Problems, unknown_role
from .model import Config, EtcdKind, EtcdSettings, MemberSettings, RestartPolicy, RoleSpec, RoleType, _frozen_map
from .ops import ops_settings
from .roles import build_role
from .wiring import check_wiring

DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)
DEFAULT_STATE_DIR = ".etcdvisor"
DEFAULT_TTL = 10


def build_config(document: Document, *, source_path: str, base_dir: str, problems: Problems,
                 default_member_id: str | None = None) -> Config | None:
    """Return the Config, or None if problems were recorded (by any stage)."""
    member = None
    if not problems.has_under(("member",)):
        member = _member(document.get("member", {}), base_dir, default_member_id)
    etcd = None
    if not problems.has_under(("etcd",)):
        etcd = _etcd(document.get("etcd", {}), base_dir, member, problems)
    roles: dict[str, RoleSpec | None] = {}
    raw_roles = document.get("roles", {}) if isinstance(document.get("roles"), dict) else {}
    ttl = member.ttl if member is not None else None
    listed: dict[str, dict[str, list[str]]] = {}  # role -> after/needs names, where the schema passed
    for name, raw in raw_roles.items():
        # a role that failed the schema stays in the dict as None so that
        # references to it are not reported as unknown
        roles[name] = None
        if not problems.has_under(("roles", name)):
            listed[name] = {key: list(raw.get(key, ())) for key in ("after", "needs")}
            roles[name] = build_role(name, raw, ttl=ttl, base_dir=base_dir, problems=problems)
    # references are checked from the (schema-valid) lists, also of a role that failed a
    # per-role check, so that validate reports them in the same run
    _check_after(roles, listed, problems)
    _check_needs(roles, listed, problems)
    warnings = check_wiring(roles, problems, source_path, document.get("config_layout", "etcdvisor"))
    http, log = ops_settings(document, problems, base_dir)
    if problems:
        return None
    # each is None only when it had problems
    assert etcd is not None and member is not None and None not in roles.values()
    built = {name: spec for name, spec in roles.items() if spec is not None}
    return Config(source_path=source_path, cluster=document["cluster"], etcd=etcd, member=member,
                  roles=_frozen_map(built), config_layout=document.get("config_layout", "etcdvisor"),
                  warnings=tuple(warnings), http=http, log=log)


def _member(raw: Document, base_dir: str, default_member_id: str | None) -> MemberSettings:
    member_id, generated = raw.get("id"), False
    if member_id is None:
        member_id, generated = default_member_id or generate_member_id(), True
    state_dir = _absolute_path(raw.get("state_dir", DEFAULT_STATE_DIR), base_dir)  # schema: not empty
    return MemberSettings(id=member_id, ttl=raw.get("ttl", DEFAULT_TTL), state_dir=state_dir,
                          id_generated=generated)


def generate_member_id() -> str:
    """Host name (made safe for keys) plus a short random suffix: ``web-1-3f9a2c``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:100].lstrip("-_.")
    return f"{host or 'member'}-{secrets.token_hex(3)}"


def _etcd(raw: Document, base_dir: str, member: MemberSettings | None, problems: Problems) -> EtcdSettings | None:
    path = ("etcd",)
    errors_before = len(problems)
    kind, endpoints, memory_name = _endpoints(raw.get("endpoints", list(DEFAULT_ENDPOINTS)), problems)
    tls = None
    if "tls" in raw:
        tls_raw = raw["tls"]
        tls = TLSOptions(
            ca=_absolute(tls_raw.get("ca"), base_dir), cert=_absolute(tls_raw.get("cert"), base_dir),
            key=_absolute(tls_raw.get("key"), base_dir),
            insecure_skip_verify=tls_raw.get("insecure_skip_verify", False),
        )
        if kind is EtcdKind.ETCD and endpoints and not endpoints[0].startswith("https://"):
            source = problems.labels.get(path + ("endpoints",))
            which = f"the endpoints (from {source})" if source else "the endpoints"
            problems.add(path + ("tls",), f"TLS settings are given but {which} use http:// "
                         "(write https:// endpoints, or remove tls)")
    if "password_file" in raw and "password_env" in raw:
        problems.add(path + ("password_env",), "give password_file or password_env, not both")
    timeout = 5.0
    if "timeout" in raw:
        try:
            timeout = parse_duration(raw["timeout"])
        except ValueError as exc:
            problems.add(path + ("timeout",), str(exc))
        else:
            if timeout <= 0:
                problems.add(path + ("timeout",), "must be greater than zero")
    data_dir = None
    if kind is EtcdKind.EMBEDDED:
        default_dir = os.path.join(member.state_dir, "etcd") if member else None
        data_dir = _absolute(raw.get("data_dir"), base_dir) or default_dir
    elif "data_dir" in raw and not _from_environment(problems, path + ("endpoints",)):
        problems.add(path + ("data_dir",), "only applies with endpoints: embedded")
    if len(problems) != errors_before:
        return None
    return EtcdSettings(
        kind=kind, endpoints=endpoints, memory_name=memory_name, tls=tls, username=raw.get("username"),
        password_file=_absolute(raw.get("password_file"), base_dir), password_env=raw.get("password_env"),
        timeout=timeout, data_dir=data_dir,
    )


def _endpoints(value: Any, problems: Problems) -> tuple[EtcdKind, tuple[str, ...], str | None]:
    """Return ``(kind, endpoints, memory_name)`` of ``endpoints:`` (a YAML value, schema-checked);
    problems are recorded."""
    path = ("etcd", "endpoints")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # [embedded] and [memory://x] mean the same as the bare string
    if isinstance(value, str):
        text = value.strip()
        if text == "embedded":
            return EtcdKind.EMBEDDED, (), None
        if text == "mem:" or text.startswith("memory://"):
            try:
                spec = parse_url(text)
            except InvalidURL as exc:
                problems.add(path, str(exc))
                return EtcdKind.MEMORY, (), None
            return EtcdKind.MEMORY, (spec.url,), spec.memory_name
    parts = value if isinstance(value, list) else value.split(",")
    for part in parts:
        special = part.strip()
        if special == "embedded" or special.startswith(("memory://", "mem:")):
            problems.add(path, f"{special!r} cannot be combined with other endpoints")
            return EtcdKind.ETCD, (), None
    try:
        for part in parts:  # one at a time, so that the message quotes the bad one
            parse_url(part.strip())
        spec = parse_url([p.strip() for p in parts])
    except InvalidURL as exc:
        problems.add(path, str(exc))
        return EtcdKind.ETCD, (), None
    return EtcdKind.ETCD, tuple(str(e) for e in spec.endpoints), None


def _from_environment(problems: Problems, path: KeyPath) -> bool:
    return path in problems.labels


def _absolute(value: str | None, base_dir: str) -> str | None:
    if not value:
        return None
    return _absolute_path(value, base_dir)


def _absolute_path(value: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _check_after(roles: dict[str, RoleSpec | None], listed: dict[str, dict[str, list[str]]],
                 problems: Problems) -> None:
    """Every ``after`` entry names another role that can complete; no cycles."""
    _check_references(roles, listed, problems, "after", "role {name!r} cannot wait for itself",
                      lambda other: f"role {other.name!r} never completes ({reason})"
                      if (reason := _never_completes(other)) else None)


def _check_needs(roles: dict[str, RoleSpec | None], listed: dict[str, dict[str, list[str]]],
                 problems: Problems) -> None:
    """Every ``needs`` entry names another role; the graph has no cycle."""
    _check_references(roles, listed, problems, "needs", "role {name!r} cannot need itself")


def _check_references(roles: dict[str, RoleSpec | None], listed: dict[str, dict[str, list[str]]],
                      problems: Problems, key: str, itself: str,
                      check: Callable[[RoleSpec], str | None] | None = None) -> None:
    """The role names in each role's ``key`` list (``after``, ``needs``; ``listed``: the
    lists of the roles that passed the schema): not the role itself (``itself``), known
    roles, ``check(other)`` passed where ``other`` was built; and no cycle among them."""
    names = list(roles)
    for name, lists in listed.items():
        for index, other in enumerate(lists[key]):
            where = ("roles", name, key, index)
            if other == name:
                problems.add(where, itself.format(name=name))
            elif other not in roles:
                problems.add(where, unknown_role(other, names))
            elif check is not None and (target := roles[other]) is not None and (problem := check(target)):
                problems.add(where, problem)
    cycle = find_cycle({n: [a for a in lists[key] if a in roles and a != n] for n, lists in listed.items()})
    if cycle:
        problems.add(("roles", cycle[0], key), f"cycle in {key}: " + " -> ".join(cycle))


def _never_completes(spec: RoleSpec) -> str | None:
    if spec.type in (RoleType.CRON, RoleType.TOPIC):
        return f"{spec.type} roles run again and again"
    if spec.restart is RestartPolicy.ALWAYS:
        return "it has restart: always"
    return None


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle as ``[a, b, ..., a]`` (in graph order), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in graph:
        if start not in state and (found := visit(start)):
            return found
    return None
