"""Service registry: register, discover and watch service instances and
application routes (after ``002_*.txt`` and Ergo's registrar, ``003_*.txt``).

Key layout (``prefix`` default ``/etcdvisor/services``; a supervised cluster
uses :meth:`Registry.for_cluster`: ``/etcdvisor/<cluster>/services``)::

    <prefix>/<namespace>/<service>/instances/<id>      JSON ServiceInfo, on the lease
    <prefix>/<namespace>/<service>/election/<lease>    candidates of election(service)
    <prefix>/<namespace>/<app>/applications/<node>     JSON ApplicationRoute, on the lease

Applications (:mod:`.applications`): a node publishes an
:class:`ApplicationRoute` (name, node, weight, mode, state) with
:meth:`Registry.register_application`, moves it through LOADED -> RUNNING ->
STOPPING -> LOADED with :meth:`Registry.set_application_state` and removes it
with :meth:`Registry.deregister_application`. :meth:`Registry.applications`
resolves the routes of one or every application (registration order), and
:meth:`Registry.watch_applications` turns their changes into events:
loaded, started, stopping, stopped (plus unloaded and updated).

Guarantees:

* every instance and route this registry registers hangs on one lease (one
  :class:`~etcdvisor.coord.session.Session`, started on first use, or the
  one given, e.g. a supervisor member's): a crashed process disappears
  after ``ttl`` seconds, :meth:`Registry.close` removes all its instances
  at once (revoking its own session, or deleting them from a given one);
* when the lease is lost while the process lives (a partition longer than
  the TTL), the session grants a new one and a background thread
  re-registers every instance and route still registered here; a
  ``deregister`` is never undone by that thread;
* :meth:`Registry.watch` is built on
  :class:`~etcdvisor.coord.watcher.PrefixWatcher`: the callback gets the
  full instance list (registration order) after every change, nothing
  missed across broken streams or compaction; so is
  :meth:`Registry.watch_applications` (one event per route change, in
  revision order; after a compacted gap, one event per route that differs).

Limits: ``discover``, ``watch`` and ``all_instances`` skip values that are not
a valid ServiceInfo document (strict decoder,
:data:`~etcdvisor.coord.records.SERVICE_INSTANCE`: at most 64 KiB and 32
levels, ``port`` an integer 0-65535, ``address`` a string, ``metadata`` an
object, no NaN), with one warning naming the key per written value; they
are never converted. An instance deleted
by someone else while our lease lives is not re-created. Watch callbacks
run on the watcher thread and must be quick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..coord.base import Backend
from ..coord.errors import CoordError, LeaseNotFound
from ..coord.keys import ClusterKeys
from ..coord.records import SERVICE_INSTANCE, dumps
from ..coord.session import Session, SessionEvent, SessionEventKind
from ..coord.types import KeyValue
from ..coord.watcher import Change, PrefixWatcher
from .applications import ApplicationEvent, ApplicationRoute, ApplicationState, application_event, routes_of

if TYPE_CHECKING:
    from .election import Election

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
        return dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ServiceInfo:
        """Parse a stored document strictly (:data:`~etcdvisor.coord.records.SERVICE_INSTANCE`);
        raises :class:`~etcdvisor.coord.records.RecordError` (a ValueError) when it is not one."""
        data = SERVICE_INSTANCE.decode(text)
        return cls(name=data["name"], id=data["id"], address=data["address"], port=data["port"],
                   version=data["version"], metadata=data["metadata"])


class Registry:
    """Register this process's service instances; discover and watch others."""

    def __init__(self, backend: Backend, namespace: str = "default", prefix: str = DEFAULT_PREFIX,
                 ttl: int = 15, *, retry_interval: float = 1.0, session: Session | None = None):
        """``session``: a started session to register on (its owner keeps it
        alive and closes it; :meth:`close` then deletes what this registry
        registered). Without one, the registry starts its own of ``ttl``."""
        _check_segment("namespace", namespace)
        self.backend = backend
        self.namespace = namespace
        self.root = f"{prefix.rstrip('/')}/{namespace}"
        self.ttl = int(ttl)
        self.retry_interval = retry_interval
        self._registered: dict[tuple[str, str], ServiceInfo] = {}
        self._applications: dict[tuple[str, str], ApplicationRoute] = {}
        self._lock = threading.RLock()  # guards _registered and the writes that mirror it
        self._given_session = session
        self._session: Session | None = None
        self._watchers: list[PrefixWatcher] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reregistrar: threading.Thread | None = None
        self._closed = False

    @classmethod
    def for_cluster(cls, backend: Backend, cluster: str, **options: Any) -> Registry:
        """The registry of a supervised cluster, under the cluster's prefix
        (``/etcdvisor/<cluster>/services``): what ``register:`` roles write
        and ``supervisor services`` reads."""
        return cls(backend, namespace="services", prefix=ClusterKeys(cluster).base, **options)

    # --- keys -------------------------------------------------------------------
    def instances_prefix(self, name: str) -> str:
        _check_segment("service name", name)
        return f"{self.root}/{name}/instances/"

    def instance_key(self, name: str, instance_id: str) -> str:
        _check_segment("instance id", instance_id)
        return self.instances_prefix(name) + instance_id

    def applications_prefix(self, name: str) -> str:
        _check_segment("application name", name)
        return f"{self.root}/{name}/applications/"

    def application_key(self, name: str, node: str) -> str:
        _check_segment("node", node)
        return self.applications_prefix(name) + node

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

    def all_instances(self) -> list[ServiceInfo]:
        """Live instances of every service, in registration order."""
        result = self.backend.get_prefix(self.root + "/")
        return _instances(kv for kv in result.kvs if self._kind_of(kv.key) == "instances")

    def _kind_of(self, key: str) -> str | None:
        """``instances``/``applications``/``election`` for a key of this
        registry shaped ``<root>/<name>/<kind>/<leaf>``, else None."""
        parts = key[len(self.root) + 1:].split("/")
        return parts[1] if len(parts) == 3 and all(parts) else None

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

    def election(self, name: str, value: str | bytes = b"") -> Election:
        """An :class:`~etcdvisor.recipes.election.Election` among instances of
        ``name``, on this registry's lease."""
        from .election import Election

        _check_segment("service name", name)
        return Election(self.backend, f"{self.root}/{name}/election/", self.session(), value,
                        name=f"election:{self.namespace}/{name}")

    # --- applications ---------------------------------------------------------------
    def register_application(self, route: ApplicationRoute) -> ApplicationRoute:
        """Publish (or replace) ``route`` on this registry's lease."""
        key = self.application_key(route.name, route.node)
        session = self.session()
        with self._lock:
            self._applications[(route.name, route.node)] = route
            try:
                self.backend.put(key, route.to_json(), lease=session.lease_id)
            except LeaseNotFound:
                log.info("registry: lease lost while registering %s, will re-register", key)
                self._wake.set()
        return route

    def set_application_state(self, name: str, node: str, state: ApplicationState | str) -> ApplicationRoute:
        """Move a route registered here to ``state`` (KeyError if it is not
        registered here)."""
        with self._lock:
            route = self._applications[(name, node)]
            return self.register_application(replace(route, state=ApplicationState(state)))

    def deregister_application(self, name: str, node: str) -> bool:
        """Remove a route; True if it was registered here or stored."""
        key = self.application_key(name, node)
        with self._lock:
            known = self._applications.pop((name, node), None) is not None
            return self.backend.delete(key) > 0 or known

    def applications(self, name: str | None = None) -> list[ApplicationRoute]:
        """Live routes of application ``name`` (None: of every application),
        in registration order. Ergo calls this ``ResolveApplication``."""
        prefix = self.applications_prefix(name) if name is not None else self.root + "/"
        kvs = self.backend.get_prefix(prefix).kvs
        return routes_of(kv for kv in kvs if self._kind_of(kv.key) == "applications")

    resolve_application = applications

    def watch_applications(self, callback: Callable[[ApplicationEvent], None], name: str | None = None,
                           *, replay: bool = True) -> PrefixWatcher:
        """Call ``callback(ApplicationEvent)`` for every route change of
        application ``name`` (None: of every application), in order, on the
        watcher thread. ``replay``: first report each existing route as if
        it had just arrived (LOADED, STARTED or STOPPING). Returns the
        watcher (``stop()`` ends it)."""
        known: dict[str, ApplicationRoute] = {}

        def on_change(change: Change) -> None:
            fresh = {kv.key: route for kv in change.ordered() if self._kind_of(kv.key) == "applications"
                     for route in routes_of([kv])}
            if change.initial:
                known.update(fresh)
                if replay:
                    for route in fresh.values():
                        _deliver(callback, application_event(None, route))
                return
            touched = dict.fromkeys(ev.kv.key for ev in change.events)
            for key in touched:
                old, new = known.get(key), fresh.get(key)
                if new is None:
                    known.pop(key, None)
                else:
                    known[key] = new
                _deliver(callback, application_event(old, new))

        prefix = self.applications_prefix(name) if name is not None else self.root + "/"
        watcher = PrefixWatcher(self.backend, prefix, on_change, name=f"registry-apps:{name or '*'}")
        with self._lock:
            self._watchers.append(watcher)
        return watcher.start(wait=self.backend.timeout)

    # --- lifecycle -----------------------------------------------------------------
    def session(self) -> Session:
        """The registry's session (started on first use)."""
        with self._lock:
            if self._closed:
                raise CoordError("registry closed")
            if self._session is None:
                session = self._given_session or Session(self.backend, self.ttl,
                                                         name=f"registry:{self.namespace}")
                session.add_listener(self._on_session_event)
                self._session = session if session is self._given_session else session.start()
                self._reregistrar = threading.Thread(target=self._reregister_loop, daemon=True,
                                                     name=f"registry-reregister:{self.namespace}")
                self._reregistrar.start()
            return self._session

    def close(self) -> None:
        """Stop watchers and the re-registrar, and remove every instance and
        route registered here at once: revoke our own lease, or delete them
        from a given session's lease (which stays alive). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watchers, self._watchers = self._watchers, []
            session, self._session = self._session, None
            keys = [self.instance_key(*k) for k in self._registered]
            keys += [self.application_key(*k) for k in self._applications]
            self._registered.clear()
            self._applications.clear()
        self._stop.set()
        self._wake.set()
        for watcher in watchers:
            watcher.stop()
        if self._reregistrar is not None:
            self._reregistrar.join(5)
        if session is None:
            return
        session.remove_listener(self._on_session_event)
        if session is not self._given_session:
            session.close(revoke=True)
            return
        for key in keys:
            try:
                self.backend.delete(key)
            except CoordError as exc:  # the key then goes with the member's lease
                log.warning("registry: could not delete %s on close: %s", key, exc)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
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
            documents = [(self.instance_key(*k), info.to_json()) for k, info in self._registered.items()]
            documents += [(self.application_key(*k), route.to_json())
                          for k, route in self._applications.items()]
            for key, document in documents:
                try:
                    self.backend.put(key, document, lease=session.lease_id)
                except CoordError as exc:
                    log.warning("registry: re-registering %s failed: %s", key, exc)
                    ok = False
        if ok:
            log.info("registry: re-registered %d entries on lease %x", len(documents), session.lease_id)
        return ok


def _instances(kvs: Iterable[KeyValue]) -> list[ServiceInfo]:
    found = []
    for kv in sorted(kvs, key=lambda kv: kv.create_revision):
        info = _parse(kv)
        if info is not None:
            found.append(info)
    return found


def _deliver(callback: Callable[[ApplicationEvent], None], event: ApplicationEvent | None) -> None:
    if event is None:
        return
    try:
        callback(event)
    except Exception:  # a broken callback must not kill the watch
        log.exception("registry: application callback failed")


def _parse(kv: KeyValue) -> ServiceInfo | None:
    """The instance stored in ``kv``, or None (one warning per key and revision)."""
    data = SERVICE_INSTANCE.read(kv, log)
    if data is None:
        return None
    return ServiceInfo(name=data["name"], id=data["id"], address=data["address"], port=data["port"],
                       version=data["version"], metadata=data["metadata"])


def _check_segment(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/': {value!r}")
