"""Topic message keys and ids, and the id format of a topic, recorded once
in etcd at ``<prefix>format`` (the topic itself: :mod:`.topic`).

* ``revision`` (the default, and what an absent key means): one message per
  transaction, key ``msg/<seq:016d>-<ms:013d>``, id = the create revision of
  that key. This is the contract the CLI, the topic role and stored cursors
  rely on: ``supervisor publish`` prints the store revision that wrote the
  message.
* ``batched`` (opt-in, for throughput): several messages per transaction,
  key ``msg/<seq:016d>-<ms:013d>-<off:03d>``, id = revision * 1000 + offset.

Contract of :func:`resolve_format`: it returns the topic's format and the
mod revision of its ``format`` key, which exists once it returns. The first
publisher writes the key (create-if-absent); ``batched`` is only written on a
topic that has no ``head`` yet (never published to), so a topic never holds
both kinds of key: a batched publisher on an existing revision topic follows
the topic. A topic published to before formats were recorded (``head`` but no
``format``, e.g. the key was deleted) keeps the format of its newest
message's key, and records it, so ids never go backwards.
Publishers guard every publish transaction on the key's mod revision, so a
changed or deleted key makes them resolve again instead of mixing formats.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..coord.base import Backend
from ..coord.records import decimal
from ..coord.types import Get, KeyValue, Put, missing, prefix_end
from .counter import parse_count

MessageId = int
ID_SCALE = 1000  # batched format: id = revision * ID_SCALE + offset in the transaction


class IdFormat(enum.Enum):
    """How a topic's message ids are made (see module docstring)."""

    REVISION = "revision"
    BATCHED = "batched"


class BadTopicFormat(ValueError):
    """The ``format`` key holds something this version does not know."""


@dataclass(frozen=True)
class Message:
    id: MessageId  # the revision that wrote it (batched format: revision * ID_SCALE + offset)
    data: bytes
    published_at: float  # Unix seconds, publisher's clock
    seq: int = 0  # per-topic sequence number (dense, starts at 1)


_KEY_TAIL = re.compile(r"(\d{1,20})-(\d{1,15})(?:-(\d{1,3}))?")  # <seq>-<ms>[-<off>]


def is_message_key(key: str) -> bool:
    """False for anything else written under ``msg/`` (readers skip it)."""
    return _KEY_TAIL.fullmatch(key.rsplit("/", 1)[-1]) is not None


def parse_message_key(key: str) -> tuple[int, float]:
    """(sequence, published_at) from ``.../msg/<seq>-<ms>[-<off>]``;
    ValueError if ``key`` is not a message key."""
    match = _KEY_TAIL.fullmatch(key.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"not a topic message key: {key!r}")
    return int(match[1]), int(match[2]) / 1000.0


def message_id(kv: KeyValue) -> MessageId:
    """The id of the message stored in ``kv``: its create revision (revision
    format: no offset in the key), or ``create_revision * ID_SCALE + offset``
    (batched format); the create revision for a key that is not a message
    key, so counting never raises."""
    match = _KEY_TAIL.fullmatch(kv.key.rsplit("/", 1)[-1])
    if match is None or match[3] is None:
        return kv.create_revision
    return kv.create_revision * ID_SCALE + int(match[3])


def message_from(kv: KeyValue) -> Message:
    seq, published_at = parse_message_key(kv.key)
    return Message(id=message_id(kv), data=kv.value, published_at=published_at, seq=seq)


def parse_format(key: str, value: bytes) -> IdFormat:
    """The format stored at ``key``; :class:`BadTopicFormat` naming the key otherwise."""
    try:
        return IdFormat(value.decode("utf-8", "replace").strip())
    except ValueError:
        raise BadTopicFormat(f"{key}: unknown topic id format {value[:40]!r} "
                             f"(expected 'revision' or 'batched')") from None


def read_format(backend: Backend, prefix: str, *, revision: int = 0) -> IdFormat:
    """The recorded format of the topic at ``prefix`` (``revision`` if none); reads only."""
    result = backend.range(prefix + "format", revision=revision)
    return parse_format(prefix + "format", result.kvs[0].value) if result.kvs else IdFormat.REVISION


def resolve_format(backend: Backend, prefix: str, *, batched: bool) -> tuple[IdFormat, int]:
    """(format, mod revision of the ``format`` key) for a publisher that
    wants ``batched`` ids on a new topic; writes the key if absent (on a
    topic already published to: the format of its newest message key)."""
    format_key, head_key = prefix + "format", prefix + "head"
    want = IdFormat.BATCHED if batched else IdFormat.REVISION
    only_if_new = True  # a topic already published to keeps the format of its keys
    for _ in range(100):  # each round either writes the key or reads it; only deletions loop
        guards = [missing(format_key)] + ([missing(head_key)] if only_if_new else [])
        result = backend.txn(guards, [Put(format_key, want.value.encode())], [Get(format_key), Get(head_key)])
        if result.succeeded:
            return want, result.revision
        found, head = (r[0] if r else None for r in result.responses)
        if found is not None:
            return parse_format(format_key, found.value), found.mod_revision
        # published to before formats were recorded: keep what its newest key says
        newest = f"{prefix}msg/{parse_count(head):016d}"
        kvs = backend.range(newest, prefix_end(newest), keys_only=True).kvs
        tail = _KEY_TAIL.fullmatch(kvs[0].key.rsplit("/", 1)[-1]) if kvs else None
        want = IdFormat.BATCHED if tail and tail[3] is not None else IdFormat.REVISION
        only_if_new = False
    raise RuntimeError(f"{format_key}: the topic format key keeps changing")


@dataclass(frozen=True)
class TopicBacklog:
    """What a keys-only listing of one topic says about its backlog: the retained
    message ids (ascending), each queue group's done markers and claims, and the
    groups known (from ``groups/``, ``done/`` or ``claims/``). The one count of
    unprocessed messages, for ``status`` and the ``etcdvisor_topic_backlog`` metric."""

    ids: tuple[MessageId, ...]
    done: dict[str, frozenset[int]]
    claimed: dict[str, int]
    groups: frozenset[str]

    def unacked(self, group: str) -> int:
        """Retained messages without ``group``'s done marker (a queue group's backlog)."""
        done = self.done.get(group, frozenset())
        return sum(1 for number in set(self.ids) if number not in done)

    def after(self, cursor: int) -> int:
        """Retained messages past a broadcast subscriber's cursor."""
        return sum(1 for number in self.ids if number > cursor)


def topic_backlog(kvs: Iterable[KeyValue], prefix: str) -> TopicBacklog:
    """:class:`TopicBacklog` from the keys under one topic's ``prefix`` (values unused)."""
    ids: list[MessageId] = []
    done: dict[str, set[int]] = {}
    claimed: dict[str, int] = {}
    groups: set[str] = set()
    for kv in kvs:
        kind, _, tail = kv.key[len(prefix):].partition("/")
        if kind == "msg":
            ids.append(message_id(kv))
        elif kind == "groups":
            groups.add(tail)
        elif kind == "done":
            group, _, number_text = tail.partition("/")
            groups.add(group)
            if (number := decimal(number_text)) is not None:
                done.setdefault(group, set()).add(number)
        elif kind == "claims":
            group = tail.partition("/")[0]
            groups.add(group)
            claimed[group] = claimed.get(group, 0) + 1
    return TopicBacklog(tuple(sorted(ids)), {g: frozenset(n) for g, n in done.items()}, claimed,
                        frozenset(groups))
