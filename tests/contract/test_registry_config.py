"""Service registry and layered typed config, on the memory backend and on real etcd."""

import json
import queue
import time

import pytest

from etcdvisor.recipes.election import CampaignCancelled
from etcdvisor.recipes.layered_config import ConfigValueError, LayeredConfig, encode_value
from etcdvisor.recipes.registry import Registry, ServiceInfo

from ..conftest import wait_until


def info(name, instance, port=8080, **metadata):
    return ServiceInfo(name=name, id=instance, address="10.0.0.1", port=port, version="1.0.2",
                       metadata=metadata)


def drain(q, settle=0.3):
    """Everything the queue receives until it has been quiet for ``settle`` s."""
    items = []
    while True:
        try:
            items.append(q.get(timeout=settle))
        except queue.Empty:
            return items


# --- registry -------------------------------------------------------------------------

def test_register_discover_layout_and_deregister(backend, other_backend, prefix):
    mine = Registry(backend, namespace="prod", prefix=prefix + "svc", ttl=5)
    theirs = Registry(other_backend, namespace="prod", prefix=prefix + "svc", ttl=5)
    mine.register(info("api", "a1", zone="x"))
    theirs.register(info("api", "b1"))
    mine.register(info("api", "a2"))
    mine.register(info("db", "d1"))
    assert [s.id for s in theirs.discover("api")] == ["a1", "b1", "a2"]  # registration order
    assert mine.discover("api")[0] == info("api", "a1", zone="x")
    stored = backend.get(f"{prefix}svc/prod/api/instances/a1")
    assert json.loads(stored.value)["metadata"] == {"zone": "x"}
    assert stored.lease == mine.session().lease_id
    assert Registry(backend, namespace="dev", prefix=prefix + "svc").discover("api") == []
    assert mine.deregister("api", "a2") is True
    assert [s.id for s in theirs.discover("api")] == ["a1", "b1"]
    mine.register(info("api", "a1", port=9090))  # re-register replaces
    assert [s.port for s in theirs.discover("api") if s.id == "a1"] == [9090]
    mine.close()
    assert [s.id for s in theirs.discover("api")] == ["b1"]  # gone at once with the lease
    assert theirs.discover("db") == []
    theirs.close()
    with pytest.raises(ValueError):
        theirs.instance_key("a/b", "x")


def test_discover_skips_malformed_documents(backend, prefix):
    registry = Registry(backend, prefix=prefix + "svc", ttl=5)
    registry.register(info("api", "good"))
    backend.put(f"{prefix}svc/default/api/instances/bad", "{not json")
    backend.put(f"{prefix}svc/default/api/instances/partial", '{"name": "api"}')
    assert [s.id for s in registry.discover("api")] == ["good"]
    registry.close()


def test_watch_gives_the_full_list_on_every_change(backend, other_backend, prefix):
    watching = Registry(backend, prefix=prefix + "svc", ttl=5)
    lists = queue.Queue()
    watcher = watching.watch("api", lambda instances: lists.put([s.id for s in instances]))
    assert lists.get(timeout=5) == []  # the initial list
    other = Registry(other_backend, prefix=prefix + "svc", ttl=5)
    other.register(info("api", "x"))
    assert lists.get(timeout=5) == ["x"]
    other.register(info("api", "y"))
    assert lists.get(timeout=5) == ["x", "y"]
    other.register(info("other", "z"))  # another service: no call
    other.deregister("api", "x")
    assert lists.get(timeout=5) == ["y"]
    other.close()
    assert lists.get(timeout=5) == []
    assert drain(lists) == []
    watcher.stop()
    watching.close()


