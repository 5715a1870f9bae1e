"""Cluster-wide control verbs and the health probe of the ``supervisor`` command.

::

    supervisor restart ROLE [--member M] [--index I]   restart the role's children
    supervisor restart ROLE --wait                      ... as a rollout, and follow it
    supervisor rollout status|resume|abort ROLE         see cli_rollout.py
    supervisor pause ROLE                               stop its children everywhere, start none
    supervisor resume ROLE                              undo pause
    supervisor reset ROLE [--member M]                  clear a FAILED role: it starts again
    supervisor trigger ROLE                             one extra run of a cron role, now
    supervisor health [--http ADDR] [--live]            exec probe: exit 0 healthy and ready

The control verbs take ``-c CONFIG`` or ``ETCDVISOR_ENDPOINTS``/``ETCDVISOR_CLUSTER`` like
the other operator verbs, write one record under ``/etcdvisor/<cluster>/control/``
(see :mod:`etcdvisor.runtime.control`) and return: every member acts within a second.
Errors (one line, non-zero exit): a cluster with nothing under its prefix (exit 1,
naming the clusters that exist), a role no config or member knows (exit 2), a verb
that does not fit the role (``trigger`` of a non-cron role, ``--index`` of a
non-sharded role: exit 2), etcd unreachable (exit 1).

``health`` asks ``/healthz`` and ``/readyz`` of a running member (``--live``: only
``/healthz``) at ``--http ADDR``, else ``ETCDVISOR_HTTP``, else ``http.listen`` of
``-c CONFIG``; it prints the answer and exits 0 (200) or 1 (anything else, or no
answer within ``--timeout`` seconds). No address at all: exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import time

from .cli_ops import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Failure, Target, UsageError, _check_name, _error, operator_verb
from .cli_rollout import add_rollout_verbs, start_rollout


# --- checks shared with status / rerun ----------------------------------------------------
def existing_clusters(backend) -> list[str]:
    """Names of the clusters that have any key under ``/etcdvisor/`` (not ``_shared``,
    the global config scope: no cluster name starts with ``_``)."""
    from .cli_ops import CLUSTER_NAME
    from .coord.keys import ROOT

    names = set()
    for kv in backend.get_prefix(ROOT, keys_only=True).kvs:
        names.add(kv.key[len(ROOT):].split("/", 1)[0])
    return sorted(name for name in names if CLUSTER_NAME.fullmatch(name))


def require_cluster(target: Target) -> None:
    """Failure unless the cluster has at least one live member."""
    from .coord.keys import ROOT

    if target.backend.get_prefix(target.keys.members, keys_only=True).kvs:
        return
    others = [name for name in existing_clusters(target.backend) if name != target.cluster]
    known = ", ".join(others) if others else "none"
    raise Failure(f"cluster {target.cluster!r} has no members at {target.url} "
                  f"(clusters under {ROOT}: {known})")


def require_known_cluster(target: Target) -> None:
    """Failure unless anything at all is stored under the cluster's prefix (a control
    record may be written before the members start, e.g. pause before a deploy)."""
    from .coord.keys import ROOT

    if target.backend.get_prefix(target.keys.base, keys_only=True).kvs:
        return
    known = ", ".join(existing_clusters(target.backend)) or "none"
    raise Failure(f"no cluster {target.cluster!r} at {target.url} (clusters under {ROOT}: {known})")


def reported_roles(target: Target) -> dict[str, str | None]:
    """role -> type, from the config if given, else from live member records and
    the role keys in the store (type None when only keys say the role exists)."""
    if target.config is not None:
        return {name: spec.type.value for name, spec in target.config.roles.items()}
    from .coord.records import MEMBER

    roles: dict[str, str | None] = {}
    for kv in target.backend.get_prefix(target.keys.members).kvs:
        doc = MEMBER.read(kv)  # a bad record: skipped, one warning naming its key
        for name, status in (doc["roles"] if doc is not None else {}).items():
            kind = status.get("type")
            roles[name] = roles.get(name) or (kind if isinstance(kind, str) else None)
    prefix = target.keys.base + "roles/"
    for kv in target.backend.get_prefix(prefix, keys_only=True).kvs:
        roles.setdefault(kv.key[len(prefix):].split("/", 1)[0], None)
    return roles


def require_role(target: Target, role: str) -> str | None:
    """The role's type; UsageError naming the known roles if nobody knows it."""
    _check_name("role", role)
    roles = reported_roles(target)
    if role not in roles:
        where = target.config.source_path if target.config is not None else f"cluster {target.cluster}"
        raise UsageError(f"no role {role!r} in {where} (roles: {', '.join(sorted(roles)) or 'none'})")
    return roles[role]


