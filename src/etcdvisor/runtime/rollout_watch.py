"""What a member knows of the others for its rollouts: the watch of ``rollouts/`` and
``members/`` (its threads only post) and the pure reading of the member records.

``members/`` is watched only while a rollout is under way (a record under
``rollouts/`` not finished): every member record write would otherwise reach
every member, N events per write and N² per membership change (issue 17).
When the watch stops, ``MembersChanged(known=False)`` says the records are no
longer followed; a rollout then waits for the first snapshot of the next watch
before it takes a slot or finishes.

Member records are decoded here, bounded and typed like rollout records
(:mod:`.rollout_store`): a bad record is skipped with one warning naming its key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..coord.base import Backend
from ..coord.keys import ClusterKeys
from ..coord.records import MEMBER
from ..coord.types import KeyValue
from ..coord.watcher import Change, PrefixWatcher
from . import rollout_store as store

log = logging.getLogger("etcdvisor")


@dataclass(frozen=True)
class RolloutsChanged:
    """Posted by the watch thread: everything under ``rollouts/``."""

    view: store.RolloutView


@dataclass(frozen=True)
class MembersChanged:
    """Posted by the watch thread: member id -> its record's ``roles`` (decoded);
    ``known`` False: ``members/`` is not watched (no rollout under way)."""

    roles: Mapping[str, Mapping[str, Any]]
    known: bool = True


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


def under_way(view: store.RolloutView) -> bool:
    """Some rollout is not finished (running, or failed and resumable... anything
    without ``finished``), or a slot is held: the member records are needed."""
    return any(record.finished is None for record in view.records.values()) or any(view.slots.values())


class RolloutWatch:
    """The watch threads of ``rollouts/`` and, while a rollout is under way, of
    ``members/``; they only post."""

    def __init__(self, backend: Backend, keys: ClusterKeys, post: Callable[[object], None]):
        self.post = post
        self.backend = backend
        self.prefix, self.members_prefix = store.rollouts_prefix(keys), keys.members
        self.rollouts = PrefixWatcher(backend, self.prefix, self._on_rollouts, name="rollouts")
        self.members: PrefixWatcher | None = None  # only while a rollout is under way
        self._lock = threading.Lock()
        self._stopped = False

    def _on_rollouts(self, change: Change) -> None:
        view = store.decode(self.prefix, change.snapshot.values())
        self.post(RolloutsChanged(view))
        self._follow_members(under_way(view))

    def _follow_members(self, wanted: bool) -> None:
        """(The rollouts watch thread) start or stop the ``members/`` watch."""
        members = self.members_prefix
        with self._lock:
            if self._stopped or wanted == (self.members is not None):
                return
            if wanted:
                self.members = PrefixWatcher(self.backend, members, lambda change: self.post(MembersChanged(
                    decode_members(members, change.snapshot.values()))), name="members").start()
                return
            watcher, self.members = self.members, None
        assert watcher is not None
        watcher.stop(2.0)
        self.post(MembersChanged({}, known=False))

    def start(self, wait: float = 5.0) -> RolloutWatch:
        self.rollouts.start(wait=wait)
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            members, self.members = self.members, None
        self.rollouts.stop(2.0)
        if members is not None:
            members.stop(2.0)
