"""Barriers (``wait_for:``, ``after:`` a sharded role) and cron policies
(``concurrency``, ``starting_deadline``) of ``supervisor run``, on real etcd.

Every check reads histories the children recorded themselves (a variant of the
recording child of ``harness_roles`` that also writes a ``stopped`` line when it
gets SIGTERM, so replaced runs have an exact end) and the tick records the
supervisors left in etcd (``roles/<role>/ticks/``):

* ``wait_for: [batch]``: a singleton leader holds its child while the wait
  group is above zero and starts it only after the second ``waitgroup done``;
* ``after: [shards]`` (a sharded role, ``restart: never``, 2 members): the
  dependent starts only after both INDEX 0 and 1 recorded a successful end;
  when INDEX 1 exits 1 the dependent of that role never starts;
* cron ``concurrency`` (``@every 2s``, runs of 5 s, one member): ``forbid``
  never overlaps and records skipped ticks, ``replace`` stops the previous run
  before the new one starts (record ``stopped``), ``allow`` overlaps;
* cron ``starting_deadline: 1s`` (2 members): after the leader is SIGKILLed,
  the ticks due during the failover are recorded ``missed`` and never run, and
  the later ticks run on time.

All times are wall-clock ``time.time()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from .conftest import TTL, Fleet, wait_for
from .harness_roles import Recorder, cli, duplicates, recorder, tick_time  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

PERIOD = 2.0
SPAWN_SLACK = 1.0  # a loaded 2-core machine may take this long to start a Python child

def policy_role(recorder: Recorder, type_: str, *, sleep: float, env: dict | None = None, **keys) -> dict:
    """The harness's recording child, writing a "stopped" line on SIGTERM (an
    exact end for replaced runs); EXIT_IF_INDEX=N makes INDEX N exit 1."""
    return recorder.role(type_, sleep=sleep, env={"RECORD_SIGTERM": "1", **(env or {})}, **keys)


def write_valid_config(fleet: Fleet, roles: dict, **top) -> Path:
    """Write the config and check it with ``supervisor validate`` (slack rule included)."""
    path = fleet.write_config(roles, **top)
    result = cli("validate", str(path))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return path


def cluster_env(fleet: Fleet) -> dict:
    """What a child of this fleet has: enough for the operator verbs without -c."""
    return {"ETCDVISOR_ENDPOINTS": fleet.etcd_url, "ETCDVISOR_CLUSTER": fleet.cluster}


def waitgroup(fleet: Fleet, *args: str) -> str:
    result = cli("waitgroup", *args, env=cluster_env(fleet))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode().strip()


def member_role_status(fleet: Fleet, member_id: str, role: str) -> dict:
    return fleet.role_status(member_id, role)


def tick_records(fleet: Fleet, role: str) -> dict[str, dict]:
    """Tick id -> record, from ``/etcdvisor/<cluster>/roles/<role>/ticks/``."""
    prefix = f"/etcdvisor/{fleet.cluster}/roles/{role}/ticks/"
    return {kv.key.rsplit("/", 1)[-1]: json.loads(kv.value)
            for kv in fleet.backend().get_prefix(prefix).kvs}


def tick_id(run: dict) -> str:
    """The tick id (etcd key suffix) of a run, from its SCHEDULED_TIME."""
    return datetime.fromisoformat(run["scheduled_time"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_time(record: dict) -> float:
    """A tick record's ``scheduled`` as a Unix time."""
    return datetime.fromisoformat(record["scheduled"]).timestamp()


def runs(recorder: Recorder, role: str) -> list[dict]:
    """One entry per run of ``role``: start record fields, ``end`` (time of its
    end or stopped line, else None), ``how`` ("end", "stopped" or None), ``exit``."""
    records = recorder.records(role)
    finals = {r["pid"]: r for r in records if r["event"] in ("end", "stopped")}
    out = []
    for start in sorted((r for r in records if r["event"] == "start"), key=lambda r: r["t"]):
        final = finals.get(start["pid"])
        out.append({**start, "start": start["t"], "end": final["t"] if final else None,
                    "how": final["event"] if final else None, "exit": final.get("exit") if final else None})
    return out


def max_alive(intervals: list[dict]) -> int:
    """Most runs alive at one moment (a run without an end is alive until now)."""
    now = time.time()
    best = 0
    for probe in intervals:
        t = probe["start"]
        best = max(best, sum(1 for i in intervals if i["start"] <= t < (i["end"] or now)))
    return best


