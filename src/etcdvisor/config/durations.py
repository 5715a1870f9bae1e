"""The one grammar of durations and sizes, shared by the schema, ``validate``,
``run``, reload, the cron schedule (``@every``) and the CLI.

Durations (what Go's ``time.ParseDuration`` and Kubernetes accept, minus signs
and the units below a millisecond):

* a YAML number of seconds (``5``, ``0.25``), or a string of one or more
  ``<number><unit>`` parts with units ``ms``, ``s``, ``m``, ``h`` written
  together (``500ms``, ``10s``, ``1m30s``, ``1.5h``); a bare numeric string
  (``"90"``) means seconds;
* no whitespace inside (``30 s`` and ``1h 30m`` are refused: a space usually
  means a typo such as a missing unit), surrounding whitespace is ignored;
  numbers are ASCII digits with an optional fraction, units are lowercase;
* the value is a whole number of milliseconds (``1.0005s`` is refused rather
  than rounded, so the value in the file is the value that runs), from 0 up
  to :data:`MAX_DURATION_MS` (366 days: far beyond any sane timeout, and small
  enough for every timer and ``Event.wait``).

Sizes: a YAML integer number of bytes or ``<number><unit>`` written together
with units ``B``, ``kB``/``KB`` (1000), ``KiB`` (1024), ``MB``, ``MiB``, ``GB``,
``GiB`` in any case (``64KiB``, ``64kib``, ``1.5KiB``); the value must be a
whole number of bytes (``0.5B`` is refused).

Every parser raises ``ValueError`` with a one-line reason. The JSON Schema's
``duration`` and ``size`` patterns are :data:`DURATION_PATTERN` and
:data:`SIZE_PATTERN` (a test checks that the schema file carries these exact
strings), so the schema and the parser accept the same spellings.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from ..timing import format_duration as format_duration  # the one formatter, beside the one parser

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
DURATION_PATTERN = rf"^\s*(?:(?:{_NUMBER}(?:ms|h|m|s))+|{_NUMBER})\s*$"
SIZE_PATTERN = r"^\s*[0-9]+(?:\.[0-9]+)?(?:[bB]|[kKmMgG][bB]|[kKmMgG][iI][bB])?\s*$"

_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|h|m|s)")
_BARE_NUMBER = re.compile(_NUMBER)
_DURATION_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_DURATION_MS = 366 * 86_400_000
MAX_DURATION_TEXT = "366 days"

_SIZE = re.compile(SIZE_PATTERN)
_SIZE_SPLIT = re.compile(rf"({_NUMBER})([a-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "kib": 1024,
    "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3,
}

DURATION_HINT = "use a number of seconds or a string such as 500ms, 10s, 2m, 1h, 1m30s (no spaces)"
SIZE_HINT = "use a number of bytes or a string such as 500B, 10kB, 64KiB, 1MiB (no spaces)"


def parse_duration_ms(value: object) -> int:
    """Return the duration as a whole number of milliseconds (0..MAX_DURATION_MS)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a duration (must be a finite number >= 0)")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is not a duration (must not be negative)")
        if value > MAX_DURATION_MS:  # before repr(): a huge int has no short text form
            raise ValueError(f"{_quote(value)} is longer than the maximum of {MAX_DURATION_TEXT}")
        # repr() is the shortest text that round-trips: 0.1 means 100ms, not 100.00000000000001ms
        total = Decimal(repr(value)) * 1000
    elif isinstance(value, str):
        text = value.strip()
        if not _DURATION.fullmatch(value):
            raise ValueError(f"{_quote(value)} is not a duration ({DURATION_HINT})")
        if _BARE_NUMBER.fullmatch(text):
            total = Decimal(text) * 1000
        else:
            total = sum((Decimal(number) * _DURATION_UNIT_MS[unit]
                         for number, unit in _DURATION_PART.findall(text)), Decimal(0))
    else:
        raise ValueError(f"{_describe(value)} is not a duration ({DURATION_HINT})")
    if total > MAX_DURATION_MS:
        raise ValueError(f"{_quote(value)} is longer than the maximum of {MAX_DURATION_TEXT}")
    if total != total.to_integral_value():
        raise ValueError(f"{_quote(value)} is not a whole number of milliseconds")
    return int(total)


def parse_duration(value: object) -> float:
    """Return the duration in seconds (a float >= 0, a whole number of milliseconds)."""
    return parse_duration_ms(value) / 1000


def parse_size(value: object) -> int:
    """Return the size in bytes (an int >= 0)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a size ({SIZE_HINT})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size (must not be negative)")
        return value
    if not isinstance(value, str) or not _SIZE.fullmatch(value):
        raise ValueError(f"{_quote(value) if isinstance(value, str) else _describe(value)} "
                         f"is not a size ({SIZE_HINT})")
    split = _SIZE_SPLIT.fullmatch(value.strip().lower())
    if split is None:  # pragma: no cover - _SIZE admits only what _SIZE_SPLIT splits
        raise ValueError(f"{_quote(value)} is not a size ({SIZE_HINT})")
    number, unit = split.groups()
    try:
        total = Decimal(number) * _SIZE_UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"{_quote(value)} is not a size ({SIZE_HINT})") from None
    if total != total.to_integral_value():
        raise ValueError(f"{_quote(value)} is not a whole number of bytes")
    return int(total)


def format_size(size: int) -> str:
    """``65536`` -> ``64KiB`` when exact, else ``N bytes`` (for messages)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


def _quote(value: object) -> str:
    """The value as the user wrote it, cut short: a 1 MiB string stays a one-line message."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "a huge number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: object) -> str:
    return f"a {type(value).__name__}" if isinstance(value, (list, dict)) else _quote(value)
