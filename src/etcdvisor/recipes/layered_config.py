"""Typed, layered configuration: node overrides cluster overrides global.

Key layout::

    <prefix>/config/global/<item>
    <prefix>/config/cluster/<cluster>/<item>
    <prefix>/config/node/<cluster>/<node>/<item>

An item's *resolved* value comes from the highest-priority scope that has
it: ``node`` > ``cluster`` > ``global``. Items may contain ``/``; cluster
and node names may not.

Stored values are strings with a type prefix::

    int:42  float:0.75  bool:true | bool:false  json:{"a": [1]}  plain text

A plain string that itself starts with one of those prefixes is written as
``json:"..."`` by :meth:`LayeredConfig.set`, so every Python value
round-trips. A malformed typed value (``int:x``, ``bool:yes``, bad JSON)
raises :class:`ConfigValueError` naming the key; it never falls back to a
lower scope, so a typo cannot silently change behaviour.

Guarantees: ``get``/``get_many``/``items`` read all three scopes in one
transaction (one consistent revision). ``watch`` is built on
:class:`~etcdvisor.coord.watcher.PrefixWatcher` over ``<prefix>/config/``
and reports every change of a *resolved* value, in order, nothing missed: an
override appearing or going away counts; a write that leaves the resolved
value as it was does not.

Limits: the watcher mirrors every key under ``<prefix>/config/`` (other
clusters' and nodes' too) and ignores those not in our scopes. Watch
callbacks run on the watcher thread and must be quick.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ..coord.base import Backend
from ..coord.errors import CoordError
from ..coord.types import Get, prefix_end
from ..coord.watcher import Change, PrefixWatcher

log = logging.getLogger(__name__)

SCOPES = ("node", "cluster", "global")  # highest priority first
TYPE_PREFIXES = ("int:", "float:", "bool:", "json:")


class ConfigValueError(CoordError, ValueError):
    """A stored value does not parse as its declared type."""

    def __init__(self, key: str, raw: str, reason: str):
        super().__init__(f"config key {key}: {reason} (stored value {raw[:80]!r})")
        self.key = key
        self.raw = raw


def encode_value(value: Any) -> str:
    """The stored form of a Python value (see module docstring)."""
    if isinstance(value, bool):
        return "bool:true" if value else "bool:false"
    if isinstance(value, int):
        return f"int:{value}"
    if isinstance(value, float):
        return f"float:{value!r}"
    if isinstance(value, str) and not value.startswith(TYPE_PREFIXES):
        return value
    return "json:" + json.dumps(value, separators=(",", ":"), allow_nan=False)


def decode_value(key: str, raw: str) -> Any:
    """Parse a stored value; raises :class:`ConfigValueError` naming ``key``."""
    kind, sep, body = raw.partition(":")
    if not sep or kind + ":" not in TYPE_PREFIXES:
        return raw
    try:
        if kind == "int":
            return int(body.strip())
        if kind == "float":
            return float(body)
        if kind == "bool":
            if body not in ("true", "false"):
                raise ValueError("bool must be 'true' or 'false'")
            return body == "true"
        return json.loads(body)
    except ValueError as exc:
        raise ConfigValueError(key, raw, f"not a valid {kind} value: {exc}") from None


class LayeredConfig:
    """The configuration of one node of one cluster (``node`` may be None:
    then only the cluster and global scopes apply)."""

    def __init__(self, backend: Backend, prefix: str, cluster: str, node: str | None = None):
        for what, name in (("cluster", cluster), ("node", node)):
            if name is not None and (not name or "/" in name):
                raise ValueError(f"{what} name must be non-empty and without '/': {name!r}")
        self.backend = backend
        self.root = f"{prefix.rstrip('/')}/config/"
        self.cluster = cluster
        self.node = node
        self._watchers: list[PrefixWatcher] = []

    # --- keys ------------------------------------------------------------------
    def scope_prefix(self, scope: str) -> str:
        """The key prefix of ``scope`` for this cluster/node."""
        if scope == "global":
            return self.root + "global/"
        if scope == "cluster":
            return f"{self.root}cluster/{self.cluster}/"
        if scope == "node":
            if self.node is None:
                raise ValueError("this LayeredConfig has no node: the node scope does not apply")
            return f"{self.root}node/{self.cluster}/{self.node}/"
        raise ValueError(f"unknown scope {scope!r} (use one of {', '.join(SCOPES)})")

    def _scopes(self) -> list[str]:
        return [s for s in SCOPES if s != "node" or self.node is not None]

    def key(self, item: str, scope: str = "cluster") -> str:
        if not item:
            raise ValueError("config item name must not be empty")
        return self.scope_prefix(scope) + item

    # --- reads -----------------------------------------------------------------------
    def get(self, item: str, default: Any = None) -> Any:
        """The item's resolved, typed value, or ``default`` if no scope has it."""
        found = self._read([self.key(item, s) for s in self._scopes()], exact=True)
        return self._resolve(found).get(item, default) if found else default

    def get_many(self, *items: str) -> dict[str, Any]:
        """Resolved values of ``items`` (those found; missing ones are left out)."""
        if not items:
            return {}
        keys = [self.key(item, scope) for item in items for scope in self._scopes()]
        return self._resolve(self._read(keys, exact=True))

    def items(self) -> dict[str, Any]:
        """Every item visible to this node, resolved and typed."""
        return self._resolve(self._read([self.scope_prefix(s) for s in self._scopes()], exact=False))

    def raw_items(self) -> dict[str, tuple[str, str]]:
        """``{item: (scope, stored string)}`` of the winning scope, undecoded."""
        return self._winners(self._read([self.scope_prefix(s) for s in self._scopes()], exact=False))

    def _read(self, keys: list[str], exact: bool) -> dict[str, str]:
        """``{key: stored string}`` of the keys (or prefixes) read in one txn."""
        ops = [Get(k) if exact else Get(k, prefix_end(k)) for k in keys]
        result = self.backend.txn((), ops)
        return {kv.key: kv.value.decode("utf-8") for kvs in result.responses for kv in kvs}

    def _winners(self, stored: dict[str, str]) -> dict[str, tuple[str, str]]:
        """Per item, the (scope, raw) of the highest-priority scope present."""
        winners: dict[str, tuple[str, str]] = {}
        for scope in reversed(self._scopes()):  # lowest first: later scopes override
            start = self.scope_prefix(scope)
            for key, raw in stored.items():
                if key.startswith(start) and len(key) > len(start):
                    winners[key[len(start):]] = (scope, raw)
        return winners

    def _resolve(self, stored: dict[str, str]) -> dict[str, Any]:
        return {item: decode_value(self.key(item, scope), raw)
                for item, (scope, raw) in sorted(self._winners(stored).items())}

    # --- writes -------------------------------------------------------------------------
    def set(self, item: str, value: Any, scope: str = "cluster") -> int:
        """Store ``value`` (typed, see :func:`encode_value`) in ``scope``;
        returns the store revision."""
        return self.backend.put(self.key(item, scope), encode_value(value))

    def unset(self, item: str, scope: str = "cluster") -> bool:
        """Remove the item from ``scope``; True if it was there."""
        return self.backend.delete(self.key(item, scope)) > 0

    # --- watch ---------------------------------------------------------------------------
    def watch(self, callback: Callable[[str, Any], None], *, initial: bool = False,
              on_error: Callable[[ConfigValueError], None] | None = None) -> PrefixWatcher:
        """Call ``callback(item, value_or_None)`` whenever an item's resolved
        value changes (None: the item is gone from every scope). With
        ``initial=True`` every current item is reported first. A malformed
        value goes to ``on_error`` (default: logged) instead of the callback.
        Returns the watcher; ``stop()`` it (or :meth:`close`)."""
        resolved: dict[str, tuple[str, str]] = {}

        def on_change(change: Change) -> None:
            stored = {key: kv.value.decode("utf-8", errors="replace")
                      for key, kv in change.snapshot.items()}
            fresh = self._winners(stored)
            if change.initial and not initial:
                resolved.update(fresh)  # the baseline; changes are reported from here on
                return
            for item in sorted(set(resolved) | set(fresh)):
                old, new = resolved.get(item), fresh.get(item)
                if (old and old[1]) == (new and new[1]):  # same resolved value (any scope)
                    continue
                if new is None:
                    callback(item, None)
                    continue
                try:
                    value = decode_value(self.key(item, new[0]), new[1])
                except ConfigValueError as exc:
                    (on_error or _log_error)(exc)
                    continue
                callback(item, value)
            resolved.clear()
            resolved.update(fresh)

        watcher = PrefixWatcher(self.backend, self.root, on_change,
                                name=f"config:{self.cluster}/{self.node or '*'}")
        self._watchers.append(watcher)
        return watcher.start(wait=self.backend.timeout)

    def close(self) -> None:
        """Stop every watcher started by :meth:`watch`."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.stop()


def _log_error(exc: ConfigValueError) -> None:
    log.error("%s", exc)
