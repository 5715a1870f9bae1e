"""Role ``register:`` and ``peers:`` of a member.

``register:`` -- when a child of the role has started (its slot reported
``Started``), the instance is put in the cluster's registry
(:func:`cluster_registry`) on the *member's* lease, so it disappears when the
member dies; it is deleted when the child stops, exits or fails, and put
again on a new lease. Instance id: ``<member>.<role>.<index>``; ``{index}``
is the child's INDEX (0 for roles without one).

``peers:`` -- one :class:`~etcdvisor.coord.watcher.PrefixWatcher` per service
named in some role's ``peers`` posts :class:`PeersSnapshot` events; the loop
rewrites the role's file (a JSON list of instances in registration order,
replaced atomically) and then acts on the running children: ``signal:NAME``
sends the signal, ``restart`` stops them (the slot starts them again),
``none`` nothing. A child of a role with ``peers`` starts only once every
one of its peers files has been written.

Every etcd write and file write is an effect (the loop's effect runner, one
lane, in queue order); ``done`` runs on the loop.

Refusals are faults of the role, never a silent wait or an endless retry:
a registry write or a peers watch refused by the store (``PermissionDenied``)
and a peers file that resolves outside the role's ``cwd``
(:class:`~.private_files.PathEscape`) call ``fail_role(role, what, error)``:
one line naming the key (and the etcd user), the role FAILED.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..config import Config, RoleSpec
from ..config.model import ChangeAction, OnChange
from ..coord.base import Backend
from ..coord.errors import CoordError, PermissionDenied
from ..coord.records import dumps
from ..coord.retry import STORE_RETRY
from ..coord.session import Session
from ..coord.watcher import Change, PrefixWatcher
from ..process.output import child_role_slot
from ..process.slot import Exited, Failed, Slot, SlotEvent, SpawnFailed, Started, Stopped
from ..process.spawn import ChildSpec
from ..recipes.registry import Registry, ServiceInfo, _instances
from .private_files import PathEscape, write_confined
from .role_config import Children, QueueEffect, restartable

log = logging.getLogger("etcdvisor")

RETRY_DELAY = STORE_RETRY.delay(1)  # seconds before a failed registry write is tried again

def cluster_registry(backend: Backend, cluster: str) -> Registry:
    """Where a cluster's ``register:`` instances live (what ``supervisor
    services`` reads): ``/etcdvisor/<cluster>/services/<service>/instances/<id>``.
    Only its key layout and watch are used: the writes go through effects."""
    return Registry.for_cluster(backend, cluster)


@dataclass(frozen=True)
class PeersSnapshot:
    service: str
    instances: tuple[ServiceInfo, ...]


@dataclass(frozen=True)
class PeersDenied:
    """Posted by a watcher thread: the store refused the watch of ``service``."""

    service: str
    error: PermissionDenied


def _log_fault(role: str, what: str, error: BaseException) -> None:
    log.error("role %s: %s: %s", role, what, error, extra={"role": role})


class Registration:
    """``register:`` and ``peers:`` of every role of one member (loop thread)."""

    def __init__(self, config: Config, backend: Backend, session: Session, member_id: str,
                 post: Callable[[object], None], effect: QueueEffect, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self.backend = backend
        self.session = session
        self.member_id = member_id
        self.post = post
        self.effect = effect
        self.registry = cluster_registry(backend, config.cluster)
        self.host = socket.gethostname()
        self.registered: dict[str, tuple[str, ServiceInfo]] = {}  # slot name -> (role, info)
        self.peers: dict[str, tuple[ServiceInfo, ...]] = {}  # service -> instances
        self.written: dict[str, bytes] = {}  # peers file path -> content
        self.retries: dict[tuple[str, str], tuple[float, ServiceInfo]] = {}  # (op, id) -> (when, what)
        self.watchers: dict[str, PrefixWatcher] = {}
        #: ``fail_role(role, what, error)``: the role cannot work (the supervisor fails it)
        self.fail_role: Callable[[str, str, BaseException], None] = _log_fault

    # --- edge ----------------------------------------------------------------------------
    def start(self) -> None:
        services = sorted({s for role in self.config.roles.values() for s in role.peers})
        for service in services:
            if service not in self.watchers:
                watcher = PrefixWatcher(self.backend, self.registry.instances_prefix(service),
                                        functools.partial(self._on_change, service), name=f"peers:{service}",
                                        on_error=functools.partial(self._on_error, service))
                self.watchers[service] = watcher.start(wait=0)

    def _on_change(self, service: str, change: Change) -> None:  # watcher thread: only post
        self.post(PeersSnapshot(service, tuple(_instances(change.snapshot.values()))))

    def _on_error(self, service: str, error: CoordError) -> None:  # watcher thread: only post
        if isinstance(error, PermissionDenied):
            self.post(PeersDenied(service, error))

    def denied(self, event: PeersDenied) -> None:
        """The roles reading ``event.service``'s peers cannot get them: they fail."""
        for role in self.config.roles.values():
            if event.service in role.peers:
                self.fail_role(role.name, f"peers {event.service}", event.error)

    def close(self) -> None:
        for watcher in self.watchers.values():
            watcher.stop()

    # --- register ---------------------------------------------------------------------------
    def instance(self, role: RoleSpec, spec: ChildSpec) -> ServiceInfo:
        """The ServiceInfo of a started child of ``role`` (``spec``: its ChildSpec)."""
        reg = role.register
        assert reg is not None  # only roles with register: get here
        index = spec.vars.index if spec.vars.index is not None else 0
        port = reg.port_for(index)
        fill = {"host": self.host, "member": self.member_id, "index": index, "port": port}
        meta = {k: v.format(**fill) if isinstance(v, str) else v for k, v in reg.meta.items()}
        return ServiceInfo(name=reg.service, id=f"{self.member_id}.{role.name}.{index}",
                           address=reg.address.format(**fill), port=port,
                           metadata={**meta, "member": self.member_id, "role": role.name})

    def on_slot_events(self, events: Sequence[SlotEvent], children: Children) -> None:
        """Register on ``Started``, deregister when the child is gone."""
        if not events:
            return
        owners = {slot.name: (runner, slot) for runner, _key, slot in children}
        for event in events:
            if isinstance(event, Started):
                owner = owners.get(event.slot)
                if owner is None:
                    continue
                runner, slot = owner
                role = self.config.roles.get(runner.name)
                if role is None or role.register is None or slot.child is None:
                    continue
                try:
                    info = self.instance(role, slot.child.spec)
                except (ValueError, KeyError, IndexError) as exc:  # validated; never crash the loop
                    log.error("role %s: cannot register: %s", role.name, exc, extra={"role": role.name})
                    continue
                self.registered[event.slot] = (role.name, info)
                self._put(info)
            elif isinstance(event, (Stopped, Exited, Failed, SpawnFailed)) and event.slot in self.registered:
                _role, info = self.registered.pop(event.slot)
                self._delete(info)

    def _put(self, info: ServiceInfo) -> None:
        key, lease = self.registry.instance_key(info.name, info.id), self.session.lease_id

        def done(_result: object, error: BaseException | None) -> None:
            self.retries.pop(("put", info.id), None)
            if isinstance(error, PermissionDenied):
                self.fail_role(str(info.metadata.get("role", "")), f"register {info.id}", error)
                return  # retrying cannot help
            if error is not None and any(i is info for _r, i in self.registered.values()):
                log.warning("registering %s failed (%s); retrying in %gs", info.id, error, RETRY_DELAY)
                self.retries[("put", info.id)] = (self.clock() + RETRY_DELAY, info)

        self.effect(f"register {info.id}", lambda: self.backend.put(key, info.to_json(), lease=lease), done)

    def _delete(self, info: ServiceInfo) -> None:
        key = self.registry.instance_key(info.name, info.id)
        self.retries.pop(("put", info.id), None)

        def done(_result: object, error: BaseException | None) -> None:
            registered_again = any(i.id == info.id for _r, i in self.registered.values())
            if isinstance(error, PermissionDenied):
                self.fail_role(str(info.metadata.get("role", "")), f"deregister {info.id}", error)
                return  # the lease removes it when the member goes
            if error is not None and not registered_again:  # else the lease takes it at the latest
                log.warning("deregistering %s failed (%s); retrying in %gs", info.id, error, RETRY_DELAY)
                self.retries[("delete", info.id)] = (self.clock() + RETRY_DELAY, info)

        self.effect(f"deregister {info.id}", lambda: self.backend.delete(key), done)

    def retry_due(self, now: float) -> None:
        """Write again what failed (an etcd hiccup must not leave an instance
        missing, or a stopped child's instance listed, until the next start)."""
        for (op, instance_id), (at, info) in list(self.retries.items()):
            if at <= now:
                del self.retries[(op, instance_id)]
                (self._put if op == "put" else self._delete)(info)

    def next_deadline(self) -> float | None:
        return min((at for at, _info in self.retries.values()), default=None)

    def on_new_lease(self) -> None:
        """The old lease is gone and took our instances with it."""
        for _role, info in self.registered.values():
            self._put(info)

    def status(self, role_name: str) -> list[dict[str, Any]]:
        return [{"service": info.name, "id": info.id, "address": info.address, "port": info.port}
                for role, info in self.registered.values() if role == role_name]

    # --- peers ---------------------------------------------------------------------------------
    def peers_path(self, role: RoleSpec, service: str) -> str:
        return os.path.join(self.config.role_cwd(role), role.peers[service].file)

    def handle(self, event: PeersSnapshot, children: Callable[[], Children]) -> None:
        """``children()``: the (runner, key, slot) triples when the file is written."""
        self.peers[event.service] = event.instances
        self.refresh(children, only=event.service)

    def refresh(self, children: Callable[[], Children], only: str | None = None) -> None:
        """Bring every peers file up to date with the known instances (after a
        reload, a role may name a new file for a service already followed)."""
        for role in self.config.roles.values():
            for service in role.peers:
                if service in self.peers and only in (None, service):
                    data = dumps([asdict(i) for i in self.peers[service]], sort_keys=True).encode() + b"\n"
                    self._write_peers(role, service, data, children)

    def _write_peers(self, role: RoleSpec, service: str, data: bytes, children: Callable[[], Children]) -> None:
        path = self.peers_path(role, service)
        if self.written.get(path) == data:
            return
        first = path not in self.written
        on_change = role.peers[service].on_change

        def done(_result: object, error: BaseException | None) -> None:
            if isinstance(error, PathEscape):
                self.fail_role(role.name, "peers file", error)
                return
            if error is not None:
                log.error("role %s: cannot write peers file %s: %s", role.name, path, error,
                          extra={"role": role.name})
                return
            self.written[path] = data
            if not first:
                self._act(role, service, on_change, children)

        root, relative = self.config.role_cwd(role), role.peers[service].file
        key = f"roles.{role.name}.peers.{service}.file"
        self.effect(f"write peers file {path}", lambda: write_confined(root, relative, data, key=key), done)

    def _act(self, role: RoleSpec, service: str, on_change: OnChange, children: Callable[[], Children]) -> None:
        for runner, _key, slot in children():
            if runner.name != role.name or slot.child is None or not slot.child.alive:
                continue
            signum = on_change.signal  # set whenever the action is SIGNAL (config/model.py)
            if on_change.action is ChangeAction.SIGNAL and signum is not None and slot.signal(signum):
                log.info("%s: peers of %s changed; sent %s", slot.name, service, signum.name,
                         extra=_where(role.name, slot))
            elif on_change.action is ChangeAction.RESTART and restartable(role):
                log.info("%s: peers of %s changed; restarting", slot.name, service, extra=_where(role.name, slot))
                slot.restart_child(self.clock(), "config")  # the slot starts it again (same spec)

    def gate(self, role: RoleSpec, desired: dict[str, ChildSpec],
             current: Mapping[str, Slot]) -> dict[str, ChildSpec]:
        """Children of a role with ``peers`` start once every peers file exists."""
        if not role.peers:
            return desired
        if all(self.peers_path(role, s) in self.written for s in role.peers):
            return desired
        return {key: spec for key, spec in desired.items() if key in current and current[key].child}


def _where(role: str, slot: Slot) -> dict[str, str | None]:
    """``role``/``slot`` of a log line about one child (the JSON log fields)."""
    name = slot.child.spec.name if slot.child is not None else slot.name
    return {"role": role, "slot": child_role_slot(name)[1]}
