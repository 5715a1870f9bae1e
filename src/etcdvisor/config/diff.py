"""Compare two loaded configs for a reload (supervisord's ``diff_to_active``).

Role specs are frozen dataclasses compared by value: a role is *changed* when
any field differs (command, env, timings, type...), so untouched roles keep
running. Settings outside ``roles`` are reported by dotted name in
``settings_changed``; a live reload cannot apply them.
"""

from __future__ import annotations

import dataclasses

from .model import Config, ConfigDiff


def diff(old: Config, new: Config) -> ConfigDiff:
    """Roles added/changed (in ``new``'s order) and removed (in ``old``'s order)."""
    added = tuple(name for name in new.roles if name not in old.roles)
    removed = tuple(name for name in old.roles if name not in new.roles)
    changed = tuple(name for name in new.roles if name in old.roles and new.roles[name] != old.roles[name])
    settings = []
    for name in ("cluster", "config_layout"):
        if getattr(old, name) != getattr(new, name):
            settings.append(name)
    for section in ("etcd", "member", "http", "log"):
        before, after = getattr(old, section), getattr(new, section)
        for field in dataclasses.fields(before):
            if getattr(before, field.name) != getattr(after, field.name):
                settings.append(f"{section}.{field.name}")
    return ConfigDiff(added=added, changed=changed, removed=removed, settings_changed=tuple(settings))
