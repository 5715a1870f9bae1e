"""Rolling restarts from the command line.

::

    supervisor restart ROLE [--wait]          a rollout of a sharded or singleton role
    supervisor rollout status ROLE [--json]   the role's current (or last) rollout
    supervisor rollout resume ROLE            a failed or aborted rollout goes on
    supervisor rollout abort ROLE             restart no more children

``restart ROLE`` (no ``--member``/``--index``) of a sharded or singleton role writes the
rollout record ``/etcdvisor/<cluster>/rollouts/<role>`` (see
:mod:`etcdvisor.runtime.rollout_store`); the members restart their children
``max_unavailable`` at a time. With ``--wait`` it prints one line per progress step and
exits 0 when the rollout is done, 1 when it failed or was aborted (a newer trigger
that supersedes it is followed instead). ``rollout resume|abort`` exit 1 when there is
nothing to resume or abort.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import TYPE_CHECKING

from .cluster import require_known_cluster, require_role
from .kit import EXIT_FAIL, EXIT_OK, Failure, Target, UsageError, operator_verb

if TYPE_CHECKING:
    from ..runtime.rollout_store import RolloutRecord

POLL = 0.2  # seconds between two reads of the record while waiting


def _children(target: Target, role: str) -> int:
    """Children of ``role`` in the live member records."""
    from ..coord.records import MEMBER

    total = 0
    for kv in target.backend.get_prefix(target.keys.members).kvs:
        doc = MEMBER.read(kv)  # the strict decoder: a bad record is skipped, one warning naming its key
        if doc is None:
            continue
        children = (doc["roles"].get(role) or {}).get("children") or {}
        total += len(children) if isinstance(children, dict) else 0
    return total


def start_rollout(args: argparse.Namespace, target: Target) -> int:
    """``restart ROLE`` of a sharded or singleton role: write the rollout (superseding
    any running one) and, with ``--wait``, follow it."""
    from ..runtime import control, rollout_store

    who, _host = control.operator()
    record = rollout_store.new_record(args.role, "restart", who)
    written = rollout_store.start(target.backend, target.keys, record)
    assert written is not None
    # the control record too: status shows who restarted the role when (members leave it to the rollout)
    control.issue(target.backend, target.keys, {**control.make_record(control.RESTART, args.role),
                                                "rollout": record.id})
    print(f"role {args.role}: rolling restart {record.id} (by {who} at {rollout_store.to_iso(record.started)}, "
          f"revision {written.revision})")
    if target.backend.get(control.control_key(target.keys, args.role, control.PAUSE)) is not None:
        print(f"role {args.role}: note: the role is paused; its children start after "
              f"'supervisor resume {args.role}'")
    if _children(target, args.role) == 0:
        print(f"role {args.role}: note: no live member runs a child of it; members that start "
              f"later finish the rollout (nothing of theirs needs a restart)")
    if not getattr(args, "wait", False):
        return EXIT_OK
    return wait_for(target, args.role, record.id)


def wait_for(target: Target, role: str, rollout_id: str) -> int:
    """Print progress until the rollout (or the one that superseded it) ends."""
    from ..runtime import rollout_store

    pause = threading.Event()
    last: tuple[str, str, int] | None = None
    started = time.monotonic()
    while True:
        record = rollout_store.read_record(target.backend, target.keys, role)
        if record is None:
            raise Failure(f"role {role}: the rollout record is gone")
        if record.id != rollout_id:
            print(f"role {role}: rollout {rollout_id} superseded by {record.id} ({record.trigger} by "
                  f"{record.who}); following it")
            rollout_id = record.id
        state = (record.id, record.state, len(record.done))
        if state != last:
            last = state
            print(f"role {role}: rollout {record.id}: {record.state}, {len(record.done)}/"
                  f"{_children(target, role)} children restarted ({time.monotonic() - started:.1f}s)",
                  flush=True)
        if record.state == rollout_store.DONE:
            return EXIT_OK
        if record.state == rollout_store.FAILED:
            reason = record.failed.reason if record.failed is not None else "unknown"
            print(f"role {role}: rollout failed: {reason} (see 'supervisor rollout resume|abort {role}')")
            return EXIT_FAIL
        if record.state == rollout_store.ABORTED:
            print(f"role {role}: rollout aborted")
            return EXIT_FAIL
        pause.wait(POLL)


def describe(record: RolloutRecord) -> str:
    from ..runtime import rollout_store

    line = (f"rollout {record.id}: {record.state} ({record.trigger} by {record.who} at "
            f"{rollout_store.to_iso(record.started)}), {len(record.done)} children restarted")
    if record.failed is not None:
        line += f"; failed: {record.failed.reason}"
    return line


@operator_verb
def cmd_rollout(args: argparse.Namespace, target: Target) -> int:
    from ..runtime import rollout_store

    require_known_cluster(target)
    kind = require_role(target, args.role)
    if kind not in ("sharded", "singleton", None):
        raise UsageError(f"role {args.role} is a {kind} role; rollouts apply to sharded and singleton roles")
    if args.action == "status":
        record = rollout_store.read_record(target.backend, target.keys, args.role)
        if args.json:
            print(json.dumps({"role": args.role, "rollout": record.to_json() if record else None,
                              "children": _children(target, args.role)}, allow_nan=False))
        elif record is None:
            print(f"role {args.role}: no rollout")
        else:
            print(f"role {args.role}: {describe(record)} of {_children(target, args.role)}")
        return EXIT_OK
    change = rollout_store.resume if args.action == "resume" else rollout_store.abort
    written = change(target.backend, target.keys, args.role)
    if written is None:
        record = rollout_store.read_record(target.backend, target.keys, args.role)
        now = f"it is {record.state}" if record is not None else "there is none"
        raise Failure(f"role {args.role}: no rollout to {args.action} ({now})")
    print(f"role {args.role}: {describe(written)}")
    if args.action == "resume" and getattr(args, "wait", False):
        return wait_for(target, args.role, written.id)
    return EXIT_OK


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """rollout status|resume|abort (restart ROLE starts one: :mod:`.control`)."""
    rollout = subparsers.add_parser("rollout", help="show, resume or abort the rolling restart of a role")
    actions = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("status", "the role's current or last rollout"),
                         ("resume", "a failed or aborted rollout goes on"),
                         ("abort", "restart no more children of the rollout")):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("role", metavar="ROLE")
        if action == "status":
            parser.add_argument("--json", action="store_true", help="one JSON object")
        if action == "resume":
            parser.add_argument("--wait", action="store_true", help="follow it until it ends (exit 0 done, 1 not)")
        parser.set_defaults(func=cmd_rollout)
