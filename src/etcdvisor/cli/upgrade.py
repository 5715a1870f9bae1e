"""``supervisor upgrade [--member M]``: upgrade running members in place.

::

    supervisor upgrade [-c CONFIG] [--member M]

Writes one control record, ``/etcdvisor/<cluster>/control/_supervisor/upgrade``
(``member``: M, or null for every member; see :mod:`etcdvisor.runtime.control`), and
returns. Each member it names checks the code now on disk and its config file in a
child process and, if both are fine, re-executes itself (same argv, same PID) without
stopping a child (:mod:`etcdvisor.runtime.upgrade`); ``kill -USR2 <pid>`` does the same
for one member. ``supervisor status`` then shows each member's version and when it
last upgraded. Errors (one line, non-zero exit): no such cluster (1), no live member M
(2), etcd unreachable (1).
"""

from __future__ import annotations

import argparse

from .cluster import require_cluster
from .kit import EXIT_OK, Target, UsageError, check_name, operator_verb


@operator_verb
def cmd_upgrade(args: argparse.Namespace, target: Target) -> int:
    from ..coord.base import Backend
    from ..runtime import control

    require_cluster(target)
    backend = target.backend
    assert isinstance(backend, Backend)  # opened by operator_verb
    member = args.member
    if member is not None:
        check_name("member", member)
        if backend.get(target.keys.member(member)) is None:
            raise UsageError(f"no live member {member!r} in cluster {target.cluster}")
    record = control.make_record(control.UPGRADE, control.SUPERVISOR_SCOPE, member=member)
    revision = control.issue(backend, target.keys, record)
    scope = f"member {member}" if member else "every member"
    print(f"upgrade of {scope} requested (by {record['who']} at {record['at']}, revision {revision}); "
          f"'supervisor status' shows each member's version and when it upgraded")
    return EXIT_OK


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """upgrade."""
    parser = subparsers.add_parser("upgrade", parents=[common],
                                   help="re-execute running members with the code on disk, "
                                   "without stopping a child (as kill -USR2 does)")
    parser.add_argument("--member", metavar="M", help="only member M (default: every member)")
    parser.set_defaults(func=cmd_upgrade)
