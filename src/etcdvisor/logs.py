"""Log lines of ``supervisor run``: its own records and its children's output.

Every line starts with (text) or carries (json) an ISO 8601 UTC timestamp with
milliseconds, so lines from many members sort and line up.

* ``text``: ``2026-05-01T03:00:00.123Z etcdvisor[web-1] INFO role worker: ...`` for the
  supervisor's records, ``2026-05-01T03:00:00.123Z worker[0]| line`` for child output
  (the ``role[index]|`` prefix of :mod:`etcdvisor.process.output` is kept);
* ``json``: one object per line, always with the keys ``ts``, ``level``, ``member``,
  ``role``, ``slot``, ``msg`` (``null`` where they do not apply); child output lines
  add ``stream`` (``stdout`` | ``stderr``) and have ``level`` ``info``.

The role and slot of a supervisor record come from ``extra={"role": ..., "slot": ...}``
when the caller gives them, else from a leading ``role NAME:`` in the message. The
role and slot of a child line come from the child's name (``worker[0]``,
``report@<tick>``, ``thumbs#<message id>``, ``api``).

Levels: debug | info | warning | error (:func:`parse_level`; anything else is a
usage error, exit 2).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable

from .config.model import LogFormat, LogLevel
from .coord.records import dumps
from .process import output
from .process.output import child_role_slot as child_role_slot  # the child-name parser, re-exported here

# "role worker: ..." (runner decisions), "api:election: ..." (recipes named after the role)
_ROLE_IN_MESSAGE = re.compile(r"role ([a-z][a-z0-9_-]*)[: ]|([a-z][a-z0-9_-]*):(?:election|shard|job):")


class LogSettingError(ValueError):
    """An unknown log level or format; the message is one line."""


def parse_level(value: str, source: str) -> LogLevel:
    try:
        return LogLevel(str(value).strip().lower())
    except ValueError:
        raise LogSettingError(f"{source}: unknown log level {value!r} "
                              f"(one of: {', '.join(m.value for m in LogLevel)})") from None


def parse_format(value: str, source: str) -> LogFormat:
    try:
        return LogFormat(str(value).strip().lower())
    except ValueError:
        raise LogSettingError(f"{source}: unknown log format {value!r} (one of: text, json)") from None


def timestamp(when: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-05-01T03:00:00.123Z``."""
    when = time.time() if when is None else when
    seconds = int(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((when - seconds) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self, member: str):
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        text = f"{timestamp(record.created)} etcdvisor[{self.member}] {record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, member: str):
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        role = getattr(record, "role", None)
        if role is None:
            match = _ROLE_IN_MESSAGE.match(message)
            role = (match.group(1) or match.group(2)) if match else None
        slot = getattr(record, "slot", None)
        return dumps({"ts": timestamp(record.created), "level": record.levelname.lower(),
                           "member": self.member, "role": role,
                           "slot": None if slot is None else str(slot), "msg": message},
                          ensure_ascii=False)


def configure(member: str, level: LogLevel, fmt: LogFormat) -> None:
    """Route the supervisor's records and its children's output lines to stderr/stdout
    in ``fmt``; only ``etcdvisor`` records at ``level`` or above (others: warnings)."""
    formatter = JsonFormatter(member) if fmt is LogFormat.JSON else TextFormatter(member)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("etcdvisor").setLevel(getattr(logging, level.value.upper()))
    output.set_line_format(_json_child_line(member) if fmt is LogFormat.JSON else _text_child_line)
    # Python's own last words (a crashed thread, warnings) go through the same formatter,
    # so even those lines parse in json mode.
    logging.captureWarnings(True)
    threading.excepthook = _thread_crashed


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else False
    logging.getLogger("etcdvisor").error("thread %s crashed", name, exc_info=exc_info)


def _text_child_line(name: str, stream: str, text: str) -> bytes:
    return f"{timestamp()} {name}| {text}\n".encode()


def _json_child_line(member: str) -> Callable[[str, str, str], bytes]:
    def line(name: str, stream: str, text: str) -> bytes:
        role, slot = child_role_slot(name)
        doc = {"ts": timestamp(), "level": "info", "member": member, "role": role, "slot": slot,
               "msg": text, "stream": stream}
        return (dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")

    return line
