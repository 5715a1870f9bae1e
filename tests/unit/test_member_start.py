"""The builder's all-or-nothing start (runtime/build.py): a start refused after the
member took its lease closes what it made, so nothing of it stays behind."""

import uuid

import pytest

from etcdvisor.config.loader import load
from etcdvisor.coord.memory import MemoryStore
from etcdvisor.process.manager import ProcessManager
from etcdvisor.runtime.supervisor import StartupError, Supervisor


def quiet_manager() -> ProcessManager:
    return ProcessManager(use_watchdog=False, capture_output=False, cgroups=False, reap_orphans=False)


def member(tmp_path, store: str) -> Supervisor:
    path = tmp_path / "config.yaml"
    path.write_text(f'cluster: start\netcd: {{endpoints: "memory://{store}"}}\nmember: {{id: m1, ttl: 10}}\n'
                    "roles: {}\n")
    return Supervisor(load(str(path), {}), environ={"PATH": "/usr/bin:/bin"}, process_layer=quiet_manager)


def test_a_start_refused_after_the_lease_revokes_it_and_closes_the_store_handle(tmp_path):
    name = f"start-{uuid.uuid4().hex}"
    first = member(tmp_path, name)
    first.start()
    try:
        store = MemoryStore.named(name)
        assert len(store._leases) == 1
        second = member(tmp_path, name)
        with pytest.raises(StartupError, match="already used by a live member"):
            second.run(signals=False)  # its lease was granted before the record was refused
        assert list(store._leases) == [first.session.lease_id], "the refused member's lease was left behind"
        assert second.builder.session is not None and not second.builder.session.alive
        with pytest.raises(Exception, match="closed"):
            second.backend.get("/x")
    finally:
        first.joined.stopping = True
        assert first.shutdown() == 0
    assert store._leases == {}, "a clean shutdown revokes the lease"
