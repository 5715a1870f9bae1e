"""The loaded configuration as frozen, value-comparable dataclasses.

All durations are float seconds, sizes int bytes, signals ``signal.Signals``
(an ``int``), paths absolute (relative ones are resolved against the directory of
the config file). Mappings are read-only (``MappingProxyType``) and keep the order
of the file. Two loads of the same file compare equal (``==``), which is what
:func:`etcdvisor.config.diff` relies on; nothing here is hashable because of the
mappings.
"""

from __future__ import annotations

import enum
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from ..coord.url import TLSOptions
from .schedule import Schedule


class RoleType(enum.StrEnum):
    SHARDED = "sharded"
    SINGLETON = "singleton"
    CRON = "cron"
    JOB = "job"
    TOPIC = "topic"

    @property
    def lease_bound(self) -> bool:
        """True if a child's right to run depends on the member lease (docs/safety.md, rule 1)."""
        return self in LEASE_BOUND_TYPES


LEASE_BOUND_TYPES = frozenset({RoleType.SHARDED, RoleType.SINGLETON, RoleType.CRON, RoleType.JOB})

RESERVED_ENV = frozenset({
    "ROLE", "MEMBER_ID", "CLUSTER", "INDEX", "COUNT", "EPOCH", "SHARDS", "LEADER", "LEADER_TOKEN",
    "SCHEDULED_TIME", "TOPIC", "MESSAGE_ID",
})
"""Variables the supervisor sets for children (docs/config-reference.md; process/spawn.py's
``ChildVars``): the one list; neither a role's
``env:`` nor its ``config:`` items may set them, nor any name under :data:`RESERVED_ENV_PREFIX`."""
RESERVED_ENV_PREFIX = "ETCDVISOR_"


def is_reserved_env(name: str) -> bool:
    """True for a variable only the supervisor sets (:data:`RESERVED_ENV`, ``ETCDVISOR_*``)."""
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX)


