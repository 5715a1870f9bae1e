"""The keyword arguments of :class:`~.model.RoleSpec` as the per-role checks gather them.

Each stage (:mod:`.roles`, :mod:`.wiring`, :mod:`.output`, :mod:`.health`) returns the
fields it checked; :func:`.roles.build_role` merges them and calls ``RoleSpec(**fields)``.
The type checker holds every stage to RoleSpec's field names and types: a key RoleSpec
does not have, or a value of another type, is an error before anything runs.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TypedDict

from .model import (
    BackoffSettings,
    ConfigItem,
    HealthSpec,
    OutputFile,
    PeersFile,
    Registration,
    RestartPolicy,
    RoleType,
    RolloutSettings,
)
from .schedule import Schedule


class RoleFields(TypedDict, total=False):
    """:class:`~.model.RoleSpec`'s fields (see there); each stage returns some of them."""

    name: str
    type: RoleType
    command: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    restart: RestartPolicy
    stop_signal: signal.Signals
    stop_timeout: float
    backoff: BackoffSettings
    start_retries: int
    after: tuple[str, ...]
    wait_for: tuple[str, ...]
    settle: float | None
    handoff: str | None
    processes: int | None
    shards: int | None
    children: str | None
    standby: bool
    schedule: Schedule | None
    timezone: str | None
    starting_deadline: float | None
    concurrency: str | int | None
    topic: str | None
    delivery: str | None
    max_payload: int | None
    max_attempts: int | None
    config: Mapping[str, ConfigItem]
    register: Registration | None
    peers: Mapping[str, PeersFile]
    stdout: OutputFile | None
    stderr: OutputFile | None
    health: HealthSpec
    min_ready: float
    needs: tuple[str, ...]
    on_failed: str
    step_down_after: float | None
    rollout: RolloutSettings
