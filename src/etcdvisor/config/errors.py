"""The one exception the configuration layer raises, and the collector behind it.

Every problem is a single line ``FILE: KEY.PATH: reason`` (or ``FILE: reason`` when
the problem is the file as a whole, or ``FILE:LINE:COL: invalid YAML: ...``).
``str(ConfigError)`` is always one line: the first problem, followed by
``(+N more)`` when there are others; ``ConfigError.errors`` holds them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

KeyPath = tuple[str | int, ...]  # str: a mapping key, int: a list index

Document = dict[str, Any]
"""A parsed config file, or a mapping inside one: plain YAML values, checked by the schema
and the semantic stage before anything trusts their types."""


def format_key_path(path: Iterable[str | int]) -> str:
    """``("roles", "w", "command", 0)`` -> ``roles.w.command[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def unknown_role(other: str, names: Sequence[str]) -> str:
    """The problem text for a reference to a role that does not exist (after:, needs:)."""
    close = difflib.get_close_matches(other, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (roles: {', '.join(names)})"
    return f"unknown role {other!r}{hint}"


def one_line(text: str) -> str:
    """Collapse whitespace so a reason can never break the one-line promise."""
    return " ".join(str(text).split())


def unexpected_problem(source_path: str, exc: BaseException) -> str:
    """One line for an exception no check anticipated (a bug in a checker, or a
    resource limit): the file still gets one line and a non-zero exit, never a traceback."""
    reason = one_line(f"{type(exc).__name__}: {exc}")
    return f"{source_path}: cannot check the file: {reason[:300]}"


class ConfigError(ValueError):
    """A configuration file could not be loaded.

    ``errors`` lists every problem found, each one line; ``source_path`` is the
    file as given. ``str()`` is the first problem, plus ``(+N more)``."""

    def __init__(self, source_path: str, errors: Sequence[str]):
        if not errors:
            raise ValueError("ConfigError needs at least one error")
        self.source_path = source_path
        self.errors = [one_line(e) for e in errors]
        first = self.errors[0]
        if len(self.errors) > 1:
            first += f" (+{len(self.errors) - 1} more)"
        super().__init__(first)


class Problems:
    """Collects ``(key path, reason)`` pairs and renders them as one-line errors.

    ``labels`` maps a key path to the text to show instead of it, so a value
    that came from an environment variable is reported under that variable."""

    def __init__(self, source_path: str, labels: dict[KeyPath, str] | None = None):
        self.source_path = source_path
        self.labels = dict(labels or {})
        self._items: list[tuple[KeyPath, str]] = []

    def add(self, path: Iterable[str | int], reason: str) -> None:
        item = (tuple(path), one_line(reason))
        if item not in self._items:  # if/then branches can report one thing twice
            self._items.append(item)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def paths(self) -> list[KeyPath]:
        return [path for path, _ in self._items]

    def has_under(self, prefix: Iterable[str | int]) -> bool:
        """True if some problem sits at or below ``prefix``."""
        prefix = tuple(prefix)
        return any(path[: len(prefix)] == prefix for path, _ in self._items)

    def render(self) -> list[str]:
        lines: list[str] = []
        for path, reason in self._items:
            key = self._label(path)
            lines.append(f"{self.source_path}: {key}: {reason}" if key else f"{self.source_path}: {reason}")
        return lines

    def raise_if_any(self) -> None:
        if self._items:
            raise ConfigError(self.source_path, self.render())

    def _label(self, path: KeyPath) -> str:
        for prefix, label in self.labels.items():
            if path[: len(prefix)] == prefix:
                rest = format_key_path(path[len(prefix):])
                return f"{label}{'.' + rest if rest and not rest.startswith('[') else rest}"
        return format_key_path(path)
