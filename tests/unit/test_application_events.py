"""The pure mapping from a route's state change to an application event."""

import pytest

from etcdvisor.recipes.applications import ApplicationEventKind as Kind
from etcdvisor.recipes.applications import ApplicationRoute, event_kind


def route(state, weight=0):
    return ApplicationRoute("app", "node", weight=weight, state=state)


@pytest.mark.parametrize("old, new, kind", [
    (None, "loaded", Kind.LOADED),
    (None, "running", Kind.STARTED),
    (None, "stopping", Kind.STOPPING),
    ("loaded", "running", Kind.STARTED),
    ("running", "stopping", Kind.STOPPING),
    ("stopping", "loaded", Kind.STOPPED),
    ("running", "loaded", Kind.STOPPED),
    ("stopping", "running", Kind.STARTED),
    ("running", None, Kind.STOPPED),
    ("stopping", None, Kind.STOPPED),
    ("loaded", None, Kind.UNLOADED),
    ("loaded", "loaded", None),
    (None, None, None),
])
def test_transitions(old, new, kind):
    assert event_kind(old and route(old), new and route(new)) is kind


def test_other_fields_changing_is_an_update():
    assert event_kind(route("running", 1), route("running", 2)) is Kind.UPDATED


@pytest.mark.parametrize("document", ['[]', '{"name": "a"}', '{"name": "a", "node": "n", "state": "x"}',
                                      '{"name": "a", "node": "n", "weight": "9"}', 'nope'])
def test_bad_documents_are_value_errors(document):
    with pytest.raises(ValueError):
        ApplicationRoute.from_json(document)
