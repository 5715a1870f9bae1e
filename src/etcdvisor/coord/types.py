"""Plain, immutable values exchanged with a backend.

Keys are ``str`` (UTF-8 on the wire); values are ``bytes``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int  # store revision at which the read was served
    count: int = 0  # total keys in range (may exceed len(kvs) when limited)


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: key and mod_revision set, value empty
    prev_kv: KeyValue | None = None


@dataclass(frozen=True)
class WatchBatch:
    """One response of a watch stream: events sharing one or more revisions.

    ``revision`` is the store revision the server was at when it sent the
    batch; a batch with no events is a progress notification.
    """

    events: tuple[Event, ...]
    revision: int


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # granted TTL in seconds


# --- transactions ---------------------------------------------------------

COMPARE_TARGETS = ("value", "version", "create", "mod", "lease")
COMPARE_OPS = ("=", "!=", "<", ">")


@dataclass(frozen=True)
class Compare:
    """``target(key) op operand``.

    target: ``value`` (bytes), ``version``, ``create`` (create revision),
    ``mod`` (mod revision) or ``lease`` (ints). A missing key has version,
    create and mod revision 0, lease 0 and never equals any value.
    """

    key: str
    target: str
    op: str
    operand: bytes | int

    def __post_init__(self) -> None:
        if self.target not in COMPARE_TARGETS:
            raise ValueError(f"unknown compare target {self.target!r}")
        if self.op not in COMPARE_OPS:
            raise ValueError(f"unknown compare op {self.op!r}")
        if self.target == "value" and not isinstance(self.operand, bytes):
            object.__setattr__(self, "operand", _to_bytes(self.operand))


def value(key: str, op: str, operand: bytes | str) -> Compare:
    return Compare(key, "value", op, _to_bytes(operand))


def version(key: str, op: str, operand: int) -> Compare:
    return Compare(key, "version", op, operand)


def create_revision(key: str, op: str, operand: int) -> Compare:
    return Compare(key, "create", op, operand)


def mod_revision(key: str, op: str, operand: int) -> Compare:
    return Compare(key, "mod", op, operand)


def missing(key: str) -> Compare:
    """True when the key does not exist."""
    return Compare(key, "create", "=", 0)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def __post_init__(self) -> None:
        # callers are typed to pass bytes; untyped callers (and the library's users) may pass str
        object.__setattr__(self, "value", _to_bytes(self.value))


@dataclass(frozen=True)
class Delete:
    key: str
    range_end: str | None = None  # None: just ``key``; see prefix_end()


@dataclass(frozen=True)
class Get:
    key: str
    range_end: str | None = None


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """``succeeded`` tells which branch ran. ``responses`` has one entry per
    op of that branch: Put -> revision (int), Delete -> deleted count (int),
    Get -> tuple[KeyValue, ...]. ``revision`` is the store revision after
    the transaction."""

    succeeded: bool
    revision: int
    # Any: each entry's type depends on its op (see above), which a tuple type cannot say
    responses: tuple[Any, ...] = field(default_factory=tuple)


def _to_bytes(v: object) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TypeError(f"expected bytes or str, got {type(v).__name__}")


def direct_children_by_create(prefix: str, kvs: Iterable[KeyValue]) -> list[KeyValue]:
    """The keys directly under ``prefix`` (not ``prefix`` itself, nothing deeper)
    in join order: by create revision, never by key (docs/safety.md, rule 5)."""
    direct = [kv for kv in kvs if kv.key.startswith(prefix) and kv.key != prefix
              and "/" not in kv.key[len(prefix):]]
    return sorted(direct, key=lambda kv: kv.create_revision)


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode("utf-8"))
    for i in reversed(range(len(raw))):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1]).decode("utf-8", errors="surrogateescape")
    return "\0"  # every key
