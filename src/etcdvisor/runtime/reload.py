"""Live reload (SIGHUP, or ``run --watch-config``): a diff of frozen configs.

The new file is loaded completely first (same checks as at start-up, plus
every new command must resolve); any problem keeps the running config and
logs one line per problem. Otherwise roles are compared by value:

* removed roles: their children are stopped, then the runner leaves/resigns;
* changed roles: the same, then a runner with the new spec starts (a
  sharded member rejoins at the end of the order; a singleton campaigns
  again);
* added roles: a runner starts at once;
* untouched roles keep running, their children untouched.

:class:`Reloads` is the loop's side: one check at a time, off the loop (an
effect); a SIGHUP during a check asks for one more after it.

Settings outside ``roles`` (``cluster``, ``etcd.*``, ``member.*``) concern the
member itself: a change is logged and ignored until the supervisor restarts.

:class:`ConfigFileWatcher` is the edge thread for ``--watch-config``: it
posts a reload request when the file changes (watchfiles, inotify-based:
no polling while idle).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..config import Config, ConfigError, diff, unresolved_command
from ..config.isolated import load_isolated
from ..events import Signalled
from ..roles.base import describe

log = logging.getLogger("etcdvisor")


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # the config to run from now on
    retire: tuple[str, ...]  # runners to drain and stop (removed + changed)
    start: tuple[str, ...]  # runners to start once their old runner is gone (added + changed)


def plan_reload(current: Config, environ: Mapping[str, str]) -> ReloadPlan | None:
    """Load the file again and work out what to do; None keeps the running
    config (the reason is logged)."""
    try:
        new = load_isolated(current.source_path, environ, default_member_id=current.member.id,
                            secret_names=(current.etcd.password_env,) if current.etcd.password_env else ())
    except ConfigError as exc:
        for line in exc.errors:
            log.error("reload refused, keeping the running config: %s", line)
        return None
    changes = diff(current, new)
    if changes.settings_changed:
        log.warning("reload: %s changed; these apply at the next restart of the supervisor",
                    ", ".join(changes.settings_changed))
    problem = unresolved_command(new, changes.added + changes.changed, environ.get("PATH", os.defpath))
    if problem:
        log.error("reload refused, keeping the running config: %s", problem)
        return None
    if not (changes.added or changes.changed or changes.removed):
        log.info("reload: no role changed")
        return None
    log.info("reload: added %s; changed %s; removed %s", ", ".join(changes.added) or "none",
             ", ".join(changes.changed) or "none", ", ".join(changes.removed) or "none")
    kept = replace(current, roles=new.roles)  # member-level settings stay as running
    return ReloadPlan(config=kept, retire=changes.changed + changes.removed,
                      start=changes.added + changes.changed)


Effect = Callable[[str, Callable[[], Any], Callable[[Any, BaseException | None], None]], None]


class Reloads:
    def __init__(self, current: Callable[[], tuple[Config, Mapping[str, str]]], effect: Effect,
                 apply: Callable[[ReloadPlan], None], stopping: Callable[[], bool]):
        """``current()``: the running config and environment; ``effect(what, call, done)``:
        I/O off the loop; ``apply(plan)`` (on the loop) unless ``stopping()``."""
        self.current = current
        self.effect = effect
        self.apply = apply
        self.stopping = stopping
        self.running = False  # a reload is being checked off the loop
        self.again = False  # another SIGHUP came meanwhile

    def request(self) -> None:
        """Check the file off the loop (it may take seconds); children keep
        running meanwhile and lease deadlines keep moving."""
        if self.running:
            self.again = True
            return
        self.running = True
        config, environ = self.current()
        log.debug("reload: checking %s off the loop", config.source_path)
        environ = dict(environ)
        self.effect("check the config file for reload", lambda: plan_reload(config, environ), self.checked)

    def checked(self, plan: ReloadPlan | None, error: BaseException | None) -> None:
        self.running = False
        if plan is not None:
            log.debug("reload check done: retire %s, start %s", list(plan.retire), list(plan.start))
        elif error is None:
            log.debug("reload check done: nothing to apply")
        if error is not None:
            log.error("reload refused, keeping the running config: %s", describe(error))
        elif plan is not None and not self.stopping():
            self.apply(plan)
        if self.again and not self.stopping():
            self.again = False
            self.request()


class ConfigFileWatcher:
    """Posts ``Signalled(SIGHUP)`` when the config file changes."""

    def __init__(self, path: str, post: Callable[[object], None], signum: int):
        self.path = os.path.abspath(path)
        self.post = post
        self.signum = signum
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="config-watch")

    def start(self) -> ConfigFileWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        from watchfiles import watch

        # watch the directory: editors replace files by rename
        directory = os.path.dirname(self.path)
        # step: how often the watcher thread checks for the stop event (2/s)
        for changes in watch(directory, stop_event=self._stop, debounce=300, step=500,
                             rust_timeout=0, recursive=False):
            if any(os.path.abspath(p) == self.path for _, p in changes):
                log.info("config file %s changed: reloading", self.path)
                self.post(Signalled(self.signum))

    def stop(self) -> None:
        self._stop.set()
