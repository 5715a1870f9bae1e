"""Role ``config:``: children take settings from the layered config in etcd.

One :class:`~etcdvisor.coord.watcher.PrefixWatcher` per layout root mirrors
the config keys and posts :class:`ConfigSnapshot` events; everything else
runs on the decision loop and is pure bookkeeping plus effects:

* :meth:`RoleConfig.child_env` -- the variables a child is started with:
  ``ETCDVISOR_CONFIG_FILE`` and one per ``config:`` entry. Entries with
  ``on_change: restart`` carry the current value, so a change makes the spec
  differ and the slot restarts the child with its role's usual stop rules
  (sharded and singleton roles; a one-shot run of a cron, job or topic role
  is not cut short: the new value applies to the runs started later).
  Other entries keep the value the child was started with (a change must not
  restart it); they are refreshed whenever the spec changes for another reason.
* :meth:`RoleConfig.gate` -- a child starts (or restarts) only once its file
  holds the values of its spec: until the write effect is done the previous
  spec of the slot is kept (or the child is not started yet).
* :meth:`RoleConfig.flush` -- once per turn, after the events: changes that
  arrived together become one action per running child: ``restart`` (done by
  the spec), else rewrite the file then send every distinct ``signal:NAME``,
  else (``none``) rewrite the file only.

File: ``<private dir>/<child name>.json``, a JSON object ``{ENV: value}``
with the values' types, replaced atomically (write + fsync + rename). The
private directory (mode 0700, named after its owner: runtime/private_files.py)
is made at start and removed at close; ``on_directory`` hands it to the
watchdog helper, which removes it if the supervisor dies.

Watched keys: one watcher per level that applies to this member
(:meth:`LayeredConfig.scope_prefixes`), so that read grants on exactly those
prefixes suffice (docs/etcd-auth.md). A watcher refused by the store
(``PermissionDenied``) posts :class:`ConfigDenied`: the roles with ``config``
fail with one line naming the key and the user, never a silent wait.

States of one child's file: MISSING -> WRITING -> CURRENT -> (STALE ->
WRITING -> CURRENT)*; children that are gone have their file removed.

Limits: a malformed stored value (``int:x``) keeps the last good value (or
the default) and is logged once per stored string; an item without a value
and without a default leaves the variable unset (``null`` in the file).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Config, RoleSpec
from ..config.model import ChangeAction, RoleType
from ..coord.base import Backend
from ..coord.errors import CoordError, PermissionDenied
from ..coord.keys import SHARED_ROOT
from ..coord.records import dumps
from ..coord.watcher import Change, PrefixWatcher
from ..process.output import child_role_slot
from ..process.slot import Slot
from ..process.spawn import ChildSpec, ChildVars
from ..recipes.layered_config import ConfigValueError, LayeredConfig
from ..roles.base import RoleRunner
from .private_files import make_config_dir, write_atomically

log = logging.getLogger("etcdvisor")

SHARED_PREFIX = SHARED_ROOT  # etcdvisor layout: /etcdvisor/_shared/config/...
CONFIG_FILE_ENV = "ETCDVISOR_CONFIG_FILE"
ENV_VALUE_LIMIT = 32 * 1024  # Linux refuses a single env string over 128 KiB; stay well below

#: the reconciler's (runner, slot key, slot) triples
Children = Iterable[tuple[RoleRunner, str, Slot]]


class QueueEffect(Protocol):
    """``effect(what, call, done=None)``: run ``call`` off the loop (``what``: one line for
    logs); ``done(result, error)`` then runs on the loop."""

    def __call__(self, what: str, call: Callable[[], Any],
                 done: Callable[[Any, BaseException | None], None] | None = None, /) -> None: ...


@dataclass(frozen=True)
class ConfigSnapshot:
    """Posted by a watcher thread: every stored config string under ``root``."""

    root: str
    stored: Mapping[str, str]
    revision: int = 0  # store revision of the snapshot: a late one from a retired watcher is older


@dataclass(frozen=True)
class ConfigDenied:
    """Posted by a watcher thread: the store refused to let us read ``root``."""

    root: str
    error: PermissionDenied


def layered_config(backend: Backend, cluster: str, member: str | None, layout: str) -> LayeredConfig:
    """The supervisor's layered config for ``cluster``/``member`` in ``layout``
    (shared by ``supervisor run`` and the ``config`` verb)."""
    if layout == "ergo":
        return LayeredConfig(backend, "services/ergo", cluster, member, layout="ergo")
    return LayeredConfig(backend, SHARED_PREFIX, cluster, member)


def env_text(value: Any) -> str | None:
    """How a typed value appears in a child's environment; None for a value
    that cannot be an environment variable (a NUL byte, longer than
    ENV_VALUE_LIMIT: exec would fail), which is then only in the file."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = dumps(value, separators=(",", ":"), default=str)  # YAML dates: their ISO text
    if "\0" in text or len(text.encode("utf-8", errors="replace")) > ENV_VALUE_LIMIT:
        return None
    return text


