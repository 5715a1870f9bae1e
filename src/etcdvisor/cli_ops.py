"""Operator verbs of the ``supervisor`` command: status, publish, waitgroup, rerun.

Which cluster: ``-c/--config CONFIG`` (its ``cluster`` and ``etcd`` settings; the
``ETCDVISOR_ENDPOINTS``/``ETCDVISOR_CLUSTER`` overrides apply as for ``run``), else
the environment variables ``ETCDVISOR_ENDPOINTS`` and ``ETCDVISOR_CLUSTER`` (every
child of a supervisor has them, so a child can call these verbs as is). A config
using ``endpoints: embedded`` needs ``ETCDVISOR_ENDPOINTS`` (the URL the supervisor
logged at start).

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
import functools
import os
import re
import sys
from dataclasses import dataclass

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # roles, topics, wait groups
DEFAULT_TIMEOUT = 5.0


class UsageError(Exception):
    """Bad invocation or configuration: exit 2."""


class Failure(Exception):
    """The operation could not be done: exit 1."""


@dataclass
class Target:
    """The cluster a verb works on, and an open backend."""

    cluster: str
    url: str
    config: object | None  # etcdvisor.config.Config when -c was given
    backend: object = None

    @property
    def keys(self):
        from .coord.keys import ClusterKeys

        return ClusterKeys(self.cluster)


def _error(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def resolve_target(config_path: str | None, environ=None) -> Target:
    """Cluster and endpoints from ``-c CONFIG`` or the environment; UsageError otherwise."""
    environ = os.environ if environ is None else environ
    if config_path:
        from .config import ConfigError, EtcdKind, load

        try:
            config = load(config_path, environ)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config.etcd.kind is EtcdKind.EMBEDDED:
            raise UsageError(f"{config_path}: etcd.endpoints: the config uses an embedded etcd; set "
                             f"ETCDVISOR_ENDPOINTS to the URL the supervisor logged at start")
        return Target(config.cluster, config.etcd.url, config)
    endpoints = environ.get("ETCDVISOR_ENDPOINTS", "").strip()
    cluster = environ.get("ETCDVISOR_CLUSTER", "").strip()
    missing = [n for n, v in (("ETCDVISOR_ENDPOINTS", endpoints), ("ETCDVISOR_CLUSTER", cluster)) if not v]
    if missing:
        raise UsageError(f"no cluster to talk to: pass -c CONFIG or set {' and '.join(missing)}")
    if not CLUSTER_NAME.fullmatch(cluster):
        raise UsageError(f"ETCDVISOR_CLUSTER: invalid cluster name {cluster!r}")
    if endpoints == "embedded":
        raise UsageError("ETCDVISOR_ENDPOINTS: 'embedded' is only for 'run'; give the URL the "
                         "supervisor logged at start")
    return Target(cluster, endpoints, None)


def open_target(target: Target) -> None:
    """Connect ``target.backend``: UsageError for a bad URL, Failure when unreachable."""
    from .coord import open_backend
    from .coord.errors import CoordError, InvalidURL

    config = target.config
    try:
        if config is None:
            target.backend = open_backend(target.url, timeout=DEFAULT_TIMEOUT)
        else:
            etcd = config.etcd
            target.backend = open_backend(
                target.url, timeout=etcd.timeout, tls=etcd.tls, username=etcd.username,
                password_file=etcd.password_file, password_env=etcd.password_env)
    except InvalidURL as exc:
        source = config.source_path if config is not None else "ETCDVISOR_ENDPOINTS"
        raise UsageError(f"{source}: {exc}") from None
    except CoordError as exc:
        raise Failure(str(exc)) from None


def operator_verb(func):
    """Run ``func(args, target)`` with the cluster connected, mapping every error to
    one stderr line and an exit code (never a traceback)."""

    @functools.wraps(func)
    def run(args) -> int:
        from .coord.errors import CoordError

        target = None
        try:
            target = resolve_target(args.config)
            open_target(target)
            return func(args, target)
        except UsageError as exc:
            _error(exc)
            return EXIT_USAGE
        except Failure as exc:
            _error(exc)
            return EXIT_FAIL
        except CoordError as exc:
            _error(f"etcd at {target.url if target else '?'}: {exc}")
            return EXIT_FAIL
        except Exception as exc:  # the one-line promise holds for bugs too
            _error(f"unexpected {type(exc).__name__}: {exc}")
            return EXIT_FAIL
        finally:
            if target is not None and target.backend is not None:
                try:
                    target.backend.close()
                except Exception:
                    pass

    return run


def _check_name(kind: str, name: str) -> str:
    if not OBJECT_NAME.fullmatch(name):
        raise UsageError(f"invalid {kind} name {name!r} (letters, digits, '_', '.', '-'; "
                         f"starting with a letter or digit)")
    return name


# --- status ----------------------------------------------------------------------------
@operator_verb
def cmd_status(args, target: Target) -> int:
    from .cli_control import require_cluster
    from .status import gather, render_json, render_text

    require_cluster(target)
    doc = gather(target.backend, target.cluster, target.config)
    if args.json:
        print(render_json(doc))
    else:
        sys.stdout.write(render_text(doc))
    return EXIT_OK


# --- publish ---------------------------------------------------------------------------
def topic_payload_limit(config, topic: str) -> int | None:
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
        found = [name for name, spec in target.config.roles.items()  # type: ignore[attr-defined]
                 if spec.type.value == "topic" and spec.topic == topic]
    from .coord.records import MEMBER

    for kv in target.backend.get_prefix(target.keys.members).kvs:  # type: ignore[attr-defined]
        record = MEMBER.read(kv)  # a record that fails the decoder says nothing about consumers
        if record is None:
            continue
        for role, status in (record.get("roles") or {}).items():
            if isinstance(status, dict) and status.get("topic") == topic:
                found.append(f"{role}@{record.get('member')}")
    return found


@operator_verb
def cmd_publish(args, target: Target) -> int:
    from .recipes.topic import PayloadTooLarge, Topic

    name = _check_name("topic", args.topic)
    if not args.allow_unconsumed and not topic_consumers(target, name):
        where = (f"neither {target.config.source_path} nor any live member of cluster {target.cluster} has"  # type: ignore[attr-defined]
                 if target.config is not None else f"no live member of cluster {target.cluster} has")
        raise UsageError(f"no role consumes topic {name!r} ({where} a topic role for it): the message "
                         f"would wait unread; publish anyway with --allow-unconsumed")
    options = {}
    limit = topic_payload_limit(target.config, name)
    if limit is not None:
        options["max_payload"] = limit
    topic = Topic(target.backend, target.keys.topic(name), **options)
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
def cmd_waitgroup(args, target: Target) -> int:
    from .recipes.waitgroup import WaitGroup, WaitGroupNegative

    name = _check_name("wait group", args.name)
    if args.n is not None and args.action != "add":
        raise UsageError(f"waitgroup {args.action}: takes no count (only 'add NAME N' does)")
    if args.timeout is not None and args.action != "wait":
        raise UsageError(f"waitgroup {args.action}: --timeout applies to 'wait' only")
    timeout = None if args.timeout is None else _duration_argument("--timeout", args.timeout)
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
        raise Failure(f"wait group {name}: still at {group.count()} after {timeout:g}s")
    return EXIT_OK


def _duration_argument(flag: str, text: str) -> float:
    """A duration flag, in the config's one grammar (``60``, ``1.5``, ``2m``, ``1h30m``)."""
    from .config.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _count_argument(raw: str | None) -> int:
    if raw is None:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"waitgroup add: N must be a whole number, got {raw!r}") from None


# --- rerun -----------------------------------------------------------------------------
@operator_verb
def cmd_rerun(args, target: Target) -> int:
    from .cli_control import require_known_cluster, require_role
    from .coord.types import Delete, Get

    role = _check_name("role", args.role)
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
    from .coord.records import MEMBER

    for kv in target.backend.get_prefix(target.keys.members).kvs:
        doc = MEMBER.read(kv)  # a bad record: skipped, one warning naming its key
        reported = doc["roles"].get(role, {}).get("type") if doc is not None else None
        if isinstance(reported, str) and reported != "job":
            raise UsageError(f"role {role} is a {reported} role (as member "
                             f"{kv.key.rsplit('/', 1)[-1]} reports); rerun applies to job roles only")


# --- parser ----------------------------------------------------------------------------
def add_operator_verbs(subparsers) -> None:
    """Add status, publish, waitgroup and rerun to the ``supervisor`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG",
                        help="use this config's cluster and etcd settings (default: "
                             "ETCDVISOR_ENDPOINTS and ETCDVISOR_CLUSTER)")

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

    from .cli_config import add_config_verb

    add_config_verb(subparsers, common)

    from .cli_services import add_services_verb

    add_services_verb(subparsers, common)
