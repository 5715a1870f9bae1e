"""``supervisor`` / ``etcdvisor`` command line: the parser, the verb groups, exit codes.

Exit codes: 0 success, 1 runtime failure (etcd unreachable, member id in
use...), 2 bad usage or bad config. Every error is one line on stderr.

One module per verb group, each with ``add_verbs(subparsers, common)``; they share
:mod:`.kit` (exit codes, the one-line error, arguments, connecting to the cluster) and
:mod:`.cluster` (checks against what the cluster knows). :func:`verb_groups` is the one
place where groups are registered, in the order ``--help`` lists their verbs. Building
the parser imports no verb's machinery: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import NoReturn

from .. import __version__
from .kit import EXIT_USAGE, cluster_options


def verb_groups() -> tuple[ModuleType, ...]:
    """The verb groups of the command line, in ``--help`` order."""
    from . import control, health, layered_config, ops, role_logs, rollout, run, services, upgrade

    return (run, ops, layered_config, services, control, rollout, health, role_logs, upgrade)


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, like every other error
    (argparse prints the whole usage block first); ``--help`` still shows it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def _program_name() -> str:
    name = os.path.basename(sys.argv[0])
    return "supervisor" if name in ("", "__main__.py", "cli.py", "-c") else name


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=_program_name(),
        description="Declarative process supervisor for fleets of workers, coordinated through etcd.")
    parser.add_argument("--version", action="version", version=f"etcdvisor {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    common = cluster_options()
    for group in verb_groups():
        group.add_verbs(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result