@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_reregisters_after_lease_loss(backend, other_backend, prefix):
    registry = Registry(backend, prefix=prefix + "svc", ttl=5)
    registry.register(info("api", "stay"))
    registry.register(info("api", "leave"))
    registry.deregister("api", "leave")
    lost = registry.session().lease_id
    other_backend.lease_revoke(lost)  # e.g. a partition longer than the TTL
    observer = Registry(other_backend, prefix=prefix + "svc")
    assert observer.discover("api") == []
    wait_until(lambda: [s.id for s in observer.discover("api")] == ["stay"], timeout=8,
               message="instance re-registered")
    assert backend.get(f"{prefix}svc/default/api/instances/stay").lease != lost
    registry.close()
    assert observer.discover("api") == []


def test_election_among_instances(backend, other_backend, prefix):
    first = Registry(backend, prefix=prefix + "svc", ttl=5)
    second = Registry(other_backend, prefix=prefix + "svc", ttl=5)
    leader = first.election("api", "first")
    token = leader.campaign(timeout=5)
    assert token > 0 and leader.is_leader()
    follower = second.election("api", "second")
    with pytest.raises(CampaignCancelled):
        follower.campaign(timeout=0.3)
    first.close()  # revokes the lease: leadership passes on
    assert follower.campaign(timeout=5) > token
    second.close()


# --- layered config ---------------------------------------------------------------------

def config(backend, prefix, cluster="prod", node="web1"):
    return LayeredConfig(backend, prefix + "app", cluster, node)


@pytest.mark.parametrize("value", [5432, -1, 0.75, 1e300, True, False, "info", "",
                                   "int:not an int", "json:[]", {"a": [1, None]}, [1, "x"], None])
def test_typed_values_round_trip(backend, prefix, value):
    cfg = config(backend, prefix)
    cfg.set("item", value)
    got = cfg.get("item", default="MISSING")
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), {"a": float("nan")}])
def test_non_finite_values_are_neither_written_nor_read(backend, prefix, value):
    """Children's config files are strict JSON (issue 16): no NaN/Infinity in or out."""
    cfg = config(backend, prefix)
    with pytest.raises(ValueError, match="NaN"):
        cfg.set("item", value)
    assert cfg.get("item", default="MISSING") == "MISSING"
    backend.put(cfg.key("item"), "float:inf")  # as etcdctl could write it
    with pytest.raises(ConfigValueError, match="config key .*item"):
        cfg.get("item")


def test_stored_form_and_etcdctl_written_values(backend, prefix):
    cfg = config(backend, prefix)
    assert encode_value(5432) == "int:5432" and encode_value(True) == "bool:true"
    assert encode_value("plain") == "plain" and encode_value("bool:x") == 'json:"bool:x"'
    base = prefix + "app/config/"
    backend.put(base + "node/prod/web1/database.port", "int:5432")
    backend.put(base + "cluster/prod/cache.ratio", "float:0.75")
    backend.put(base + "cluster/prod/debug.enabled", "bool:true")
    backend.put(base + "global/log.level", "info")
    backend.put(base + "global/limits/json", 'json:{"max": 3}')
    assert cfg.get_many("database.port", "cache.ratio", "debug.enabled", "log.level", "absent") == {
        "database.port": 5432, "cache.ratio": 0.75, "debug.enabled": True, "log.level": "info"}
    assert cfg.items() == {"database.port": 5432, "cache.ratio": 0.75, "debug.enabled": True,
                           "log.level": "info", "limits/json": {"max": 3}}
    assert cfg.get("absent") is None and cfg.get("absent", 7) == 7
    cfg.set("x", 1, scope="node")
    assert backend.get(base + "node/prod/web1/x").value == b"int:1"


