"""The status document (:mod:`.read`) as ``supervisor status`` prints it: text for
people, JSON for ``--json`` and the dashboard. Pure: no store access.
"""

from __future__ import annotations

import signal
import textwrap
import time
from datetime import UTC, datetime
from typing import Any

from ..coord.records import dumps
from ..timing import format_elapsed

WIDTH = 100  # columns of the text view


def render_json(doc: dict[str, Any]) -> str:
    """What ``status --json`` prints and the dashboard's ``GET /api/status`` answers."""
    return dumps(doc, indent=2, sort_keys=True)


def render_text(doc: dict[str, Any], now: float | None = None) -> str:
    """A readable multi-section view of a :func:`gather` document."""
    now = time.time() if now is None else now
    lines = [f"cluster {doc['cluster']} (revision {doc['revision']}): "
             f"{_plural(len(doc['members']), 'member')}"]
    if doc["members"]:
        rows = [[m["member"], m["host"], m["pid"], _age(m["started"], now), m.get("version") or "-",
                 f"{_age(m['upgraded'], now)} ago" if m.get("upgraded") else "-", _lease_text(m),
                 _fit(", ".join(m["roles"]) or "-", 32)] for m in doc["members"]]
        lines += [""] + _table(["MEMBER", "HOST", "PID", "UP", "VERSION", "UPGRADED", "LEASE", "ROLES"], rows)
    for name, role in doc["roles"].items():
        lines += [""] + _render_role(name, role, now)
    if doc["waitgroups"]:
        lines += ["", "wait groups:"]
        lines += _table(["NAME", "COUNT"], [[n, c] for n, c in doc["waitgroups"].items()], indent=2)
    if doc["topics"]:
        lines += ["", "topics:"]
        rows = []
        for name, topic in doc["topics"].items():
            span = f"{topic['oldest_id']}..{topic['newest_id']}" if topic["messages"] else "-"
            groups = topic["groups"] or {"-": {"unacked": None, "claimed": None}}
            for group, counts in groups.items():
                rows.append([name, topic["messages"], span, group, counts["unacked"], counts["claimed"]])
                name, span = "", ""
        lines += _table(["TOPIC", "MESSAGES", "IDS", "GROUP", "UNACKED", "CLAIMED"], rows, indent=2)
    if doc.get("control"):
        lines += ["", "control (supervisor pause/resume/restart/reset/trigger):"]
        rows = []
        for role, verbs in doc["control"].items():
            for verb, rec in sorted(verbs.items(), key=lambda item: item[1].get("when") or 0):
                scope = ", ".join(f"{k} {rec[k]}" for k in ("member", "index") if rec.get(k) is not None)
                rows.append([role, verb + (" (in effect)" if verb == "pause" else ""), rec.get("who"),
                             rec.get("at"), _age(rec.get("when"), now), scope or "-"])
        lines += _table(["ROLE", "VERB", "WHO", "WHEN", "AGO", "SCOPE"], rows, indent=2)
    return "\n".join(lines) + "\n"


def _lease_text(member: dict[str, Any]) -> str:
    if member.get("lease_expiring"):
        return f"expiring in {member.get('lease_expires_in')}s (no keepalive)"
    return "ok" if "lease_expires_in" in member else "-"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _wrap(text: str, first: str, rest: str = "      ") -> list[str]:
    """``text`` as lines of at most WIDTH columns, after ``first`` (then ``rest``)."""
    return textwrap.wrap(" ".join(str(text).split()), WIDTH, initial_indent=first, subsequent_indent=rest) or [first]


