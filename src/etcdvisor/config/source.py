"""Read a config file into plain Python data, safely.

``yaml.SafeLoader`` only builds plain types (no object construction); the
subclass here additionally rejects duplicate mapping keys, which plain
``yaml.safe_load`` silently resolves to the last one (two ``worker:`` roles would
quietly become one). Problems are raised as one-line :class:`ConfigError`.
"""

from __future__ import annotations

import os

import yaml

from .errors import ConfigError, one_line


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may be overridden on purpose
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key such as a list: let the schema complain
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key {key!r} (first at line {first.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_document(path: str):
    """Return the parsed document of ``path`` (never None).

    Raises ConfigError for an unreadable file, invalid YAML (with line and
    column), an empty file, or a document that is not a mapping."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, [f"{path}: cannot read config file: {reason}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"{path}: invalid YAML: not UTF-8 text (byte {exc.start})"]) from None
    try:
        document = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(path, exc)]) from None
    if document is None:
        raise ConfigError(path, [f"{path}: config file is empty (it needs at least 'cluster' and 'roles')"])
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else f"a {type(document).__name__}"
        raise ConfigError(path, [f"{path}: expected a mapping of keys at the top level, got {kind}"])
    return document


def _yaml_problem(path: str, exc: yaml.YAMLError) -> str:
    """``file:LINE:COL: invalid YAML: <problem>`` (1-based line and column)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and "duplicate key" not in problem:
        problem = f"{problem} ({context})"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return one_line(f"{where}: invalid YAML: {problem}")


def config_dir(path: str) -> str:
    """Absolute directory of the config file: the base for relative paths."""
    return os.path.dirname(os.path.abspath(path))
