"""Service registry: register, discover and watch service instances.

Key layout (``prefix`` default ``/etcdvisor/services``)::

    <prefix>/<namespace>/<service>/instances/<id>   JSON ServiceInfo, on the lease
    <prefix>/<namespace>/<service>/election/<lease>  candidates of election(service)

Guarantees:

* every instance this registry registers hangs on one lease (one
  :class:`~etcdvisor.coord.session.Session`, started on first use): a
  crashed process disappears after ``ttl`` seconds, :meth:`Registry.close`
  removes all its instances at once;
* when the lease is lost while the process lives (a partition longer than
  the TTL), the session grants a new one and a background thread
  re-registers every instance still registered here; a ``deregister`` is
  never undone by that thread;
* :meth:`Registry.watch` is built on
  :class:`~etcdvisor.coord.watcher.PrefixWatcher`: the callback gets the
  full instance list (registration order) after every change, nothing
  missed across broken streams or compaction.

Limits: ``discover`` skips (and logs) values that are not a valid
ServiceInfo JSON document, as written by other tools. An instance deleted
by someone else while our lease lives is not re-created. Watch callbacks
run on the watcher thread and must be quick.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..coord.base import Backend
from ..coord.errors import CoordError, LeaseNotFound
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..coord.types import KeyValue
from ..coord.watcher import Change, PrefixWatcher

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/etcdvisor/services"


@dataclass(frozen=True)
class ServiceInfo:
    """One instance of a service, stored as JSON."""

    name: str
    id: str
    address: str
    port: int
    version: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ServiceInfo:
        """Parse a stored document; raises ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            info = cls(name=data["name"], id=data["id"], address=data["address"], port=data["port"],
                       version=data.get("version", ""), metadata=data.get("metadata") or {})
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from None
        if not isinstance(info.metadata, dict):
            raise ValueError("metadata is not an object")
        return info


