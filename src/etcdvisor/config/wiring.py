"""Semantic checks of the seed wiring keys: ``config:``, ``register:``, ``peers:``.

Per role (:func:`wiring_fields`): an ``on_change`` is ``restart``, ``none``
or ``signal:NAME`` (NAME through the one signal parser,
:func:`.signals.parse_signal`); ``config`` keys are environment variable
names the supervisor does not reserve; ``register.port`` is an integer port
or ``BASE + {index}``; ``address`` and string ``meta`` values use only the
placeholders ``{host}``, ``{member}``, ``{index}``, ``{port}``.

Across roles (:func:`check_wiring`): two roles registering the same service
with ports that can collide on one member are an error; a ``peers`` entry
naming a service that no role registers is a warning (it may be registered by
another fleet), returned as one line each.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from collections.abc import Mapping

from .errors import Document, KeyPath, Problems, format_key_path
from .model import (
    ChangeAction,
    ConfigItem,
    OnChange,
    PeersFile,
    Registration,
    RoleSpec,
    _frozen_map,
    is_reserved_env,
)
from .role_fields import RoleFields
from .signals import parse_signal

PLACEHOLDERS = ("host", "member", "index", "port")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PORT_EXPR = re.compile(r"\s*(\d+)\s*\+\s*\{index\}\s*")
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
INDEX_SPAN = 1024  # "BASE + {index}" is taken to cover BASE .. BASE+1023 when checking collisions


NON_FINITE = "holds .nan or .inf, which JSON cannot carry (write a finite number, or quote it as a string)"


def _non_finite(value: object) -> bool:
    """A NaN or an infinity anywhere in ``value`` (YAML's .nan, .inf, 1e400)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def parse_on_change(text: object, default: ChangeAction) -> OnChange:
    """``restart`` | ``none`` | ``signal:NAME``; ValueError otherwise."""
    if text is None:
        return OnChange(default)
    value = str(text).strip()
    if value in (ChangeAction.RESTART.value, ChangeAction.NONE.value):
        return OnChange(ChangeAction(value))
    kind, sep, name = value.partition(":")
    if kind.strip() != "signal" or not sep:
        raise ValueError(f"unknown on_change {text!r} (use restart, none or signal:NAME)")
    return OnChange(ChangeAction.SIGNAL, parse_signal(name))


def placeholder_problem(text: str) -> str | None:
    """Why ``text`` is not a valid template, or None."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        return f"{text!r} is not a valid template ({exc})"
    for name, spec, conversion in fields:
        if spec or conversion:
            return f"{text!r}: write placeholders plainly, as {{{name}}} (no format spec or conversion)"
        if name not in PLACEHOLDERS:
            return (f"unknown placeholder {{{name}}} in {text!r} "
                    f"(use {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    return None


def wiring_fields(raw: Document, path: KeyPath, problems: Problems, cwd: str) -> RoleFields:
    """``config``/``register``/``peers`` of one schema-valid role (``cwd``: the
    role's absolute working directory, where its peers files must stay)."""
    return {"config": _config(raw.get("config", {}), path + ("config",), problems),
            "register": _register(raw.get("register"), path + ("register",), problems),
            "peers": _peers(raw.get("peers", {}), path + ("peers",), problems, cwd)}


def peers_file_problem(file: str, cwd: str, what: str = "peers files") -> str | None:
    """Why peers file ``file`` (as written) is not a file inside ``cwd``, or None
    (``what`` names the files in the message: also used for ``stdout.file``).

    Lexical only (``validate`` may run where the directories do not exist):
    a relative path must not climb out with ``..``; an absolute one must name
    a file inside ``cwd``. The writer checks again after resolving symlinks
    (runtime/private_files.py)."""
    target = os.path.normpath(os.path.join(cwd, file))
    root = os.path.normpath(cwd)
    if target == root or file.endswith(("/", os.sep)):
        return f"{file!r} names a directory, not a file"
    if os.path.commonpath([root, target]) != root:
        kind = "absolute path" if os.path.isabs(file) else "path"
        return (f"{kind} {file!r} is outside the role's working directory {root} "
                f"({what} stay inside it; set the role's cwd to write elsewhere)")
    return None


def _config(raw: Document, path: KeyPath, problems: Problems) -> Mapping[str, ConfigItem]:
    items: dict[str, ConfigItem] = {}
    for env, entry in raw.items():
        where = path + (env,)
        if not ENV_NAME.fullmatch(env):
            problems.add(where, f"{env!r} is not a valid environment variable name")
            continue
        if is_reserved_env(env):
            problems.add(where, f"{env} is set by the supervisor and cannot come from the config")
            continue
        try:
            on_change = parse_on_change(entry.get("on_change"), ChangeAction.RESTART)
        except ValueError as exc:
            problems.add(where + ("on_change",), str(exc))
            continue
        if "\0" in entry["item"]:
            problems.add(where + ("item",), "contains a NUL byte")
            continue
        if _non_finite(entry.get("default")):
            problems.add(where + ("default",), NON_FINITE)
            continue
        # YAML dates and times become their text: the value must be JSON (file, env)
        default = json.loads(json.dumps(entry.get("default"), default=str))
        items[env] = ConfigItem(env=env, item=entry["item"], default=default, on_change=on_change)
    return _frozen_map(items)


def _register(raw: Document | None, path: KeyPath, problems: Problems) -> Registration | None:
    if raw is None:
        return None
    before = len(problems)
    port, base = raw["port"], None
    if isinstance(port, bool) or (isinstance(port, int) and not 1 <= port <= 65535):
        shown = repr(port) if isinstance(port, bool) or port.bit_length() <= 64 else "a huge number"
        problems.add(path + ("port",), f"{shown} is not a port number (1-65535)")
    elif isinstance(port, str):
        match = PORT_EXPR.fullmatch(port)
        if match is None:
            problems.add(path + ("port",), f"{port!r} is not an integer or 'BASE + {{index}}'")
        elif not 1 <= int(match.group(1)) <= 65535:
            problems.add(path + ("port",), f"base {match.group(1)} is not a port number (1-65535)")
        else:
            port, base = None, int(match.group(1))
    address = raw.get("address", "{host}:{port}")
    templates: list[tuple[KeyPath, str]] = [(("address",), address)]
    templates += [(("meta", k), v) for k, v in raw.get("meta", {}).items() if isinstance(v, str)]
    for where, text in templates:
        problem = placeholder_problem(text)
        if problem:
            problems.add(path + where, problem)
    for key, value in raw.get("meta", {}).items():
        if _non_finite(value):
            problems.add(path + ("meta", key), NON_FINITE)
    if len(problems) != before:
        return None
    return Registration(service=raw["service"], address=address, port=port, port_base=base,
                        meta=_frozen_map(raw.get("meta", {})))


def _peers(raw: Document, path: KeyPath, problems: Problems, cwd: str) -> Mapping[str, PeersFile]:
    peers: dict[str, PeersFile] = {}
    for service, entry in raw.items():
        where = path + (service,)
        if not SERVICE_NAME.fullmatch(service):
            problems.add(where, f"{service!r} is not a valid service name")
            continue
        if "\0" in entry["file"]:
            problems.add(where + ("file",), "contains a NUL byte")
            continue
        escape = peers_file_problem(entry["file"], cwd)
        if escape:
            problems.add(where + ("file",), escape)
            continue
        try:
            on_change = parse_on_change(entry.get("on_change"), ChangeAction.NONE)
        except ValueError as exc:
            problems.add(where + ("on_change",), str(exc))
            continue
        peers[service] = PeersFile(service=service, file=entry["file"], on_change=on_change)
    return _frozen_map(peers)


def _port_range(registration: Registration) -> range:
    first = registration.port_for(0)
    return range(first, first + (1 if registration.port is not None else INDEX_SPAN))


def _several_per_member(spec: RoleSpec) -> bool:
    """A sharded role with ``processes > 1``, or fixed shards with a child per shard."""
    if spec.type.value != "sharded":
        return False
    if spec.shards is not None:
        return spec.children == "per-shard" and spec.shards > 1
    return (spec.processes or 1) > 1


def _highest_known_index(spec: RoleSpec) -> int:
    """The highest INDEX a child of ``spec`` can have whatever the fleet: ``shards - 1``
    with a child per shard (a member may hold any shard), ``processes - 1`` in join order
    (the first member's; later members' go higher, with the fleet's size), else 0."""
    if spec.type.value != "sharded":
        return 0
    if spec.shards is not None:
        return spec.shards - 1 if spec.children == "per-shard" else 0
    return (spec.processes or 1) - 1


def check_wiring(roles: Mapping[str, RoleSpec | None], problems: Problems, source_path: str,
                 layout: str = "etcdvisor") -> list[str]:
    """Cross-role checks (``roles``: name -> RoleSpec or None); returns warnings."""
    for name, spec in roles.items():
        for env, entry in (spec.config if spec is not None and layout == "ergo" else {}).items():
            if "/" in entry.item:
                problems.add(("roles", name, "config", env, "item"),
                             f"{entry.item!r}: items of config_layout ergo cannot contain '/'")
    registered: dict[str, list[tuple[str, Registration]]] = {}
    for name, spec in roles.items():
        if spec is not None and spec.register is not None:
            registered.setdefault(spec.register.service, []).append((name, spec.register))
    for name, spec in roles.items():
        if spec is not None and spec.register is not None and spec.register.port is not None \
                and _several_per_member(spec):
            problems.add(("roles", name, "register", "port"),
                         f"{spec.register.port}: the role can run several children on one member, "
                         "which would all register this port (use 'BASE + {index}')")
    for name, spec in roles.items():
        registration = spec.register if spec is not None else None
        if spec is not None and registration is not None and registration.port_base is not None:
            top = registration.port_base + _highest_known_index(spec)
            if top > 65535:
                problems.add(("roles", name, "register", "port"),
                             f"'{registration.port_base} + {{index}}' goes past port 65535 "
                             f"(INDEX {_highest_known_index(spec)} would register port {top})")
    for service, entries in registered.items():
        for i, (name, mine) in enumerate(entries):
            for other, theirs in entries[:i]:
                a, b = _port_range(mine), _port_range(theirs)
                if a.start < b.stop and b.start < a.stop:
                    problems.add(("roles", name, "register", "port"),
                                 f"service {service!r} is also registered by role {other!r} with a "
                                 "port that can be the same on one member (give the roles different ports)")
    warnings: list[str] = []
    for name, spec in roles.items():
        for service in (spec.peers if spec is not None else {}):
            if service not in registered:
                where = format_key_path(("roles", name, "peers", service))
                warnings.append(f"{source_path}: {where}: warning: no role registers service "
                                f"{service!r} (the file stays empty unless another fleet does)")
    return warnings
