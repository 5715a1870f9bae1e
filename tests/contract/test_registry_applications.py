"""Registry application routes and their events (after 003's application
routes), and registering on a given session, on the memory backend and on
real etcd."""

import queue

import pytest

from etcdvisor.coord.session import Session
from etcdvisor.recipes.applications import (
    ApplicationEventKind as Kind,
)
from etcdvisor.recipes.applications import (
    ApplicationMode,
    ApplicationRoute,
    ApplicationState,
)
from etcdvisor.recipes.registry import Registry, ServiceInfo


def drain(events, settle=0.3):
    items = []
    while True:
        try:
            items.append(events.get(timeout=settle))
        except queue.Empty:
            return items


def summary(event):
    return event.kind, event.route.name, event.route.node, event.route.state


def test_routes_register_resolve_in_order_and_stored_form(backend, other_backend, prefix):
    node1 = Registry(backend, prefix=prefix + "svc", ttl=5)
    node2 = Registry(other_backend, prefix=prefix + "svc", ttl=5)
    node1.register_application(ApplicationRoute("web", "n1", weight=10, mode=ApplicationMode.PERMANENT))
    node2.register_application(ApplicationRoute("web", "n2", weight=5, state=ApplicationState.RUNNING))
    node2.register_application(ApplicationRoute("batch", "n2", mode="transient"))
    node1.register(ServiceInfo(name="web", id="i1", address="10.0.0.1", port=80))  # not a route
    web = node2.resolve_application("web")
    assert [(r.node, r.weight, r.mode, r.state) for r in web] == [
        ("n1", 10, ApplicationMode.PERMANENT, ApplicationState.LOADED),
        ("n2", 5, ApplicationMode.TEMPORARY, ApplicationState.RUNNING)]
    assert [(r.name, r.node) for r in node1.applications()] == [("web", "n1"), ("web", "n2"), ("batch", "n2")]
    stored = backend.get(f"{prefix}svc/default/web/applications/n1")
    assert stored.lease == node1.session().lease_id
    assert ApplicationRoute.from_json(stored.value) == web[0]
    assert node1.set_application_state("web", "n1", "running").state is ApplicationState.RUNNING
    assert node2.applications("web")[0].state is ApplicationState.RUNNING
    assert node1.deregister_application("web", "n1") is True
    assert [r.node for r in node2.applications("web")] == ["n2"]
    node2.close()  # the lease goes: so do its routes
    assert node1.applications() == []
    with pytest.raises(ValueError):
        ApplicationRoute("web", "a/b")
    with pytest.raises(ValueError):
        ApplicationRoute("web", "n1", state="exploded")
    node1.close()


def test_watch_applications_loaded_started_stopping_stopped(backend, other_backend, prefix):
    observer = Registry(backend, prefix=prefix + "svc", ttl=5)
    node = Registry(other_backend, prefix=prefix + "svc", ttl=5)
    node.register_application(ApplicationRoute("old", "n0", state=ApplicationState.RUNNING))
    events = queue.Queue()
    watcher = observer.watch_applications(events.put)
    assert [summary(e) for e in drain(events)] == [(Kind.STARTED, "old", "n0", ApplicationState.RUNNING)]

    node.register_application(ApplicationRoute("web", "n1", weight=3))
    node.register_application(ApplicationRoute("web", "n1", weight=3))  # same document: no event
    node.set_application_state("web", "n1", ApplicationState.RUNNING)
    node.set_application_state("web", "n1", ApplicationState.STOPPING)
    node.set_application_state("web", "n1", ApplicationState.LOADED)
    node.register_application(ApplicationRoute("web", "n1", weight=7))
    node.deregister_application("web", "n1")
    node.deregister_application("old", "n0")
    assert [summary(e) for e in drain(events)] == [
        (Kind.LOADED, "web", "n1", ApplicationState.LOADED),
        (Kind.STARTED, "web", "n1", ApplicationState.RUNNING),
        (Kind.STOPPING, "web", "n1", ApplicationState.STOPPING),
        (Kind.STOPPED, "web", "n1", ApplicationState.LOADED),
        (Kind.UPDATED, "web", "n1", ApplicationState.LOADED),
        (Kind.UNLOADED, "web", "n1", ApplicationState.LOADED),
        (Kind.STOPPED, "old", "n0", ApplicationState.RUNNING)]
    watcher.stop()
    node.close()
    observer.close()


def test_a_dead_node_s_running_routes_are_reported_stopped(backend, other_backend, prefix):
    observer = Registry(backend, prefix=prefix + "svc", ttl=5)
    events = queue.Queue()
    observer.watch_applications(events.put, "web", replay=False)
    node = Registry(other_backend, prefix=prefix + "svc", ttl=5)
    node.register_application(ApplicationRoute("web", "n9", state="running"))
    node.register_application(ApplicationRoute("other", "n9", state="running"))  # not watched
    assert [e.kind for e in drain(events)] == [Kind.STARTED]
    other_backend.lease_revoke(node.session().lease_id)  # the node dies (its lease goes)
    event = events.get(timeout=5)
    assert event.kind is Kind.STOPPED and event.route.node == "n9" and event.previous.state.value == "running"
    node.close()
    observer.close()


def test_registering_on_a_given_session_keeps_it_and_cleans_up(backend, other_backend, prefix):
    """What a supervisor member does: its instances hang on the member's lease."""
    member = Session(backend, 5).start()
    registry = Registry.for_cluster(backend, prefix.strip("/") + "-c", session=member)
    assert registry.root == f"/etcdvisor/{prefix.strip('/')}-c/services"
    registry.register(ServiceInfo(name="api", id="m1-0", address="h:8000", port=8000))
    registry.register_application(ApplicationRoute("api", "m1", state="running"))
    stored = backend.get(registry.instance_key("api", "m1-0"))
    assert stored.lease == member.lease_id
    observer = Registry.for_cluster(other_backend, prefix.strip("/") + "-c")
    assert [i.id for i in observer.all_instances()] == ["m1-0"]
    registry.close()
    assert observer.all_instances() == [] and observer.applications() == []
    assert member.alive and backend.lease_ttl(member.lease_id) > 0  # not ours to revoke
    member.close()