def _render_role(name: str, role: dict[str, Any], now: float) -> list[str]:
    kind = role["type"] or "unknown type"
    pause = (role.get("control") or {}).get("pause")
    lines = [f"role {name} ({kind})"]
    if pause:
        lines[0] += f": paused by {pause.get('who')} {_age(pause.get('when'), now)} ago"
    if role["election"]:
        election = role["election"]
        lines.append(f"  election: leader {election['leader']}, token {election['token']}, "
                     f"{_plural(len(election['candidates']), 'candidate')}")
    if role["shard"]:
        lines.append(f"  shard members (join order): {', '.join(role['shard'])}")
    if role["assignments"]:
        headers = ["MEMBER", "STATE"] + _columns(role["type"])
        rows, below = [], {}
        for a in role["assignments"]:
            fields = _fields(role["type"], a)
            state = _state(role, a, pause)
            if a.get("waiting_for"):
                state += f" (waiting for {', '.join(a['waiting_for'])})"
            children = _children(a["children"])
            rows.append([a["member"], state] + fields + [children])
            below[a["member"]] = children
        table = _table(headers + ["CHILDREN"], rows, indent=2)
        if max(len(line) for line in table) > WIDTH:  # children on lines of their own
            table = _table(headers, [row[:-1] for row in rows], indent=2)
            by_member = dict(zip([a["member"] for a in role["assignments"]], table[1:]))
            table = table[:1]
            for member, line in by_member.items():
                table.append(line)
                for child in below[member].split("; "):
                    table += _wrap(child, "      ", "        ")
        lines += table
        for a in role["assignments"]:
            if a["failed"]:
                lines += _wrap(f"failed on {a['member']}: {a['failed']}", "  ", "    ")
            lines += _child_health(a)
            for inst in a.get("registered") or ():
                lines.append(f"  registered: {inst.get('service')} {inst.get('id')} at {inst.get('address')}")
    elif not (role["ticks"] or role["job"]):
        lines.append("  no member runs it")
    lines += _render_handoff(role)
    lines += _render_rollout(name, role.get("rollout"), now)
    if role["ticks"]:
        ticks, last = role["ticks"], role["ticks"]["last"]
        ran = "never" if last is None else (
            f"tick {last['id']} {last['state']} on {last['member']}"
            + (f", exit {last['exit_code']}" if last["exit_code"] is not None else "")
            + (f", finished {_when(last['finished'])}" if last["finished"] is not None else ""))
        lines.append(f"  last run: {ran}")
        upcoming = [a["next"] for a in role["assignments"] if a.get("leader") and a.get("next")]
        if upcoming:
            lines.append(f"  next run: {upcoming[0]}")
        lines.append(f"  retained ticks: {ticks['retained']} (missed {ticks['missed']}, "
                     f"skipped {ticks['skipped']}, running {ticks['running']})")
    if role["job"]:
        job = role["job"]
        text = f"  job: {job['state']} on {job['member']}, token {job['token']}"
        if job["exit_code"] is not None:
            text += f", exit {job['exit_code']}"
        if job["finished"] is not None:
            text += f", finished {_when(job['finished'])}"
        lines.append(text + f", spec {job['spec_hash']}")
    elif role["type"] == "job":
        lines.append("  job: no record (not run yet, or rerun requested)")
    return lines


def _columns(kind: str | None) -> list[str]:
    """The columns of a role type's table, after MEMBER and STATE."""
    if kind in ("singleton", "cron", "job"):
        return ["LEADER", "TOKEN"]
    if kind == "topic":
        return ["TOPIC", "RUNNING", "PROCESSED", "GIVEN UP"]
    return ["INDEX", "COUNT", "EPOCH"]


def _fields(kind: str | None, a: dict[str, Any]) -> list[Any]:
    if kind in ("singleton", "cron", "job"):
        return [a["leader"], a["token"]]
    if kind == "topic":
        topic = a.get("topic")
        if topic is not None and a.get("delivery"):
            topic = f"{topic} ({a['delivery']})"
        return [topic, a.get("running"), a.get("processed"), a.get("given_up")]
    return [_indexes(a), a["count"], a["epoch"]]


def _state(role: dict[str, Any], a: dict[str, Any], pause: dict[str, Any] | None) -> str:
    """What a member's runner of the role is doing, as an operator names it."""
    if a["failed"]:
        return "failed"
    if pause:
        return "paused"
    running = any(isinstance(c, dict) and c.get("state") == "running" for c in (a.get("children") or {}).values())
    if role["type"] == "singleton" and not a.get("leader") and running:
        return "standby"  # a follower's standby child (LEADER=0) while another member leads
    return "-" if a["state"] is None else str(a["state"])


