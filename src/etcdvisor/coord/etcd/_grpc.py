"""The gRPC boundary of the etcd backend: the client libraries, channel
options, message conversions and the error translator (tooz's failure
translator). Nothing outside ``coord/etcd/`` imports grpc or etcd3."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

# The supervisor forks children while gRPC threads run; gRPC's fork handlers
# are not needed (children exec at once) and log noise at every fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

__all__ = ["grpc", "etcdrpc", "Message", "Metadata", "CONNECT_TIMEOUT_MS", "kb", "ks", "to_kv", "short_reason",
           "translate", "to_event", "compare_msg", "op_msg", "op_result"]

Message = Any
"""A protobuf message of etcd3's generated ``etcdrpc`` modules, which ship no type
information: their fields are checked by etcd at run time, not by mypy."""

Metadata = tuple[tuple[str, str], ...]
"""gRPC call metadata: (key, value) pairs (the auth token)."""


def _load_etcdrpc() -> types.ModuleType:
    """etcd3's generated protocol modules without ``etcd3/__init__``, which
    imports the whole etcd3 client (and its dependencies) that we do not use:
    about 3 MiB of an idle supervisor's RSS. A placeholder parent package is
    registered only while the submodule loads; a later ``import etcd3`` runs
    the real package, which picks up the already-loaded ``etcd3.etcdrpc``."""
    if "etcd3" in sys.modules:
        from etcd3 import etcdrpc as loaded

        module: types.ModuleType = loaded  # etcd3 ships no types: name what it is
        return module
    spec = importlib.util.find_spec("etcd3")
    if spec is None or not spec.submodule_search_locations:
        from etcd3 import etcdrpc as loaded  # let the normal import report the problem

        module = loaded
        return module
    placeholder = types.ModuleType("etcd3")
    placeholder.__path__ = list(spec.submodule_search_locations)
    placeholder.__spec__ = spec
    sys.modules["etcd3"] = placeholder
    try:
        return importlib.import_module("etcd3.etcdrpc")
    finally:
        if sys.modules.get("etcd3") is placeholder:
            del sys.modules["etcd3"]


etcdrpc = _load_etcdrpc()

from grpc import _common as _grpc_common  # noqa: E402  # idle cost: see _quiet_blocked_streams


def _quiet_blocked_streams() -> None:
    """gRPC's sync API waits for the next stream message in slices of 0.1 s
    so that the main thread can see KeyboardInterrupt: every thread blocked
    on a watch then wakes ten times a second, which is most of an idle
    supervisor's CPU. Our streams are read on worker threads and cancelled
    by notification, so a long slice loses nothing; unary calls all carry
    their own deadlines."""
    if getattr(_grpc_common, "MAXIMUM_WAIT_TIMEOUT", 0) < 30:
        _grpc_common.MAXIMUM_WAIT_TIMEOUT = 30.0


_quiet_blocked_streams()

from ..errors import AuthFailed, Compacted, CoordError, CoordTimeout, LeaseNotFound, PermissionDenied, Unavailable  # noqa: E402
from ..types import Compare, Delete, Event, EventType, Get, KeyValue, Op, Put  # noqa: E402

CONNECT_TIMEOUT_MS = 5_000
"""How long one connection attempt may take (slow links need several round trips)."""

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # gRPC uses this as the minimum *connect timeout* (TCP + HTTP/2 SETTINGS
    # handshake), not as a backoff: at 100 ms no connection could be made over
    # a path with round trips above ~100 ms. The retry cadence stays 0.1-1 s.
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
    # detect a dead peer under an open watch; etcd accepts pings every 5 s,
    # but only while a call is active (otherwise it answers GOAWAY too_many_pings)
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

_COMPARE_TARGET = {
    "value": etcdrpc.Compare.VALUE,
    "version": etcdrpc.Compare.VERSION,
    "create": etcdrpc.Compare.CREATE,
    "mod": etcdrpc.Compare.MOD,
    "lease": etcdrpc.Compare.LEASE,
}
_COMPARE_OP = {
    "=": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
_COMPARE_FIELD = {"value": "value", "version": "version", "create": "create_revision",
                  "mod": "mod_revision", "lease": "lease"}


def kb(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def ks(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def to_kv(msg: Message) -> KeyValue:
    return KeyValue(key=ks(msg.key), value=bytes(msg.value), create_revision=msg.create_revision,
                    mod_revision=msg.mod_revision, version=msg.version, lease=msg.lease)


def short_reason(exc: CoordError) -> str:
    """'Connection refused' out of gRPC's long 'failed to connect to all
    addresses; last error: ...: Connection refused'."""
    if isinstance(exc, CoordTimeout):
        return "timed out"
    text = str(exc).rstrip()
    return text.rsplit(": ", 1)[-1] or type(exc).__name__


def translate(exc: grpc.RpcError, what: str) -> CoordError:
    """Map a gRPC error to our hierarchy, with a one-line message."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    text = f"{what}: {details or code}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CoordTimeout(f"{what}: timed out")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return Unavailable(text)
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        return PermissionDenied(f"{what}: permission denied")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthFailed(text)
    if "lease not found" in details:
        return LeaseNotFound(text)
    if "compacted" in details:
        return Compacted(0)
    return CoordError(text)


def to_event(ev: Message) -> Event:
    kind = EventType.DELETE if ev.type == 1 else EventType.PUT
    prev = to_kv(ev.prev_kv) if ev.HasField("prev_kv") else None
    return Event(type=kind, kv=to_kv(ev.kv), prev_kv=prev)


def compare_msg(c: Compare) -> Message:
    msg = etcdrpc.Compare(key=kb(c.key), target=_COMPARE_TARGET[c.target], result=_COMPARE_OP[c.op])
    setattr(msg, _COMPARE_FIELD[c.target], c.operand)
    return msg


def op_msg(op: Op) -> Message:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=kb(op.key), value=op.value,
                                                                 lease=op.lease))
    if isinstance(op, Delete):
        req = etcdrpc.DeleteRangeRequest(key=kb(op.key))
        if op.range_end is not None:
            req.range_end = kb(op.range_end)
        return etcdrpc.RequestOp(request_delete_range=req)
    if isinstance(op, Get):
        req = etcdrpc.RangeRequest(key=kb(op.key))
        if op.range_end is not None:
            req.range_end = kb(op.range_end)
        return etcdrpc.RequestOp(request_range=req)
    raise TypeError(f"unknown txn op {op!r}")


def op_result(resp: Message) -> int | tuple[KeyValue, ...] | None:
    kind = resp.WhichOneof("response")
    if kind == "response_put":
        return int(resp.response_put.header.revision)
    if kind == "response_delete_range":
        return int(resp.response_delete_range.deleted)
    if kind == "response_range":
        return tuple(to_kv(kv) for kv in resp.response_range.kvs)
    return None
