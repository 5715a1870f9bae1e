"""Validate a parsed document against the JSON Schema and explain failures.

The schema (Draft 2020-12, every object closed) ships inside the package as
``etcdvisor/schemas/config.schema.json``; ``schemas/config.schema.json`` at the
repository root is an identical copy for editors and readers. jsonschema's own
messages (``'comand' was unexpected``) are translated into reasons a person can
act on (``unknown key 'comand' (did you mean 'command'?)``).
"""

from __future__ import annotations

import difflib
import functools
import json
from datetime import date
from importlib import resources
from typing import TYPE_CHECKING, Any

from .durations import DURATION_HINT, SIZE_HINT
from .errors import Document, KeyPath, Problems

if TYPE_CHECKING:  # jsonschema is imported when a file is checked, not before
    import jsonschema

ROLE_TYPES = ("sharded", "singleton", "cron", "job", "topic")

TYPE_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "settle": ("sharded",),
    "handoff": ("sharded",),
    "processes": ("sharded",),
    "shards": ("sharded",),
    "children": ("sharded",),
    "standby": ("singleton",),
    "rollout": ("sharded", "singleton"),
    "step_down_after": ("singleton",),
    "schedule": ("cron",),
    "timezone": ("cron",),
    "starting_deadline": ("cron",),
    "concurrency": ("cron", "topic"),
    "topic": ("topic",),
    "delivery": ("topic",),
    "max_payload": ("topic",),
    "max_attempts": ("topic",),
}
"""Role keys that only some types accept (mirrors the schema's allOf; a test checks)."""

_PATTERN_HINTS = {
    "cluster": "use lowercase letters, digits, '_', '.', '-', starting with a letter or digit",
    "id": "use letters, digits, '_', '.', '-', starting with a letter or digit",
    "topic": "use letters, digits, '_', '.', '-', starting with a letter or digit",
    "password_env": "must be an environment variable name",
    "item": "use letters, digits, '_', '.', ':', '@', '-', '/', starting with a letter, digit or '_'",
}


@functools.cache
def schema_text() -> str:
    """The packaged schema, as text."""
    return resources.files("etcdvisor").joinpath("schemas/config.schema.json").read_text(encoding="utf-8")