@contextlib.contextmanager
def logs_on_failure(fleet: Fleet):
    try:
        yield
    except BaseException:
        print(fleet.logs())
        raise


# --- wait_for: a wait group -------------------------------------------------------------

def test_wait_for_holds_singleton_until_waitgroup_reaches_zero(fleet, recorder):
    assert waitgroup(fleet, "add", "batch", "2") == "2"
    config = write_valid_config(fleet, {
        "gated": policy_role(recorder, "singleton", sleep=60, wait_for=["batch"])})
    member = fleet.start("m0", config)

    # the member leads the role and says what it waits for; the child must not run
    member.wait_output("role gated: elected leader", 30)
    wait_for(lambda: member_role_status(fleet, "m0", "gated").get("waiting_for") == ["waitgroup:batch"],
             15, "the member record to report waiting_for [waitgroup:batch]")
    time.sleep(1.0)  # the contract: held while the count is above 0 (a while to show it)
    assert recorder.starts("gated") == [], "the role started while wait group 'batch' was at 2"

    assert waitgroup(fleet, "done", "batch") == "1"
    time.sleep(1.0)  # the same at 1
    assert recorder.starts("gated") == [], "the role started while wait group 'batch' was at 1"

    before_last_done = time.time()
    assert waitgroup(fleet, "done", "batch") == "0"
    wait_for(lambda: recorder.starts("gated"), 20, "the gated role to start after the wait group hit 0")
    starts = recorder.starts("gated")
    assert len(starts) == 1, starts
    assert starts[0]["t"] > before_last_done, \
        f"child started at {starts[0]['t']}, before the last 'done' at {before_last_done}"
    assert starts[0]["leader"] == "1" and starts[0]["member_id"] == "m0"
    assert "barriers open (waitgroup:batch)" in member.output()


# --- after: a sharded role ------------------------------------------------------------------

def test_after_sharded_waits_for_every_index_and_not_for_a_failed_one(fleet, recorder):
    roles = {
        # settle 2s: both members have joined before anyone runs INDEX 0 of COUNT 1
        "shards": policy_role(recorder, "sharded", sleep=1.5, restart="never", settle="2s"),
        "report": policy_role(recorder, "singleton", sleep=60, after=["shards"]),
        "shards-bad": policy_role(recorder, "sharded", sleep=1.5, restart="never", settle="2s",
                                  env={"EXIT_IF_INDEX": "1"}),
        "report-bad": policy_role(recorder, "singleton", sleep=60, after=["shards-bad"]),
    }
    config = write_valid_config(fleet, roles)
    fleet.start_many(2, config)
    with logs_on_failure(fleet):
        wait_for(lambda: recorder.starts("report"), 45, "the dependent of 'shards' to start")
        wait_for(lambda: len(recorder.ends("shards-bad")) >= 2, 30, "both children of 'shards-bad' to end")
        bad_ended = max(r["t"] for r in recorder.ends("shards-bad"))

        for role in ("shards", "shards-bad"):
            shard_runs = runs(recorder, role)
            described = [(r["member_id"], r["index"], r["count"], r["exit"]) for r in shard_runs]
            assert sorted((r["index"], r["count"]) for r in shard_runs) == [("0", "2"), ("1", "2")], described
            assert len({r["member_id"] for r in shard_runs}) == 2, described

        ends = {r["index"]: r for r in recorder.ends("shards")}
        assert ends["0"]["exit"] == 0 and ends["1"]["exit"] == 0, ends
        report = recorder.starts("report")[0]
        last_end = max(ends["0"]["t"], ends["1"]["t"])
        assert report["t"] > last_end, \
            f"'after: [shards]' child started at {report['t']}, before both shards ended ({last_end})"

        bad = {r["index"]: r["exit"] for r in recorder.ends("shards-bad")}
        assert bad == {"0": 0, "1": 1}, bad
        # the failed INDEX 1 keeps 'report-bad' held: its leader says so, and nothing starts
        # for a while after the end of 'shards-bad' (the contract: never, shown for 3 s)
        wait_for(lambda: any(member_role_status(fleet, m, "report-bad").get("waiting_for") == ["role:shards-bad"]
                             for m in ("m0", "m1")), 15, "report-bad's leader waiting for role:shards-bad")
        time.sleep(max(0.0, bad_ended + 3.0 - time.time()))
        assert recorder.starts("report-bad") == [], "'after: [shards-bad]' started although INDEX 1 exited 1"
        assert len(recorder.starts("report")) == 1, recorder.starts("report")
        leaders = [m for m in ("m0", "m1") if member_role_status(fleet, m, "report-bad").get("leader")]
        assert leaders and member_role_status(fleet, leaders[0], "report-bad").get("waiting_for") == \
            ["role:shards-bad"]


