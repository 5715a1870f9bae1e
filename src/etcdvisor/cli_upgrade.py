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

from .cli_control import require_cluster
from .cli_ops import EXIT_OK, Target, UsageError, _check_name, operator_verb
from .coord.base import Backend


@operator_verb
def cmd_upgrade(args, target: Target) -> int:
    from .runtime import control

    require_cluster(target)
    backend = target.backend
    assert isinstance(backend, Backend)  # opened by operator_verb
    member = args.member
    if member is not None:
        _check_name("member", member)
        if backend.get(target.keys.member(member)) is None:
            raise UsageError(f"no live member {member!r} in cluster {target.cluster}")
    record = control.make_record(control.UPGRADE, control.SUPERVISOR_SCOPE, member=member)
    revision = control.issue(backend, target.keys, record)
    scope = f"member {member}" if member else "every member"
    print(f"upgrade of {scope} requested (by {record['who']} at {record['at']}, revision {revision}); "
          f"'supervisor status' shows each member's version and when it upgraded")
    return EXIT_OK


def add_upgrade_verb(subparsers) -> None:
    parser = subparsers.add_parser("upgrade", help="re-execute running members with the code on disk, "
                                   "without stopping a child (as kill -USR2 does)")
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="use this config's cluster and etcd settings (default: "
                             "ETCDVISOR_ENDPOINTS and ETCDVISOR_CLUSTER)")
    parser.add_argument("--member", metavar="M", help="only member M (default: every member)")
    parser.set_defaults(func=cmd_upgrade)
