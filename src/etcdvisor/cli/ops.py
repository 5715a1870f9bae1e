"""Operator verbs of the ``supervisor`` command: status, publish, waitgroup, rerun.

Which cluster (``-c CONFIG`` or ``ETCDVISOR_ENDPOINTS``/``ETCDVISOR_CLUSTER``): see
:mod:`.kit`.

Exit codes: 0 success; 1 runtime failure (etcd unreachable, wait timed out, payload
too large, wait group below zero); 2 bad usage (no cluster named, bad config, bad
name, ``rerun`` of a role that is not a job). Every error is one line
``error: ...`` on stderr.

Examples::

    $ supervisor status                         # env: ETCDVISOR_ENDPOINTS, ETCDVISOR_CLUSTER
    $ supervisor status -c fleet.yaml --json    # one JSON document (see etcdvisor.status)
    $ echo '{"id": 7}' | supervisor publish images.uploaded -    # prints the message id
    $ supervisor publish images.uploaded 'hello'
    $ supervisor waitgroup add warmup.done 3    # prints the new count: 3
    $ supervisor waitgroup done warmup.done     # 2 (below zero: error, exit 1)
    $ supervisor waitgroup get warmup.done      # 2
    $ supervisor waitgroup wait warmup.done --timeout 60   # exit 0 at zero, 1 on timeout
    $ supervisor rerun -c fleet.yaml migrate    # delete the job record: the leader runs it again
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..timing import format_duration
from .cluster import member_records, require_cluster, require_known_cluster, require_role
from .kit import EXIT_OK, Failure, Target, UsageError, check_name, duration_argument, operator_verb

if TYPE_CHECKING:
    from ..config import Config


# --- status ----------------------------------------------------------------------------
@operator_verb
def cmd_status(args: argparse.Namespace, target: Target) -> int:
    from ..status import gather, render_json, render_text

    require_cluster(target)
    doc = gather(target.backend, target.cluster, target.config)
    if args.json:
        print(render_json(doc))
    else:
        sys.stdout.write(render_text(doc))
    return EXIT_OK


# --- publish ---------------------------------------------------------------------------
def topic_payload_limit(config: Config | None, topic: str) -> int | None:
    """The smallest ``max_payload`` of the config's topic roles consuming ``topic``
    (every consumer must accept the message), or None if none does."""
    if config is None:
        return None
    limits = [spec.max_payload for spec in config.roles.values()
              if spec.type.value == "topic" and spec.topic == topic and spec.max_payload]
    return min(limits) if limits else None


def topic_consumers(target: Target, topic: str) -> list[str]:
    """Roles that consume ``topic``: the ``-c`` config's topic roles, and the topic roles
    that live members report in their records (``role@member``)."""
    found = []
    if target.config is not None:
        found = [name for name, spec in target.config.roles.items()
                 if spec.type.value == "topic" and spec.topic == topic]
    for _key, record in member_records(target):  # a record that fails the decoder says nothing
        for role, status in (record.get("roles") or {}).items():
            if isinstance(status, dict) and status.get("topic") == topic:
                found.append(f"{role}@{record.get('member')}")
    return found


@operator_verb
def cmd_publish(args: argparse.Namespace, target: Target) -> int:
    from ..recipes.topic import PayloadTooLarge, Topic

    name = check_name("topic", args.topic)
    if not args.allow_unconsumed and not topic_consumers(target, name):
        where = (f"neither {target.config.source_path} nor any live member of cluster {target.cluster} has"
                 if target.config is not None else f"no live member of cluster {target.cluster} has")
        raise UsageError(f"no role consumes topic {name!r} ({where} a topic role for it): the message "
                         f"would wait unread; publish anyway with --allow-unconsumed")
    limit = topic_payload_limit(target.config, name)
    topic = (Topic(target.backend, target.keys.topic(name)) if limit is None
             else Topic(target.backend, target.keys.topic(name), max_payload=limit))
    if args.data is None or args.data == "-":
        # read one byte more than allowed: enough to know it is too big, never more
        data = sys.stdin.buffer.read(topic.max_payload + 1)
        too_big_from_stdin = len(data) > topic.max_payload
    else:
        data, too_big_from_stdin = os.fsencode(args.data), False
    try:
        message_id = topic.publish(data)
    except PayloadTooLarge as exc:
        if too_big_from_stdin:
            raise Failure(f"payload on stdin is larger than the topic's max_payload of "
                          f"{topic.max_payload} bytes ({topic.prefix})") from None
        raise Failure(str(exc)) from None
    print(message_id)
    return EXIT_OK


# --- waitgroup -------------------------------------------------------------------------
@operator_verb
def cmd_waitgroup(args: argparse.Namespace, target: Target) -> int:
    from ..recipes.waitgroup import WaitGroup, WaitGroupNegative

    name = check_name("wait group", args.name)
    if args.n is not None and args.action != "add":
        raise UsageError(f"waitgroup {args.action}: takes no count (only 'add NAME N' does)")
    if args.timeout is not None and args.action != "wait":
        raise UsageError(f"waitgroup {args.action}: --timeout applies to 'wait' only")
    timeout = None if args.timeout is None else duration_argument("--timeout", args.timeout)
    group = WaitGroup(target.backend, target.keys.waitgroup(name))
    if args.action == "get":
        print(group.count())
    elif args.action in ("add", "done"):
        n = _count_argument(args.n)
        if n < 1:
            raise UsageError(f"waitgroup add: N must be at least 1, got {n} (use 'done' to decrement)")
        try:
            print(group.add(n) if args.action == "add" else group.done())
        except WaitGroupNegative:
            raise Failure(f"wait group {name}: 'done' with the count already at zero "
                          f"(more done than add)") from None
    elif not group.wait(timeout):
        raise Failure(f"wait group {name}: still at {group.count()} after {format_duration(timeout or 0.0)}")
    return EXIT_OK


def _count_argument(raw: str | None) -> int:
    if raw is None:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"waitgroup add: N must be a whole number, got {raw!r}") from None


# --- rerun -----------------------------------------------------------------------------
@operator_verb
def cmd_rerun(args: argparse.Namespace, target: Target) -> int:
    from ..coord.types import Delete, Get

    role = check_name("role", args.role)
    require_known_cluster(target)
    require_role(target, role)
    _check_is_job(target, role)
    key = target.keys.job(role)
    result = target.backend.txn([], [Get(key), Delete(key)])  # read and delete at one revision
    previous = result.responses[0]
    if not previous:
        print(f"role {role}: no job record (nothing to delete); the job runs when a leader "
              f"finds none")
        return EXIT_OK
    print(f"role {role}: deleted job record {previous[0].value.decode('utf-8', 'replace')}")
    print(f"role {role}: the role's leader will run the job again")
    return EXIT_OK


def _check_is_job(target: Target, role: str) -> None:
    """From the config if given, else from what live members report about the role."""
    if target.config is not None:
        spec = target.config.roles.get(role)
        if spec is None:
            known = ", ".join(target.config.roles) or "none"
            raise UsageError(f"{target.config.source_path}: no role {role!r} (roles: {known})")
        if spec.type.value != "job":
            raise UsageError(f"role {role} is a {spec.type.value} role; rerun applies to job roles only")
        return
    for key, doc in member_records(target):  # a bad record: skipped, one warning naming its key
        reported = doc["roles"].get(role, {}).get("type")
        if isinstance(reported, str) and reported != "job":
            raise UsageError(f"role {role} is a {reported} role (as member "
                             f"{key.rsplit('/', 1)[-1]} reports); rerun applies to job roles only")


# --- parser ----------------------------------------------------------------------------
def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """status, publish, waitgroup, rerun."""
    status = subparsers.add_parser("status", parents=[common],
                                   help="members, roles, leaders, ticks, jobs, wait groups, topics")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(func=cmd_status)

    publish = subparsers.add_parser("publish", parents=[common],
                                    help="publish DATA (or stdin) to TOPIC; prints the message id")
    publish.add_argument("topic", metavar="TOPIC")
    publish.add_argument("data", metavar="DATA", nargs="?", help="the payload; '-' or absent: stdin")
    publish.add_argument("--allow-unconsumed", action="store_true",
                         help="publish even if no role (in -c CONFIG or on a live member) consumes TOPIC")
    publish.set_defaults(func=cmd_publish)

    waitgroup = subparsers.add_parser("waitgroup", parents=[common],
                                      help="add/done/wait/get on a distributed wait group")
    waitgroup.add_argument("action", choices=["add", "done", "wait", "get"])
    waitgroup.add_argument("name", metavar="NAME")
    waitgroup.add_argument("n", metavar="N", nargs="?", help="for add: how many (default 1)")
    waitgroup.add_argument("--timeout", metavar="DURATION",
                           help="for wait: give up after DURATION (seconds, or 500ms, 2m, 1h30m...; exit 1)")
    waitgroup.set_defaults(func=cmd_waitgroup)

    rerun = subparsers.add_parser("rerun", parents=[common],
                                  help="make a job role run again (deletes its completion record)")
    rerun.add_argument("role", metavar="ROLE")
    rerun.set_defaults(func=cmd_rerun)
