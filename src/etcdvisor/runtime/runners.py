"""Role runners made from the config: one constructor per role type.

Used by the builder (start-up), the loop (a reload's new roles) and the control
verbs (``reset`` makes a fresh runner), so none of them imports another for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Config, RoleType
from ..roles.base import RoleRunner, RuntimeContext, describe


class StartupError(Exception):
    """One line explaining why the supervisor cannot start."""


def build_runners(config: Config, ctx: RuntimeContext, names: Iterable[str]) -> list[RoleRunner]:
    """Construct the runners of ``names`` (no I/O); every check that can fail
    without the store happens here, before anything joins or starts. Raises
    StartupError naming the role."""
    types = runner_types()
    built = []
    for name in names:
        role = config.roles[name]
        if role.type not in types:
            raise StartupError(f"{config.source_path}: roles.{name}.type: "
                               f"{role.type.value!r} roles are not supported by this build")
        try:
            built.append(types[role.type](role, ctx))
        except Exception as exc:  # noqa: BLE001 - any refusal is one line naming the role
            raise StartupError(f"{config.source_path}: roles.{name}: {describe(exc)}") from None
    return built


def runner_types() -> dict[RoleType, type[RoleRunner]]:
    from ..roles.cron import CronRunner
    from ..roles.job import JobRunner
    from ..roles.sharded import ShardedRunner
    from ..roles.singleton import SingletonRunner
    from ..roles.topic import TopicRunner

    return {RoleType.SHARDED: ShardedRunner, RoleType.SINGLETON: SingletonRunner,
            RoleType.CRON: CronRunner, RoleType.JOB: JobRunner, RoleType.TOPIC: TopicRunner}
