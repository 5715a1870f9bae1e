"""``load(path)``: file -> YAML -> JSON Schema -> semantic checks -> :class:`Config`.

Stages run in order and never half-apply: any problem raises :class:`ConfigError`
and nothing is returned. Within the schema and semantic stages every problem is
collected (see ``ConfigError.errors``); YAML and file problems stop at once.

Environment overrides (applied to the parsed document before validation, and
reported under the variable's name when they are wrong):

* ``ETCDVISOR_ENDPOINTS`` -> ``etcd.endpoints`` (comma-separated URLs, ``embedded``
  or ``memory://NAME``)
* ``ETCDVISOR_CLUSTER`` -> ``cluster``
* ``ETCDVISOR_MEMBER_ID`` -> ``member.id``
* ``ETCDVISOR_HTTP`` -> ``http.listen``
* ``ETCDVISOR_LOG_FORMAT`` -> ``log.format``; ``ETCDVISOR_LOG_LEVEL`` -> ``log.level``

An override set to the empty string is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import Document, KeyPath, Problems
from .model import Config

ENV_OVERRIDES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ETCDVISOR_ENDPOINTS", ("etcd", "endpoints")),
    ("ETCDVISOR_CLUSTER", ("cluster",)),
    ("ETCDVISOR_MEMBER_ID", ("member", "id")),
    ("ETCDVISOR_HTTP", ("http", "listen")),
    ("ETCDVISOR_LOG_FORMAT", ("log", "format")),
    ("ETCDVISOR_LOG_LEVEL", ("log", "level")),
)


CASE_INSENSITIVE = ("ETCDVISOR_LOG_FORMAT", "ETCDVISOR_LOG_LEVEL")  # INFO works like info


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *,
         default_member_id: str | None = None) -> Config:
    """Load and validate the config file at ``path``.

    ``environ`` defaults to ``os.environ`` (tests pass a dict). ``default_member_id``
    is used when neither the file nor ``ETCDVISOR_MEMBER_ID`` names the member; pass
    the running member's id on reload so that a generated id stays the same.

    Raises :class:`ConfigError`: ``str()`` is one line (the first problem, plus
    ``(+N more)``), ``.errors`` has every problem, each ``FILE: KEY: reason``."""
    from .schema import check_schema  # the schema machinery and the YAML reader: only when a file is read
    from .semantic import build_config
    from .source import config_dir, read_document

    source_path = os.fspath(path)
    environ = os.environ if environ is None else environ
    document = read_document(source_path)
    labels = apply_environment(document, environ)
    problems = Problems(source_path, labels)
    check_schema(document, problems)
    config = build_config(document, source_path=source_path, base_dir=config_dir(source_path),
                          problems=problems, default_member_id=default_member_id)
    problems.raise_if_any()
    assert config is not None  # build_config returns None only with problems
    return config


def apply_environment(document: Document, environ: Mapping[str, str]) -> dict[KeyPath, str]:
    """Write the ``ETCDVISOR_*`` overrides into ``document``; return path -> variable."""
    labels: dict[KeyPath, str] = {}
    for variable, path in ENV_OVERRIDES:
        value = environ.get(variable, "").strip()
        if not value:
            continue
        if variable in CASE_INSENSITIVE:
            value = value.lower()
        parent = document
        for key in path[:-1]:
            child = parent.get(key)
            if child is None:
                child = parent[key] = {}
            if not isinstance(child, dict):
                break  # the schema will report the section itself
            parent = child
        else:
            parent[path[-1]] = value
            labels[path] = variable
    return labels
