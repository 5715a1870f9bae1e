"""Barriers: ``after: [role, ...]`` and ``wait_for: [waitgroup, ...]``.

A role with barriers gets no children until every barrier is open:

* ``after: [dep]`` opens when ``dep`` completed successfully:
  - a ``job``: its record says ``succeeded`` for its current spec hash;
  - a ``sharded`` or ``singleton`` role that does not restart always: for
    some COUNT N, every INDEX 0..N-1 has a ``done`` record with exit 0
    (written by the runner when its child's final exit is 0);
* ``wait_for: [name]`` opens when the distributed wait group
  ``waitgroups/<name>`` is zero (or does not exist).

Facts come from :class:`PrefixWatcher` mirrors (nothing polled, nothing
missed); the watch threads post :class:`BarrierFact` events and only the
loop updates the gate. A barrier the store refuses to let us read
(``PermissionDenied``) posts a fact with ``denied`` set: the loop fails the
roles waiting on it (one line naming key and user), never a silent wait.
Once open a barrier stays open for the life of the member: a role that
started is not stopped when a dependency's record is later deleted (``rerun``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import Config, RoleSpec, RoleType
from ..coord.base import Backend
from ..coord.errors import CoordError, PermissionDenied
from ..coord.keys import ClusterKeys
from ..coord.records import DONE, JOB
from ..coord.types import KeyValue
from ..coord.watcher import Change, PrefixWatcher
from ..recipes.counter import parse_count
from ..roles.job import job_done, spec_hash

log = logging.getLogger("etcdvisor")
MAX_DONE_COUNT = 1 << 20  # a done key's COUNT beyond this is not ours (range() below stays cheap)


@dataclass(frozen=True)
class BarrierFact:
    name: str  # "role:<dep>" or "waitgroup:<name>"
    open: bool
    denied: PermissionDenied | None = None  # the store refused the read (the barrier stays closed)


def done_key(keys: ClusterKeys, role: str, count: int, index: int) -> str:
    return keys.done_record(role, count, index)


def completed(dep: RoleSpec, keys: ClusterKeys, snapshot: Mapping[str, KeyValue]) -> bool:
    """Is ``dep`` complete according to the mirror of ``roles/<dep>/``?
    A bad record (strict decoder, coord/records.py) counts as not complete."""
    if dep.type is RoleType.JOB:
        kv = snapshot.get(keys.job(dep.name))
        record = JOB.read(kv, log) if kv else None
        if record is None:
            return False
        return job_done(record, spec_hash(dep)) and record.get("state") == "succeeded"
    prefix = keys.done(dep.name)
    by_count: dict[int, set[int]] = {}
    for key, kv in snapshot.items():
        if not key.startswith(prefix):
            continue
        try:
            count_text, index_text = key[len(prefix):].split("/")
            count, index = int(count_text), int(index_text)
        except ValueError:
            continue
        doc = DONE.read(kv, log)
        if doc is not None and doc["exit_code"] == 0 and 0 <= index < count <= MAX_DONE_COUNT:
            by_count.setdefault(count, set()).add(index)
    return any(indexes >= set(range(count)) for count, indexes in by_count.items())


class BarrierGate:
    def __init__(self, config: Config, keys: ClusterKeys, backend: Backend, post: Callable[[object], None]):
        self.config = config
        self.keys = keys
        self.backend = backend
        self.post = post
        self.facts: dict[str, bool] = {}
        self.needs: dict[str, tuple[str, ...]] = {}
        for role in config.roles.values():
            names = tuple(f"role:{d}" for d in role.after) + tuple(f"waitgroup:{w}" for w in role.wait_for)
            if names:
                self.needs[role.name] = names
                for name in names:
                    self.facts.setdefault(name, False)
        self._watchers: list[PrefixWatcher] = []
        self._announced: set[str] = set()

    def start(self) -> None:
        for name in self.facts:
            kind, target = name.split(":", 1)
            if kind == "role":
                dep = self.config.role(target)
                prefix = self.keys.role(target)
                handler = self._role_handler(name, dep)
            else:
                prefix = self.keys.waitgroup(target)
                handler = self._waitgroup_handler(name, prefix)
            self._watchers.append(PrefixWatcher(self.backend, prefix, handler, name=f"barrier:{name}",
                                                on_error=functools.partial(self._on_error, name)).start())

    def _on_error(self, name: str, error: CoordError) -> None:  # watch thread: only post
        if isinstance(error, PermissionDenied):
            self.post(BarrierFact(name, False, denied=error))

    def waiting(self, name: str) -> list[str]:
        """The roles that need barrier ``name`` and have not passed their barriers."""
        return [role for role, names in self.needs.items() if name in names and role not in self._announced]

    def _role_handler(self, name: str, dep: RoleSpec) -> Callable[[Change], None]:
        def handle(change: Change) -> None:
            self.post(BarrierFact(name, completed(dep, self.keys, change.snapshot)))
        return handle

    def _waitgroup_handler(self, name: str, key: str) -> Callable[[Change], None]:
        def handle(change: Change) -> None:
            try:
                count = parse_count(change.snapshot.get(key))
            except (ValueError, CoordError):
                count = 1  # garbage in the key: keep the barrier closed
            self.post(BarrierFact(name, count == 0))
        return handle

    def update(self, fact: BarrierFact) -> None:
        if self.facts.get(fact.name) != fact.open:
            self.facts[fact.name] = fact.open
            log.info("barrier %s is %s", fact.name, "open" if fact.open else "closed")

    def allows(self, role: str) -> bool:
        """True once every barrier of ``role`` is open; then True for good
        (a role that started is not stopped because a barrier closed)."""
        if role in self._announced:
            return True
        names = self.needs.get(role, ())
        ok = all(self.facts.get(n) for n in names)
        if ok and names and role not in self._announced:
            self._announced.add(role)
            log.info("role %s: barriers open (%s): starting", role, ", ".join(names))
        return ok

    def waiting_on(self, role: str) -> list[str]:
        if role in self._announced:
            return []
        return [n for n in self.needs.get(role, ()) if not self.facts.get(n)]

    def rebuild(self, config: Config) -> BarrierGate:
        """A gate for a reloaded config; roles that already passed their
        barriers (and whose barriers did not change) stay open."""
        self.stop()
        gate = BarrierGate(config, self.keys, self.backend, self.post)
        gate._announced = {name for name in self._announced
                           if name in config.roles and gate.needs.get(name) == self.needs.get(name)}
        gate.start()
        return gate

    def stop(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
