"""Load a config in a short-lived child process.

The long-lived supervisor never imports the JSON Schema machinery (about
10 MiB of resident memory for the whole life of the process): ``run`` and
reloads hand the file to ``python -m etcdvisor.config.isolated``, which
checks it exactly like :func:`etcdvisor.config.load` and sends back the
frozen :class:`~etcdvisor.config.Config` (pickled; parent and child are the
same program) or the problems, one line each.

The check child gets only the environment it needs (docs/safety.md rule 7:
secrets stay secret): the ``ETCDVISOR_*`` overrides the loader reads and what
Python itself needs to start (:data:`CHECK_ENVIRONMENT`), never the variable
that holds the etcd password, nor anything else of the supervisor's.
"""

from __future__ import annotations

import copyreg
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import TypeVar

from .errors import ConfigError, unexpected_problem
from .loader import ENV_OVERRIDES
from .model import Config

EXIT_PROBLEMS = 3
CHECK_ENVIRONMENT = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TZDIR", "TMPDIR", "VIRTUAL_ENV",
                               "SYSTEMROOT"} | {variable for variable, _ in ENV_OVERRIDES})
"""Variables (besides ``LC_*`` and ``PYTHON*``) passed to the check child."""


def check_environment(environ: Mapping[str, str], secret_names: Collection[str] = ()) -> dict[str, str]:
    """The part of ``environ`` the check child may see (never ``secret_names``)."""
    return {name: value for name, value in environ.items()
            if (name in CHECK_ENVIRONMENT or name.startswith(("LC_", "PYTHON"))) and name not in secret_names}


_K = TypeVar("_K")
_V = TypeVar("_V")


def read_only(items: dict[_K, _V]) -> MappingProxyType[_K, _V]:
    return MappingProxyType(items)


# the config's read-only mappings travel as plain dicts and come back read-only
copyreg.pickle(MappingProxyType, lambda proxy: (read_only, (dict(proxy),)))


def load_isolated(path: str, environ: Mapping[str, str] | None = None, *,
                  default_member_id: str | None = None, timeout: float = 60.0,
                  secret_names: Collection[str] = ()) -> Config:
    """Like :func:`etcdvisor.config.load`, in a child process that sees only
    :func:`check_environment` of ``environ``."""
    env = check_environment(os.environ if environ is None else environ, secret_names)
    command = [sys.executable, "-m", "etcdvisor.config.isolated", path]
    if default_member_id:
        command.append(default_member_id)
    try:
        done = subprocess.run(command, env=env, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(path, [f"{path}: cannot check the file: {exc}"]) from None
    if done.returncode == 0:
        config: Config = pickle.loads(done.stdout)  # the check child is this program
        return config
    if done.returncode == EXIT_PROBLEMS:
        raise ConfigError(path, json.loads(done.stdout))
    last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    raise ConfigError(path, [f"{path}: cannot check the file: {last}"])


def _main(argv: list[str]) -> int:
    from .loader import load

    path, member = argv[0], (argv[1] if len(argv) > 1 else None)
    try:
        config = load(path, default_member_id=member)
    except ConfigError as exc:
        sys.stdout.write(json.dumps(exc.errors))
        return EXIT_PROBLEMS
    except Exception as exc:  # same one line as `validate` prints
        sys.stdout.write(json.dumps([unexpected_problem(path, exc)]))
        return EXIT_PROBLEMS
    sys.stdout.buffer.write(pickle.dumps(config))
    return 0


if __name__ == "__main__":
    # run the importable copy of this module, so pickles name etcdvisor.config.isolated
    from etcdvisor.config.isolated import _main as main

    sys.exit(main(sys.argv[1:]))