# --- control verbs ---------------------------------------------------------------------------
def role_count(target: Target, role: str) -> int | None:
    """The sharded role's COUNT as live members report it (None: nobody reports one)."""
    from .coord.records import MEMBER

    counts = set()
    for kv in target.backend.get_prefix(target.keys.members).kvs:
        record = MEMBER.read(kv)
        status = (record or {}).get("roles", {}).get(role)
        if isinstance(status, dict) and isinstance(status.get("count"), int) and status["count"] > 0:
            counts.add(status["count"])
    return max(counts) if counts else None  # during a reshard: the larger, not a false refusal


def issue_control(target: Target, verb: str, role: str, *, member: str | None = None,
                  index: int | None = None, who: str | None = None) -> tuple[dict, int]:
    """Check and write one control record (what ``supervisor VERB ROLE`` and the
    dashboard's ``POST /api/roles/ROLE/VERB`` do): UsageError (one line) for a role
    nobody knows, a verb that does not fit the role, a bad ``member``/``index``;
    ``who`` overrides the record's ``user@host``. Returns (record, revision)."""
    from .runtime import control

    kind = require_role(target, role)
    if verb == control.TRIGGER and kind not in ("cron", None):
        raise UsageError(f"role {role} is a {kind} role; trigger applies to cron roles only")
    if index is not None and kind not in ("sharded", None):
        raise UsageError(f"role {role} is a {kind} role; --index applies to sharded roles only")
    if index is not None and index < 0:
        raise UsageError("--index must be >= 0")
    if index is not None:
        count = role_count(target, role)
        if count is not None and index >= count:
            raise UsageError(f"role {role} has COUNT={count}: --index {index} names no child (0..{count - 1})")
    if member is not None:
        _check_name("member", member)
        if target.backend.get(target.keys.member(member)) is None:
            raise UsageError(f"no live member {member!r} in cluster {target.cluster}")
    record = control.make_record(verb, role, member=member, index=index, who=who)
    return record, control.issue(target.backend, target.keys, record)


@operator_verb
def cmd_control(args, target: Target) -> int:
    from .runtime import control

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
                 f"{control.TRIGGER_MAX_AGE:g}s") if args.verb == control.TRIGGER else \
            f"its children start after 'supervisor resume {args.role}'"
        print(f"role {args.role}: note: the role is paused; {later}")
    return EXIT_OK


# --- health ----------------------------------------------------------------------------------
HEALTH_MAX_BYTES = 64 * 1024  # more than this is not a probe answer
EXPECTED_BODY = {"/healthz": "ok", "/readyz": "ready"}


class NotOurAnswer(Exception):
    """What came back is not an etcdvisor member's probe answer; one line."""


def cmd_health(args) -> int:
    from .config.ops import ListenError, connect_address, format_listen, parse_listen

    try:
        address = _health_address(args, parse_listen)
        if not 0 < args.timeout <= 3600:
            raise UsageError(f"--timeout {args.timeout:g}: give seconds, more than 0 and at most 3600")
    except (UsageError, ListenError) as exc:
        _error(exc)
        return EXIT_USAGE
    host, port = connect_address(address)
    deadline = time.monotonic() + args.timeout  # one bound for the whole command
    paths = ["/healthz"] if args.live else ["/healthz", "/readyz"]
    for path in paths:
        ok, reason = _probe(host, port, path, deadline, format_listen((host, port)))
        if not ok:
            print(f"unhealthy: {path}: {reason}")
            return EXIT_FAIL
    print("ok: alive" if args.live else "ok: alive and ready")
    return EXIT_OK


