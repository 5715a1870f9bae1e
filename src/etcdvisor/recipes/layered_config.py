"""Typed, layered configuration in four levels, in two key layouts.

Levels, highest priority first (the four levels of the ergo registrar, see
``/work/shared/seeds/003_*.txt``):

* ``node``    -- cross-cluster node-specific,
* ``member``  -- cluster node-specific,
* ``cluster`` -- cluster-wide,
* ``global``  -- every cluster.

Key layouts (``layout=``):

``etcdvisor`` (default; ``prefix`` as given)::

    <prefix>/config/node/<cluster>/<node>/<item>
    <prefix>/config/member/<cluster>/<node>/<item>
    <prefix>/config/cluster/<cluster>/<item>
    <prefix>/config/global/<item>

``ergo`` (the registrar's own keys; ``prefix`` is usually ``services/ergo``)::

    <prefix>/config/<cluster>/<node>/<item>
    <prefix>/cluster/<cluster>/config/<node>/<item>
    <prefix>/cluster/<cluster>/config/*/<item>
    <prefix>/config/global/<item>

An item's *resolved* value comes from the highest-priority level that has
it. Items may contain ``/`` in the etcdvisor layout; cluster and node names
may not (and a node may not be called ``*``).

Stored values are strings with a type prefix::

    int:42  float:0.75  bool:true | bool:false  json:{"a": [1]}  plain text

The ergo layout knows only ``int:``, ``float:`` and ``bool:`` (as the
registrar does): there ``json:...`` is a plain string, and
:meth:`LayeredConfig.set` refuses values it could not read back (lists,
dicts, None, strings starting with a type prefix). In the etcdvisor layout a
plain string that itself starts with a type prefix is written as
``json:"..."``, so every Python value round-trips. A malformed typed value
(``int:x``, ``bool:yes``, bad JSON) raises :class:`ConfigValueError` naming
the key; it never falls back to a lower level, so a typo cannot silently
change behaviour. Values are read by the strict, bounded decoder
(:mod:`etcdvisor.coord.records`): a stored value over 1 MiB, ``json:`` nested
deeper than 32 levels, and ``NaN``/``Infinity`` (``float:nan``, ``float:inf``,
``json:NaN``, ``float:1e999``) are malformed too, and :func:`encode_value`
refuses to write a non-finite float.

Guarantees: ``get``/``get_many``/``items`` read every level in one
transaction (one consistent revision). ``watch`` is built on
:class:`~etcdvisor.coord.watcher.PrefixWatcher` over the layout's roots
(:meth:`LayeredConfig.roots`) and reports every change of a *resolved*
value, nothing missed: an override appearing or going away counts; a write
that leaves the resolved value as it was does not. :meth:`winners` is the
pure resolution step, for callers that mirror the roots themselves (the
supervisor does, on its decision loop).

Limits: the watchers mirror every key under the roots (other clusters' and
nodes' too) and ignore those not in our levels. Watch callbacks run on the
watcher threads and must be quick.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.records import MAX_RECORD_BYTES, dumps_strict, parse_json
from ..coord.types import Get, prefix_end
from ..coord.watcher import Change, PrefixWatcher

log = logging.getLogger(__name__)

SCOPES = ("node", "member", "cluster", "global")  # highest priority first
ITEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@/-]{0,511}")
ITEM_NAME_RULE = "letters, digits, '_', '.', ':', '@', '-', '/'; starting with a letter, digit or '_'; at most 512"
TYPE_PREFIXES = ("int:", "float:", "bool:", "json:")
ERGO_TYPE_PREFIXES = ("int:", "float:", "bool:")
ERGO_PREFIX = "services/ergo"


class Layout(enum.StrEnum):
    ETCDVISOR = "etcdvisor"
    ERGO = "ergo"


class ConfigValueError(CoordError, ValueError):
    """A stored value does not parse as its declared type."""

    def __init__(self, key: str, raw: str, reason: str):
        super().__init__(f"config key {key}: {reason} (stored value {raw[:80]!r})")
        self.key = key
        self.raw = raw


def encode_value(value: Any, layout: Layout | str = Layout.ETCDVISOR) -> str:
    """The stored form of a Python value (see module docstring); ValueError
    for a value the ``ergo`` layout cannot represent."""
    if isinstance(value, bool):
        return "bool:true" if value else "bool:false"
    if isinstance(value, int):
        return f"int:{value}"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number (NaN and Infinity are not valid config values)")
        return f"float:{value!r}"
    if Layout(layout) is Layout.ERGO:
        if isinstance(value, str) and not value.startswith(ERGO_TYPE_PREFIXES):
            return value
        raise ValueError(f"the ergo layout stores only int, float, bool and plain strings, "
                         f"not {value!r:.60}")
    if isinstance(value, str) and not value.startswith(TYPE_PREFIXES):
        return value
    return "json:" + dumps_strict(value, separators=(",", ":"))


def decode_value(key: str, raw: str, layout: Layout | str = Layout.ETCDVISOR) -> Any:
    """Parse a stored value; raises :class:`ConfigValueError` naming ``key``."""
    if len(raw) > MAX_RECORD_BYTES:  # characters: at least as many bytes
        raise ConfigValueError(key, raw, f"longer than {MAX_RECORD_BYTES} bytes")
    kind, sep, body = raw.partition(":")
    known = ERGO_TYPE_PREFIXES if Layout(layout) is Layout.ERGO else TYPE_PREFIXES
    if not sep or kind + ":" not in known:
        return raw
    try:
        if kind == "int":
            return int(body.strip())
        if kind == "float":
            number = float(body)
            if not math.isfinite(number):
                raise ValueError("NaN and Infinity are not valid config values")
            return number
        if kind == "bool":
            if body not in ("true", "false"):
                raise ValueError("bool must be 'true' or 'false'")
            return body == "true"
        return parse_json(body)
    except ValueError as exc:  # RecordError (bounds, NaN) is one too
        raise ConfigValueError(key, raw, f"not a valid {kind} value: {exc}") from None


class LayeredConfig:
    """The configuration of one node of one cluster (``node`` may be None:
    then only the cluster and global levels apply)."""

    def __init__(self, backend: Backend, prefix: str, cluster: str, node: str | None = None,
                 layout: Layout | str = Layout.ETCDVISOR):
        for what, name in (("cluster", cluster), ("node", node)):
            if name is not None and (not name or "/" in name or name == "*"):
                raise ValueError(f"{what} name must be non-empty, without '/' and not '*': {name!r}")
        self.backend = backend
        self.layout = Layout(layout)
        self.prefix = prefix.rstrip("/")
        self.cluster = cluster
        self.node = node
        self._watchers: list[PrefixWatcher] = []

    # --- keys ------------------------------------------------------------------
    def roots(self) -> tuple[str, ...]:
        """The key prefixes under which every level of this layout lives."""
        if self.layout is Layout.ERGO:
            return (f"{self.prefix}/config/", f"{self.prefix}/cluster/{self.cluster}/config/")
        return (f"{self.prefix}/config/",)

    def scope_prefixes(self) -> tuple[str, ...]:
        """The key prefix of each level that applies, highest priority first:
        all that a reader of this cluster/node needs (one read grant each;
        :meth:`roots` also covers other clusters and nodes)."""
        return tuple(self.scope_prefix(scope) for scope in self.scopes())

    def scope_prefix(self, scope: str) -> str:
        """The key prefix of ``scope`` for this cluster/node."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r} (use one of {', '.join(SCOPES)})")
        if scope in ("node", "member") and self.node is None:
            raise ValueError(f"this LayeredConfig has no node: the {scope} scope does not apply")
        p, c, n = self.prefix, self.cluster, self.node
        if self.layout is Layout.ERGO:
            return {"node": f"{p}/config/{c}/{n}/", "member": f"{p}/cluster/{c}/config/{n}/",
                    "cluster": f"{p}/cluster/{c}/config/*/", "global": f"{p}/config/global/"}[scope]
        return {"node": f"{p}/config/node/{c}/{n}/", "member": f"{p}/config/member/{c}/{n}/",
                "cluster": f"{p}/config/cluster/{c}/", "global": f"{p}/config/global/"}[scope]

    def scopes(self) -> list[str]:
        """The levels that apply, highest priority first."""
        return [s for s in SCOPES if s not in ("node", "member") or self.node is not None]

    def key(self, item: str, scope: str = "cluster") -> str:
        if not item:
            raise ValueError("config item name must not be empty")
        if not ITEM_NAME.fullmatch(item):
            raise ValueError(f"invalid config item name {item!r} ({ITEM_NAME_RULE})")
        if self.layout is Layout.ERGO and "/" in item:
            raise ValueError(f"config item {item!r}: the ergo layout does not allow '/' in items")
        return self.scope_prefix(scope) + item

    # --- reads -----------------------------------------------------------------------
    def get(self, item: str, default: Any = None) -> Any:
        """The item's resolved, typed value, or ``default`` if no level has it."""
        found = self._read([self.key(item, s) for s in self.scopes()], exact=True)
        return self._resolve(found).get(item, default) if found else default

    def get_many(self, *items: str) -> dict[str, Any]:
        """Resolved values of ``items`` (those found; missing ones are left out)."""
        if not items:
            return {}
        keys = [self.key(item, scope) for item in items for scope in self.scopes()]
        return self._resolve(self._read(keys, exact=True))

    def items(self) -> dict[str, Any]:
        """Every item visible to this node, resolved and typed."""
        return self._resolve(self._read([self.scope_prefix(s) for s in self.scopes()], exact=False))

    def raw_items(self) -> dict[str, tuple[str, str]]:
        """``{item: (scope, stored string)}`` of the winning level, undecoded."""
        return self.winners(self._read([self.scope_prefix(s) for s in self.scopes()], exact=False))

    def _read(self, keys: list[str], exact: bool) -> dict[str, str]:
        """``{key: stored string}`` of the keys (or prefixes) read in one txn."""
        ops = [Get(k) if exact else Get(k, prefix_end(k)) for k in keys]
        result = self.backend.txn((), ops)
        return {kv.key: kv.value.decode("utf-8", errors="replace")
                for kvs in result.responses for kv in kvs}

    def winners(self, stored: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        """Pure: per item, the (scope, raw) of the highest-priority level
        present in ``stored`` (``{key: stored string}``; other keys ignored)."""
        winners: dict[str, tuple[str, str]] = {}
        for scope in reversed(self.scopes()):  # lowest first: later levels override
            start = self.scope_prefix(scope)
            for key, raw in stored.items():
                if key.startswith(start) and len(key) > len(start):
                    item = key[len(start):]
                    if self.layout is Layout.ERGO and "/" in item:
                        continue  # another level's key (e.g. global/<node>/<item>)
                    winners[item] = (scope, raw)
        return winners

    def decode(self, item: str, scope: str, raw: str) -> Any:
        """Decode the stored value of ``item`` at ``scope`` (ConfigValueError)."""
        return decode_value(self.key(item, scope), raw, self.layout)

    def _resolve(self, stored: dict[str, str]) -> dict[str, Any]:
        return {item: self.decode(item, scope, raw)
                for item, (scope, raw) in sorted(self.winners(stored).items())}

    # --- writes -------------------------------------------------------------------------
    def set(self, item: str, value: Any, scope: str = "cluster") -> int:
        """Store ``value`` (typed, see :func:`encode_value`) in ``scope``;
        returns the store revision."""
        return self.backend.put(self.key(item, scope), encode_value(value, self.layout))

    def unset(self, item: str, scope: str = "cluster") -> bool:
        """Remove the item from ``scope``; True if it was there."""
        return self.backend.delete(self.key(item, scope)) > 0

    # --- watch ---------------------------------------------------------------------------
    def watch(self, callback: Callable[[str, Any], None], *, initial: bool = False,
              on_error: Callable[[ConfigValueError], None] | None = None) -> ConfigWatch:
        """Call ``callback(item, value_or_None)`` whenever an item's resolved
        value changes (None: the item is gone from every level). With
        ``initial=True`` every current item is reported first. A malformed
        value goes to ``on_error`` (default: logged) instead of the callback.
        Returns a handle; ``stop()`` it (or :meth:`close`)."""
        resolved: dict[str, tuple[str, str]] = {}
        mirrors: dict[str, Mapping[str, Any]] = {}
        lock = threading.Lock()  # two roots: two watcher threads
        baseline_pending = [not initial]

        def on_change(root: str, change: Change) -> None:
            with lock:
                mirrors[root] = change.snapshot
                if len(mirrors) < len(self.roots()):
                    return  # wait for every root's first snapshot
                stored = {key: kv.value.decode("utf-8", errors="replace")
                          for snap in mirrors.values() for key, kv in snap.items()}
                fresh = self.winners(stored)
                if baseline_pending[0]:
                    baseline_pending[0] = False
                    resolved.update(fresh)  # the baseline; changes are reported from here on
                    return
                self._report(resolved, fresh, callback, on_error or _log_error)
                resolved.clear()
                resolved.update(fresh)

        watchers = []
        for root in self.roots():
            watcher = PrefixWatcher(self.backend, root, functools.partial(on_change, root),
                                    name=f"config:{self.cluster}/{self.node or '*'}")
            self._watchers.append(watcher)
            watchers.append(watcher.start(wait=self.backend.timeout))
        return ConfigWatch(tuple(watchers))

    def _report(self, old_winners: Mapping[str, Any], new_winners: Mapping[str, Any],
                callback: Callable[[str, Any], None], on_error: Callable[[ConfigValueError], None]) -> None:
        for item in sorted(set(old_winners) | set(new_winners)):
            old, new = old_winners.get(item), new_winners.get(item)
            if (old and old[1]) == (new and new[1]):  # same resolved value (any level)
                continue
            if new is None:
                callback(item, None)
                continue
            try:
                value = self.decode(item, new[0], new[1])
            except ConfigValueError as exc:
                on_error(exc)
                continue
            callback(item, value)

    def close(self) -> None:
        """Stop every watcher started by :meth:`watch`."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.stop()


class ConfigWatch:
    """What :meth:`LayeredConfig.watch` returns: one watcher per root."""

    def __init__(self, watchers: tuple[PrefixWatcher, ...]):
        self.watchers = watchers

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()


def _log_error(exc: ConfigValueError) -> None:
    log.error("%s", exc)
