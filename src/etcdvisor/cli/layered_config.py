"""``supervisor config set|get|list|unset|watch``: the layered config of a cluster.

Scopes: ``--member M`` (that member only), ``--cluster`` (default), ``--global``
(every cluster). Reading with ``--member M`` resolves as member M's children
see it: node (cross-cluster node-specific) > member > cluster > global;
without it, cluster > global. The key layout is the config's
``config_layout`` (``-c``), else ``--layout`` (default ``etcdvisor``).

Values: ``--type int|float|bool|json|str`` converts VALUE; without ``--type``
VALUE is taken as a stored string, as ``etcdctl put`` would write it
(``int:5432`` is the integer 5432, ``5432`` the string "5432").

Examples::

    $ supervisor config set database.port 5433 --type int --member m1
    $ supervisor config get database.port --member m1     # 5433  (member)
    $ supervisor config list --json
    $ supervisor config unset database.port --member m1
    $ supervisor config watch --member m1                 # one line per resolved change
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
from typing import TYPE_CHECKING, Any

from .kit import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Target, UsageError, Verb, dumps, operator_verb

if TYPE_CHECKING:
    from ..config import Config
    from ..recipes.layered_config import LayeredConfig

TYPES = ("int", "float", "bool", "json", "str")


def parse_value(text: str, kind: str | None, layout: str) -> Any:
    """VALUE as typed by ``--type`` (UsageError when it does not parse)."""
    from ..coord.records import parse_json
    from ..recipes.layered_config import ConfigValueError, decode_value

    try:
        if kind is None:
            return decode_value("VALUE", text, layout)
        if kind == "int":
            return int(text)
        if kind == "float":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError("NaN and Infinity are not allowed")
            return number
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError("use true or false")
            return text.lower() == "true"
        if kind == "json":
            return parse_json(text)  # strict and bounded, as values are read back
        return text
    except (ValueError, ConfigValueError) as exc:
        raise UsageError(f"VALUE {text!r} is not a valid {kind or 'stored'} value: {exc}") from None


def _layered(args: argparse.Namespace, target: Target) -> LayeredConfig:
    from ..runtime.role_config import layered_config

    config: Any = target.config
    layout = config.config_layout if config is not None else args.layout
    member = getattr(args, "member", None)
    try:
        backend: Any = target.backend
        return layered_config(backend, target.cluster, member, layout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _scope(args: argparse.Namespace) -> str:
    if args.member:
        return "member"
    return "global" if args.global_ else "cluster"


def _show(value: Any) -> str:
    return dumps(value) if not isinstance(value, str) else value


@operator_verb
def cmd_config(args: argparse.Namespace, target: Target) -> int:
    cfg = _layered(args, target)
    try:
        if args.action == "set":
            return _set(args, cfg, target)
        if args.action == "unset":
            removed = cfg.unset(args.item, _scope(args))
            print(f"{args.item}: {'unset' if removed else 'was not set'} ({_scope(args)})")
            return EXIT_OK
        if args.action == "watch":
            return _watch(args, cfg)
        return _read(args, cfg, target)
    except ValueError as exc:  # bad item name, a value the layout cannot store
        from ..recipes.layered_config import ConfigValueError

        if isinstance(exc, ConfigValueError):
            raise
        raise UsageError(str(exc)) from None


def _set(args: argparse.Namespace, cfg: LayeredConfig, target: Target) -> int:
    if args.value is None:
        raise UsageError("config set needs ITEM and VALUE")
    value = parse_value(args.value, args.type, cfg.layout)
    backend: Any = target.backend
    if args.member and not args.allow_unknown_member and backend.get(target.keys.member(args.member)) is None:
        raise UsageError(f"no live member {args.member!r} in cluster {target.cluster}; to set an item "
                         f"for a member before it joins, add --allow-unknown-member")
    cfg.set(args.item, value, _scope(args))
    print(f"{args.item} = {_show(value)} ({_scope(args)})")
    return EXIT_OK


def _defaults(config: Config | None, item: str) -> dict[str, Any]:
    """Role name -> the ``default`` its ``config:`` entry gives ``item`` (``-c``: what
    that role's children get when no scope sets it)."""
    found: dict[str, Any] = {}
    for role in (config.roles.values() if config is not None else ()):
        for entry in role.config.values():
            if entry.item == item and entry.default is not None:
                found.setdefault(role.name, entry.default)
    return found


def _read(args: argparse.Namespace, cfg: LayeredConfig, target: Target) -> int:
    raw = cfg.raw_items()
    if args.action == "get":
        if args.item not in raw:
            defaults = _defaults(target.config, args.item)
            if not defaults:
                hint = "" if target.config is not None else " (with -c CONFIG, a role's default is shown)"
                print(f"error: {args.item}: not set in any scope{hint}", file=sys.stderr)
                return EXIT_FAIL
            return _print_default(args, defaults)
        raw = {args.item: raw[args.item]}
    if args.action == "get":  # a malformed value: ConfigValueError, one line, exit 1
        rows = {item: {"value": cfg.decode(item, scope, text), "scope": scope} for item, (scope, text) in raw.items()}
    else:
        rows = _decoded(cfg, raw)
    if args.json:
        print(dumps(rows[args.item] if args.action == "get" else rows, indent=2, sort_keys=True))
    elif args.action == "get":
        print(f"{_show(rows[args.item]['value'])}  ({rows[args.item]['scope']})")
    else:
        for item, row in rows.items():
            print(f"{item} = {_show(row['value'])}  ({row['scope']})")
    return EXIT_OK


def _print_default(args: argparse.Namespace, defaults: dict[str, Any]) -> int:
    """``get`` of an item set in no scope: the config file's default (scope ``default``).
    Roles that disagree are each named."""
    value = next(iter(defaults.values()))
    differ = any(v != value for v in defaults.values())
    if args.json:
        doc: dict[str, Any] = {"value": value, "scope": "default"}
        if differ:
            doc["defaults"] = defaults
        print(dumps(doc, indent=2, sort_keys=True))
    elif differ:
        for role, each in defaults.items():
            print(f"{_show(each)}  (default, role {role})")
    else:
        print(f"{_show(value)}  (default)")
    return EXIT_OK


def _decoded(cfg: LayeredConfig, raw: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """``list``: every item that decodes; a malformed one is left out with one
    ``warning:`` line naming its key on stderr (one bad item never hides the others)."""
    from ..recipes.layered_config import ConfigValueError

    rows = {}
    for item, (scope, text) in sorted(raw.items()):
        try:
            rows[item] = {"value": cfg.decode(item, scope, text), "scope": scope}
        except ConfigValueError as exc:
            print(f"warning: skipping {exc}", file=sys.stderr)
    return rows


def _watch(args: argparse.Namespace, cfg: LayeredConfig) -> int:
    changes: queue.SimpleQueue[tuple[str | None, Any]] = queue.SimpleQueue()
    watch = cfg.watch(lambda item, value: changes.put((item, value)),
                      on_error=lambda exc: changes.put((None, str(exc))))
    who = f"member {cfg.node}" if cfg.node else "the cluster"
    print(f"watching the {cfg.layout} config of cluster {cfg.cluster} as {who} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    seen = 0
    try:
        while args.count is None or seen < args.count:
            item, value = changes.get()
            if item is None:
                print(f"error: {value}", file=sys.stderr, flush=True)
                continue
            seen += 1
            if args.json:
                print(dumps({"item": item, "value": value, "unset": value is None}), flush=True)
            else:
                print(f"{item} unset" if value is None else f"{item} = {_show(value)}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        watch.stop()
    return EXIT_OK


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """config set|get|list|unset|watch."""
    parser = subparsers.add_parser("config", parents=[common],
                                   help="set/get/list/unset/watch the layered config children see")
    parser.add_argument("action", choices=["set", "get", "list", "unset", "watch"])
    parser.add_argument("item", metavar="ITEM", nargs="?")
    parser.add_argument("value", metavar="VALUE", nargs="?")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--member", metavar="M", help="member scope (and, for get/list/watch, resolve as M)")
    scope.add_argument("--cluster", action="store_true", help="cluster scope (the default)")
    scope.add_argument("--global", dest="global_", action="store_true", help="every cluster")
    parser.add_argument("--type", choices=TYPES, help="for set: how to read VALUE")
    parser.add_argument("--json", action="store_true", help="for get/list/watch: JSON output")
    parser.add_argument("--layout", choices=["etcdvisor", "ergo"], default="etcdvisor",
                        help="key layout without -c (default etcdvisor)")
    parser.add_argument("--count", type=int, metavar="N", help="for watch: exit after N changes")
    parser.add_argument("--allow-unknown-member", action="store_true",
                        help="for set --member M: M need not be a live member (configure it before it joins)")
    parser.set_defaults(func=_checked(cmd_config))


def _checked(func: Verb) -> Verb:
    def run(args: argparse.Namespace) -> int:
        needs_item = args.action in ("set", "get", "unset")
        if needs_item and not args.item:
            print(f"error: config {args.action} needs ITEM", file=sys.stderr)
            return EXIT_USAGE
        if not needs_item and args.item:
            print(f"error: config {args.action} takes no ITEM", file=sys.stderr)
            return EXIT_USAGE
        return func(args)
    return run
