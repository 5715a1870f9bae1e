"""``supervisor services``: the cluster's service registry, read-only.

::

    $ supervisor services                    # every registered instance, registration order
    $ supervisor services api --json         # instances of service "api", one JSON array
    $ supervisor services --applications     # application routes (name, node, weight, mode, state)

The registry read is :meth:`etcdvisor.recipes.registry.Registry.for_cluster`
(``/etcdvisor/<cluster>/services/``), where ``register:`` roles put their
children. Which cluster: ``-c CONFIG`` or ``ETCDVISOR_ENDPOINTS`` /
``ETCDVISOR_CLUSTER``, as for the other operator verbs (:mod:`.kit`).

Output: a table on stdout (or ``--json``: an array of the stored documents,
``[]`` when empty); "no ... registered" goes to stderr, exit 0. Exit 1 when
etcd is unreachable, 2 for a bad name or usage, one line each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .kit import EXIT_OK, Target, check_name, dumps, operator_verb

if TYPE_CHECKING:
    from ..recipes.registry import Registry


def _table(header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines) + "\n"


def _metadata_text(metadata: dict[str, Any]) -> str:
    if not metadata:
        return "-"
    return ",".join(f"{key}={dumps(value) if not isinstance(value, str) else value}"
                    for key, value in sorted(metadata.items()))


def _show_instances(registry: Registry, name: str | None, as_json: bool) -> None:
    instances = registry.discover(name) if name else registry.all_instances()
    if as_json:
        print(dumps([asdict(info) for info in instances], indent=2, sort_keys=True))
        return
    if not instances:
        what = f"instances of service {name}" if name else "service instances"
        print(f"no {what} registered", file=sys.stderr)
        return
    rows = [(i.name, i.id, i.address, str(i.port), i.version or "-", _metadata_text(i.metadata))
            for i in instances]
    sys.stdout.write(_table(("SERVICE", "ID", "ADDRESS", "PORT", "VERSION", "METADATA"), rows))


def _show_applications(registry: Registry, name: str | None, as_json: bool) -> None:
    routes = registry.applications(name)
    if as_json:
        print(dumps([route.to_dict() for route in routes], indent=2))
        return
    if not routes:
        what = f"routes of application {name}" if name else "applications"
        print(f"no {what} registered", file=sys.stderr)
        return
    rows = [(r.name, r.node, str(r.weight), r.mode.value, r.state.value) for r in routes]
    sys.stdout.write(_table(("APPLICATION", "NODE", "WEIGHT", "MODE", "STATE"), rows))


@operator_verb
def cmd_services(args: argparse.Namespace, target: Target) -> int:
    from ..recipes.registry import Registry

    kind = "application" if args.applications else "service"
    name = check_name(kind, args.name) if args.name is not None else None
    registry = Registry.for_cluster(target.backend, target.cluster)
    if args.applications:
        _show_applications(registry, name, args.json)
    else:
        _show_instances(registry, name, args.json)
    return EXIT_OK


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """services."""
    services = subparsers.add_parser(
        "services", parents=[common],
        help="registered service instances (registration order), or --applications")
    services.add_argument("name", metavar="NAME", nargs="?", help="only this service (or application)")
    services.add_argument("--json", action="store_true", help="print one JSON array")
    services.add_argument("--applications", action="store_true",
                          help="show application routes: name, node, weight, mode, state")
    services.set_defaults(func=cmd_services)