# --- cron concurrency ---------------------------------------------------------------------

POLICIES = ("forbid", "replace", "allow")


@pytest.fixture(scope="module")
def policy_fleet(tmp_path_factory, etcd_server):
    """One supervisor with one ``@every 2s`` cron role per policy, children of 5 s;
    the three tests below read the same run (shared to keep the file fast)."""
    fleet = Fleet(tmp_path_factory.mktemp("cron-policies"), etcd_server.url, "e2e-" + os.urandom(4).hex())
    rec = Recorder(fleet.dir)
    roles = {f"cron-{p}": policy_role(rec, "cron", sleep=5.0, schedule=f"@every {PERIOD:g}s", concurrency=p)
             for p in POLICIES}
    fleet.start("m0", write_valid_config(fleet, roles))
    fleet.started_at = time.time()
    yield fleet, rec
    fleet.members["m0"].proc.kill()
    fleet.members["m0"].proc.wait(5)
    rec.kill_leftovers()
    fleet.close()


def test_cron_forbid_never_overlaps_and_skips_ticks(policy_fleet):
    fleet, rec = policy_fleet
    with logs_on_failure(fleet):
        # runs at about T, T+5, T+10: the ticks due meanwhile wait, the older ones are skipped
        wait_for(lambda: len([r for r in runs(rec, "cron-forbid") if r["end"]]) >= 2
                 and len(runs(rec, "cron-forbid")) >= 3, 40, "3 forbid runs")
        forbid = runs(rec, "cron-forbid")
        described = [(r["scheduled_time"], round(r["start"], 2), r["end"] and round(r["end"], 2)) for r in forbid]
        assert max_alive(forbid) == 1, f"forbid runs overlapped: {described}"
        for previous, following in pairwise(forbid):
            assert previous["end"] is not None and previous["end"] <= following["start"], described
        assert all(r["how"] == "end" and r["exit"] == 0 for r in forbid if r["end"]), described
        assert not duplicates(r["scheduled_time"] for r in forbid), described

        records = tick_records(fleet, "cron-forbid")
        skipped = {tick for tick, r in records.items() if r["state"] == "skipped"}
        assert skipped, f"no skipped tick recorded: {records}"
        ran = {r["scheduled_time"] for r in forbid}
        assert not {records[t]["scheduled"] for t in skipped} & ran, "a skipped tick ran"
        assert {records[t]["state"] for t in records} <= {"running", "succeeded", "skipped"}, records


def test_cron_replace_stops_previous_run_before_next(policy_fleet):
    fleet, rec = policy_fleet
    with logs_on_failure(fleet):
        wait_for(lambda: len(runs(rec, "cron-replace")) >= 4, 40, "4 replace runs")
        replace = wait_for(lambda: (lambda found: found if all(r["end"] for r in found[:-1]) else None)(
            runs(rec, "cron-replace")), 10, "every replaced run's last line")
        described = [(r["scheduled_time"], round(r["start"], 3), r["end"] and round(r["end"], 3), r["how"])
                     for r in replace]
        assert not duplicates(r["scheduled_time"] for r in replace), described
        records = tick_records(fleet, "cron-replace")
        for previous, following in pairwise(replace):
            # the child wrote its 'stopped' line in its SIGTERM handler, just before exiting
            assert previous["how"] == "stopped", f"a run was not stopped by the next tick: {described}"
            assert previous["end"] <= following["start"], \
                f"replaced run still alive when the next one started: {described}"
            assert tick_time(following) - tick_time(previous) == pytest.approx(PERIOD), described
            record = records.get(tick_id(previous))
            assert record is not None and record["state"] == "stopped", \
                f"replaced tick {previous['scheduled_time']} recorded as {record}"
        assert max_alive(replace) == 1, described


