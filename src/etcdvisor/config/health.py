"""Semantic checks of the health and ordering keys of a role: ``health:``,
``min_ready``, ``needs``, ``on_failed``, ``step_down_after``.

Probe targets are templates with the placeholders of ``register``: ``{index}``,
``{member}``, ``{host}``, and ``{BASE + index}`` (``{8000 + index}``: the
child's INDEX plus a base, for one port per child). :func:`expand` is the one
function that fills them in; :func:`template_problem` is what ``validate`` checks,
so what validates is what runs.

Across roles (``needs`` names known roles, no cycle): ``config/semantic.py``, with
``after``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, overload

from .durations import format_duration, parse_duration, parse_size
from .errors import KeyPath, Problems
from .model import HealthSpec, ProbeSpec
from .role_fields import RoleFields

PROBE_KINDS = ("http", "tcp", "exec")
PROBE_NAMES = ("startup", "readiness", "liveness")
PROBE_DEFAULTS = {"period": 10.0, "timeout": 1.0, "failure_threshold": 3, "success_threshold": 1,
                  "initial_delay": 0.0}
DEFAULT_MIN_READY = 2.0
DEFAULT_STEP_DOWN_AFTER = 30.0
_FIELD = re.compile(r"\{([^{}]*)\}")
_SUM = re.compile(r"\s*(?:(\d+)\s*\+\s*index|index\s*\+\s*(\d+))\s*")
_NAMES = ("index", "member", "host")


def _render(text: str, value: Callable[[str], str | None]) -> tuple[str, str | None]:
    """Replace each ``{...}`` with ``value(inside)``; (text, first unknown field)."""
    unknown: list[str] = []

    def one(match: re.Match[str]) -> str:
        got = value(match.group(1))
        if got is None:
            unknown.append(match.group(1))
            return match.group(0)
        return got

    out = _FIELD.sub(one, text)
    return out, unknown[0] if unknown else None


def _field(inside: str, index: int, member: str, host: str) -> str | None:
    name = inside.strip()
    if name in _NAMES:
        return {"index": str(index), "member": member, "host": host}[name]
    match = _SUM.fullmatch(inside)
    if match is not None:
        return str(int(match.group(1) or match.group(2)) + index)
    return None


def expand(text: str, *, index: int, member: str, host: str) -> str:
    """``text`` with its placeholders filled in (the template was validated)."""
    return _render(text, lambda inside: _field(inside, index, member, host))[0]


def template_problem(text: str) -> str | None:
    """Why ``text`` is not a valid probe template, or None."""
    _, unknown = _render(text, lambda inside: _field(inside, 0, "m", "h"))
    if unknown is not None:
        return (f"unknown placeholder {{{unknown}}} in {text!r} (use {{index}}, {{member}}, {{host}} "
                "or {BASE + index})")
    if "{" in _FIELD.sub("", text) or "}" in _FIELD.sub("", text):
        return f"{text!r} has an unmatched brace"
    return None


class _Reader:
    def __init__(self, raw: Mapping[str, Any], path: KeyPath, problems: Problems):
        self.raw, self.path, self.problems = raw, path, problems

    @overload
    def duration(self, key: str, default: float, *, positive: bool) -> float: ...
    @overload
    def duration(self, key: str, default: None, *, positive: bool) -> float | None: ...

    def duration(self, key: str, default: float | None, *, positive: bool) -> float | None:
        if key not in self.raw:
            return default
        try:
            seconds = parse_duration(self.raw[key])
        except ValueError as exc:
            self.problems.add(self.path + (key,), str(exc))
            return default
        if positive and seconds <= 0:
            self.problems.add(self.path + (key,), "must be greater than zero")
        return seconds


def _probe(raw: Mapping[str, Any], path: KeyPath, problems: Problems) -> ProbeSpec | None:
    kinds = [k for k in PROBE_KINDS if k in raw]
    if len(kinds) != 1:
        problems.add(path, "give exactly one of http, tcp or exec")
        return None
    kind = kinds[0]
    read = _Reader(raw, path, problems)
    before = len(problems)
    target: str = ""
    argv: tuple[str, ...] = ()
    if kind == "exec":
        argv = tuple(raw["exec"])
        for i, arg in enumerate(argv):
            if "\0" in arg:
                problems.add(path + ("exec", i), "contains a NUL byte")
    else:
        target = raw[kind]
        problem = template_problem(target)
        if problem:
            problems.add(path + (kind,), problem)
        elif kind == "http" and not target.startswith(("http://", "https://")):
            problems.add(path + (kind,), f"{target!r} is not an http:// or https:// URL")
        elif kind == "tcp" and not re.fullmatch(r".+:(\d+|\{[^{}]*\})", target):
            problems.add(path + (kind,), f"{target!r} is not HOST:PORT")
    spec = ProbeSpec(
        kind=kind, target=target, argv=argv,
        period=read.duration("period", PROBE_DEFAULTS["period"], positive=True) or 10.0,
        timeout=read.duration("timeout", PROBE_DEFAULTS["timeout"], positive=True) or 1.0,
        failure_threshold=raw.get("failure_threshold", PROBE_DEFAULTS["failure_threshold"]),
        success_threshold=raw.get("success_threshold", PROBE_DEFAULTS["success_threshold"]),
        initial_delay=read.duration("initial_delay", 0.0, positive=False) or 0.0)
    return spec if len(problems) == before else None


def health_fields(raw: Mapping[str, Any], path: KeyPath, role_type: str, problems: Problems) -> RoleFields:
    """``health``/``min_ready``/``needs``/``on_failed``/``step_down_after`` of one
    schema-valid role."""
    read = _Reader(raw, path, problems)
    fields: RoleFields = {
        "min_ready": read.duration("min_ready", DEFAULT_MIN_READY, positive=False),
        "needs": tuple(raw.get("needs", ())),
        "on_failed": raw.get("on_failed", "stay"),
        "step_down_after": (read.duration("step_down_after", DEFAULT_STEP_DOWN_AFTER, positive=True)
                            if role_type == "singleton" else None),
    }
    health = raw.get("health")
    if health is None:
        _check_step_down(raw, path, fields, problems)
        return fields
    where = path + ("health",)
    probes = {name: _probe(health[name], where + (name,), problems)
              for name in PROBE_NAMES if name in health}
    hread = _Reader(health, where, problems)
    watchdog = hread.duration("watchdog", None, positive=True)
    notify = bool(health.get("notify", False))
    if watchdog is not None and not notify:
        problems.add(where + ("watchdog",), "needs notify: true (WATCHDOG=1 comes over sd_notify)")
    memory = None
    if "memory" in health:
        try:
            memory = parse_size(health["memory"])
        except ValueError as exc:
            problems.add(where + ("memory",), str(exc))
        else:
            if memory < 1:
                problems.add(where + ("memory",), "must be at least 1 byte")
    fields["health"] = HealthSpec(startup=probes.get("startup"), readiness=probes.get("readiness"),
                                  liveness=probes.get("liveness"), notify=notify, watchdog=watchdog,
                                  memory=memory)
    if probes.get("readiness") is None and not notify:
        _check_step_down(raw, path, fields, problems)
    return fields


def _check_step_down(raw: Mapping[str, Any], path: KeyPath, fields: RoleFields, problems: Problems) -> None:
    """Without a readiness probe or notify, a singleton's child counts as ready only after
    ``min_ready``: a ``step_down_after`` not longer than that would resign every term."""
    limit, min_ready = fields["step_down_after"], fields["min_ready"]
    if limit is None or min_ready is None or limit > min_ready:
        return
    key = "step_down_after" if "step_down_after" in raw else "min_ready"
    problems.add(path + (key,), f"step_down_after ({format_duration(limit)}) must be longer than "
                 f"min_ready ({format_duration(min_ready)}): "
                 "without a readiness probe or notify the child counts as ready only after min_ready, so "
                 "the leader would resign every term")


def stop_waves(needs: Mapping[str, tuple[str, ...]]) -> list[set[str]]:
    """Roles in shutdown order (``needs``: role -> roles it needs): each wave holds
    the roles no remaining role needs, so dependents stop before what they need."""
    remaining = set(needs)
    waves: list[set[str]] = []
    while remaining:
        needed = {n for r in remaining for n in needs[r] if n in remaining and n != r}
        wave = (remaining - needed) or set(remaining)  # a cycle (refused at load) stops at once
        waves.append(wave)
        remaining -= wave
    return waves
