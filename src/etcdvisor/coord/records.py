"""One strict, bounded decoder for every record read from etcd, and strict JSON out.

Nothing read from etcd is trusted (docs/safety.md, "Records read from etcd are not
trusted"): anyone with write access to the cluster's prefix, another tool, or an older
or newer etcdvisor may have written it. Every JSON record the product reads goes
through :func:`parse_json` (bounds) and, for the record kinds the product acts on, a
typed :class:`RecordKind` (fields), in this order:

1. **size**: at most ``kind.max_bytes`` bytes (default :data:`MAX_RECORD_BYTES`),
   checked before anything else;
2. **nesting**: at most ``kind.max_depth`` levels of ``[``/``{`` (default
   :data:`MAX_DEPTH`), checked by a linear scan *before* ``json.loads`` (so 5,000
   nested ``[`` is one error, never a ``RecursionError``);
3. **strict JSON**: UTF-8, no ``NaN``/``Infinity`` (nor a number so large that it is
   one as a float), no integer over 4,300 digits;
4. **types** (typed kinds): the document is an object; each declared :class:`Field`
   has its type (an integer is an ``int``, never a ``bool`` or ``"5"``), range and
   length; a **time** is Unix epoch *seconds* between 2000-01-01 and 2200-01-01
   (:data:`TIME_MIN`, :data:`TIME_MAX`), so a time in milliseconds is refused.
   Undeclared fields are kept as they are (a newer writer may add some).

A record that fails raises :class:`RecordError` from :meth:`RecordKind.decode`;
consumers call :meth:`RecordKind.read` instead, which returns ``None`` for a bad
record and logs **one** warning line naming its key and reason (once per key and
mod revision: a watcher that sees the same bad record in every snapshot does not
repeat it; a new write of the key warns again). A bad record never stops a watcher
or a verb: it is skipped and the next valid record acts.

Adding a record kind (e.g. ``rollouts/<role>``) is a few lines::

    ROLLOUT = RecordKind("rollout", {
        "role": Field(STR, required=True),
        "step": Field(INT, minimum=0, required=True),
        "started": Field(TIME, nullable=True),
        "state": Field(STR, choices=("running", "paused", "done")),
    })

    doc = ROLLOUT.read(kv)          # dict (defaults filled in) or None: skipped, warned
    if doc is None:
        continue

Add a row for it to ``tests/unit/test_records.py`` (the table of kinds x bad records).

Output: :func:`dumps` is the one JSON writer for what the product writes (``--json``,
peers files, children's config files, JSON logs, records): strict JSON; a
non-finite float becomes ``null`` rather than ``NaN`` (:func:`dumps_strict` raises
instead, for values that must be refused, e.g. ``config set``).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from operator import sub
from typing import Any

from .types import KeyValue

log = logging.getLogger("etcdvisor")

MAX_RECORD_BYTES = 1024 * 1024  # etcd refuses requests over 1.5 MiB by default
MAX_DEPTH = 32  # levels of [ and {; our own records use at most 5
MAX_STRING = 4096  # characters of a declared string field (not of metadata/free values)
TIME_MIN = 946684800.0  # 2000-01-01T00:00:00Z
TIME_MAX = 7258118400.0  # 2200-01-01T00:00:00Z: a time in milliseconds is far beyond
WARNED_MEMORY = 4096  # (key, revision) pairs remembered for the warn-once rule

STR, INT, NUMBER, BOOL, TIME, OBJECT, LIST, ANY = ("string", "integer", "number", "boolean",
                                                   "time", "object", "list", "any")


class RecordError(ValueError):
    """A record that is not what its kind promises (too big, too deep, not strict
    JSON, a field of the wrong type or out of range). ``str()`` is the reason."""


# --- bounds and strict JSON in ------------------------------------------------------
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)  # unterminated: to the end
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def nesting_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting of ``raw`` outside strings (linear time, no
    recursion; an unbalanced prefix such as ``[[[[`` counts fully: it is what a
    recursive parser would descend into before failing)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET).translate(_OPENERS)
    if not brackets:
        return 0
    # opener -> 2, closer -> 0: the depth after i+1 brackets is prefix_sum - (i+1)
    deepest: int = max(map(sub, accumulate(brackets), range(1, len(brackets) + 1)))
    return max(0, deepest)


def _no_constant(name: str) -> Any:
    raise RecordError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RecordError(f"number {text[:20]} is out of range")
    return value


def parse_json(raw: bytes | str, *, max_bytes: int = MAX_RECORD_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document within bounds (see module docstring, steps 1-3);
    :class:`RecordError` naming the reason otherwise."""
    data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise RecordError(f"{len(data)} bytes, over the limit of {max_bytes}")
    if data.count(b"[") + data.count(b"{") > max_depth:  # else it cannot be too deep: no scan
        depth = nesting_depth(data)
        if depth > max_depth:
            raise RecordError(f"nested {depth} levels deep, over the limit of {max_depth}")
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecordError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: belt and braces
        raise RecordError(f"not JSON: {str(exc)[:120]}") from None


