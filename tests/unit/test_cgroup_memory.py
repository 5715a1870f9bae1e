"""``health.memory`` also limits the child's cgroup leaf (issue 15: "A cgroup leaf, where there
is one, also gets memory.max = memory").

This machine's cgroup has no memory controller, so the pool is driven over a directory laid
out as cgroupfs lays out a leaf whose parent enabled the controller (a ``memory.max`` file in
each leaf): the writes are the real code's; the kernel's enforcement is not tested here.
"""

from __future__ import annotations

import os
import time

from etcdvisor.config import RoleSpec
from etcdvisor.process.cgroup import AttachState, CgroupPool, _enable_memory, set_memory_max
from etcdvisor.roles.base import RuntimeContext


def leaf_with_memory_controller(base, name: str) -> str:
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "memory.max"), "w") as fh:
        fh.write("max\n")
    return path


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def test_a_reserved_leaf_gets_the_childs_memory_max_and_a_reused_one_is_reset(tmp_path):
    base = str(tmp_path)
    leaf = leaf_with_memory_controller(base, "c1")
    pool = CgroupPool(base)
    try:
        assert pool.reserve(memory_max=512 * 1024 * 1024) == leaf
        assert read(os.path.join(leaf, "memory.max")) == str(512 * 1024 * 1024)
        pool.unreserve(leaf)
        assert pool.reserve() == leaf, "the leaf is reused"
        assert read(os.path.join(leaf, "memory.max")) == "max", "a child without a limit gets none"
    finally:
        pool.close()


def test_a_leaf_picked_by_the_pool_thread_gets_the_limit_before_the_child_moves_in(tmp_path):
    base = str(tmp_path)
    leaf = leaf_with_memory_controller(base, "c1")
    open(os.path.join(leaf, "cgroup.procs"), "w").close()
    pool = CgroupPool(base)
    try:
        att = pool.attach(os.getpid(), None, memory_max=4096)
        deadline = time.monotonic() + 5
        while att.state is AttachState.PENDING or att.state is AttachState.WRITING:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert att.state is AttachState.ATTACHED and att.path == leaf
        assert read(os.path.join(leaf, "memory.max")) == "4096"
    finally:
        pool.close()


def test_without_a_memory_controller_nothing_is_written(tmp_path):
    leaf = tmp_path / "c1"
    leaf.mkdir()
    assert set_memory_max(str(leaf), 4096) is False
    assert list(leaf.iterdir()) == []


def test_the_controller_is_turned_on_for_the_leaves_only_where_it_is_available(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    _enable_memory(str(tmp_path))
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    other = tmp_path / "other"
    other.mkdir()
    (other / "cgroup.controllers").write_text("cpu pids\n")
    (other / "cgroup.subtree_control").write_text("")
    _enable_memory(str(other))
    assert (other / "cgroup.subtree_control").read_text() == ""


def test_the_child_spec_carries_the_roles_memory_limit(tmp_path):
    from etcdvisor.config import load

    path = tmp_path / "c.yaml"
    path.write_text("""
cluster: m
etcd: {endpoints: "memory://m"}
roles:
  api:
    type: singleton
    command: ["sleep", "9"]
    health: {memory: 512MiB}
  plain:
    type: singleton
    command: ["sleep", "9"]
""")
    config = load(str(path), environ={})
    ctx = RuntimeContext(config=config, backend=None, session=None, keys=None, member_id="m1",  # type: ignore[arg-type]
                         endpoints="", post=lambda _e: None, clock=time.monotonic)
    api: RoleSpec = config.roles["api"]
    assert ctx.child_spec(api, "api", {}).memory_max == 512 * 1024 * 1024
    assert ctx.child_spec(config.roles["plain"], "plain", {}).memory_max is None
