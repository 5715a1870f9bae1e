"""What every verb of the ``supervisor`` command shares: exit codes, the one-line error,
argument helpers, and the cluster a verb talks to (:class:`Target`).

Which cluster: ``-c/--config CONFIG`` (its ``cluster`` and ``etcd`` settings; the
``ETCDVISOR_ENDPOINTS``/``ETCDVISOR_CLUSTER`` overrides apply as for ``run``), else
the environment variables ``ETCDVISOR_ENDPOINTS`` and ``ETCDVISOR_CLUSTER`` (every
child of a supervisor has them, so a child can call the operator verbs as is). A
config using ``endpoints: embedded`` needs ``ETCDVISOR_ENDPOINTS`` (the URL the
supervisor logged at start).

Exit codes: 0 success; 1 runtime failure (:class:`Failure`: etcd unreachable, a wait
timed out...); 2 bad usage (:class:`UsageError`: no cluster named, bad config, bad
name). Every error is one line ``error: ...`` on stderr, never a traceback.

This module imports nothing of the etcd side at the top: building the parser (``--help``,
``validate``, ``run``) pays only for argparse.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from ..coord.base import Backend
    from ..coord.keys import ClusterKeys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # roles, topics, wait groups, members
DEFAULT_TIMEOUT = 5.0


class UsageError(Exception):
    """Bad invocation or configuration: exit 2."""


class Failure(Exception):
    """The operation could not be done: exit 1."""


def error(message: object) -> None:
    """The one error line: ``error: MESSAGE`` on stderr, whitespace folded to one line."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


# --- arguments ---------------------------------------------------------------------------
def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid role/topic/wait group/member name, else UsageError."""
    if not OBJECT_NAME.fullmatch(name):
        raise UsageError(f"invalid {kind} name {name!r} (letters, digits, '_', '.', '-'; "
                         f"starting with a letter or digit)")
    return name


def duration_argument(flag: str, text: str) -> float:
    """A duration flag, in the config's one grammar (``60``, ``1.5``, ``2m``, ``1h30m``)."""
    from ..config.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def cluster_options() -> argparse.ArgumentParser:
    """The parent parser of the verbs that talk to a cluster: ``-c/--config``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG",
                        help="use this config's cluster and etcd settings (default: "
                             "ETCDVISOR_ENDPOINTS and ETCDVISOR_CLUSTER)")
    return common


def dumps(value: Any, **options: Any) -> str:
    """:func:`etcdvisor.coord.records.dumps` (strict JSON), imported when output is written."""
    from ..coord.records import dumps as records_dumps

    return records_dumps(value, **options)


# --- the cluster a verb talks to ---------------------------------------------------------
@dataclass(frozen=True)
class Address:
    """Where a verb's cluster is, before connecting."""

    cluster: str
    url: str
    config: Config | None  # when -c was given


@dataclass
class Target:
    """The cluster a verb works on, and its open backend."""

    cluster: str
    url: str
    config: Config | None  # when -c was given
    backend: Backend

    @property
    def keys(self) -> ClusterKeys:
        from ..coord.keys import ClusterKeys

        return ClusterKeys(self.cluster)


def resolve_target(config_path: str | None, environ: Mapping[str, str] | None = None) -> Address:
    """Cluster and endpoints from ``-c CONFIG`` or the environment; UsageError otherwise."""
    environ = os.environ if environ is None else environ
    if config_path:
        from ..config import ConfigError, EtcdKind, load

        try:
            config = load(config_path, environ)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config.etcd.kind is EtcdKind.EMBEDDED:
            raise UsageError(f"{config_path}: etcd.endpoints: the config uses an embedded etcd; set "
                             f"ETCDVISOR_ENDPOINTS to the URL the supervisor logged at start")
        return Address(config.cluster, config.etcd.url, config)
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
    return Address(cluster, endpoints, None)


def connect(address: Address) -> Target:
    """Open the backend: UsageError for a bad URL, Failure when unreachable."""
    from ..coord import open_backend
    from ..coord.errors import CoordError, InvalidURL

    config = address.config
    try:
        if config is None:
            backend = open_backend(address.url, timeout=DEFAULT_TIMEOUT)
        else:
            etcd = config.etcd
            backend = open_backend(
                address.url, timeout=etcd.timeout, tls=etcd.tls, username=etcd.username,
                password_file=etcd.password_file, password_env=etcd.password_env)
    except InvalidURL as exc:
        source = config.source_path if config is not None else "ETCDVISOR_ENDPOINTS"
        raise UsageError(f"{source}: {exc}") from None
    except CoordError as exc:
        raise Failure(str(exc)) from None
    return Target(address.cluster, address.url, config, backend)


Verb = Callable[[argparse.Namespace], int]


def operator_verb(func: Callable[[argparse.Namespace, Target], int]) -> Verb:
    """Run ``func(args, target)`` with the cluster connected, mapping every error to
    one stderr line and an exit code (never a traceback)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from ..coord.errors import CoordError

        address: Address | None = None
        target: Target | None = None
        try:
            address = resolve_target(args.config)
            target = connect(address)
            return func(args, target)
        except UsageError as exc:
            error(exc)
            return EXIT_USAGE
        except Failure as exc:
            error(exc)
            return EXIT_FAIL
        except CoordError as exc:
            error(f"etcd at {address.url if address else '?'}: {exc}")
            return EXIT_FAIL
        except Exception as exc:  # the one-line promise holds for bugs too
            error(f"unexpected {type(exc).__name__}: {exc}")
            return EXIT_FAIL
        finally:
            if target is not None:
                try:
                    target.backend.close()
                except Exception:  # noqa: BLE001 - closing is best effort after the answer
                    pass

    return run