def test_priority_node_over_cluster_over_global(backend, prefix):
    web1 = config(backend, prefix)
    web2 = config(backend, prefix, node="web2")
    staging = config(backend, prefix, cluster="staging")
    no_node = LayeredConfig(backend, prefix + "app", "prod")
    web1.set("timeout", 10, scope="global")
    assert [c.get("timeout") for c in (web1, web2, staging, no_node)] == [10, 10, 10, 10]
    web1.set("timeout", 20, scope="cluster")
    assert [c.get("timeout") for c in (web1, web2, staging, no_node)] == [20, 20, 10, 20]
    web1.set("timeout", 30, scope="node")
    assert [c.get("timeout") for c in (web1, web2, staging, no_node)] == [30, 20, 10, 20]
    assert web1.raw_items() == {"timeout": ("node", "int:30")}
    assert web1.unset("timeout", scope="node") is True
    assert web1.get("timeout") == 20
    web1.unset("timeout", scope="cluster")
    assert web1.get("timeout") == 10
    with pytest.raises(ValueError):
        no_node.set("x", 1, scope="node")
    with pytest.raises(ValueError):
        web1.set("x", 1, scope="planet")


@pytest.mark.parametrize("raw", ["int:12x", "float:fast", "bool:yes", "bool:True", "json:{oops"])
def test_malformed_typed_value_names_the_key(backend, prefix, raw):
    cfg = config(backend, prefix)
    key = prefix + "app/config/cluster/prod/broken"
    backend.put(key, raw)
    for read in (lambda: cfg.get("broken"), lambda: cfg.get_many("broken"), cfg.items):
        with pytest.raises(ConfigValueError) as info:
            read()
        assert key in str(info.value) and info.value.key == key


def test_watch_reports_resolved_changes_only(backend, other_backend, prefix):
    cfg = config(backend, prefix)
    writer = config(other_backend, prefix)
    writer.set("kept", "old", scope="global")
    changes = queue.Queue()
    errors = queue.Queue()
    watcher = cfg.watch(lambda item, value: changes.put((item, value)), on_error=errors.put)
    writer.set("level", 1, scope="global")
    assert changes.get(timeout=5) == ("level", 1)
    writer.set("level", 2, scope="cluster")  # an override appears
    assert changes.get(timeout=5) == ("level", 2)
    writer.set("level", 2, scope="node")  # same resolved value: nothing
    writer.set("level", 5, scope="global")  # hidden below the overrides: nothing
    config(other_backend, prefix, node="web2").set("level", 9, scope="node")  # not our node
    config(other_backend, prefix, cluster="qa").set("level", 9)  # not our cluster
    assert drain(changes) == []
    writer.set("level", 3, scope="node")
    assert changes.get(timeout=5) == ("level", 3)
    writer.unset("level", scope="node")  # the override goes away: back to the cluster value
    assert changes.get(timeout=5) == ("level", 2)
    writer.unset("level", scope="cluster")
    assert changes.get(timeout=5) == ("level", 5)
    writer.unset("level", scope="global")
    assert changes.get(timeout=5) == ("level", None)
    other_backend.put(prefix + "app/config/global/bad", "int:nope")
    assert errors.get(timeout=5).key == prefix + "app/config/global/bad"
    assert drain(changes) == []
    watcher.stop()


def test_watch_initial_reports_current_items(backend, prefix):
    cfg = config(backend, prefix)
    cfg.set("a", 1, scope="global")
    cfg.set("a", True, scope="node")
    cfg.set("b", "x")
    changes = queue.Queue()
    cfg.watch(lambda item, value: changes.put((item, value)), initial=True)
    assert sorted(drain(changes)) == [("a", True), ("b", "x")]
    cfg.close()
    cfg.set("b", "y")
    time.sleep(0.2)
    assert changes.empty()


# --- four levels and the ergo layout (issue 11) -------------------------------------------

def test_four_levels_node_over_member_over_cluster_over_global(backend, prefix):
    web1 = config(backend, prefix)
    web2 = config(backend, prefix, node="web2")
    for scope, value in (("global", 1), ("cluster", 2), ("member", 3), ("node", 4)):
        web1.set("level", value, scope=scope)
        assert web1.get("level") == value and web1.raw_items()["level"][0] == scope
    assert web2.get("level") == 2  # the node-specific levels are web1's only
    web1.unset("level", scope="node")  # cross-cluster node-specific gone: cluster node-specific wins
    assert web1.get("level") == 3
    base = prefix + "app/config/"
    assert backend.get(base + "member/prod/web1/level").value == b"int:3"
    assert backend.get(base + "node/prod/web1/level") is None
    assert config(backend, prefix).scopes() == ["node", "member", "cluster", "global"]
    assert LayeredConfig(backend, prefix + "app", "prod").scopes() == ["cluster", "global"]


