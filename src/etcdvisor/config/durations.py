"""Parse and format durations and sizes as written in config files.

Durations: a number of seconds (int or float) or a string of one or more
``<number><unit>`` parts with units ``ms``, ``s``, ``m``, ``h`` (``500ms``,
``10s``, ``1m30s``, ``1.5h``); a bare numeric string means seconds.
Sizes: an int number of bytes or ``<number><unit>`` with units ``B``, ``kB``/``KB``
(1000), ``KiB`` (1024), ``MB``, ``MiB``, ``GB``, ``GiB``, any case.
Both raise ``ValueError`` with a one-line reason.
"""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*")
_BARE_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "kib": 1024,
    "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3,
}

DURATION_HINT = "use a number of seconds or a string such as 500ms, 10s, 2m, 1h, 1m30s"
SIZE_HINT = "use a number of bytes or a string such as 500B, 10kB, 64KiB, 1MiB"


def parse_duration(value) -> float:
    """Return the duration in seconds (a float >= 0)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a duration (must be a finite number >= 0)")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
    bare = _BARE_NUMBER.fullmatch(value)
    if bare:
        return float(bare.group(1))
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0:
        raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
    return total


def parse_size(value) -> int:
    """Return the size in bytes (an int >= 0; fractions of a byte are dropped)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a size ({SIZE_HINT})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size (must be >= 0)")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.lower())
        if match and match.group(2) in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"{value!r} is not a size ({SIZE_HINT})")


def format_duration(seconds: float) -> str:
    """``10.0`` -> ``10s``, ``6.5`` -> ``6.5s``, ``0.25`` -> ``0.25s`` (for messages)."""
    return f"{round(seconds, 3):g}s"


def format_size(size: int) -> str:
    """``65536`` -> ``64KiB`` when exact, else ``N bytes`` (for messages)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"
