"""Cluster-wide control verbs of the ``supervisor`` command.

::

    supervisor restart ROLE [--member M] [--index I]   restart the role's children
    supervisor restart ROLE --wait                      ... as a rollout, and follow it
    supervisor rollout status|resume|abort ROLE         see rollout.py
    supervisor pause ROLE                               stop its children everywhere, start none
    supervisor resume ROLE                              undo pause
    supervisor reset ROLE [--member M]                  clear a FAILED role: it starts again
    supervisor trigger ROLE                             one extra run of a cron role, now

The control verbs take ``-c CONFIG`` or ``ETCDVISOR_ENDPOINTS``/``ETCDVISOR_CLUSTER`` like
the other operator verbs, write one record under ``/etcdvisor/<cluster>/control/``
(see :mod:`etcdvisor.runtime.control`) and return: every member acts within a second.
Errors (one line, non-zero exit): a cluster with nothing under its prefix (exit 1,
naming the clusters that exist), a role no config or member knows (exit 2), a verb
that does not fit the role (``trigger`` of a non-cron role, ``--index`` of a
non-sharded role: exit 2), etcd unreachable (exit 1).
"""

from __future__ import annotations

import argparse

from ..timing import format_duration
from .cluster import issue_control, require_known_cluster, require_role
from .kit import EXIT_OK, Target, UsageError, operator_verb
from .rollout import start_rollout


@operator_verb
def cmd_control(args: argparse.Namespace, target: Target) -> int:
    from ..runtime import control

    require_known_cluster(target)
    index = getattr(args, "index", None)
    member = getattr(args, "member", None)
    if args.verb == control.RESTART and member is None and index is None \
            and require_role(target, args.role) in ("sharded", "singleton"):
        return start_rollout(args, target)
    if getattr(args, "wait", False):
        raise UsageError("--wait follows a rolling restart: restart ROLE of a sharded or singleton role, "
                         "without --member/--index")
    record, revision = issue_control(target, args.verb, args.role, member=member, index=index)
    scope = "".join([f" on member {member}" if member else " on every member",
                     f", index {index}" if index is not None else ""])
    print(f"role {args.role}: {args.verb}{scope} (by {record['who']} at {record['at']}, "
          f"revision {revision})")
    if args.verb in (control.TRIGGER, control.RESTART, control.RESET) and \
            target.backend.get(control.control_key(target.keys, args.role, control.PAUSE)) is not None:
        # nothing of a paused role starts: say so rather than let the operator wait
        later = (f"it runs after 'supervisor resume {args.role}' if that comes within "
                 f"{format_duration(control.TRIGGER_MAX_AGE)}") if args.verb == control.TRIGGER else \
            f"its children start after 'supervisor resume {args.role}'"
        print(f"role {args.role}: note: the role is paused; {later}")
    return EXIT_OK


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """restart, pause, resume, reset, trigger."""
    helps = {
        "restart": "restart the children of ROLE (a rolling restart, or only --member / --index)",
        "pause": "stop ROLE's children everywhere and start none until resume",
        "resume": "undo pause: ROLE runs again",
        "reset": "clear a FAILED ROLE so it starts again (every member, or --member)",
        "trigger": "one extra run of cron ROLE now (fenced like a tick, recorded as manual)",
    }
    for verb, text in helps.items():
        parser = subparsers.add_parser(verb, parents=[common], help=text)
        parser.add_argument("role", metavar="ROLE")
        if verb in ("restart", "reset"):
            parser.add_argument("--member", metavar="M", help="only on member M")
        if verb == "restart":
            parser.add_argument("--index", metavar="I", type=int, help="only the shard with INDEX I")
            parser.add_argument("--wait", action="store_true",
                                help="follow the rolling restart: exit 0 when done, 1 when it failed")
        parser.set_defaults(func=cmd_control, verb=verb)
