"""Prometheus metrics of one member, in a private registry.

Two kinds of series, chosen by what they cost:

* counters (restarts, exits, cron runs, topic messages, etcd errors) and the
  keepalive round-trip histogram are incremented by the decision loop as things
  happen (a few per child start/exit, one observation per keepalive);
* gauges (child up, leader, shard index/count, last cron success, lease deadline,
  topic backlog) are computed at scrape time by :class:`_SnapshotCollector` from the
  immutable :class:`Snapshot` the loop publishes after each turn (one reference
  assignment; nothing is updated per event), plus the topic backlog, which is read
  from etcd by the HTTP thread (at most once per ``BACKLOG_MAX_AGE``).

Metric names and labels (docs/config-reference.md, ``http``):
``etcdvisor_child_up{role,slot}``, ``etcdvisor_child_ready{role,slot}``,
``etcdvisor_child_restarts_total{role,reason}``, ``etcdvisor_probe_failures_total{role,probe}``,
``etcdvisor_child_exits_total{role,code}``, ``etcdvisor_role_leader{role}``,
``etcdvisor_role_paused{role}``, ``etcdvisor_role_failed{role}``,
``etcdvisor_shard_index{role}``, ``etcdvisor_shard_count{role}``,
``etcdvisor_cron_runs_total{role,outcome}``,
``etcdvisor_cron_last_success_timestamp_seconds{role}``,
``etcdvisor_topic_messages_total{role,outcome}``, ``etcdvisor_topic_backlog{role}``,
``etcdvisor_lease_keepalive_rtt_seconds`` (histogram),
``etcdvisor_lease_deadline_seconds``, ``etcdvisor_etcd_errors_total{kind}``,
``etcdvisor_rollout_in_progress{role}``, ``etcdvisor_rollout_restarted{role}``,
``etcdvisor_rollout_failed{role}`` (sharded and singleton roles, from the rollout record).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import timing

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BACKLOG_MAX_AGE = 5.0  # seconds a topic backlog read is reused by later scrapes


@dataclass(frozen=True)
class Snapshot:
    """What the loop knew after a turn. Never mutated once published."""

    roles: dict[str, Any] = field(default_factory=dict)  # role -> runner status (children included)
    paused: frozenset[str] = frozenset()
    lease_alive_sent: float | None = None  # monotonic send time of the last confirmed keepalive
    lease_ttl: int = 0
    max_stop_timeout: float = 0.0  # of lease-bound roles: the earliest stop decides


def child_indexes(key: str, status: dict[str, Any]) -> frozenset[int]:
    """The INDEX values (join order) or shards (fixed shards) one child of a sharded
    role covers: its own ``index`` in the role's status (the child's INDEX), else from
    its slot key (``3/8``, ``shard-5``); a per-member ``shards-K-HASH`` child covers
    the member's ``shards``; empty for other roles. Per child, not the member's first
    ``index``: with ``processes: k`` a member runs k children."""
    entry = (status.get("children") or {}).get(key) or {}
    if isinstance(entry.get("index"), int):
        return frozenset({entry["index"]})
    head, sep, tail = key.partition("/")
    if sep and head.isdigit() and tail.isdigit():
        return frozenset({int(head)})
    if key.startswith("shard-") and key[6:].isdigit():
        return frozenset({int(key[6:])})
    if key.startswith("shards-"):
        return frozenset(int(s) for s in status.get("shards") or ())
    return frozenset()


def slot_label(key: str, status: dict[str, Any]) -> str:
    """The ``slot`` label of ``etcdvisor_child_up``: the child's INDEX (or shard) when it
    has exactly one, else its slot key. Unique per child of a member: a duplicate
    series would make Prometheus reject the whole scrape."""
    indexes = child_indexes(key, status)
    return str(next(iter(indexes))) if len(indexes) == 1 and not key.startswith("shards-") else key


def exit_code_label(code: int) -> str:
    """``0``, ``1``... or the signal name (``SIGKILL``) of a child killed by a signal."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal{-code}"
    return str(code)


class _NullFamily:
    """Absorbs counter/histogram calls (``labels(...).inc()``, ``observe``)."""

    def labels(self, *_values: str) -> _NullFamily:
        return self

    def inc(self, _amount: float = 1.0) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