def _health_address(args, parse_listen) -> tuple[str, int]:
    if args.http:
        return parse_listen(args.http)
    if os.environ.get("ETCDVISOR_HTTP", "").strip():
        return parse_listen(os.environ["ETCDVISOR_HTTP"])
    if args.config:
        from .config import ConfigError, load

        try:
            config = load(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config.http.listen is not None:
            return config.http.listen
        raise UsageError(f"{args.config}: http.listen is not set (nothing to ask)")
    raise UsageError("no address to ask: pass --http ADDR, set ETCDVISOR_HTTP or give -c CONFIG "
                     "with http.listen")


def _probe(host: str, port: int, path: str, deadline: float, shown: str) -> tuple[bool, str]:
    """GET ``path``: (True, body) only for a 200 with the expected body from an
    etcdvisor member (``Server: etcdvisor``). Whatever else answers (a banner, binary,
    a reset, silence, another HTTP server) is (False, one line), read within
    ``deadline`` and ``HEALTH_MAX_BYTES``."""
    try:
        status, headers, body = _exchange(host, port, path, deadline)
    except TimeoutError as exc:  # from a connect or a send, or ours with what came
        what = str(exc) if str(exc) in ("no answer", "an incomplete answer") else "no answer"
        return False, f"{what} from {shown} within --timeout"
    except NotOurAnswer as exc:
        return False, f"{shown} is not an etcdvisor member: {exc}"
    except OSError as exc:
        return False, f"no answer from {shown}: {exc.strerror or exc}"
    text = _one_line(body)
    if headers.get("server", "").split("/")[0].split(" ")[0] != "etcdvisor":
        server = _one_line(headers.get("server", "").encode(), 60)
        source = f"from {server!r}" if server else "without a Server header"
        return False, f"{shown} is not an etcdvisor member: HTTP {status} {source}"
    if status == 200 and text == EXPECTED_BODY[path]:
        return True, text
    return False, f"{status} {text}"


def _exchange(host: str, port: int, path: str, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET, ``Connection: close``; (status, headers, body)."""
    data = bytearray()

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("an incomplete answer" if data else "no answer")
        return left

    with socket.create_connection((host, port), timeout=remaining()) as sock:
        sock.settimeout(remaining())
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: etcdvisor-health\r\n"
                     f"Accept: text/plain\r\nConnection: close\r\n\r\n".encode())
        while True:
            answer = _parse_answer(bytes(data), eof=False)
            if answer is not None:
                return answer
            sock.settimeout(remaining())
            try:
                chunk = sock.recv(HEALTH_MAX_BYTES + 1 - len(data))
            except TimeoutError:
                raise TimeoutError("an incomplete answer" if data else "no answer") from None
            if not chunk:
                answer = _parse_answer(bytes(data), eof=True)
                assert answer is not None
                return answer
            data += chunk
            if len(data) > HEALTH_MAX_BYTES:
                raise NotOurAnswer(f"more than {HEALTH_MAX_BYTES} bytes came back")


def _parse_answer(data: bytes, eof: bool) -> tuple[int, dict[str, str], bytes] | None:
    """The answer once complete, None while more may come; NotOurAnswer if it is
    not HTTP/1.x (or ends early)."""
    if not data.startswith(b"HTTP/"[:len(data)]):
        start = data[:40]
        if all(32 <= byte < 127 or byte in b"\r\n\t" for byte in start):
            raise NotOurAnswer(f"it answered {_one_line(start)!r}, not HTTP")
        raise NotOurAnswer("it answered binary data, not HTTP")
    end = data.find(b"\r\n\r\n")
    head_end = end + 4 if end >= 0 else -1
    if head_end < 0:
        if eof:
            raise NotOurAnswer("the HTTP answer ended before its headers did" if data
                               else "it closed without answering")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: .*)?", lines[0])
    if match is None:
        raise NotOurAnswer(f"bad status line {_one_line(lines[0][:60].encode())!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    body = data[head_end:]
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > HEALTH_MAX_BYTES:
            raise NotOurAnswer(f"Content-Length {_one_line(length[:20].encode())!r}")
        if len(body) < int(length):
            if eof:
                raise NotOurAnswer("the HTTP answer ended before its body did")
            return None
        body = body[:int(length)]
    elif not eof:
        return None
    return int(match.group(1)), headers, body


def _one_line(data: bytes, limit: int = 200) -> str:
    """Printable text of a peer's bytes: no control characters, no line breaks."""
    text = data.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- parser ----------------------------------------------------------------------------------
def add_control_verbs(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG",
                        help="use this config's cluster and etcd settings (default: "
                             "ETCDVISOR_ENDPOINTS and ETCDVISOR_CLUSTER)")
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
    add_rollout_verbs(subparsers, common)
    health = subparsers.add_parser("health", help="probe a running member's /healthz and /readyz "
                                   "(exit 0 ok, 1 not)")
    health.add_argument("-c", "--config", metavar="CONFIG", help="take the address from http.listen")
    health.add_argument("--http", metavar="ADDR", help="HOST:PORT of the member (default: ETCDVISOR_HTTP)")
    health.add_argument("--live", action="store_true", help="only /healthz (liveness)")
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    health.set_defaults(func=cmd_health)