class RoleConfig:
    """The config wiring of every role of one member (loop thread only,
    except :meth:`start`'s watchers, which only post)."""

    def __init__(self, config: Config, backend: Backend, member_id: str,
                 post: Callable[[object], None], effect: QueueEffect):
        self.config = config
        self.backend = backend
        self.member_id = member_id
        self.layered = layered_config(backend, config.cluster, member_id, config.config_layout)
        self.roots = self.layered.scope_prefixes()
        self.on_directory: Callable[[str], None] | None = None  # the private directory, once made
        self.post = post
        self.effect = effect
        self.stored: dict[str, Mapping[str, str]] = {}
        self.revisions: dict[str, int] = {}  # root -> revision of the snapshot in ``stored``
        self.values: dict[str, dict[str, Any]] = {}  # role -> {ENV: typed value}
        self.last_good: dict[str, Any] = {}  # item -> last decoded value
        self.bad_logged: set[str] = set()
        self.frozen: dict[str, tuple[Any, dict[str, str]]] = {}  # child -> (restart part, kept env)
        self.files: dict[str, bytes] = {}  # child name -> content on disk
        self.writing: dict[str, bytes] = {}  # child name -> content being written
        self.changed: dict[str, set[str]] = {}  # role -> ENV names changed since the last flush
        self.seen: set[str] = set()  # child names gated this turn (their files are wanted)
        self.rolling = False  # restart values change through rollouts (runtime/rollouts.py)
        self.admitted: dict[str, dict[str, Any]] = {}  # child -> restart values it may run with
        self.directory: str | None = None
        self.reuse_directory: str | None = None  # set by runtime/upgrade.py on a re-executed member
        self.watchers: list[PrefixWatcher] = []
        self._posted: dict[str, dict[str, str]] = {}  # watcher threads: last posted per root
        self._relevant: tuple[Config, frozenset[str]] | None = None

    @property
    def wanted(self) -> bool:
        return any(role.config for role in self.config.roles.values())

    # --- edge ---------------------------------------------------------------------------
    def start(self) -> None:
        """Make the private directory and start one watcher per root."""
        # an in-place upgrade reuses the previous image's directory (the children's paths)
        self.directory = self.reuse_directory or make_config_dir(self.config.cluster, self.member_id)
        if self.on_directory is not None:
            self.on_directory(self.directory)
        self._watch()

    def reconfigure(self, config: Config) -> None:
        """A reload: new items are read at once (fresh watchers post every
        relevant key; the old ones are stopped off the loop)."""
        old_items = _items(self.config)
        self.config = config
        if self.directory is None:
            if self.wanted:
                self.start()
            return
        self.recompute(report=False)  # roles added by the reload get their values now
        if _items(config) - old_items:
            old, self.watchers = self.watchers, []
            self._posted.clear()
            self._watch()

            def stop_old() -> None:
                for watcher in old:
                    watcher.stop()

            self.effect("stop the previous config watchers", stop_old, None)

    def _watch(self) -> None:
        for root in self.roots:
            watcher = PrefixWatcher(self.backend, root, functools.partial(self._on_change, root),
                                    name=f"config:{root}", on_error=functools.partial(self._on_error, root))
            self.watchers.append(watcher.start(wait=0))

    def _on_error(self, root: str, error: CoordError) -> None:  # watcher thread: only post
        if isinstance(error, PermissionDenied):
            self.post(ConfigDenied(root, error))

    def _on_change(self, root: str, change: Change) -> None:  # watcher thread: only post
        """Post the keys our roles can read (the roots also hold other clusters'
        and members' keys), and only when those changed."""
        relevant = self._relevant_keys()
        stored = {key: kv.value.decode("utf-8", errors="replace")
                  for key, kv in change.snapshot.items() if key in relevant}
        if change.initial or change.resynced or stored != self._posted.get(root):
            self._posted[root] = stored
            self.post(ConfigSnapshot(root, stored, change.revision))

    def _relevant_keys(self) -> frozenset[str]:
        """Every key (any level) of an item some role's ``config`` names."""
        config = self.config  # replaced whole on reload: read once
        cached = self._relevant
        if cached is not None and cached[0] is config:
            return cached[1]
        items = _items(config)
        keys = frozenset(self.layered.key(item, scope) for item in items for scope in self.layered.scopes()
                         if self.layered.layout.value != "ergo" or "/" not in item)
        self._relevant = (config, keys)
        return keys

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def ready(self) -> bool:
        """Every root has been read once: values are known."""
        return len(self.stored) == len(self.roots)

    # --- loop: facts ------------------------------------------------------------------------
    def handle(self, event: ConfigSnapshot) -> None:
        if event.revision < self.revisions.get(event.root, 0):
            return  # older than what we have (a watcher replaced by a reload)
        self.revisions[event.root] = event.revision
        self.stored[event.root] = event.stored
        self.recompute(report=True)

    def recompute(self, report: bool) -> None:
        """Resolve every role's values from the mirrored keys; with ``report``
        remember what changed for :meth:`flush`."""
        if not self.ready:
            return
        merged = {k: v for stored in self.stored.values() for k, v in stored.items()}
        winners = self.layered.winners(merged)
        for role in self.config.roles.values():
            if not role.config:
                continue
            fresh = {env: self._value(spec.item, spec.default, winners) for env, spec in role.config.items()}
            old = self.values.get(role.name)
            self.values[role.name] = fresh
            if old is not None and report:
                diff = {env for env in fresh if _typed(fresh[env]) != _typed(old.get(env))}
                if diff:
                    self.changed.setdefault(role.name, set()).update(diff)
                    log.info("role %s: config changed: %s", role.name, ", ".join(sorted(diff)),
                             extra={"role": role.name})

    def _value(self, item: str, default: Any, winners: dict[str, tuple[str, str]]) -> Any:
        if item not in winners:
            return default
        scope, raw = winners[item]
        try:
            value = self.layered.decode(item, scope, raw)
        except ConfigValueError as exc:
            if raw not in self.bad_logged:
                self.bad_logged.add(raw)
                log.error("%s: keeping the last good value", exc)
            return self.last_good.get(item, default)
        self.last_good[item] = value
        return value

    # --- loop: children ----------------------------------------------------------------------
    def child_env(self, role: RoleSpec, name: str, child_vars: ChildVars) -> dict[str, str]:
        """Variables for child ``name`` of ``role`` (see module docstring). With
        ``rolling``, a running child keeps the restart values it was admitted with
        until the rollout admits the current ones (:meth:`admit`)."""
        if not role.config or self.directory is None:
            return {}
        values = self.values.get(role.name, {env: spec.default for env, spec in role.config.items()})
        restarts = restartable(role)
        current = self._restart_values(role, values)
        if self.rolling and restarts:
            admitted = self.admitted.get(name)
            if admitted is None:
                admitted = self.admitted[name] = current
        else:
            admitted = current
        restart_part = (child_vars, tuple((e, _typed(v)) for e, v in admitted.items()))
        kept = self.frozen.get(name)
        if kept is None or kept[0] != restart_part:
            texts = {env: env_text(v) for env, v in values.items() if v is not None}
            kept = (restart_part, {env: text for env, text in texts.items() if text is not None})
            for env_name in [e for e, text in texts.items() if text is None]:
                log.warning("role %s: %s is not passed in the environment (NUL byte or over %d bytes); "
                            "it is in the config file", role.name, env_name, ENV_VALUE_LIMIT)
            self.frozen[name] = kept
        env = {CONFIG_FILE_ENV: self.file_path(name)}
        for env_name in role.config:
            if env_name in admitted:
                value = admitted[env_name]
                text = env_text(value) if value is not None else None
                if text is not None:
                    env[env_name] = text
            elif env_name in kept[1]:
                env[env_name] = kept[1][env_name]
        return env

    @staticmethod
    def _restart_values(role: RoleSpec, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values of the role's ``on_change: restart`` items (empty: none restart)."""
        if not restartable(role):
            return {}
        return {env: values.get(env) for env, spec in role.config.items()
                if spec.on_change.action is ChangeAction.RESTART}

    # --- loop: rollouts (runtime/rollouts.py) ------------------------------------------------
    def restart_digest(self, role: RoleSpec) -> str | None:
        """A digest of the role's current restart values (None: it has none, or they are not
        known yet): the target of a config rollout."""
        if not self.ready or not self._restart_values(role, {}):
            return None
        current = self._restart_values(role, self.values.get(role.name, {}))
        text = json.dumps([[env, _typed(v)] for env, v in sorted(current.items())])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def outdated(self, role: RoleSpec, name: str) -> bool:
        """Child ``name`` runs with other restart values than the current ones."""
        admitted = self.admitted.get(name)
        if admitted is None or not self.ready:
            return False
        current = self._restart_values(role, self.values.get(role.name, {}))
        return [(e, _typed(v)) for e, v in admitted.items()] != [(e, _typed(v)) for e, v in current.items()]

    def admit(self, role: RoleSpec, name: str) -> None:
        """Child ``name`` may take the current restart values (its spec changes: the slot
        restarts it)."""
        self.admitted[name] = self._restart_values(role, self.values.get(role.name, {}))

    def file_path(self, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        return os.path.join(self.directory or "", f"{safe}-{digest}.json")

    def gate(self, role: RoleSpec, desired: dict[str, ChildSpec],
             current: Mapping[str, Slot]) -> dict[str, ChildSpec]:
        """``desired`` with every spec whose file is not current yet replaced
        by the slot's previous spec (or left out): nobody starts without
        its file. ``current``: slot key -> Slot."""
        if not role.config or not self.ready:
            return {} if role.config else desired
        content = self.values.get(role.name, {})
        encoded = _encode(content)
        gated: dict[str, ChildSpec] = {}
        for key, spec in desired.items():
            self.seen.add(spec.name)
            if self.files.get(spec.name) == encoded:
                gated[key] = spec
                continue
            self._write(spec.name, content)
            slot = current.get(key)
            if slot is not None and slot.desired is not None:
                gated[key] = slot.desired  # the old spec until the file is current
        return gated

    def flush(self, children: Children) -> None:
        """One action per running child of every role whose values changed
        (``children``: (runner, key, slot) triples)."""
        self.seen.clear()
        changed, self.changed = self.changed, {}
        for role_name, envs in changed.items():
            role = self.config.roles.get(role_name)
            if role is None:
                continue
            actions = {role.config[e].on_change for e in envs if e in role.config}
            if restartable(role) and any(a.action is ChangeAction.RESTART for a in actions):
                log.info("role %s: restarting its children for %s%s", role_name, ", ".join(sorted(envs)),
                         " (rolling, see its rollout)" if self.rolling else "", extra={"role": role_name})
                if not self.rolling:
                    for runner, _key, slot in children:
                        if runner.name == role_name:
                            slot.note_restart_reason("config")  # counted as such when the spec changes
                continue  # the spec changes: the slot restarts the child once its file is written
            # one-shot runs: a restart entry is only a file rewrite for the running ones
            signals = sorted({a.signal for a in actions if a.signal is not None})
            for runner, _key, slot in children:
                if runner.name == role_name and slot.child is not None and slot.child.alive:
                    self._write(slot.child.spec.name, self.values[role_name], slot, signals)

    def _write(self, name: str, content: Mapping[str, Any], slot: Slot | None = None,
               signals: Sequence[signal.Signals] = ()) -> None:
        path, data = self.file_path(name), _encode(content)
        if self.writing.get(name) == data and not signals:
            return
        self.writing[name] = data

        def done(_result: object, error: BaseException | None) -> None:
            if self.writing.get(name) is data:
                del self.writing[name]
            if error is not None:
                log.error("cannot write the config file of %s: %s", name, error)
                return
            self.files[name] = data
            for signum in signals:
                if slot is not None and slot.signal(signum):
                    log.info("%s: config file rewritten; sent %s", name, signum.name,
                             extra=dict(zip(("role", "slot"), child_role_slot(name), strict=True)))

        self.effect(f"write config file of {name}", lambda: write_atomically(path, data, make_dirs=False), done)

    def forget(self, live_names: set[str]) -> None:
        """Remove the files (and kept env) of children that are gone."""
        keep = live_names | self.seen
        for name in [n for n in self.files if n not in keep and n not in self.writing]:
            path = self.file_path(name)
            del self.files[name]
            self.frozen.pop(name, None)
            self.admitted.pop(name, None)
            self.effect(f"remove config file of {name}", functools.partial(_unlink, path), None)


def restartable(role: RoleSpec) -> bool:
    """Long-running roles restart on a change; a one-shot run (cron, job,
    topic) is not cut short: the change applies to the runs started later."""
    return role.type in (RoleType.SHARDED, RoleType.SINGLETON)


def _items(config: Config) -> set[str]:
    return {spec.item for role in config.roles.values() for spec in role.config.values()}


def _typed(value: Any) -> str:
    """A comparison key that tells 1 from True from "1"."""
    return json.dumps([type(value).__name__, value], sort_keys=True, default=str)


def _encode(content: Mapping[str, Any]) -> bytes:
    return dumps(dict(content), sort_keys=True, default=str).encode() + b"\n"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