class NullMetrics:
    """The member's metrics when nothing serves them (no ``http``): same calls
    from the loop and the runners, nothing recorded, nothing imported."""

    restarts = exits = cron_runs = topic_messages = etcd_errors = keepalive_rtt = probe_failures = _NullFamily()
    upgrades = _NullFamily()

    def publish(self, snapshot: Snapshot) -> None:
        pass

    def declare(self, roles: dict[str, str | None]) -> None:
        pass

    def cron_outcome(self, role: str, outcome: str, manual: bool = False) -> None:
        pass


class Metrics:
    def __init__(self, backlog: Callable[[], dict[str, int]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        # imported here: a member without ``http`` never loads the client (about 8 MiB)
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Histogram

        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the bytes per scrape
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        self.restarts = Counter("etcdvisor_child_restarts", "Children restarted, by role and reason "
                                "(exit, liveness, startup, watchdog, memory, control, config, rollout)",
                                ["role", "reason"], registry=reg)
        self.probe_failures = Counter("etcdvisor_probe_failures", "Failed health checks of children, by "
                                      "role and probe (startup, readiness, liveness, watchdog, memory)",
                                      ["role", "probe"], registry=reg)
        self.exits = Counter("etcdvisor_child_exits", "Child exits by role and exit code (or "
                             "signal name)", ["role", "code"], registry=reg)
        self.cron_runs = Counter("etcdvisor_cron_runs", "Cron ticks recorded by this member, by "
                                 "outcome (succeeded, failed, stopped, missed, skipped, paused; "
                                 "manual runs: manual-<outcome>)", ["role", "outcome"], registry=reg)
        self.topic_messages = Counter("etcdvisor_topic_messages", "Topic messages finished by this "
                                      "member, by outcome (done, given_up, refused)",
                                      ["role", "outcome"], registry=reg)
        self.etcd_errors = Counter("etcdvisor_etcd_errors", "Failed or lost etcd interactions, by "
                                   "kind", ["kind"], registry=reg)
        self.etcd_errors.labels("keepalive")  # the one kind every member can have: 0 from the start
        self.keepalive_rtt = Histogram("etcdvisor_lease_keepalive_rtt_seconds", "Round trip of "
                                       "lease keepalives that came back alive", buckets=RTT_BUCKETS,
                                       registry=reg)
        # the build this member runs, and its in-place upgrades since it joined (runtime/upgrade.py)
        from prometheus_client import Gauge

        from .. import __version__

        Gauge("etcdvisor_build_info", "The etcdvisor version this member runs (always 1)", ["version"],
              registry=reg).labels(__version__).set(1)
        self.upgrades = Counter("etcdvisor_upgrades", "In-place upgrades of this member (supervisor upgrade, "
                                "SIGUSR2) since it joined", registry=reg)
        self.snapshot = Snapshot()
        self.cron_last_success: dict[str, float] = {}
        self.clock = clock
        self._backlog = backlog
        self._backlog_cache: tuple[float, dict[str, int]] | None = None
        self._scrape_lock = threading.Lock()
        reg.register(_SnapshotCollector(self))

    # --- from the loop -----------------------------------------------------------------
    def publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot  # one reference assignment: scrapes see old or new, never half

    def declare(self, roles: dict[str, str | None]) -> None:
        """Create the per-role counter series at 0 (role -> type), so that a scrape shows
        ``etcdvisor_child_restarts_total{role="x"} 0`` before the first restart: rate()
        and absent() alerts need the series to exist. Called when the role set changes."""
        for role, kind in roles.items():
            self.restarts.labels(role, "exit")
            if kind == "cron":
                for outcome in ("succeeded", "failed"):
                    self.cron_runs.labels(role, outcome)
            elif kind == "topic":
                self.topic_messages.labels(role, "done")

    def cron_outcome(self, role: str, outcome: str, manual: bool = False) -> None:
        self.cron_runs.labels(role, f"manual-{outcome}" if manual else outcome).inc()
        if outcome == "succeeded":
            self.cron_last_success[role] = time.time()

    # --- from the HTTP thread ------------------------------------------------------------
    def render(self) -> bytes:
        from prometheus_client import generate_latest

        with self._scrape_lock:  # concurrent scrapes share one backlog read
            return generate_latest(self.registry)

    def backlog(self) -> dict[str, int]:
        if self._backlog is None:
            return {}
        now = self.clock()
        cached = self._backlog_cache
        if cached is not None and now - cached[0] < BACKLOG_MAX_AGE:
            return cached[1]
        try:
            values = self._backlog()
        except Exception:  # a scrape never fails because etcd does
            self.etcd_errors.labels("topic_backlog").inc()
            values = cached[1] if cached is not None else {}
        self._backlog_cache = (now, values)
        return values


class _SnapshotCollector:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        snap = self.metrics.snapshot
        up = GaugeMetricFamily("etcdvisor_child_up", "1 while the child runs", labels=["role", "slot"])
        ready = GaugeMetricFamily("etcdvisor_child_ready", "1 while the child is ready (probes, "
                                  "sd_notify, or min_ready without them)", labels=["role", "slot"])
        leader = GaugeMetricFamily("etcdvisor_role_leader", "1 while this member leads the role",
                                   labels=["role"])
        paused = GaugeMetricFamily("etcdvisor_role_paused", "1 while the role is paused "
                                   "(supervisor pause)", labels=["role"])
        failed = GaugeMetricFamily("etcdvisor_role_failed", "1 while the role is FAILED here",
                                   labels=["role"])
        index = GaugeMetricFamily("etcdvisor_shard_index", "INDEX of this member's shard",
                                  labels=["role"])
        count = GaugeMetricFamily("etcdvisor_shard_count", "COUNT of the role's shards",
                                  labels=["role"])
        for role, status in snap.roles.items():
            for key, child in (status.get("children") or {}).items():
                up.add_metric([role, slot_label(key, status)],
                              1.0 if child.get("state") == "running" else 0.0)
                ready.add_metric([role, slot_label(key, status)], 1.0 if child.get("ready") else 0.0)
            if status.get("type") in ("singleton", "cron", "job"):
                leader.add_metric([role], 1.0 if status.get("leader") else 0.0)
            if status.get("type") == "sharded" and status.get("index") is not None:
                index.add_metric([role], float(status["index"]))
            # join order: COUNT once this member has an INDEX; fixed shards: always N
            owns = status.get("index") is not None or status.get("shards") is not None
            if status.get("type") == "sharded" and owns and status.get("count") is not None:
                count.add_metric([role], float(status["count"]))
            paused.add_metric([role], 1.0 if role in snap.paused else 0.0)
            failed.add_metric([role], 1.0 if status.get("failed") else 0.0)
        yield from (up, ready, leader, paused, failed, index, count)
        yield from _rollout_gauges(snap)
        last = GaugeMetricFamily("etcdvisor_cron_last_success_timestamp_seconds", "Unix time of "
                                 "the last successful cron run on this member", labels=["role"])
        for role, when in list(self.metrics.cron_last_success.items()):
            last.add_metric([role], when)
        yield last
        backlog = GaugeMetricFamily("etcdvisor_topic_backlog", "Messages of the role's topic not "
                                    "yet processed (queue: by the role's group; broadcast: by this "
                                    "member)", labels=["role"])
        for role, value in self.metrics.backlog().items():
            backlog.add_metric([role], float(value))
        yield backlog
        yield GaugeMetricFamily("etcdvisor_lease_deadline_seconds", "Seconds left before "
                                "lease-bound children would be stopped (negative: overdue)",
                                value=self._lease_left(snap))

    def _lease_left(self, snap: Snapshot) -> float:
        if snap.lease_alive_sent is None or not snap.lease_ttl:
            return 0.0
        deadline = timing.term_deadline(snap.lease_alive_sent, snap.lease_ttl, snap.max_stop_timeout)
        return round(deadline - self.metrics.clock(), 3)


def _rollout_gauges(snap: Snapshot) -> Iterator[GaugeMetricFamily]:
    """The role's current rollout as this member last read it (runtime/rollouts.py)."""
    from prometheus_client.core import GaugeMetricFamily

    running = GaugeMetricFamily("etcdvisor_rollout_in_progress", "1 while a rolling restart of the "
                                "role runs", labels=["role"])
    restarted = GaugeMetricFamily("etcdvisor_rollout_restarted", "Children restarted and ready in "
                                  "the role's current rollout", labels=["role"])
    failed = GaugeMetricFamily("etcdvisor_rollout_failed", "1 while the role's rollout is failed "
                               "(a child not ready within rollout.deadline)", labels=["role"])
    for role, status in snap.roles.items():
        if status.get("type") not in ("sharded", "singleton"):
            continue
        rollout = status.get("rollout") or {}
        running.add_metric([role], 1.0 if rollout.get("state") == "running" else 0.0)
        restarted.add_metric([role], float(rollout.get("restarted") or 0))
        failed.add_metric([role], 1.0 if rollout.get("state") == "failed" else 0.0)
    yield from (running, restarted, failed)
