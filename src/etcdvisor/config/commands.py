"""Find a role's program at spawn time (not at load: ``validate`` may run on
another machine than the one that runs the children)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from .model import Config


def find_command(argv: Sequence[str], cwd: str | None = None, env_path: str | None = None) -> str | None:
    """Absolute path of the executable ``argv[0]`` would run, or None.

    A name with a ``/`` is taken relative to ``cwd`` (default: the current
    directory), as ``execve`` would; a bare name is searched in ``env_path``
    (a ``PATH`` string; default ``os.environ['PATH']``) like ``execvp``. Only
    regular files with execute permission count."""
    if not argv or not argv[0]:
        return None
    program = argv[0]
    if os.sep in program:
        candidate = os.path.join(cwd or os.getcwd(), os.path.expanduser(program))
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
        return None
    path = env_path if env_path is not None else os.environ.get("PATH", os.defpath)
    found = shutil.which(program, path=path)
    if found is None:
        return None
    if not os.path.isabs(found):  # relative PATH entries resolve against the child's cwd
        found = os.path.join(cwd or os.getcwd(), found)
    return os.path.abspath(found)


def unresolved_command(config: Config, names: Sequence[str], env_path: str) -> str | None:
    """The first role of ``names`` (in ``config``) whose command cannot be
    found from its working directory and ``env_path``, as one problem line;
    None when every command resolves."""
    for name in names:
        role = config.roles[name]
        if find_command(role.command, config.role_cwd(role), env_path) is None:
            return (f"{config.source_path}: roles.{name}.command: command not found: "
                    f"{role.command[0]!r} (PATH={env_path})")
    return None