def ergo(backend, prefix, cluster="production", node="web1"):
    return LayeredConfig(backend, prefix + "services/ergo", cluster, node, layout="ergo")


def test_ergo_layout_reads_what_etcdctl_wrote(backend, prefix):
    """The seed's own example (003_*.txt), written as plain bytes."""
    root = prefix + "services/ergo"
    backend.put(f"{root}/cluster/production/config/web1/database.port", b"int:5432")
    backend.put(f"{root}/cluster/production/config/*/cache.ratio", b"float:0.75")
    backend.put(f"{root}/cluster/production/config/*/debug.enabled", b"bool:true")
    backend.put(f"{root}/cluster/production/config/web1/ssl.enabled", b"bool:false")
    backend.put(f"{root}/cluster/production/config/*/myapp.cache.size", b"int:256")
    backend.put(f"{root}/config/global/log.level", b"info")
    backend.put(f"{root}/config/global/raw", b'json:{"a": 1}')  # ergo has no json: type
    backend.put(f"{root}/cluster/production/routes/nodes/web1", b"edf-bytes")  # never config
    cfg = ergo(backend, prefix)
    assert cfg.items() == {"database.port": 5432, "cache.ratio": 0.75, "debug.enabled": True,
                           "ssl.enabled": False, "myapp.cache.size": 256, "log.level": "info",
                           "raw": 'json:{"a": 1}'}
    assert ergo(backend, prefix, node="web2").get("database.port") is None
    # cross-cluster node-specific overrides cluster node-specific
    backend.put(f"{root}/config/production/web1/database.port", b"int:6000")
    assert cfg.get("database.port") == 6000 and cfg.raw_items()["database.port"] == ("node", "int:6000")
    assert ergo(backend, prefix, cluster="staging").get("database.port") is None


def test_ergo_layout_writes_the_registrar_keys(backend, prefix):
    cfg = ergo(backend, prefix)
    root = prefix + "services/ergo"
    cfg.set("a", 1, scope="member")
    cfg.set("b", 0.5, scope="cluster")
    cfg.set("c", True, scope="global")
    cfg.set("d", "text", scope="node")
    assert backend.get(f"{root}/cluster/production/config/web1/a").value == b"int:1"
    assert backend.get(f"{root}/cluster/production/config/*/b").value == b"float:0.5"
    assert backend.get(f"{root}/config/global/c").value == b"bool:true"
    assert backend.get(f"{root}/config/production/web1/d").value == b"text"
    for unstorable in ([1], {"a": 1}, None, "int:looks typed"):
        with pytest.raises(ValueError):
            cfg.set("x", unstorable)
    with pytest.raises(ValueError):
        cfg.set("a/b", 1)
    with pytest.raises(ValueError):
        ergo(backend, prefix, node="*")


def test_ergo_watch_follows_both_roots(backend, other_backend, prefix):
    cfg = ergo(backend, prefix)
    writer = ergo(other_backend, prefix)
    changes = queue.Queue()
    watch = cfg.watch(lambda item, value: changes.put((item, value)))
    writer.set("level", 1, scope="global")
    assert changes.get(timeout=5) == ("level", 1)
    writer.set("level", 2, scope="member")  # the other root
    assert changes.get(timeout=5) == ("level", 2)
    writer.set("level", 3, scope="node")
    assert changes.get(timeout=5) == ("level", 3)
    writer.unset("level", scope="node")
    assert changes.get(timeout=5) == ("level", 2)
    assert drain(changes) == []
    watch.stop()