_DECIMAL = re.compile(rb"[0-9]{1,22}")  # a batched topic id: an int64 revision * 1000 + offset


def decimal(raw: bytes | str | None) -> int | None:
    """A non-negative integer of 1 to 22 ASCII digits (a revision, an id, a count kept in
    a key or a value), or None for anything else (``str.isdigit`` would let ``"²"`` and a
    5,000-digit string through to ``int()``, which raises)."""
    if raw is None:
        return None
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    return int(data) if _DECIMAL.fullmatch(data) else None


def member_name(key: str, raw: bytes, revision: int, logger: logging.Logger | None = None) -> str | None:
    """A member id stored as a plain value (an election candidate's): printable UTF-8 of
    1 to 253 characters, or None with one warning naming the key (it may end up in a
    child's environment: no NUL, no megabyte)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if 0 < len(text) <= 253 and text.isprintable():
        return text
    warn_skipped("member name", key, revision, f"not a member id ({len(raw)} bytes, {raw[:40]!r})", logger)
    return None


# --- typed fields ---------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One declared field of a record kind.

    ``type``: :data:`STR`, :data:`INT`, :data:`NUMBER` (int or float), :data:`BOOL`,
    :data:`TIME` (epoch seconds in range), :data:`OBJECT`, :data:`LIST` or :data:`ANY`;
    or a tuple of them (the value must be one of these).
    ``required``: the field must be present; ``nullable``: ``null`` is allowed;
    ``default``: filled in when absent; ``minimum``/``maximum``: for numbers;
    ``choices``: the allowed values; ``max_len``: for strings (default
    :data:`MAX_STRING`) and lists; ``nonempty``: for strings."""

    type: str | tuple[str, ...]
    required: bool = False
    nullable: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    max_len: int | None = None
    nonempty: bool = False
    items: str | None = None  # LIST: the type of every element; OBJECT: of every value

    def check(self, name: str, value: Any) -> None:
        """RecordError unless ``value`` fits this field."""
        if value is None:
            if not self.nullable:
                raise RecordError(f"field {name!r} must not be null")
            return
        if isinstance(self.type, tuple):
            _check_one_of(name, self.type, value)
            return
        _check_type(name, self.type, value)
        if self.type in (INT, NUMBER, TIME):
            if self.minimum is not None and value < self.minimum:
                raise RecordError(f"field {name!r} is {value!r:.40}, below {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise RecordError(f"field {name!r} is {value!r:.40}, above {self.maximum:g}")
        if self.type == STR:
            if self.nonempty and not value:
                raise RecordError(f"field {name!r} must not be empty")
            if len(value) > (self.max_len or MAX_STRING):
                raise RecordError(f"field {name!r} is longer than {self.max_len or MAX_STRING} characters")
        if self.type == LIST and self.max_len is not None and len(value) > self.max_len:
            raise RecordError(f"field {name!r} has more than {self.max_len} elements")
        if self.choices is not None and value not in self.choices:
            raise RecordError(f"field {name!r} is {value!r:.40}, not one of {', '.join(map(str, self.choices))}")
        if self.items is not None:
            elements = value.values() if isinstance(value, dict) else value
            for element in elements:
                _check_type(f"{name}[]", self.items, element)


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {STR: (str,), INT: (int,), NUMBER: (int, float),
                                              TIME: (int, float), BOOL: (bool,), OBJECT: (dict,),
                                              LIST: (list,)}


def _check_type(name: str, kind: str, value: Any) -> None:
    if kind == ANY:
        return
    wanted = _PYTHON_TYPES[kind]
    if isinstance(value, bool) and bool not in wanted or not isinstance(value, wanted):
        raise RecordError(f"field {name!r} must be {_article(kind)}, not {_json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"field {name!r} is not a finite number")
    if kind == TIME:
        check_time(name, value)


def _check_one_of(name: str, kinds: tuple[str, ...], value: Any) -> None:
    problems = []
    for kind in kinds:
        try:
            _check_type(name, kind, value)
        except RecordError as exc:
            problems.append(str(exc))
        else:
            if kind == STR and len(value) > MAX_STRING:
                raise RecordError(f"field {name!r} is longer than {MAX_STRING} characters")
            return
    raise RecordError(" or ".join(problems) if len(problems) < 3 else problems[0])


def check_time(name: str, value: Any) -> float:
    """``value`` as epoch seconds, or RecordError (a bool, a non-number, NaN, before
    2000 or after 2200: milliseconds are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(f"field {name!r} must be a time in epoch seconds, not {value!r:.40}")
    if not TIME_MIN <= value <= TIME_MAX:
        hint = " (milliseconds?)" if value > TIME_MAX else ""
        raise RecordError(f"field {name!r} is {value!r}: not epoch seconds between 2000 and 2200{hint}")
    return float(value)


def _article(kind: str) -> str:
    return {INT: "an integer", OBJECT: "an object", TIME: "a time in epoch seconds"}.get(kind, f"a {kind}")


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (dict, "an object"), (list, "a list")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


# --- record kinds ----------------------------------------------------------------------
@dataclass(frozen=True)
class RecordKind:
    """What one kind of record must look like (see the module docstring).

    ``check``: an extra check of the whole document (after the fields), returning
    an error string or None (e.g. a cross-field rule)."""

    name: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    max_bytes: int = MAX_RECORD_BYTES
    max_depth: int = MAX_DEPTH
    check: Callable[[dict[str, Any]], str | None] | None = None

    def decode(self, raw: bytes | str) -> dict[str, Any]:
        """The record as a dict (absent fields with a default filled in), or
        :class:`RecordError`."""
        doc = parse_json(raw, max_bytes=self.max_bytes, max_depth=self.max_depth)
        if not isinstance(doc, dict):
            raise RecordError(f"not a JSON object but {_json_type(doc)}")
        check_fields(self.fields, doc, fill=True)
        if self.check is not None:
            problem = self.check(doc)
            if problem:
                raise RecordError(problem)
        return doc

    def read(self, kv: KeyValue, logger: logging.Logger | None = None) -> dict[str, Any] | None:
        """:meth:`decode` of ``kv.value``; None (and one warning naming the key) when
        the record is bad."""
        try:
            return self.decode(kv.value)
        except RecordError as exc:
            warn_skipped(self.name, kv.key, kv.mod_revision, str(exc), logger)
            return None


def check_fields(fields: Mapping[str, Field], doc: dict[str, Any], *, where: str = "",
                 fill: bool = False) -> None:
    """RecordError unless every declared field of ``doc`` fits (``where``: a prefix for
    the field names in messages, for a nested object); ``fill``: add absent fields'
    defaults."""
    for name, spec in fields.items():
        if name in doc:
            spec.check(where + name, doc[name])
        elif spec.required:
            raise RecordError(f"missing field {where + name!r}")
        elif fill and (spec.default is not None or spec.nullable):
            doc[name] = spec.default() if callable(spec.default) else spec.default


_warned: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
_warned_lock = threading.Lock()


def warn_skipped(kind: str, key: str, revision: int, reason: str, logger: logging.Logger | None = None) -> bool:
    """Log ``skipping <kind> record <key> (revision N): <reason>`` once per (key,
    revision); True when this call logged it."""
    with _warned_lock:
        if (key, revision) in _warned:
            _warned.move_to_end((key, revision))
            return False
        _warned[(key, revision)] = None
        while len(_warned) > WARNED_MEMORY:
            _warned.popitem(last=False)
    shown = key if len(key) <= 200 else key[:200] + "..."
    (logger or log).warning("skipping %s record %s (revision %d): %s", kind, shown, revision, reason)
    return True


# --- strict JSON out -------------------------------------------------------------------------
def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-Infinity) replaced by None, in
    dicts, lists and tuples at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)`` that never writes ``NaN``/``Infinity``: a
    non-finite number is written as ``null`` (strict JSON for every reader)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError as exc:
        if "not JSON compliant" not in str(exc):
            raise
        return json.dumps(finite(value), allow_nan=False, **options)


def dumps_strict(value: Any, **options: Any) -> str:
    """``json.dumps`` refusing non-finite numbers with ValueError ``NaN and Infinity are
    not valid JSON``: for input that must be refused, not repaired."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError as exc:
        if "not JSON compliant" in str(exc):
            raise ValueError("NaN and Infinity are not valid JSON") from None
        raise


# --- the kinds the product reads -------------------------------------------------------------
# One per kind of record (key layout in coord/keys.py and the modules named); each is used
# by every reader of that kind: the watcher on the loop's side and the operator verbs alike.
SMALL_RECORD_BYTES = 64 * 1024
LONG_TEXT = 64 * 1024  # an error message kept in a record
CONTROL_VERBS = ("pause", "resume", "restart", "reset", "trigger", "upgrade")  # upgrade: role "_supervisor"
APPLICATION_MODES = ("temporary", "permanent", "transient")
APPLICATION_STATES = ("loaded", "running", "stopping")

#: ``control/<role>/<verb>`` (runtime/control.py): written by the control verbs
CONTROL = RecordKind("control", {
    "verb": Field(STR, required=True, choices=CONTROL_VERBS),
    "role": Field(STR, required=True, nonempty=True),
    "id": Field(STR, required=True, nonempty=True, max_len=128),
    "when": Field(TIME, required=True),
    "who": Field(STR, nullable=True),
    "host": Field(STR, nullable=True),
    "at": Field(STR, nullable=True),
    "member": Field(STR, nullable=True),
    "index": Field(INT, nullable=True, minimum=0),
}, max_bytes=SMALL_RECORD_BYTES)

#: ``services/<service>/instances/<id>`` (recipes/registry.py): ServiceInfo
SERVICE_INSTANCE = RecordKind("registry", {
    "name": Field(STR, required=True, nonempty=True),
    "id": Field(STR, required=True, nonempty=True),
    "address": Field(STR, required=True),
    "port": Field(INT, required=True, minimum=0, maximum=65535),
    "version": Field(STR, default=""),
    "metadata": Field(OBJECT, default=dict),
}, max_bytes=SMALL_RECORD_BYTES)

#: ``services/<app>/applications/<node>`` (recipes/applications.py): ApplicationRoute
APPLICATION_ROUTE = RecordKind("application route", {
    "name": Field(STR, required=True, nonempty=True),
    "node": Field(STR, required=True, nonempty=True),
    "weight": Field(INT, default=0),
    "mode": Field(STR, default="temporary", choices=APPLICATION_MODES),
    "state": Field(STR, default="loaded", choices=APPLICATION_STATES),
}, max_bytes=SMALL_RECORD_BYTES)

#: one role's status in a member record (the fields ``status`` shows; role types add others)
ROLE_STATUS_FIELDS = {
    "type": Field(STR, nullable=True), "state": Field(STR, nullable=True),
    "failed": Field(STR, nullable=True, max_len=LONG_TEXT),
    "index": Field(INT, nullable=True), "count": Field(INT, nullable=True), "epoch": Field(INT, nullable=True),
    "indexes": Field(LIST, nullable=True), "shards": Field(LIST, nullable=True), "handoff": Field(STR, nullable=True),
    "waiting": Field(LIST, nullable=True), "stopping": Field(LIST, nullable=True),
    "leader": Field(BOOL, nullable=True), "token": Field(INT, nullable=True), "next": Field(STR, nullable=True),
    "waiting_for": Field(LIST, nullable=True), "registered": Field(LIST, nullable=True, items=OBJECT),
    "paused": Field(BOOL, nullable=True), "children": Field(OBJECT, nullable=True, items=OBJECT),
    "coordinator": Field(OBJECT, nullable=True),
}


def _role_statuses(doc: dict[str, Any]) -> str | None:
    for role, status in doc["roles"].items():
        check_fields(ROLE_STATUS_FIELDS, status, where=f"roles.{role:.60}.")
    return None


#: ``members/<id>`` (runtime/member.py): what ``status`` shows of a member
MEMBER = RecordKind("member", {
    "member": Field(STR, nullable=True),
    "host": Field(STR, nullable=True),
    "pid": Field(INT, nullable=True, minimum=0),
    "started": Field(TIME, nullable=True),
    "ttl": Field(INT, nullable=True, minimum=1),
    "roles": Field(OBJECT, default=dict, items=OBJECT),
    # who wrote it, to tell a member of a previous run that is gone (runtime/stale.py)
    "boot": Field(STR, nullable=True),
    "pidns": Field(STR, nullable=True),
    "pid_start": Field(INT, nullable=True, minimum=0),
    "watchdog": Field(INT, nullable=True, minimum=0),
    "watchdog_start": Field(INT, nullable=True, minimum=0),
    # the build it runs and its last in-place upgrade (runtime/upgrade.py)
    "version": Field(STR, nullable=True, max_len=100),
    "upgraded": Field(TIME, nullable=True),
    "upgrades": Field(INT, nullable=True, minimum=0),
}, check=_role_statuses)

#: ``rollouts/<role>`` (runtime/rollout_store.py): one rolling restart of a role
ROLLOUT_TEXT = 512  # characters of any string field of a rollout record
ROLLOUT_DONE = 20000  # children listed in ``done``
ROLLOUT = RecordKind("rollout", {
    "id": Field(STR, required=True, nonempty=True, max_len=ROLLOUT_TEXT),
    "trigger": Field(STR, required=True, choices=("restart", "config")),
    "who": Field(STR, nullable=True, max_len=ROLLOUT_TEXT),
    "started": Field(TIME, required=True),
    "target": Field(STR, required=True, max_len=ROLLOUT_TEXT),
    "state": Field(STR, required=True, choices=("running", "done", "failed", "aborted")),
    "done": Field(LIST, default=list, max_len=ROLLOUT_DONE, items=STR),
    "failed": Field(OBJECT, nullable=True),
    "finished": Field(TIME, nullable=True),
    "resumed": Field(TIME, nullable=True),
})

#: the ``failed`` object of a rollout record
ROLLOUT_FAILED_FIELDS = {
    "child": Field(STR, required=True, max_len=ROLLOUT_TEXT),
    "member": Field(STR, required=True, max_len=ROLLOUT_TEXT),
    "reason": Field(STR, required=True, max_len=ROLLOUT_TEXT),
    "at": Field(TIME, required=True),
}

#: ``rollouts/<role>/slots/<n>`` (runtime/rollout_store.py): a slot held on its holder's lease
ROLLOUT_SLOT = RecordKind("rollout slot", {
    "member": Field(STR, required=True, max_len=ROLLOUT_TEXT),
    "child": Field(STR, required=True, max_len=ROLLOUT_TEXT),
    "rollout": Field(STR, required=True, max_len=ROLLOUT_TEXT),
}, max_bytes=4096)

#: ``roles/<role>/ticks/<tick id>`` (roles/cron.py): a cron run's claim and outcome
TICK = RecordKind("cron tick", {
    "state": Field(STR, required=True, nonempty=True),
    "member": Field(STR, nullable=True),
    "token": Field(INT, nullable=True, minimum=0),
    "scheduled": Field((STR, TIME), nullable=True),  # ISO 8601 as written; or epoch seconds
    "started": Field(TIME, nullable=True),
    "finished": Field(TIME, nullable=True),
    "exit_code": Field(INT, nullable=True),
    "manual": Field(BOOL, nullable=True),
    "trigger": Field(STR, nullable=True),
    "who": Field(STR, nullable=True),
    "error": Field(STR, nullable=True, max_len=LONG_TEXT),
}, max_bytes=SMALL_RECORD_BYTES)

#: ``roles/<role>/job`` (roles/job.py): a job's run and outcome
JOB = RecordKind("job", {
    "spec_hash": Field(STR, nullable=True),
    "state": Field(STR, required=True, nonempty=True),
    "member": Field(STR, nullable=True),
    "token": Field(INT, nullable=True, minimum=0),
    "updated": Field(TIME, nullable=True),
    "finished": Field(TIME, nullable=True),
    "exit_code": Field(INT, nullable=True),
    "error": Field(STR, nullable=True, max_len=LONG_TEXT),
}, max_bytes=SMALL_RECORD_BYTES)

#: ``roles/<role>/done/<count>/<index>`` (roles/base.py): a child's final successful exit
DONE = RecordKind("done", {
    "exit_code": Field(INT, required=True),
    "member": Field(STR, nullable=True),
    "finished": Field(TIME, nullable=True),
}, max_bytes=SMALL_RECORD_BYTES)

#: a partition map ``{"<count>": [index, ...]}`` (sharded roles: alive records and grants)
MAX_PARTITION_INDEXES = 1 << 20  # indexes listed in one map (4096 shards fit many times over)


def partitions(doc: dict[str, Any], name: str = "parts") -> str | None:
    """None when ``doc[name]`` is a partition map: decimal counts (1 to 22 digits, > 0) mapping
    to lists of integer indexes ``0 <= index < count``; else the reason."""
    value, seen = doc[name], 0
    if not isinstance(value, dict):
        return f"field {name!r} must be an object"
    for count, indexes in value.items():
        n = decimal(count)
        if n is None or n < 1:
            return f"field {name!r}: count {count!r:.40} is not a positive integer"
        if not isinstance(indexes, list):
            return f"field {name!r}: the indexes of count {n} must be a list, not {_json_type(indexes)}"
        seen += len(indexes)
        if seen > MAX_PARTITION_INDEXES:
            return f"field {name!r} lists more than {MAX_PARTITION_INDEXES} indexes"
        for index in indexes:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                return f"field {name!r}: index {index!r:.40} out of range for count {n}"
    return None


#: ``roles/<role>/alive/<member>`` (roles/handoff.py): the partitions of every child a member of a
#: fenced sharded role runs, is about to start (its announced intents) or is still stopping; on its lease
SHARD_ALIVE = RecordKind("shard alive", {
    "parts": Field(OBJECT, required=True, items=LIST),
}, max_bytes=512 * 1024, check=partitions)

#: ``roles/<role>/grants/<member>/grant`` (roles/shard_coordinator.py): the coordinator's start grant
#: for a member of a fenced sharded role: the partitions of that member's alive record at mod revision
#: ``record`` that no other alive partition intersected; on the coordinator's lease
SHARD_GRANT = RecordKind("shard grant", {
    "epoch": Field(INT, required=True, minimum=0),
    "record": Field(INT, required=True, minimum=1),
    "parts": Field(OBJECT, required=True, items=LIST),
    "coordinator": Field(STR, nullable=True, max_len=253),
}, max_bytes=512 * 1024, check=partitions)

#: every kind above, by name (the unit test's table runs over these)
KINDS: dict[str, RecordKind] = {kind.name: kind for kind in (
    CONTROL, SERVICE_INSTANCE, APPLICATION_ROUTE, MEMBER, TICK, JOB, DONE, ROLLOUT, ROLLOUT_SLOT,
    SHARD_ALIVE, SHARD_GRANT)}
