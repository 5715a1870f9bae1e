"""The Dockerfile's image, built and run for real as PID 1 against an etcd on the host network:
sharding across two containers, `docker stop` (children stopped, exit 0, quick, a setsid
daemon gone), `docker kill` (no process left), HEALTHCHECK healthy, uid 10001, and the
EMBEDDED=1 image with `etcd.endpoints: embedded`. See conftest.py for the engine and the build.
"""

from __future__ import annotations

import os
import time
import uuid

import psutil
import pytest

from .conftest import Container, docker, engine_problem

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1500)]
if engine_problem():  # one line for the whole module, rather than one per test
    pytest.skip(engine_problem(), allow_module_level=True)

STOP_TIMEOUT = 3.0  # the largest stop_timeout in CONFIG
START = 90.0  # a container's first start on vfs storage, on a loaded machine

# The worker records its assignment and uid, runs a setsid daemon (a new session: the
# supervisor's stop of the child's process group does not reach it) and notes a TERM.
WORKER = """\
out=/data/$MEMBER_ID
trap 'echo "$INDEX/$COUNT" > "$out.stopped"; exit 0' TERM
setsid sh -c "while :; do date +%s.%N > $out.daemon; sleep 0.2; done" </dev/null >/dev/null 2>&1 &
echo "$INDEX/$COUNT $(id -u)" > "$out.shard.tmp" && mv "$out.shard.tmp" "$out.shard"
while :; do sleep 0.2; done
"""

CONFIG = f"""\
cluster: placeholder             # ETCDVISOR_CLUSTER gives each test its own
etcd:
  endpoints: ["http://127.0.0.1:2379"]   # ETCDVISOR_ENDPOINTS: the test's etcd
member:
  ttl: 10
  state_dir: /app/state
roles:
  worker:
    type: sharded
    settle: 0.3s
    stop_timeout: {STOP_TIMEOUT:g}s
    command: ["sh", "/data/worker.sh"]
"""


def cluster_name() -> str:
    return f"ct{uuid.uuid4().hex[:10]}"


def start_member(run_container, image: str, etcd_url: str, cluster: str, member: str) -> Container:
    env = {"ETCDVISOR_ENDPOINTS": etcd_url, "ETCDVISOR_CLUSTER": cluster}
    return run_container(image, CONFIG, member, env=env, files={"worker.sh": WORKER})


def processes(container: Container) -> list[psutil.Process]:
    """PID 1 of the container and every process below it, seen from the host (orphans in
    the container's pid namespace are re-parented to its PID 1, the supervisor)."""
    root = psutil.Process(container.host_pid())
    return [root, *root.children(recursive=True)]


def gone(procs: list[psutil.Process]) -> bool:
    return not any(proc.is_running() for proc in procs)  # is_running: same pid and start time


def test_two_containers_shard_index_count_as_uid_10001(run_container, image, etcd_url):
    cluster = cluster_name()
    a = start_member(run_container, image, etcd_url, cluster, "member-a")
    b = start_member(run_container, image, etcd_url, cluster, "member-b")
    for container in (a, b):
        container.wait(lambda c=container: (c.read("shard") or "").endswith("/2 10001"), START,
                       f"{container.member}'s worker with COUNT=2")

    def assignment() -> set[str | None]:
        return {(c.read("shard") or "").split(" ")[0] for c in (a, b)}

    a.wait(lambda: assignment() == {"0/2", "1/2"}, 30, "INDEX 0/2 and 1/2 over the two containers")
    for container in (a, b):
        # PID 1 itself (the supervisor) runs as 10001, not only its children
        status = docker("exec", container.name, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == ["10001"] * 4, status
        assert container.inspect("{{.Config.User}}") == "10001:10001"


def test_healthcheck_becomes_healthy_and_docker_stop_exits_0(run_container, image, etcd_url):
    box = start_member(run_container, image, etcd_url, cluster_name(), "member-s")
    box.wait(lambda: box.health() == "healthy", START, "HEALTHCHECK status healthy")
    box.wait(lambda: box.read("daemon") and box.read("shard"), 30, "the worker and its daemon")
    procs = processes(box)
    daemon = [p for p in procs if "while :; do date" in " ".join(p.cmdline())]
    assert daemon, [p.cmdline() for p in procs]
    assert os.getsid(daemon[0].pid) == daemon[0].pid, "the daemon leads a session of its own"

    started = time.monotonic()
    # a PID 1 that ignored SIGTERM would be killed after the 30 s, exiting 137
    docker("stop", "-t", "30", box.name, timeout=60)
    elapsed = time.monotonic() - started

    assert box.inspect("{{.State.ExitCode}}") == "0", box.logs()
    assert elapsed <= STOP_TIMEOUT + 1, f"docker stop took {elapsed:.2f} s"
    assert box.read("stopped") == "0/1", "the supervisor stopped the worker with its TERM"
    assert gone(procs), [p.cmdline() for p in procs if p.is_running()]


def test_docker_kill_leaves_no_process(run_container, image, etcd_url):
    box = start_member(run_container, image, etcd_url, cluster_name(), "member-k")
    box.wait(lambda: box.read("daemon") and box.read("shard"), START, "the worker and its daemon")
    procs = box.wait(lambda: found if len(found := processes(box)) >= 3 else None, 30,
                     "supervisor, worker and daemon in the container")

    docker("kill", box.name, timeout=60)
    box.wait(lambda: not box.running(), 30, "the killed container to exit", alive=False)
    assert box.inspect("{{.State.ExitCode}}") == "137"
    box.wait(lambda: gone(procs), 10, "no process of the killed container left on the host",
             alive=False)


EMBEDDED_CONFIG = """\
cluster: embedded
etcd:
  endpoints: embedded          # a private etcd inside the container (the EMBEDDED=1 image)
member:
  ttl: 10
  state_dir: /app/state        # writable by uid 10001; the etcd data lives under it
roles:
  worker:
    type: sharded
    settle: 0.3s
    command: ["sh", "/data/worker.sh"]
"""


def test_embedded_image_runs_with_endpoints_embedded(run_container, embedded_image):
    box = run_container(embedded_image, EMBEDDED_CONFIG, "member-e", files={"worker.sh": WORKER})
    box.wait(lambda: box.read("shard") == "0/1 10001", START, "the worker, with the embedded etcd")
    box.wait(lambda: box.health() == "healthy", 60, "HEALTHCHECK status healthy")
    assert "embedded etcd listening on" in box.logs()
    docker("stop", "-t", "30", box.name, timeout=60)
    assert box.inspect("{{.State.ExitCode}}") == "0", box.logs()
