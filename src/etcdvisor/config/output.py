"""Semantic checks of a role's ``stdout``/``stderr`` keys (child output to files).

Each is ``inherit`` (the default: prefixed lines on the supervisor's own
stdout/stderr) or ``{file, max_size, backups}``: ``file`` relative to the role's
cwd, where it must stay (the peers-file rule, :func:`.wiring.peers_file_problem`),
with the placeholders ``{role}``, ``{member}``, ``{index}`` only; ``max_size`` a
size of at least 1 KiB (default 50MiB); ``backups`` 0..1000 (default 5).
"""

from __future__ import annotations

import string
from typing import Any

from .durations import parse_size
from .errors import Document, KeyPath, Problems
from .model import OUTPUT_PLACEHOLDERS, OutputFile
from .role_fields import RoleFields
from .wiring import peers_file_problem

MIN_MAX_SIZE = 1024
MAX_BACKUPS = 1000


def output_fields(raw: Document, path: KeyPath, problems: Problems, cwd: str) -> RoleFields:
    """``stdout``/``stderr`` of one schema-valid role (``cwd``: its absolute working
    directory) as :class:`OutputFile` or None (inherit)."""
    return {"stdout": _output(raw.get("stdout", "inherit"), path + ("stdout",), problems, cwd),
            "stderr": _output(raw.get("stderr", "inherit"), path + ("stderr",), problems, cwd)}


def _output(raw: Any, path: KeyPath, problems: Problems, cwd: str) -> OutputFile | None:
    """``raw``: 'inherit' or a schema-valid mapping (a YAML value)."""
    if raw == "inherit":
        return None
    before = len(problems)
    file = raw["file"]
    if "\0" in file:
        problems.add(path + ("file",), "contains a NUL byte")
        return None
    problem = _template_problem(file)
    if problem is None:
        filled = file.format(**{name: "x" for name in OUTPUT_PLACEHOLDERS})
        problem = peers_file_problem(filled, cwd, "log files")
        if problem is not None:
            problem = problem.replace(repr(filled), repr(file))
    if problem:
        problems.add(path + ("file",), problem)
    max_size = OutputFile.max_size
    if "max_size" in raw:
        try:
            max_size = parse_size(raw["max_size"])
        except ValueError as exc:
            problems.add(path + ("max_size",), str(exc))
        else:
            if max_size < MIN_MAX_SIZE:
                problems.add(path + ("max_size",), f"{max_size} bytes is less than the minimum of 1KiB")
    backups = raw.get("backups", OutputFile.backups)
    if not 0 <= backups <= MAX_BACKUPS:
        problems.add(path + ("backups",), f"must be 0..{MAX_BACKUPS}, got {backups}")
    if len(problems) != before:
        return None
    return OutputFile(file=file, max_size=max_size, backups=backups)


def _template_problem(text: str) -> str | None:
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        return f"{text!r} is not a valid template ({exc}; write {{{{ and }}}} for braces)"
    for name, spec, conversion in fields:
        if name not in OUTPUT_PLACEHOLDERS or spec or conversion:
            return (f"unknown placeholder {{{name}}} in {text!r} "
                    f"(use {', '.join('{' + p + '}' for p in OUTPUT_PLACEHOLDERS)})")
    return None
