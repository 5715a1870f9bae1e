"""The loop-side decisions of ``register:`` and ``peers:`` (runtime/registration.py),
turn by turn over the memory backend: nothing touches the store or a file
until the queued effects run."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest
import yaml

from etcdvisor.config import load
from etcdvisor.coord import open_backend
from etcdvisor.process.slot import Exited, Started, Stopped
from etcdvisor.process.spawn import ChildSpec, ChildVars
from etcdvisor.recipes.registry import ServiceInfo
from etcdvisor.runtime.registration import PeersSnapshot, Registration, cluster_registry

from .test_role_config import Effects


class FakeChild:
    def __init__(self, spec):
        self.spec, self.alive, self.stops = spec, True, []

    def stop(self, now):
        self.stops.append(now)


class FakeSlot:
    def __init__(self, name, spec):
        self.name, self.desired, self.child, self.signals = name, spec, FakeChild(spec), []

    def restart_child(self, now, reason="control"):
        self.child.stop(now)
        return True

    def signal(self, signum):
        self.signals.append(signum)
        return True


def config_with(tmp_path, on_change):
    doc = {"cluster": "c", "etcd": {"endpoints": "memory://x"}, "roles": {
        "api": {"type": "sharded", "command": ["true"],
                "register": {"service": "api", "address": "{member}.local:{port}", "port": "9000 + {index}",
                             "meta": {"shard": "{index}"}}},
        "gw": {"type": "singleton", "command": ["true"], "cwd": str(tmp_path / "gw"),
               "peers": {"api": {"file": "peers/api.json", "on_change": on_change}}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load(path)


@pytest.fixture
def make(tmp_path):
    backends = []

    def build(on_change="signal:HUP"):
        config = config_with(tmp_path, on_change)
        backend = open_backend("memory://unit-registration-" + os.urandom(3).hex())
        backends.append(backend)
        lease = backend.lease_grant(30).id
        session = SimpleNamespace(lease_id=lease)
        effects = Effects()
        reg = Registration(config, backend, session, "m0", lambda _e: None, effects, clock=lambda: 100.0)
        return SimpleNamespace(config=config, backend=backend, reg=reg, effects=effects, lease=lease)

    yield build
    for backend in backends:
        backend.close()


def api_slot(index=2):
    spec = ChildSpec(name=f"api[{index}]", argv=("true",), env={}, vars=ChildVars(index=index))
    return FakeSlot("api/api", spec)


def test_registers_on_start_and_deregisters_on_exit(make):
    s = make()
    slot = api_slot()
    children = [(SimpleNamespace(name="api"), "api", slot)]
    s.reg.on_slot_events([Started("api/api", 123)], children)
    registry = cluster_registry(s.backend, "c")
    assert registry.discover("api") == []  # not before the effect ran
    s.effects.run()
    (info,) = registry.discover("api")
    assert info == ServiceInfo(name="api", id="m0.api.2", address="m0.local:9002", port=9002,
                               metadata={"shard": "2", "member": "m0", "role": "api"})
    key = registry.instance_key("api", "m0.api.2")
    assert key == "/etcdvisor/c/services/api/instances/m0.api.2"
    assert s.backend.get(key).lease == s.lease  # the member's lease: gone when the member dies
    assert s.reg.status("api") == [{"service": "api", "id": "m0.api.2", "address": "m0.local:9002", "port": 9002}]
    s.reg.session.lease_id = s.backend.lease_grant(30).id  # a new lease: put again on it
    s.reg.on_new_lease()
    s.effects.run()
    assert s.backend.get(key).lease == s.reg.session.lease_id
    s.reg.on_slot_events([Exited("api/api", 1, 3.0, 104.0)], children)
    s.effects.run()
    assert registry.discover("api") == [] and s.reg.status("api") == []
    s.reg.on_slot_events([Stopped("api/api", 0)], children)  # nothing registered: nothing to do
    assert s.effects.queued == []


def peers_event(*ids):
    return PeersSnapshot("api", tuple(ServiceInfo(name="api", id=i, address=f"{i}:1", port=1) for i in ids))


@pytest.mark.parametrize("on_change, signals, stops", [
    ("signal:HUP", [signal.SIGHUP], 0), ("restart", [], 1), ("none", [], 0)])
def test_peers_file_then_action(make, tmp_path, on_change, signals, stops):
    s = make(on_change)
    role = s.config.role("gw")
    spec = ChildSpec(name="gw", argv=("true",), env={})
    assert s.reg.gate(role, {"gw": spec}, {}) == {}  # no file yet: no start
    slot = FakeSlot("gw/gw", spec)
    children = [(SimpleNamespace(name="gw"), "gw", slot)]
    s.reg.handle(peers_event("a"), lambda: children)
    s.effects.run()
    path = tmp_path / "gw" / "peers" / "api.json"
    assert [p["id"] for p in json.loads(path.read_text())] == ["a"]
    assert s.reg.gate(role, {"gw": spec}, {}) == {"gw": spec}
    assert slot.signals == [] and slot.child.stops == []  # the first file is not a change
    s.reg.handle(peers_event("a", "b"), lambda: children)
    assert slot.signals == []  # not before the file is written
    s.effects.run()
    assert [p["id"] for p in json.loads(path.read_text())] == ["a", "b"]
    assert slot.signals == signals and len(slot.child.stops) == stops
    s.reg.handle(peers_event("a", "b"), lambda: children)  # same list: nothing
    assert s.effects.queued == []


def test_a_failed_registry_write_is_retried(make):
    s = make()
    now = [100.0]
    s.reg.clock = lambda: now[0]
    slot = api_slot()
    children = [(SimpleNamespace(name="api"), "api", slot)]
    s.reg.on_slot_events([Started("api/api", 123)], children)
    real_put = s.backend.put
    s.backend.put = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("etcd hiccup"))
    s.effects.run()
    assert s.reg.next_deadline() == 101.0
    s.reg.retry_due(100.5)
    assert s.effects.queued == []  # not yet
    s.backend.put = real_put
    now[0] = 101.0
    s.reg.retry_due(101.0)
    s.effects.run()
    assert [i.id for i in cluster_registry(s.backend, "c").discover("api")] == ["m0.api.2"]
    assert s.reg.next_deadline() is None
    real_delete = s.backend.delete
    s.backend.delete = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("etcd hiccup"))
    s.reg.on_slot_events([Stopped("api/api", 0)], children)
    s.effects.run()
    s.backend.delete = real_delete
    s.reg.retry_due(102.0)
    s.effects.run()
    assert cluster_registry(s.backend, "c").discover("api") == []


def test_a_refused_registry_write_fails_the_role_instead_of_retrying(make):
    """Issue 16, section 3: PermissionDenied is a fault of the role, not an etcd hiccup."""
    from etcdvisor.coord.errors import PermissionDenied

    s = make()
    failed = []
    s.reg.fail_role = lambda role, what, error: failed.append((role, what, str(error)))
    slot = api_slot()
    children = [(SimpleNamespace(name="api"), "api", slot)]
    s.reg.on_slot_events([Started("api/api", 123)], children)
    denied = PermissionDenied("put '/etcdvisor/c/services/api/instances/m0.api.2': permission denied "
                              "for etcd user 'u'")
    s.backend.store.fail_calls(denied)
    s.effects.run()
    assert failed == [("api", "register m0.api.2", str(denied))]
    assert s.reg.next_deadline() is None  # no retry: it cannot help
    s.reg.on_slot_events([Stopped("api/api", 0)], children)
    s.effects.run()
    assert failed[-1][:2] == ("api", "deregister m0.api.2") and s.reg.next_deadline() is None


def test_a_refused_peers_watch_fails_the_roles_reading_that_service(make):
    from etcdvisor.coord.errors import PermissionDenied
    from etcdvisor.runtime.registration import PeersDenied

    s = make()
    failed = []
    s.reg.fail_role = lambda role, what, error: failed.append((role, what))
    posted = []
    s.reg.post = posted.append
    error = PermissionDenied("range '/etcdvisor/c/services/api/instances/': permission denied")
    s.reg._on_error("api", error)
    s.reg._on_error("api", ConnectionError("a hiccup is retried quietly"))  # type: ignore[arg-type]
    assert posted == [PeersDenied("api", error)]
    s.reg.denied(posted[0])
    assert failed == [("gw", "peers api")]


def test_a_peers_file_through_a_symlink_out_of_the_cwd_fails_the_role(make, tmp_path):
    s = make()
    failed = []
    s.reg.fail_role = lambda role, what, error: failed.append((role, what, str(error)))
    (tmp_path / "gw").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "gw" / "peers").symlink_to(tmp_path / "elsewhere")
    s.reg.handle(peers_event("a"), lambda: [])
    s.effects.run()
    assert [(r, w) for r, w, _ in failed] == [("gw", "peers file")]
    assert failed[0][2].startswith("roles.gw.peers.api.file: 'peers/api.json' resolves to ")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert s.reg.gate(s.config.role("gw"), {"gw": object()}, {}) == {}  # never started