class Registry:
    """Register this process's service instances; discover and watch others."""

    def __init__(self, backend: Backend, namespace: str = "default", prefix: str = DEFAULT_PREFIX,
                 ttl: int = 15, *, retry_interval: float = 1.0):
        _check_segment("namespace", namespace)
        self.backend = backend
        self.namespace = namespace
        self.root = f"{prefix.rstrip('/')}/{namespace}"
        self.ttl = int(ttl)
        self.retry_interval = retry_interval
        self._registered: dict[tuple[str, str], ServiceInfo] = {}
        self._lock = threading.RLock()  # guards _registered and the writes that mirror it
        self._session: Session | None = None
        self._watchers: list[PrefixWatcher] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reregistrar: threading.Thread | None = None
        self._closed = False

    # --- keys -------------------------------------------------------------------
    def instances_prefix(self, name: str) -> str:
        _check_segment("service name", name)
        return f"{self.root}/{name}/instances/"

    def instance_key(self, name: str, instance_id: str) -> str:
        _check_segment("instance id", instance_id)
        return self.instances_prefix(name) + instance_id

    # --- registration -----------------------------------------------------------------
    def register(self, info: ServiceInfo) -> None:
        """Publish ``info`` on this registry's lease (replacing an earlier
        registration of the same name and id)."""
        key = self.instance_key(info.name, info.id)
        session = self.session()
        with self._lock:
            self._registered[(info.name, info.id)] = info
            try:
                self.backend.put(key, info.to_json(), lease=session.lease_id)
            except LeaseNotFound:  # lease just lost: the re-registrar puts it on the new one
                log.info("registry: lease lost while registering %s, will re-register", key)
                self._wake.set()

    def deregister(self, name: str, instance_id: str) -> bool:
        """Remove an instance; True if it was registered here or stored."""
        key = self.instance_key(name, instance_id)
        with self._lock:
            known = self._registered.pop((name, instance_id), None) is not None
            return self.backend.delete(key) > 0 or known

    def registered(self) -> list[ServiceInfo]:
        with self._lock:
            return list(self._registered.values())

    # --- discovery ------------------------------------------------------------------
    def discover(self, name: str) -> list[ServiceInfo]:
        """Live instances of ``name`` in registration (create revision) order."""
        result = self.backend.get_prefix(self.instances_prefix(name))
        return _instances(result.kvs)

    def watch(self, name: str, callback: Callable[[list[ServiceInfo]], None]) -> PrefixWatcher:
        """Call ``callback(instances)`` with the full current list at start
        and after every change; returns the watcher (``stop()`` ends it)."""
        def on_change(change: Change) -> None:
            callback(_instances(change.snapshot.values()))

        watcher = PrefixWatcher(self.backend, self.instances_prefix(name), on_change,
                                name=f"registry:{name}")
        with self._lock:
            self._watchers.append(watcher)
        return watcher.start(wait=self.backend.timeout)

    def election(self, name: str, value: str | bytes = b""):
        """An :class:`~etcdvisor.recipes.election.Election` among instances of
        ``name``, on this registry's lease."""
        from .election import Election

        _check_segment("service name", name)
        return Election(self.backend, f"{self.root}/{name}/election/", self.session(), value,
                        name=f"election:{self.namespace}/{name}")

    # --- lifecycle -----------------------------------------------------------------
    def session(self) -> Session:
        """The registry's session (started on first use)."""
        with self._lock:
            if self._closed:
                raise CoordError("registry closed")
            if self._session is None:
                session = Session(self.backend, self.ttl, name=f"registry:{self.namespace}")
                session.add_listener(self._on_session_event)
                self._session = session.start()
                self._reregistrar = threading.Thread(target=self._reregister_loop, daemon=True,
                                                     name=f"registry-reregister:{self.namespace}")
                self._reregistrar.start()
            return self._session

    def close(self) -> None:
        """Stop watchers and the re-registrar, revoke the lease (every
        instance registered here disappears at once). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watchers, self._watchers = self._watchers, []
            session, self._session = self._session, None
            self._registered.clear()
        self._stop.set()
        self._wake.set()
        for watcher in watchers:
            watcher.stop()
        if self._reregistrar is not None:
            self._reregistrar.join(5)
        if session is not None:
            session.close(revoke=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- re-registration after a lease loss -----------------------------------------------
    def _on_session_event(self, event: SessionEvent) -> None:
        if event.kind is SessionEventKind.NEW_LEASE:
            self._wake.set()  # keepalive thread: hand the work over

    def _reregister_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            if not self._reregister_all():
                self._stop.wait(self.retry_interval)
                self._wake.set()  # try again

    def _reregister_all(self) -> bool:
        """Put every registered instance on the current lease; False if one
        failed (retried later)."""
        session = self._session
        if session is None or not session.alive:
            return True  # the next NEW_LEASE wakes us
        ok = True
        with self._lock:
            for (name, instance_id), info in list(self._registered.items()):
                try:
                    self.backend.put(self.instance_key(name, instance_id), info.to_json(),
                                     lease=session.lease_id)
                except CoordError as exc:
                    log.warning("registry: re-registering %s/%s failed: %s", name, instance_id, exc)
                    ok = False
        if ok:
            log.info("registry: re-registered %d instance(s) on lease %x",
                     len(self._registered), session.lease_id)
        return ok


def _instances(kvs) -> list[ServiceInfo]:
    found = []
    for kv in sorted(kvs, key=lambda kv: kv.create_revision):
        info = _parse(kv)
        if info is not None:
            found.append(info)
    return found


def _parse(kv: KeyValue) -> ServiceInfo | None:
    try:
        return ServiceInfo.from_json(kv.value)
    except (ValueError, TypeError) as exc:
        log.warning("registry: skipping %s: not a ServiceInfo document (%s)", kv.key, exc)
        return None


def _check_segment(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/': {value!r}")
