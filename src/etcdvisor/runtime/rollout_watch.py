"""What a member knows of the others for its rollouts: the watch of ``rollouts/`` and
``members/`` (its threads only post) and the pure reading of the member records.

Member records are decoded here, bounded and typed like rollout records
(:mod:`.rollout_store`): a bad record is skipped with one warning naming its key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..coord.base import Backend
from ..coord.keys import ClusterKeys
from ..coord.records import MEMBER
from ..coord.types import KeyValue
from ..coord.watcher import PrefixWatcher
from . import rollout_store as store

log = logging.getLogger("etcdvisor")


@dataclass(frozen=True)
class RolloutsChanged:
    """Posted by the watch thread: everything under ``rollouts/``."""

    view: store.RolloutView


@dataclass(frozen=True)
class MembersChanged:
    """Posted by the watch thread: member id -> its record's ``roles`` (decoded)."""

    roles: Mapping[str, Mapping[str, Any]]


def others_unready(members: Mapping[str, Mapping[str, Any]], me: str, role: str,
                   holders: set[str]) -> tuple[int, int]:
    """(children of ``role`` on the other members, those of them not ready and not
    holding a slot: ``member:key`` not in ``holders``), from their records."""
    total, unready = 0, 0
    for member, roles in members.items():
        if member == me:
            continue
        children = (roles.get(role) or {}).get("children") or {}
        if not isinstance(children, Mapping):
            continue
        for key, entry in children.items():
            total += 1
            if (not isinstance(entry, Mapping) or entry.get("ready") is not True) and \
                    f"{member}:{key}" not in holders:
                unready += 1
    return total, unready




def decode_members(prefix: str, kvs: Iterable[KeyValue]) -> dict[str, Mapping[str, Any]]:
    """member id -> the ``roles`` of its record; a bad record is skipped with one warning
    (the one decoder: coord/records.py, kind MEMBER)."""
    out: dict[str, Mapping[str, Any]] = {}
    for kv in kvs:
        doc = MEMBER.read(kv, log)
        if doc is not None:
            out[kv.key[len(prefix):]] = doc["roles"]
    return out


class RolloutWatch:
    """The two watch threads (``rollouts/`` and ``members/``); they only post."""

    def __init__(self, backend: Backend, keys: ClusterKeys, post: Callable[[object], None]):
        self.post = post
        prefix, members = store.rollouts_prefix(keys), keys.members
        self.watchers = [
            PrefixWatcher(backend, prefix, lambda change: post(RolloutsChanged(
                store.decode(prefix, change.snapshot.values()))), name="rollouts"),
            PrefixWatcher(backend, members, lambda change: post(MembersChanged(
                decode_members(members, change.snapshot.values()))), name="members"),
        ]

    def start(self, wait: float = 5.0) -> RolloutWatch:
        for watcher in self.watchers:
            watcher.start(wait=wait)
        return self

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop(2.0)
