"""Application routes of the service registry (after Ergo's etcd registrar,
``003_*.txt``): which node has which application loaded or running, with a
weight, a start mode and a state; and the events a watcher derives from
their changes.

An :class:`ApplicationRoute` is stored as JSON at
``<registry root>/<application>/applications/<node>`` on the registering
process's lease (see :mod:`.registry`), so a node that dies takes its routes
with it after the TTL.

Events (:class:`ApplicationEventKind`), derived by :func:`event_kind` from a
route's previous and new state, as seen by a watcher::

    (none)              -> LOADED     LOADED   : route published as loaded
    (none) | LOADED     -> RUNNING    STARTED
    (none) | RUNNING    -> STOPPING   STOPPING
    RUNNING | STOPPING  -> LOADED     STOPPED  (stopped, still loaded)
    RUNNING | STOPPING  -> (gone)     STOPPED  (stopped and unloaded, or the node died)
    LOADED              -> (gone)     UNLOADED
    same state, other weight or mode  UPDATED

Writing a route with nothing changed is no event. The functions here are
pure (no I/O) and tested without a server.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..coord.records import APPLICATION_ROUTE, RecordError, dumps, warn_skipped

if TYPE_CHECKING:
    from ..coord.types import KeyValue

log = logging.getLogger(__name__)


class ApplicationMode(enum.Enum):
    """How the node restarts the application (Ergo's ``gen.ApplicationMode``)."""

    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    TRANSIENT = "transient"


class ApplicationState(enum.Enum):
    """Where the application is in its life on the node."""

    LOADED = "loaded"
    RUNNING = "running"
    STOPPING = "stopping"


class ApplicationEventKind(enum.Enum):
    LOADED = "loaded"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    UNLOADED = "unloaded"
    UPDATED = "updated"


@dataclass(frozen=True)
class ApplicationRoute:
    """One application on one node."""

    name: str
    node: str
    weight: int = 0
    mode: ApplicationMode = ApplicationMode.TEMPORARY
    state: ApplicationState = ApplicationState.LOADED

    def __post_init__(self) -> None:
        for what, value in (("application name", self.name), ("node", self.node)):
            if not isinstance(value, str) or not value or "/" in value:
                raise ValueError(f"{what} must be a non-empty string without '/': {value!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise ValueError(f"weight must be an integer, not {self.weight!r}")
        object.__setattr__(self, "mode", ApplicationMode(self.mode))
        object.__setattr__(self, "state", ApplicationState(self.state))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"], data["state"] = self.mode.value, self.state.value
        return data

    def to_json(self) -> str:
        return dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ApplicationRoute:
        """Parse a stored document strictly (:data:`~etcdvisor.coord.records.APPLICATION_ROUTE`);
        :class:`~etcdvisor.coord.records.RecordError` (a ValueError) when it is not one."""
        data = APPLICATION_ROUTE.decode(text)
        try:
            return cls(name=data["name"], node=data["node"], weight=data["weight"],
                       mode=data["mode"], state=data["state"])
        except ValueError as exc:
            raise RecordError(str(exc)) from None


@dataclass(frozen=True)
class ApplicationEvent:
    """What :meth:`Registry.watch_applications` hands its callback.
    ``route`` is the new route, or the last one known when it is gone."""

    kind: ApplicationEventKind
    route: ApplicationRoute
    previous: ApplicationRoute | None = None


_RUNNING_OR_STOPPING = (ApplicationState.RUNNING, ApplicationState.STOPPING)
_ARRIVAL = {ApplicationState.LOADED: ApplicationEventKind.LOADED,
            ApplicationState.RUNNING: ApplicationEventKind.STARTED,
            ApplicationState.STOPPING: ApplicationEventKind.STOPPING}


def event_kind(old: ApplicationRoute | None, new: ApplicationRoute | None) -> ApplicationEventKind | None:
    """The event for a route going from ``old`` to ``new`` (None: absent),
    or None when nothing a watcher cares about changed."""
    if new is None:
        if old is None:
            return None
        return ApplicationEventKind.STOPPED if old.state in _RUNNING_OR_STOPPING else ApplicationEventKind.UNLOADED
    if old is None or old.state is not new.state:
        if new.state is ApplicationState.LOADED and old is not None and old.state in _RUNNING_OR_STOPPING:
            return ApplicationEventKind.STOPPED
        return _ARRIVAL[new.state]
    return ApplicationEventKind.UPDATED if old != new else None


def application_event(old: ApplicationRoute | None, new: ApplicationRoute | None) -> ApplicationEvent | None:
    kind = event_kind(old, new)
    if kind is None:
        return None
    route = new if new is not None else old
    assert route is not None  # event_kind(None, None) is None
    return ApplicationEvent(kind=kind, route=route, previous=old)


def routes_of(kvs: Iterable[KeyValue]) -> list[ApplicationRoute]:
    """The routes stored in ``kvs`` in registration (create revision) order;
    documents that are not routes are skipped and logged."""
    found = []
    for kv in sorted(kvs, key=lambda kv: kv.create_revision):
        try:
            found.append(ApplicationRoute.from_json(kv.value))
        except ValueError as exc:  # RecordError: one warning per key and revision
            warn_skipped(APPLICATION_ROUTE.name, kv.key, kv.mod_revision, str(exc), log)
    return found