class RestartPolicy(enum.StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class EtcdKind(enum.StrEnum):
    ETCD = "etcd"          # external etcd at ``endpoints``
    EMBEDDED = "embedded"  # a private single-node etcd started by the supervisor
    MEMORY = "memory"      # the in-process backend (tests)


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen_map(items: Mapping[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd.

    ``endpoints`` are normalized URLs (``http://host:port``) for ``kind == ETCD``,
    ``("memory://NAME",)`` for MEMORY and empty for EMBEDDED. ``data_dir`` is set
    (absolute) only for EMBEDDED. The password itself is never held here: read it
    with ``coord.read_password(password_file=..., password_env=...)``."""

    kind: EtcdKind = EtcdKind.ETCD
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    memory_name: str | None = None
    tls: TLSOptions | None = None
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    timeout: float = 5.0
    data_dir: str | None = None

    @property
    def url(self) -> str:
        """What ``coord.open_backend`` takes: comma-joined endpoints, ``memory://NAME``,
        or ``embedded`` (the runtime substitutes the private server's URL)."""
        if self.kind is EtcdKind.EMBEDDED:
            return "embedded"
        return ",".join(self.endpoints)


@dataclass(frozen=True)
class MemberSettings:
    """Who this supervisor is. ``id_generated`` is True when no id was configured
    and one was made up from the host name (pass ``default_member_id`` to ``load``
    on reload to keep it stable)."""

    id: str
    ttl: int = 10
    state_dir: str = ""
    id_generated: bool = False


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class HttpSettings:
    """``http.listen`` as (host, port); ``host`` "" means every interface. None: no listener.
    ``token_file``: absolute path of the bearer token file (``http.token_file``), or None."""

    listen: tuple[str, int] | None = None
    token_file: str | None = None


@dataclass(frozen=True)
class LogSettings:
    format: LogFormat = LogFormat.TEXT
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class BackoffSettings:
    """A role's ``backoff:`` keys: restart delay ``initial``, doubling up to ``max`` (seconds).
    The runtime turns them into a :class:`~etcdvisor.process.backoff.RestartBackoff`."""

    initial: float = 1.0
    max: float = 60.0


@dataclass(frozen=True)
class RolloutSettings:
    """A role's ``rollout:`` keys. ``max_unavailable`` is an absolute count or, with
    ``percent`` True, a percentage of the role's children cluster-wide (rounded down,
    at least 1); ``min_ready`` None means the role's own ``min_ready``."""

    max_unavailable: float | int = 25.0  # a count is an int; a percentage a float
    percent: bool = True
    min_ready: float | None = None
    deadline: float = 600.0

    def limit(self, children: int) -> int:
        """Children that may be down at once out of ``children`` (at least 1)."""
        if not self.percent:
            return max(1, int(self.max_unavailable))
        return max(1, int(children * self.max_unavailable // 100))

    def __str__(self) -> str:
        amount = f"{self.max_unavailable:g}%" if self.percent else f"{int(self.max_unavailable)}"
        return f"max_unavailable {amount}"


@dataclass(frozen=True)
class ChangeAction(enum.StrEnum):
    RESTART = "restart"  # restart the child (its role's usual stop rules)
    SIGNAL = "signal"    # rewrite the file, then send ``OnChange.signal``
    NONE = "none"        # only rewrite the file


@dataclass(frozen=True)
class OnChange:
    """What a change does to a running child (``restart``, ``none``, ``signal:NAME``)."""

    action: ChangeAction
    signal: signal.Signals | None = None

    def __str__(self) -> str:
        return f"signal:{self.signal.name[3:]}" if self.signal else self.action.value


@dataclass(frozen=True)
class ConfigItem:
    """One ``config:`` entry: child env var ``env`` <- layered config ``item``.
    ``default`` is None when the file gives none (then the variable is unset)."""

    env: str
    item: str
    default: object = None
    on_change: OnChange = OnChange(ChangeAction.RESTART)


@dataclass(frozen=True)
class Registration:
    """``register:``: the service instance a running child is. Exactly one of
    ``port`` (fixed) and ``port_base`` (``BASE + {index}``) is set."""

    service: str
    address: str = "{host}:{port}"
    port: int | None = None
    port_base: int | None = None
    meta: Mapping[str, Any] = field(default_factory=lambda: _frozen_map({}))

    def port_for(self, index: int) -> int:
        if self.port is not None:
            return self.port
        assert self.port_base is not None  # one of the two is set (config/wiring.py)
        return self.port_base + index


@dataclass(frozen=True)
class PeersFile:
    """One ``peers:`` entry: the instances of ``service`` kept in ``file``
    (as written: relative to the role's cwd)."""

    service: str
    file: str
    on_change: OnChange = OnChange(ChangeAction.NONE)


OUTPUT_PLACEHOLDERS = ("role", "member", "index")
"""What ``stdout.file``/``stderr.file`` may contain: ``{role}``, ``{member}``, ``{index}``."""


@dataclass(frozen=True)
class OutputFile:
    """A role's ``stdout:``/``stderr:`` mapping: the child's stream goes to ``file`` (as
    written: relative to the role's cwd, placeholders unfilled), rotated at ``max_size``
    bytes keeping ``backups`` old files (0: truncate). ``inherit`` is ``None`` in RoleSpec."""

    file: str
    max_size: int = 50 * 1024 * 1024
    backups: int = 5

    def path(self, cwd: str, *, role: str, member: str, index: int | str = 0) -> str:
        """The absolute path for one child: ``{index}`` is its INDEX (0 without one)."""
        return os.path.normpath(os.path.join(cwd, self.file.format(role=role, member=member, index=index)))

    @property
    def per_index(self) -> bool:
        """True if every INDEX has its own file (``{index}`` in ``file``)."""
        return "{index}" in self.file


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of ``health:`` (startup, readiness or liveness). ``kind`` is
    ``http`` (``target``: URL template), ``tcp`` (``"HOST:PORT"`` template) or
    ``exec`` (``argv``); templates use the ``register`` placeholders
    (``{index}``, ``{8000 + index}``, ``{member}``, ``{host}``, see
    :mod:`.health`). Durations in seconds."""

    kind: str
    target: str = ""
    argv: tuple[str, ...] = ()
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay: float = 0.0


@dataclass(frozen=True)
class HealthSpec:
    """A role's ``health:`` keys. ``memory`` in bytes, ``watchdog`` in seconds."""

    startup: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    liveness: ProbeSpec | None = None
    notify: bool = False
    watchdog: float | None = None
    memory: int | None = None

    @property
    def readiness_checked(self) -> bool:
        """True when readiness comes from a probe or sd_notify (not ``min_ready``)."""
        return self.readiness is not None or self.notify


@dataclass(frozen=True)
class RoleSpec:
    """One role, with every default filled in.

    Keys that do not apply to the role's type hold ``None`` (``settle`` is only
    set for sharded roles, ``schedule``/``timezone`` for cron, ``topic``/... for
    topic). ``schedule`` is the parsed :class:`~.schedule.Schedule` (in ``timezone``)
    that the cron runner uses as is: it is built once, here, by the one parser.
    ``concurrency`` is a policy string for cron (forbid | replace | allow)
    and an int >= 1 for topic roles."""

    name: str
    type: RoleType
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: _frozen_map({}))
    cwd: str | None = None
    restart: RestartPolicy = RestartPolicy.ALWAYS
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 5.0
    backoff: BackoffSettings = BackoffSettings()
    start_retries: int = 5
    after: tuple[str, ...] = ()
    wait_for: tuple[str, ...] = ()
    # sharded
    settle: float | None = None
    handoff: str | None = None  # "fenced" | "overlap"
    processes: int | None = None  # join-order mode (None with shards)
    shards: int | None = None  # fixed shard count (None: join-order mode)
    children: str | None = None  # "per-shard" | "per-member" (with shards)
    # singleton
    standby: bool = False
    # cron
    schedule: Schedule | None = None
    timezone: str | None = None
    starting_deadline: float | None = None
    # cron (str) and topic (int)
    concurrency: str | int | None = None
    # topic
    topic: str | None = None
    delivery: str | None = None
    max_payload: int | None = None
    max_attempts: int | None = None
    # seed wiring (any type)
    config: Mapping[str, ConfigItem] = field(default_factory=lambda: _frozen_map({}))
    register: Registration | None = None
    peers: Mapping[str, PeersFile] = field(default_factory=lambda: _frozen_map({}))
    # child output (any type): None is ``inherit`` (the supervisor's stdout/stderr)
    stdout: OutputFile | None = None
    stderr: OutputFile | None = None
    # health and ordering (any type; step_down_after: singleton)
    health: HealthSpec = HealthSpec()
    min_ready: float = 2.0
    needs: tuple[str, ...] = ()
    on_failed: str = "stay"  # "stay" | "exit"
    step_down_after: float | None = None  # singleton: 30s by default
    # rolling restarts (sharded, singleton)
    rollout: RolloutSettings = RolloutSettings()

    @property
    def lease_bound(self) -> bool:
        return self.type.lease_bound


@dataclass(frozen=True)
class Config:
    """A whole configuration file, validated. ``roles`` keeps file order."""

    source_path: str
    cluster: str
    etcd: EtcdSettings
    member: MemberSettings
    roles: Mapping[str, RoleSpec] = field(default_factory=lambda: _frozen_map({}))
    config_layout: str = "etcdvisor"
    warnings: tuple[str, ...] = field(default=(), compare=False)  # one line each, not fatal
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()

    def role_cwd(self, role: RoleSpec) -> str:
        """Where ``role``'s children run: its ``cwd``, by default the config file's directory."""
        return role.cwd or os.path.dirname(os.path.abspath(self.source_path))

    def role(self, name: str) -> RoleSpec:
        """The role called ``name``; ``KeyError`` naming the known roles otherwise."""
        try:
            return self.roles[name]
        except KeyError:
            known = ", ".join(self.roles) or "none"
            raise KeyError(f"no role {name!r} in {self.source_path} (roles: {known})") from None


@dataclass(frozen=True)
class ConfigDiff:
    """Role names added, changed (spec differs) and removed between two configs,
    in file order, and the dotted names of non-role settings that changed
    (``cluster``, ``etcd.endpoints``, ``member.ttl``...), which a live reload cannot
    apply: the caller decides whether that means a restart or a refusal."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    settings_changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.settings_changed)
