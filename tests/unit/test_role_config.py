"""The loop-side decisions of role ``config:`` (runtime/role_config.py), turn by
turn, without a supervisor: which env a child gets, when it may start, what a
change does to running children."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from etcdvisor.config import RestartPolicy, RoleType, load
from etcdvisor.coord import open_backend
from etcdvisor.process.spawn import ChildVars
from etcdvisor.runtime.role_config import CONFIG_FILE_ENV, ConfigSnapshot, RoleConfig


class Effects:
    """Effects queued by the decisions; ``run()`` plays them (as the worker would)."""

    def __init__(self):
        self.queued = []

    def __call__(self, what, call, done=None):
        self.queued.append((what, call, done))

    def run(self):
        queued, self.queued = self.queued, []
        for _what, call, done in queued:
            result, error = None, None
            try:
                result = call()
            except Exception as exc:  # noqa: BLE001 - reported to done, as the runner does
                error = exc
            if done is not None:
                done(result, error)


class FakeSlot:
    def __init__(self, spec, wiring):
        self.desired = spec
        self.child = SimpleNamespace(spec=spec, alive=True)
        self.signals = []  # (signum, file content at that moment)
        self.reasons = []

    def note_restart_reason(self, reason):
        self.reasons.append(reason)

    def signal(self, signum):
        self.signals.append((signum, json.loads(Path(self.child.spec.env[CONFIG_FILE_ENV]).read_text())))
        return True


@pytest.fixture
def setup(tmp_path):
    doc = {"cluster": "c", "etcd": {"endpoints": "memory://unit-role-config"}, "roles": {"api": {
        "type": "singleton", "command": ["true"],
        "config": {"PORT": {"item": "port", "default": 1, "on_change": "restart"},
                   "LEVEL": {"item": "level", "default": "info", "on_change": "signal:HUP"},
                   "FLAGS": {"item": "flags", "on_change": "none"},
                   "NAME": {"item": "name", "default": "x", "on_change": "signal:USR1"}}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = load(path)
    backend = open_backend("memory://unit-role-config-" + os.urandom(3).hex())
    effects = Effects()
    wiring = RoleConfig(config, backend, "m0", lambda _e: None, effects)
    wiring.directory = str(tmp_path / "files")
    os.mkdir(wiring.directory)
    root = wiring.roots[2]  # the cluster level (node, member, cluster, global)
    for other in wiring.roots:  # one watcher per level: the others have nothing
        if other != root:
            wiring.handle(ConfigSnapshot(other, {}))
    yield SimpleNamespace(config=config, role=config.role("api"), wiring=wiring, effects=effects, root=root,
                          layered=wiring.layered)
    backend.close()


def spec_of(s, extra=None):
    from etcdvisor.process.spawn import ChildSpec

    env = s.wiring.child_env(s.role, "api", extra or ChildVars())
    return ChildSpec(name="api", argv=("true",), env=env)


def snapshot(s, **items):
    """A watcher snapshot with cluster-scope values (stored strings)."""
    stored = {s.layered.key(item, "cluster"): raw for item, raw in items.items()}
    s.wiring.handle(ConfigSnapshot(s.root, stored))


def test_nothing_starts_before_values_and_file(setup):
    s = setup
    assert s.wiring.gate(s.role, {"api": spec_of(s)}, {}) == {}  # values not known yet
    snapshot(s, port="int:8080", flags='json:["a"]')
    spec = spec_of(s)
    assert s.wiring.gate(s.role, {"api": spec}, {}) == {}  # the file is being written
    s.effects.run()
    assert s.wiring.gate(s.role, {"api": spec}, {}) == {"api": spec}
    assert {k: spec.env.get(k) for k in ("PORT", "LEVEL", "FLAGS", "NAME")} == {
        "PORT": "8080", "LEVEL": "info", "FLAGS": '["a"]', "NAME": "x"}
    assert json.loads(Path(spec.env[CONFIG_FILE_ENV]).read_text()) == {
        "PORT": 8080, "LEVEL": "info", "FLAGS": ["a"], "NAME": "x"}


def start(s):
    snapshot(s, port="int:8080")
    spec = spec_of(s)
    s.wiring.gate(s.role, {"api": spec}, {})
    s.effects.run()
    slot = FakeSlot(spec, s.wiring)
    s.wiring.flush([(SimpleNamespace(name="api"), "api", slot)])
    return spec, slot


def test_signal_after_the_file_and_one_action_for_changes_together(setup):
    s = setup
    spec, slot = start(s)
    children = [(SimpleNamespace(name="api"), "api", slot)]
    snapshot(s, port="int:8080", level="debug", name="y", flags="bool:true")  # three changes at once
    assert spec_of(s) == spec  # no restart: signal/none entries keep their start value in env
    s.wiring.flush(children)
    assert slot.signals == []  # not before the file is written
    s.effects.run()
    assert sorted(sig for sig, _ in slot.signals) == [signal.SIGHUP, signal.SIGUSR1]  # each once
    assert all(content["LEVEL"] == "debug" and content["FLAGS"] is True for _, content in slot.signals)
    s.wiring.flush(children)
    s.effects.run()
    assert len(slot.signals) == 2  # nothing more without a change


def test_none_only_rewrites_the_file(setup):
    s = setup
    spec, slot = start(s)
    snapshot(s, port="int:8080", flags="int:3")
    s.wiring.flush([(SimpleNamespace(name="api"), "api", slot)])
    s.effects.run()
    assert slot.signals == [] and spec_of(s) == spec
    assert json.loads(Path(spec.env[CONFIG_FILE_ENV]).read_text())["FLAGS"] == 3


def test_restart_waits_for_the_file_then_takes_the_new_spec(setup):
    s = setup
    spec, slot = start(s)
    snapshot(s, port="int:9090", level="warn")  # restart wins over the signal
    s.wiring.flush([(SimpleNamespace(name="api"), "api", slot)])
    new = spec_of(s)
    assert new.env["PORT"] == "9090" and new.env["LEVEL"] == "warn"  # a new start takes every value
    assert s.wiring.gate(s.role, {"api": new}, {"api": slot}) == {"api": spec}  # old spec until written
    s.effects.run()
    assert s.wiring.gate(s.role, {"api": new}, {"api": slot}) == {"api": new}
    assert slot.signals == []


def test_bad_values_keep_the_last_good_one_and_env_stays_execable(setup):
    s = setup
    snapshot(s, port="int:8080")
    snapshot(s, port="int:80x", name="a\0b", level="z" * 100_000)
    env = spec_of(s).env
    assert env["PORT"] == "8080"
    assert "NAME" not in env and "LEVEL" not in env  # exec would fail: only in the file
    s.wiring.gate(s.role, {"api": spec_of(s)}, {})
    s.effects.run()
    content = json.loads(Path(env[CONFIG_FILE_ENV]).read_text())
    assert content["NAME"] == "a\0b" and len(content["LEVEL"]) == 100_000


def test_files_of_gone_children_are_removed(setup):
    s = setup
    spec, _slot = start(s)
    path = spec.env[CONFIG_FILE_ENV]
    assert os.path.exists(path)
    s.wiring.flush([])  # a new turn
    s.wiring.forget(set())
    s.effects.run()
    assert not os.path.exists(path)


def test_watchers_post_only_the_keys_roles_read_and_only_on_change(setup):
    from etcdvisor.coord.types import KeyValue
    from etcdvisor.coord.watcher import Change

    s = setup
    posted = []
    s.wiring.post = posted.append

    def change(revision, initial=False, **items):
        snap = {}
        for item, (scope, raw) in items.items():
            key = s.layered.key(item, scope) if scope != "other" else s.root + "cluster/elsewhere/" + item
            snap[key] = KeyValue(key=key, value=raw.encode(), create_revision=1, mod_revision=revision,
                                 version=1, lease=0)
        return Change(snapshot=snap, events=(), revision=revision, initial=initial)

    s.wiring._on_change(s.root, change(3, initial=True, port=("cluster", "int:1"), junk=("global", "x")))
    assert [dict(p.stored) for p in posted] == [{s.layered.key("port", "cluster"): "int:1"}]
    s.wiring._on_change(s.root, change(4, port=("cluster", "int:1"), junk=("global", "y"),
                                       level=("other", "z")))
    assert len(posted) == 1  # nothing our roles read changed
    s.wiring._on_change(s.root, change(5, port=("member", "int:2")))
    assert posted[-1].revision == 5 and dict(posted[-1].stored) == {s.layered.key("port", "member"): "int:2"}
    s.wiring.handle(posted[-1])
    s.wiring.handle(posted[0])  # a late, older snapshot (a retired watcher) is ignored
    assert s.wiring.values["api"]["PORT"] == 2


def test_a_one_shot_run_is_not_cut_short_by_a_restart_entry(setup, tmp_path):
    s = setup
    role = dataclasses.replace(s.role, type=RoleType.JOB, restart=RestartPolicy.ON_FAILURE)
    snapshot(s, port="int:8080")
    first = s.wiring.child_env(role, "job-run", ChildVars())
    snapshot(s, port="int:9090")
    assert s.wiring.child_env(role, "job-run", ChildVars())["PORT"] == first["PORT"] == "8080"  # same spec
    assert s.wiring.child_env(role, "next-run", ChildVars())["PORT"] == "9090"  # later runs get the new value


def test_yaml_values_that_are_not_json_do_not_break_the_loop(setup):
    import datetime

    from etcdvisor.runtime.role_config import env_text

    assert env_text({"when": datetime.date(2024, 1, 2)}) == '{"when":"2024-01-02"}'


def test_one_watcher_per_level_and_a_refused_level_is_posted(setup):
    """Issue 16, section 3: the watched prefixes are the levels of this cluster and
    member only (narrow read grants), and a refusal is posted, not retried silently."""
    from etcdvisor.coord.errors import PermissionDenied, Unavailable
    from etcdvisor.runtime.role_config import ConfigDenied

    s = setup
    shared = "/etcdvisor/_shared/config/"
    assert s.wiring.roots == (f"{shared}node/c/m0/", f"{shared}member/c/m0/", f"{shared}cluster/c/",
                              f"{shared}global/")
    posted = []
    s.wiring.post = posted.append
    error = PermissionDenied(f"range '{shared}global/': permission denied for etcd user 'u'")
    s.wiring._on_error(s.wiring.roots[3], Unavailable("a hiccup is retried quietly"))
    s.wiring._on_error(s.wiring.roots[3], error)
    assert posted == [ConfigDenied(s.wiring.roots[3], error)]


def test_ergo_levels_are_watched_one_prefix_each(tmp_path):
    doc = {"cluster": "shop", "config_layout": "ergo", "etcd": {"endpoints": "memory://x"},
           "roles": {"api": {"type": "singleton", "command": ["true"], "config": {"X": {"item": "x"}}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    backend = open_backend("memory://unit-role-config-ergo-" + os.urandom(3).hex())
    try:
        wiring = RoleConfig(load(path), backend, "web-1", lambda _e: None, Effects())
        assert wiring.roots == ("services/ergo/config/shop/web-1/", "services/ergo/cluster/shop/config/web-1/",
                                "services/ergo/cluster/shop/config/*/", "services/ergo/config/global/")
    finally:
        backend.close()
