"""Rolling restarts (issue 15, section 3) with real `supervisor run` members and real etcd.

Unavailability is sampled from `status` (the same document `status --json` prints, read
in-process so that a sample every 100 ms is possible on a loaded machine): a child counts
as unavailable when it is missing, not running, or not ready.
"""

from __future__ import annotations

import json
import threading
import time

from etcdvisor import status
from etcdvisor.runtime import rollout_store
from tests.e2e.conftest import wait_for
from tests.e2e.harness_ops import free_port, metric, scrape
from tests.e2e.harness_roles import cli

ROLE_MIN_READY = {"min_ready": "0.5s"}  # the role's min_ready (default 2s): keeps the tests short


class Sampler(threading.Thread):
    """Samples the role's unavailable children every 100 ms until stopped."""

    def __init__(self, fleet, role: str, total: int):
        super().__init__(daemon=True)
        self.fleet, self.role, self.total = fleet, role, total
        self.worst = 0
        self.samples = 0
        self.halt = threading.Event()

    def unavailable(self) -> int:
        doc = status.gather(self.fleet.backend(), self.fleet.cluster)
        ready = 0
        for assignment in doc["roles"].get(self.role, {}).get("assignments", []):
            for child in assignment["children"].values():
                if child.get("state") == "running" and child.get("ready") is True:
                    ready += 1
        return self.total - ready

    def run(self) -> None:
        while not self.halt.is_set():
            self.worst = max(self.worst, self.unavailable())
            self.samples += 1
            self.halt.wait(0.1)

    def stop(self) -> int:
        self.halt.set()
        self.join(5)
        return self.worst


def all_ready(fleet, role: str, total: int) -> bool:
    """Every child runs and is ready, and the membership has settled (COUNT is final
    everywhere: no resharding restart is still to come)."""
    doc = status.gather(fleet.backend(), fleet.cluster)
    assignments = doc["roles"].get(role, {}).get("assignments", [])
    children = [c for a in assignments for c in a["children"].values()]
    return len(children) == total and all(c.get("state") == "running" and c.get("ready") for c in children) \
        and all(a.get("count") in (total, None) and not a.get("stopping") for a in assignments)


def rollout_config(fleet, **rollout):
    role = fleet.worker_role("sharded", settle="0.2s", **ROLE_MIN_READY,
                             rollout={"min_ready": "0.2s", "deadline": "20s", **rollout})
    return fleet.write_config({"api": role})