def _render_rollout(name: str, rollout: dict[str, Any] | None, now: float) -> list[str]:
    if not rollout:
        return []
    state = "rollout failed" if rollout["state"] == "failed" else f"rollout {rollout['state']}"
    line = (f"  {state}: {rollout['id']} ({rollout['trigger']} by {rollout['who']}, "
            f"{_age(rollout['started'], now)} ago), {len(rollout['done'])} children restarted")
    if rollout["slots"]:
        line += "; slots held by " + ", ".join(h["child"] for h in rollout["slots"])
    lines = [line]
    if rollout.get("failed"):
        lines.append(f"  rollout failed: {rollout['failed']['reason']} "
                     f"(supervisor rollout resume|abort {name})")
    return lines


def _indexes(a: dict[str, Any]) -> str | None:
    listed = a.get("shards") if a.get("shards") is not None else a.get("indexes")
    if isinstance(listed, list):
        return _ranges(listed) or "-"
    return a.get("index")


def _ranges(values: list[Any]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (4096 shards stay readable)."""
    nums = sorted(v for v in values if isinstance(v, int))
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


def _render_handoff(role: dict[str, Any]) -> list[str]:
    """Fenced hand-offs in progress: who waits for which member's child or lease."""
    lines = []
    if role.get("published") and not role["published"].get("error"):
        pub = role["published"]
        lines.append(f"  published assignment (EPOCH {pub['epoch']}, {pub['shards']} shards): "
                     + "; ".join(f"{m}: {_ranges(s)}" for m, s in pub["owners"].items()))
    for a in role["assignments"]:
        coordinator = a.get("coordinator") if isinstance(a.get("coordinator"), dict) else {}
        for wait in (coordinator.get("waiting") or [])[:10]:
            lines.append(f"  hand-off (coordinator {a['member']}): {wait}")
        for wait in (a.get("waiting") or [])[:10]:
            lines.append(f"  hand-off on {a['member']}: {wait}")
        if a.get("stopping"):
            lines.append(f"  hand-off on {a['member']}: stopping {', '.join(a['stopping'])}")
    return lines


def _child_health(a: dict[str, Any]) -> list[str]:
    """One line per child with a last probe failure or an sd_notify STATUS= text."""
    lines = []
    for key, child in (a.get("children") or {}).items():
        if not isinstance(child, dict):
            continue
        failure = child.get("probe_failure")
        name = child.get("name") or key
        if isinstance(failure, dict):
            lines.append(f"  last probe failure on {a['member']} {name}: {failure.get('probe')} at "
                         f"{_when(failure.get('at'))}: {failure.get('message')}")
        if child.get("notify_status"):
            lines.append(f"  STATUS= on {a['member']} {name}: {child['notify_status']}")
    return lines


def _children(children: dict[str, Any]) -> str:
    parts = []
    for key, child in children.items():
        if not isinstance(child, dict):
            continue
        text = f"{child.get('name') or key}: {child.get('state')}"
        if child.get("pid"):
            text += f" pid {child['pid']}"
        if child.get("ready") is not None:
            text += " ready" if child["ready"] else " not ready"
        by_reason = child.get("restarts_by_reason")
        if isinstance(by_reason, dict) and by_reason:
            total = sum(n for n in by_reason.values() if isinstance(n, int))
            text += f", {total} restarts (" + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())) + ")"
        elif child.get("restarts"):
            text += f", {child['restarts']} restarts"
        if child.get("last_exit") is not None:
            text += f", last exit {_exit_text(child['last_exit'])}"
        parts.append(text)
    return "; ".join(parts) or "-"


def _exit_text(code: object) -> str:
    """-15 -> "signal SIGTERM" (as the log says), 3 -> "status 3"."""
    if isinstance(code, int) and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _table(headers: list[str], rows: list[list[Any]], indent: int = 0) -> list[str]:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return [pad + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _age(started: object, now: float) -> str:
    return format_elapsed(now - started) if isinstance(started, (int, float)) else "-"


def _when(value: object) -> str:
    """Unix seconds as UTC ISO time; anything else as given."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)