def _strict_integer(_checker: object, instance: object) -> bool:
    """JSON Schema calls ``2.0`` an integer; here an integer is a YAML integer
    (``2``), so ``processes: 2.0`` is refused by ``validate`` instead of
    reaching the runtime as a float. One rule for every integer key."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    base = jsonschema.Draft202012Validator
    strict = jsonschema.validators.extend(base, type_checker=base.TYPE_CHECKER.redefine("integer", _strict_integer))
    return strict(json.loads(schema_text()))


def check_schema(document: Document, problems: Problems) -> None:
    """Add one problem per schema violation in ``document``, in file order."""
    found: list[tuple[KeyPath, str]] = []
    mistyped: set[KeyPath] = set()
    for error in _validator().iter_errors(document):
        found.extend(_translate(error, document))
        if error.validator == "type":
            mistyped.add(tuple(error.absolute_path))
    # a value of the wrong type gets one line: -1.0 is not an integer (not also below a minimum)
    found = [item for item in found if item[0] not in mistyped or item[1].startswith("expected ")]
    found.sort(key=lambda item: _document_order(document, item[0]))
    for path, reason in found:
        problems.add(path, reason)


def _translate(error: jsonschema.ValidationError, document: Document) -> list[tuple[KeyPath, str]]:
    """Turn one jsonschema error into ``(path, reason)`` pairs (possibly none)."""
    path: KeyPath = tuple(error.absolute_path)
    kind, value, schema, instance = error.validator, error.validator_value, error.schema, error.instance
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        return [(path + (key,), _unknown_key(key, known)) for key in instance if key not in known]
    if kind == "required":
        # a `then` branch of the role schema: the requirement comes from the role type
        role_type = instance.get("type") if "then" in error.relative_schema_path else None
        needed_by = f" ({role_type} roles need it)" if isinstance(role_type, str) else ""
        return [(path + (key,), f"required key is missing{needed_by}") for key in value if key not in instance]
    if kind == "dependentRequired":
        return [
            (path + (key,), f"{key!r} needs {dep!r} as well")
            for key, deps in value.items() if key in instance for dep in deps if dep not in instance
        ]
    if kind == "not":
        return _forbidden_key(path, schema, document)
    if kind in ("anyOf", "oneOf"):
        if schema.get("title") == "child output" and isinstance(instance, dict):
            # a mapping: explain what is wrong inside it (the 'inherit' branch is moot)
            return [found for sub in error.context or () if sub.relative_schema_path[0] == 1
                    for found in _translate(sub, document)]
        return [(path, _no_alternative(error))]
    return [(path, _simple_reason(kind, value, schema, instance, path))]


def _simple_reason(kind: str, value: Any, schema: dict[str, Any], instance: Any, path: KeyPath) -> str:
    """``value`` is the schema rule's value, ``instance`` the document's: JSON and YAML values."""
    title = schema.get("title")
    if kind == "type":
        hint = _command_hint(title, instance) + _integer_hint(value, instance)
        return f"expected {_describe_type(value, schema)}, got {_describe_value(instance)}{hint}"
    if kind == "enum":
        noun = f"a {title}" if title else "an allowed value"
        return f"{instance!r} is not {noun} (one of: {', '.join(map(str, value))})"
    if kind == "pattern":
        key = path[-1] if path else ""
        return f"{instance!r} is not valid ({_PATTERN_HINTS.get(str(key), f'must match {value}')})"
    if kind in ("minimum", "exclusiveMinimum"):
        op = ">=" if kind == "minimum" else ">"
        return f"must be {op} {value}, got {_describe_value(instance)}"
    if kind in ("maximum", "exclusiveMaximum"):
        op = "<=" if kind == "maximum" else "<"
        return f"must be {op} {value}, got {_describe_value(instance)}"
    if kind == "minItems":
        return "must not be empty" if value == 1 else f"needs at least {value} items"
    if kind == "minLength":
        return "must not be empty"
    if kind == "maxLength":
        return f"is too long (at most {value} characters)"
    if kind == "uniqueItems":
        seen: list[Any] = []
        dups: list[Any] = []
        for item in instance:
            if item in seen:
                dups.append(item)
            seen.append(item)
        return f"{dups[0]!r} is listed twice" if dups else "items must be unique"
    return f"{_describe_value(instance)} breaks the schema rule {kind!r}: {value!r}"


def _unknown_key(key: object, known: list[str]) -> str:
    text = str(key)
    if not isinstance(key, str):
        return f"keys must be strings, got {_describe_value(key)}"
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {text!r} (did you mean {close[0]!r}?)"
    if len(known) <= 6:
        return f"unknown key {text!r} (known keys: {', '.join(known)})"
    return f"unknown key {text!r}"


def _forbidden_key(path: KeyPath, schema: dict[str, Any], document: Document) -> list[tuple[KeyPath, str]]:
    if schema.get("title") == "forbidden":
        return [(path, schema.get("description", "this key is not allowed"))]
    key = path[-1]
    role = _lookup(document, path[:-1])
    role_type = role.get("type") if isinstance(role, dict) else None
    if role_type not in ROLE_TYPES:
        return []  # the bad type is reported on its own; don't pile on
    allowed = " and ".join(TYPE_ONLY_KEYS.get(str(key), ()))  # a key of a mapping: a str
    return [(path, f"{key!r} only applies to {allowed} roles, not {role_type} roles")]


def _no_alternative(error: jsonschema.ValidationError) -> str:
    title, instance = error.schema.get("title"), error.instance
    numeric = isinstance(instance, (int, float)) and not isinstance(instance, bool)
    if title == "duration":
        if numeric and instance < 0:
            return f"must not be negative, got {instance!r}"
        return f"{instance!r} is not a duration ({DURATION_HINT})"
    if title == "size":
        if numeric and instance <= 0:
            return f"must be at least 1 byte, got {instance!r}"
        return f"{instance!r} is not a size ({SIZE_HINT})"
    if title == "child output":
        shown = repr(instance) if isinstance(instance, str) else _describe_value(instance)
        return f"expected 'inherit' or a mapping {{file: PATH, max_size: SIZE, backups: N}}, got {shown}"
    if title == "endpoints":
        if isinstance(instance, list):
            return "expected a non-empty list of URL strings"
        if isinstance(instance, str):
            return "must not be empty"
        return f"expected a list of URLs, 'embedded' or 'memory://NAME', got {_describe_value(instance)}"
    from jsonschema.exceptions import best_match

    best = best_match(error.context)
    message: str = best.message if best is not None else error.message
    return message


def _describe_type(expected: Any, schema: dict[str, Any]) -> str:
    """``expected``: the schema's ``type`` (a name or a list of names)."""
    if isinstance(expected, list):
        names = [_describe_type(t, {}) if t != "boolean" else "a boolean" for t in expected]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if expected == "array":
        item_type = schema.get("items", {}).get("type")
        return f"a list of {item_type}s" if isinstance(item_type, str) else "a list"
    return {
        "object": "a mapping", "string": "a string", "integer": "an integer", "number": "a number",
        "boolean": "true or false", "null": "nothing",
    }.get(expected, str(expected))


def _describe_value(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return "a huge number"  # its digits would not make one readable line
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, date):
        return "a date (quote it to make it a string)"
    return f"a {type(value).__name__}"


def _integer_hint(expected: Any, instance: object) -> str:
    """``2.0`` where an integer belongs: say how to write it."""
    wanted = expected if isinstance(expected, list) else [expected]
    if "integer" in wanted and isinstance(instance, float) and instance.is_integer() and abs(instance) < 2**63:
        return f" (an integer is written without a decimal point: {int(instance)})"
    return ""


def _command_hint(title: object, instance: object) -> str:
    if title == "command" and isinstance(instance, str):
        return f" (write it as an argv list, e.g. {instance.split()!r}; no shell is used)"
    return ""


def _lookup(document: Any, path: KeyPath) -> Any:
    node = document
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _document_order(document: Document, path: KeyPath) -> tuple[int, ...]:
    """Sort key that follows the order of keys in the file."""
    order: list[int] = []
    node: Any = document
    for part in path:
        if isinstance(node, dict):
            keys = list(node)
            order.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            order.append(part)
            node = node[part] if part < len(node) else None
        else:
            order.append(0)
            node = None
    return tuple(order)