def starts_per_member(fleet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in fleet.records():
        if rec["event"] == "start":
            counts[rec["member_id"]] = counts.get(rec["member_id"], 0) + 1
    return counts


def test_restart_role_rolls_two_at_a_time_and_wait_exits_0(fleet):
    config = rollout_config(fleet, max_unavailable=2)
    ports = {f"m{i}": free_port() for i in range(6)}
    for member, port in ports.items():
        fleet.start(member, config, env={"ETCDVISOR_HTTP": f"127.0.0.1:{port}"})
    assert wait_for(lambda: all_ready(fleet, "api", 6), timeout=30), fleet.logs()

    def last_starts() -> dict[str, dict] | None:
        """Each member's newest child start, once all six children have recorded theirs with
        COUNT=6 (ready by ``min_ready``, a child may not have written its record yet on a
        loaded machine)."""
        found = {r["member_id"]: r for r in fleet.records() if r["event"] == "start"}
        return found if len(found) == 6 and all(r["count"] == "6" for r in found.values()) else None

    indexes = {m: r["index"] for m, r in wait_for(last_starts, 30, "each child's start record").items()}
    before = starts_per_member(fleet)
    sampler = Sampler(fleet, "api", 6)
    sampler.start()
    result = cli("restart", "api", "--wait", "-c", str(config), timeout=90)
    worst = sampler.stop()
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode() + fleet.logs()
    assert "done" in out
    assert worst <= 2, f"{worst} children unavailable at once\n{out}"
    assert sampler.samples >= 10
    after = starts_per_member(fleet)
    assert all(after[m] == before[m] + 1 for m in before), (before, after)  # each restarted once
    record = rollout_store.read_record(fleet.backend(), _keys(fleet), "api")
    assert record is not None and record.state == "done" and len(record.done) == 6
    last = {r["member_id"]: r["index"] for r in fleet.records() if r["event"] == "start"}
    assert last == indexes, "a child restarted by a rollout keeps its partition"
    for port in ports.values():
        scraped = scrape(port)
        assert scraped is not None
        assert scraped.value("etcdvisor_child_restarts_total", role="api", reason="rollout") == 1
        assert scraped.value("etcdvisor_rollout_in_progress", None, role="api") == 0
        assert scraped.value("etcdvisor_rollout_failed", None, role="api") == 0
    assert wait_for(lambda: all(metric(p, "etcdvisor_rollout_restarted", None, role="api") == 6
                                for p in ports.values()), timeout=10)


def test_singleton_rollout_restarts_the_leaders_child_with_its_token(fleet):
    role = fleet.worker_role("singleton", **ROLE_MIN_READY, rollout={"min_ready": "0.2s", "deadline": "20s"})
    config = fleet.write_config({"lead": role})
    fleet.start_many(3, config)

    def leader_children():
        return [iv for iv in fleet.history().live("lead") if iv.leader]

    assert wait_for(lambda: len(leader_children()) == 1 and all_ready(fleet, "lead", 1), timeout=30), fleet.logs()
    (first,) = leader_children()
    result = cli("restart", "lead", "--wait", "-c", str(config), timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert wait_for(lambda: len(leader_children()) == 1 and leader_children()[0].pid != first.pid, timeout=10)
    (second,) = leader_children()
    assert second.member == first.member and second.token == first.token, "same leader, same LEADER_TOKEN"
    history = fleet.history().of("lead")
    leaders = [iv for iv in history if iv.leader]
    assert not any(a.overlaps(b) for i, a in enumerate(leaders) for b in leaders[i + 1:]), "two leader children"


def _keys(fleet):
    from etcdvisor.coord.keys import ClusterKeys

    return ClusterKeys(fleet.cluster)


def test_a_child_that_never_gets_ready_fails_the_rollout_at_its_deadline(fleet, tmp_path):
    # once the marker exists, every start of the child exits at once: no replacement gets ready
    marker = tmp_path / "broken"  # (sh, not python: its start-up is far below min_ready on a loaded machine)
    command = ["sh", "-c", f'test -e "{marker}" && exit 1; exec sleep 1000']
    role = {"type": "sharded", "command": command, "settle": "0.2s", "stop_timeout": "0.5s",
            **ROLE_MIN_READY, "backoff": {"initial": "0.2s", "max": "0.5s"}, "start_retries": 1000,
            "rollout": {"max_unavailable": 2, "min_ready": "0.2s", "deadline": "3s"}}
    config = fleet.write_config({"api": role})
    fleet.start_many(4, config)
    assert wait_for(lambda: all_ready(fleet, "api", 4), timeout=30), fleet.logs()
    marker.write_text("x")
    sampler = Sampler(fleet, "api", 4)
    sampler.start()
    began = time.monotonic()
    result = cli("restart", "api", "--wait", "-c", str(config), timeout=60)
    elapsed = time.monotonic() - began
    time.sleep(1.5)  # nothing more may go down after the failure (sampled meanwhile)
    worst = sampler.stop()
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode() + fleet.logs()
    assert "failed" in out
    assert 3 <= elapsed < 20, elapsed
    assert worst <= 2, worst
    text = cli("status", "-c", str(config)).stdout.decode()
    assert "rollout failed" in text, text
    doc = json.loads(cli("status", "-c", str(config), "--json").stdout)
    assert doc["roles"]["api"]["rollout"]["state"] == "failed"
    # abort, then status says aborted
    aborted = cli("rollout", "abort", "api", "-c", str(config))
    assert aborted.returncode == 0, aborted.stderr
    assert json.loads(cli("rollout", "status", "api", "--json", "-c", str(config)).stdout)["rollout"]["state"] \
        == "aborted"


def test_killing_the_member_that_holds_a_slot_does_not_wedge_the_rollout(fleet):
    role = fleet.worker_role("sharded", settle="0.2s", **ROLE_MIN_READY,
                             rollout={"max_unavailable": 1, "min_ready": "0.2s", "deadline": "30s"})
    config = fleet.write_config({"api": role})
    members = fleet.start_many(4, config)
    assert wait_for(lambda: all_ready(fleet, "api", 4), timeout=30), fleet.logs()
    assert cli("restart", "api", "-c", str(config)).returncode == 0
    backend, keys = fleet.backend(), _keys(fleet)

    def holder():
        view = rollout_store.read(backend, keys)
        holds = view.slots.get("api", ())
        return holds[0].member if holds else None

    assert wait_for(lambda: holder() is not None, timeout=20), fleet.logs()
    victim = holder()
    next(m for m in members if m.id == victim).kill()
    def state():
        record = rollout_store.read_record(backend, keys, "api")
        return record.state if record is not None else None

    assert wait_for(lambda: state() == "done", timeout=60), fleet.logs()


def test_config_storm_restarts_each_child_once_with_the_last_value(fleet):
    role = fleet.worker_role("sharded", settle="0.2s", **ROLE_MIN_READY,
                             command=["sh", "-c", 'echo "{\\"event\\": \\"value\\", \\"member_id\\": '
                                      '\\"$MEMBER_ID\\", \\"value\\": \\"$SETTING\\", \\"t\\": 0, \\"pid\\": $$}"'
                                      ' >> "$WORK_RECORD"; exec sleep 1000'],
                             config={"SETTING": {"item": "setting", "default": "v0"}},
                             rollout={"max_unavailable": 2, "min_ready": "0.2s", "deadline": "20s"})
    config = fleet.write_config({"api": role})
    fleet.start_many(4, config)
    assert wait_for(lambda: all_ready(fleet, "api", 4), timeout=30), fleet.logs()
    first = len(fleet.records())  # (start-up resharding may have started children more than once)
    members = {r["member_id"] for r in fleet.records() if r["event"] == "value"}
    assert len(members) == 4
    began = time.monotonic()
    pause = threading.Event()
    for i in range(1, 51):  # 50 writes in 2 s
        _set(fleet, i)
        pause.wait(max(0.0, began + i * 0.04 - time.monotonic()))
    assert time.monotonic() - began < 4

    def values() -> list[dict]:
        return [r for r in fleet.records()[first:] if r["event"] == "value"]

    assert wait_for(lambda: len(values()) >= 4 and all_ready(fleet, "api", 4), timeout=60), fleet.logs()
    record = rollout_store.read_record(fleet.backend(), _keys(fleet), "api")
    assert record is not None and record.trigger == "config"
    assert wait_for(lambda: rollout_store.read_record(fleet.backend(), _keys(fleet), "api").state == "done",
                    timeout=30)
    assert sorted(v["member_id"] for v in values()) == sorted(members), values()  # one restart each
    assert {v["value"] for v in values()} == {"v50"}, values()


def _set(fleet, i: int) -> None:
    """A config write as `supervisor config set` makes it (the CLI's start-up is too slow
    for 50 writes in 2 s on a loaded machine)."""
    from etcdvisor.runtime.role_config import layered_config

    layered_config(fleet.backend(), fleet.cluster, None, "etcdvisor").set("setting", f"v{i}")


def test_rollout_verbs_answer_in_one_line_with_their_exit_codes(fleet):
    config = fleet.write_config({"api": fleet.worker_role("sharded"),
                                 "tick": fleet.worker_role("cron", schedule="@every 10s")})
    fleet.backend().put(f"/etcdvisor/{fleet.cluster}/waitgroups/known", b"0")  # the cluster exists
    status_out = cli("rollout", "status", "api", "-c", str(config))
    assert status_out.returncode == 0 and b"no rollout" in status_out.stdout
    assert json.loads(cli("rollout", "status", "api", "--json", "-c", str(config)).stdout)["rollout"] is None
    for action in ("resume", "abort"):
        result = cli("rollout", action, "api", "-c", str(config))
        assert result.returncode == 1 and result.stderr.decode().count("\n") == 1, result.stderr
        assert f"no rollout to {action}" in result.stderr.decode()
    for argv in (["rollout", "status", "tick"], ["restart", "api", "--wait", "--index", "0"],
                 ["restart", "tick", "--wait"], ["rollout", "abort", "ghost"]):
        result = cli(*argv, "-c", str(config))
        assert result.returncode == 2 and result.stderr.decode().count("\n") == 1, (argv, result.stderr)
        assert b"Traceback" not in result.stderr
    # restart without --wait writes the rollout; abort then stops it (no member runs it)
    assert cli("restart", "api", "-c", str(config)).returncode == 0
    assert json.loads(cli("rollout", "status", "api", "--json", "-c", str(config)).stdout)["rollout"]["state"] \
        == "running"
    aborted = cli("rollout", "abort", "api", "-c", str(config))
    assert aborted.returncode == 0 and b"aborted" in aborted.stdout
    resumed = cli("rollout", "resume", "api", "-c", str(config))
    assert resumed.returncode == 0 and b"running" in resumed.stdout