def test_cron_allow_overlaps_runs(policy_fleet):
    fleet, rec = policy_fleet
    with logs_on_failure(fleet):
        wait_for(lambda: max_alive(runs(rec, "cron-allow")) >= 2, 30, "two allow runs alive at once")
        wait_for(lambda: len([r for r in runs(rec, "cron-allow") if r["end"]]) >= 2, 20, "2 allow runs to end")
        allow = runs(rec, "cron-allow")
        described = [(r["scheduled_time"], round(r["start"], 2), r["end"] and round(r["end"], 2)) for r in allow]
        assert not duplicates(r["scheduled_time"] for r in allow), described
        assert all(r["how"] == "end" and r["exit"] == 0 for r in allow if r["end"]), described
        # every tick ran, each within a period of its scheduled time
        ticks = sorted(tick_time(r) for r in allow)
        assert [round(b - a, 3) for a, b in pairwise(ticks)] == [PERIOD] * (len(ticks) - 1), described
        late = [(r["scheduled_time"], round(r["start"] - tick_time(r), 2)) for r in allow
                if r["start"] - tick_time(r) > SPAWN_SLACK]
        assert not late, f"allow runs started late: {late}"


# --- cron starting_deadline across a failover --------------------------------------------------

def test_cron_starting_deadline_misses_failover_ticks(fleet, recorder):
    config = write_valid_config(fleet, {
        "tick": policy_role(recorder, "cron", sleep=0.2, schedule=f"@every {PERIOD:g}s",
                            starting_deadline="1s")})
    fleet.start_many(2, config)
    with logs_on_failure(fleet):
        wait_for(lambda: len(recorder.ends("tick")) >= 2, 30, "2 cron runs")
        # kill right after a run ended: nothing is running, the next tick is ~1.8 s away
        seen = len(recorder.ends("tick"))
        wait_for(lambda: len(recorder.ends("tick")) > seen, 10, "the next run to end")
        last_before = runs(recorder, "tick")[-1]
        leader, token = last_before["member_id"], int(last_before["leader_token"])
        killed_at = fleet.members[leader].kill()
        survivor = fleet.members["m1" if leader == "m0" else "m0"]

        survivor.wait_output("role tick: leader resumes after tick", TTL + 20)
        wait_for(lambda: len([r for r in runs(recorder, "tick") if r["start"] > killed_at]) >= 3,
                 20, "3 runs after the failover")
        time.sleep(0.5)  # the contract: no tick twice (a short while for a racing duplicate to show)

        all_runs = runs(recorder, "tick")
        after = [r for r in all_runs if r["start"] > killed_at]
        described = [(r["member_id"], r["scheduled_time"], round(r["start"] - tick_time(r), 2)) for r in all_runs]
        assert not duplicates(r["scheduled_time"] for r in all_runs), described
        assert {r["member_id"] for r in after} == {survivor.id}, described
        assert all(int(r["leader_token"]) > token for r in after), described

        # after the failover every tick runs, and on time: never later than the deadline
        # (without one, the ticks of the failover would run late: see test_roles_cron_job)
        after_ticks = sorted(tick_time(r) for r in after)
        assert [round(b - a, 3) for a, b in pairwise(after_ticks)] == \
            [PERIOD] * (len(after_ticks) - 1), described
        late = [(r["scheduled_time"], round(r["start"] - tick_time(r), 2)) for r in after
                if r["start"] - tick_time(r) > 1.0 + SPAWN_SLACK]
        assert not late, f"runs later than starting_deadline (+{SPAWN_SLACK}s to spawn): {late}"
        assert all(r["how"] == "end" and r["exit"] == 0 for r in after if r["end"]), described
        # the ticks between the last run before the kill and the first after it never ran;
        # the failover (lease expiry, >= 3 s) is longer than a period, so there is one
        first_after = min(after_ticks)
        gap = [tick_time(last_before) + k * PERIOD
               for k in range(1, round((first_after - tick_time(last_before)) / PERIOD))]
        assert gap, f"no tick fell due during the failover: {described}"
        wait_for(lambda: member_role_status(fleet, survivor.id, "tick").get("missed") == len(gap), 10,
                 f"{survivor.id}'s member record to count {len(gap)} missed ticks")

        # ... and each of them is recorded 'missed' in etcd by the new leader
        records = tick_records(fleet, "tick")
        missed = sorted(record_time(r) for r in records.values() if r["state"] == "missed")
        for r in records.values():
            if r["state"] == "missed":
                assert r["member"] == survivor.id and r["token"] > token, r
        assert [round(t, 3) for t in missed] == [round(t, 3) for t in gap], \
            f"missed {missed}, failover gap {gap}; runs {described}"
