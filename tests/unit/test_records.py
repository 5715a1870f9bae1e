"""The strict, bounded decoder of records read from etcd (coord/records.py): a table of
every record kind x every way a record can be bad, decoded directly and read back from
the memory backend by the code that consumes it; and strict JSON out."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from types import SimpleNamespace

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.coord.keys import ClusterKeys
from etcdvisor.coord.records import (
    KINDS,
    MAX_DEPTH,
    TIME,
    RecordError,
    decimal,
    dumps,
    dumps_strict,
    nesting_depth,
    parse_json,
)
from etcdvisor.coord.types import KeyValue
from etcdvisor.runtime.control import ControlChanged, ControlState, make_record, read_records
from etcdvisor.status import gather

NOW = time.time()

#: one valid record per kind: adding a kind to coord/records.py needs a row here
VALID = {
    "control": make_record("restart", "worker", now=NOW),
    "registry": {"name": "api", "id": "a1", "address": "10.0.0.1", "port": 8080, "metadata": {"zone": "eu"}},
    "application route": {"name": "web", "node": "n1", "weight": 3, "mode": "permanent", "state": "running"},
    "member": {"member": "m1", "host": "h", "pid": 42, "started": NOW, "roles": {"worker": {"type": "sharded"}}},
    "cron tick": {"state": "succeeded", "member": "m1", "token": 7, "scheduled": "2024-01-01T00:00:00+00:00",
                  "started": NOW, "finished": NOW, "exit_code": 0},
    "job": {"spec_hash": "ab12", "state": "succeeded", "member": "m1", "token": 7, "updated": NOW,
            "finished": NOW, "exit_code": 0},
    "done": {"exit_code": 0, "member": "m1", "finished": NOW},
    "rollout": {"id": "r1", "trigger": "restart", "who": "ann@laptop", "started": NOW, "target": "r1",
                "state": "running", "done": ["m1:worker[0]"], "failed": None, "finished": None, "resumed": None},
    "rollout slot": {"member": "m1", "child": "worker[0]", "rollout": "r1"},
    "shard alive": {"parts": {"4": [0, 3], "2": [1]}},
    "shard grant": {"epoch": 12, "record": 15, "parts": {"4": [0, 3]}, "coordinator": "m1"},
}

WRONG = {"string": 5, "integer": "5", "number": "1.5", "boolean": 1, "time": "now", "object": [1],
         "list": {"a": 1}}


def test_every_kind_has_a_valid_sample_that_decodes():
    assert set(VALID) == set(KINDS)
    for name, kind in KINDS.items():
        doc = kind.decode(json.dumps(VALID[name]).encode())
        assert {k: doc[k] for k in VALID[name]} == VALID[name]


def bad_records(name: str) -> list[tuple[str, bytes]]:
    """(what, raw) for every way a record of kind ``name`` can be bad."""
    kind, base = KINDS[name], VALID[name]
    cases = [
        ("too big", json.dumps({**base, "pad": "x" * kind.max_bytes}).encode()),
        ("too deep", json.dumps({**base, "pad": json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))}).encode()),
        ("5000 nested [", b"[" * 5000),
        ("5000 nested [ in a field", json.dumps(base).encode()[:-1] + b', "pad": ' + b"[" * 5000 + b"}"),
        ("not an object", json.dumps([base]).encode()),
        ("not JSON", b"{not json"),
        ("not UTF-8", b'{"a": "\xff"}'),
        ("NaN", json.dumps(base).encode()[:-1] + b', "pad": NaN}'),
        ("Infinity", json.dumps(base).encode()[:-1] + b', "pad": -Infinity}'),
        ("1e999", json.dumps(base).encode()[:-1] + b', "pad": 1e999}'),
    ]
    for field, spec in kind.fields.items():
        wrong = {"x": [1]} if isinstance(spec.type, tuple) else WRONG.get(spec.type)
        cases.append((f"{field} of the wrong type", json.dumps({**base, field: wrong}).encode()))
        if spec.type != "boolean":
            cases.append((f"{field} true", json.dumps({**base, field: True}).encode()))
        if spec.required:
            cases.append((f"{field} missing", json.dumps({k: v for k, v in base.items() if k != field}).encode()))
        if spec.type == TIME or isinstance(spec.type, tuple) and TIME in spec.type:
            for when in (NOW * 1000, 0, -1.0, 1e300):
                cases.append((f"{field} = {when:g}", json.dumps({**base, field: when}).encode()))
    return cases


TABLE = [(name, what, raw) for name in VALID for what, raw in bad_records(name)]


@pytest.mark.parametrize(("name", "what", "raw"), TABLE, ids=[f"{n}: {w}" for n, w, _ in TABLE])
def test_bad_record_is_refused_with_a_reason(name, what, raw):
    with pytest.raises(RecordError) as caught:
        KINDS[name].decode(raw)
    assert str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", sorted(VALID))
def test_bad_records_read_back_from_the_memory_backend_are_skipped_with_one_warning_each(name, caplog):
    backend = open_backend(f"memory://records-{os.urandom(3).hex()}")
    kind = KINDS[name]
    prefix = f"/etcdvisor/c/{name.replace(' ', '-')}/"
    cases = bad_records(name)
    for number, (_what, raw) in enumerate(cases):
        backend.put(f"{prefix}bad{number:03d}", raw)
    backend.put(prefix + "zz-good", json.dumps(VALID[name]))
    with caplog.at_level(logging.WARNING, logger="etcdvisor"):
        for _ in range(3):  # a watcher sees the same records in every snapshot
            read = {kv.key: kind.read(kv) for kv in backend.get_prefix(prefix).kvs}
    assert [key for key, doc in read.items() if doc is not None] == [prefix + "zz-good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(cases), "one warning per bad record, not one per read"
    assert all(f"skipping {name} record {prefix}bad" in line for line in warnings)
    backend.put(prefix + "bad000", b"[" * 5000)  # a new revision of a bad key warns again
    with caplog.at_level(logging.WARNING, logger="etcdvisor"):
        assert kind.read(backend.get_prefix(prefix + "bad000").kvs[0]) is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(cases) + 1
    backend.close()


def test_nesting_is_measured_without_recursion_and_ignores_strings():
    assert nesting_depth(b"[" * 100_000) == 100_000
    assert nesting_depth(b'{"a": "[[[[[[{{{{", "b": [[1], {"c": []}]}') == 4
    assert nesting_depth(b'["\\"[[[[[[[[", [1]]') == 2  # an escaped quote does not end the string
    assert nesting_depth(b'"unterminated [[[[[[[[[[') == 0
    assert nesting_depth(b"[[]][[[") == 3


def test_parse_json_bounds_and_strictness():
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    started = time.monotonic()
    for raw in (b"[" * 1_000_000, b'"' + b'\\"' * 500_000, b"[" * 30 + b'"' + b"\\" * 1_000_000):
        with pytest.raises(RecordError):
            parse_json(raw, max_bytes=4 * 1024 * 1024)
    assert time.monotonic() - started < 5, "the checks must stay linear"
    with pytest.raises(RecordError, match="over the limit of 10"):
        parse_json(b"[" + b"1," * 10 + b"1]", max_bytes=10)
    with pytest.raises(RecordError, match="digits"):
        parse_json(b"1" * 5000)


def test_decimal_takes_only_short_ascii_numbers():
    assert decimal(b"42") == 42 and decimal("0") == 0 and decimal(b"9" * 22) == 10 ** 22 - 1
    for bad in (b"", b"-1", "\u00b2", "\u0663", b"1" * 23, b"9" * 5000, b" 1", b"1.0", None):
        assert decimal(bad) is None, bad


def test_time_fields_refuse_milliseconds_with_a_hint():
    record = {**VALID["control"], "when": NOW * 1000}
    with pytest.raises(RecordError, match="milliseconds"):
        KINDS["control"].decode(json.dumps(record))


def test_member_records_type_the_role_status_fields_status_shows():
    kind = KINDS["member"]
    roles = {"worker": {"type": "sharded", "state": "running", "index": 0, "count": 2, "epoch": 7,
                        "indexes": [0], "waiting": ["0/2 waits"], "children": {"worker": {"pid": 1}},
                        "custom": {"any": "thing"}},
             "report": {"type": "cron", "leader": True, "token": 5, "next": "2030-01-01T00:00:00+00:00",
                        "running": [], "registered": [{"service": "api"}]}}
    assert kind.decode(json.dumps({**VALID["member"], "roles": roles}))["roles"] == roles
    for role, field, value in (("worker", "waiting", 5), ("worker", "index", "0"), ("worker", "children", [1]),
                               ("report", "leader", "yes"), ("report", "registered", ["api"]),
                               ("report", "token", 1.5)):
        bad = {**roles, role: {**roles[role], field: value}}
        with pytest.raises(RecordError, match=f"roles.{role}.{field}"):
            kind.decode(json.dumps({**VALID["member"], "roles": bad}))


def test_registry_records_are_not_converted():
    kind = KINDS["registry"]
    for field, value in (("port", "http"), ("port", "8080"), ("port", 8080.0), ("port", 70000),
                         ("address", {"host": "h"}), ("metadata", [1, 2]), ("id", None), ("name", "")):
        with pytest.raises(RecordError, match=field):
            kind.decode(json.dumps({**VALID["registry"], field: value}))


# --- consumers, over the memory backend --------------------------------------------------------
def test_control_watch_skips_a_nested_record_and_the_next_valid_restart_acts(caplog):
    backend = open_backend(f"memory://control-{os.urandom(3).hex()}")
    keys = ClusterKeys("c")
    prefix = keys.base + "control/"
    backend.put(prefix + "worker/reset", b"[" * 5000)
    backend.put(prefix + "other/restart", json.dumps({**make_record("restart", "other"), "when": "now"}))
    backend.put(prefix + "worker/pause", json.dumps(make_record("pause", "someone-else")))  # wrong role
    state = ControlState()
    with caplog.at_level(logging.WARNING, logger="etcdvisor"):
        assert state.update(ControlChanged(read_records(backend.get_prefix(prefix).kvs, prefix), True)) == []
        assert not state.is_paused("worker")
        backend.put(prefix + "worker/restart", json.dumps(make_record("restart", "worker")))
        commands = state.update(ControlChanged(read_records(backend.get_prefix(prefix).kvs, prefix), False))
    assert [(c.verb, c.role) for c in commands] == [("restart", "worker")]
    skipped = [r.getMessage() for r in caplog.records if "skipping control record" in r.getMessage()]
    assert len(skipped) == 3 and all(prefix in line for line in skipped)
    backend.close()


def test_a_trigger_in_milliseconds_is_never_a_command():
    backend = open_backend(f"memory://trigger-{os.urandom(3).hex()}")
    prefix = ClusterKeys("c").base + "control/"
    backend.put(prefix + "report/trigger", json.dumps(make_record("trigger", "report", now=NOW) | {"when": NOW * 1000}))
    state = ControlState()
    assert state.update(ControlChanged(read_records(backend.get_prefix(prefix).kvs, prefix), True)) == []
    backend.close()


def test_status_of_a_cluster_full_of_bad_records_is_strict_json():
    backend = open_backend(f"memory://status-{os.urandom(3).hex()}")
    base = ClusterKeys("c").base
    nested = b"[" * 5000
    backend.put(base + "members/m1", json.dumps(VALID["member"]))
    backend.put(base + "members/m2", nested)
    backend.put(base + "members/m3", json.dumps({**VALID["member"], "started": NOW * 1000}))
    backend.put(base + "control/worker/restart", nested)
    backend.put(base + "control/worker/pause", json.dumps(make_record("pause", "worker")))
    backend.put(base + "roles/report/ticks/2024-01-01T00:00:00Z", nested)
    backend.put(base + "roles/report/ticks/2024-01-02T00:00:00Z", json.dumps({**VALID["cron tick"],
                                                                             "finished": NOW * 1000}))
    backend.put(base + "roles/migrate/job", b'{"spec_hash": "x", "state": "failed", "exit_code": NaN}')
    backend.put(base + "roles/worker/alive/m1", nested)
    backend.put(base + "roles/fixed/assignment", nested)
    backend.put(base + "topics/t/done/g/" + "9" * 5000, b"")  # key tails are read from etcd too
    backend.put(base + "topics/t/done/g/\u00b2", b"")
    doc = gather(backend, "c")
    text = json.dumps(doc, allow_nan=False)
    assert [m["member"] for m in doc["members"]] == ["m1", "m2", "m3"]
    assert [("error" in m) for m in doc["members"]] == [False, True, True]
    assert "error" in doc["control"]["worker"]["restart"] and doc["control"]["worker"]["pause"]["who"]
    assert doc["roles"]["report"]["ticks"]["last"] is None and doc["roles"]["migrate"]["job"]["error"]
    assert doc["roles"]["worker"]["alive"]["m1"]["error"] and doc["roles"]["fixed"]["published"]["error"]
    from etcdvisor.status import render_text

    assert "role report" in render_text(json.loads(text))
    backend.close()


def test_job_and_done_records_gate_barriers_only_when_valid():
    from etcdvisor.config import RoleType
    from etcdvisor.runtime.barriers import completed

    keys = ClusterKeys("c")
    dep = SimpleNamespace(type=RoleType.SHARDED, name="seed")
    prefix = keys.role("seed") + "done/"
    good = json.dumps(VALID["done"]).encode()

    def kv(key, value):
        return KeyValue(key, value, 1, 1, 1)

    assert completed(dep, keys, {prefix + "1/0": kv(prefix + "1/0", good)})
    for bad in (b"[" * 5000, b'{"exit_code": "0"}', b'{"exit_code": 0, "finished": 1e15}', b'{"exit_code": NaN}'):
        assert not completed(dep, keys, {prefix + "1/0": kv(prefix + "1/0", bad)})
    huge = prefix + f"{10 ** 15}/0"
    assert not completed(dep, keys, {huge: kv(huge, good)})  # no set of 10**15 indexes


def test_config_items_refuse_non_finite_and_nested_values():
    from etcdvisor.recipes.layered_config import ConfigValueError, decode_value, encode_value

    for raw in ("float:nan", "float:inf", "float:-Infinity", "float:1e999", "json:NaN", "json:[1, Infinity]",
                "json:" + "[" * 5000, "json:" + "[" * 40 + "]" * 40, "int:" + "9" * 5000,
                "x" * (1024 * 1024 + 1)):
        with pytest.raises(ConfigValueError, match="config key k"):
            decode_value("k", raw)
    assert decode_value("k", "float:0.75") == 0.75 and decode_value("k", 'json:{"a": [1]}') == {"a": [1]}
    for value in (math.nan, math.inf, -math.inf, [1.0, math.nan]):
        with pytest.raises(ValueError, match="NaN"):
            encode_value(value)


# --- strict JSON out ---------------------------------------------------------------------------
def test_dumps_never_writes_nan_or_infinity():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": ({"d": math.nan},)}
    text = dumps(value, sort_keys=True)
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "a": None, "b": [None, None, 1.5], "c": [{"d": None}]}
    assert dumps({"x": 1}) == '{"x": 1}'
    with pytest.raises(ValueError, match="NaN and Infinity are not valid JSON"):
        dumps_strict({"x": math.nan})


def test_peers_file_and_child_config_file_are_strict_json():
    from etcdvisor.recipes.registry import ServiceInfo
    from etcdvisor.runtime.role_config import _encode, env_text

    assert "NaN" not in ServiceInfo("api", "a", "h", 1, metadata={"load": math.nan}).to_json()
    assert b"NaN" not in _encode({"X": math.nan}) and env_text(math.inf) == "null"


@pytest.mark.parametrize("default", [".nan", ".inf", "-.inf", "[1, .nan]"])
def test_a_non_finite_config_default_is_refused_by_validate(tmp_path, default):
    from etcdvisor.config import ConfigError, load

    path = tmp_path / "c.yaml"
    path.write_text("cluster: c\netcd: {endpoints: 'memory://x'}\nroles:\n  api:\n    type: sharded\n"
                    f"    command: ['true']\n    config:\n      RATIO: {{item: ratio, default: {default}}}\n")
    with pytest.raises(ConfigError, match=r"roles\.api\.config\.RATIO\.default: holds \.nan or \.inf"):
        load(path)


def test_hostile_claim_and_done_keys_do_not_stop_a_topic_queue():
    from etcdvisor.coord.session import Session
    from etcdvisor.recipes.topic import Topic
    from etcdvisor.recipes.topic_queue import QueueConsumer

    backend = open_backend(f"memory://topic-{os.urandom(3).hex()}")
    topic = Topic(backend, "/etcdvisor/c/topics/t/")
    claims, done = topic.claim_key("g", 1).rsplit("/", 1)[0], topic.done_key("g", 1).rsplit("/", 1)[0]
    backend.put(f"{claims}/{'9' * 5000}", b"x")  # at resync
    backend.put(f"{done}/\u00b2", b"")
    session = Session(backend, ttl=5, interval=0.2, name="s").start()
    consumer = QueueConsumer(topic, "g", session)
    try:
        topic.publish(b"one")
        backend.put(f"{done}/abc", b"")  # while following
        backend.delete(f"{claims}/{'9' * 5000}")
        first = consumer.get(timeout=5)
        assert first is not None and first.data == b"one"
        consumer.ack(first)
        topic.publish(b"two")
        second = consumer.get(timeout=5)
        assert second is not None and second.data == b"two"
    finally:
        consumer.close()
        session.close()
        backend.close()


def test_a_leader_name_is_bounded_printable_text(caplog):
    from etcdvisor.coord.records import member_name

    assert member_name("/e/1", b"web-1", 5) == "web-1"
    with caplog.at_level(logging.WARNING, logger="etcdvisor"):
        for raw in (b"", b"a\x00b", b"\xff\xfe", b"x" * 254, b"line\nbreak"):
            assert member_name("/e/1", raw, 6 + len(raw)) is None
    assert len([r for r in caplog.records if "skipping member name record /e/1" in r.getMessage()]) == 5


@pytest.mark.parametrize("kind", ["shard alive", "shard grant"])
@pytest.mark.parametrize("parts", [
    {"x": [1]}, {"0": []}, {"-4": [1]}, {"4": [4]}, {"4": [-1]}, {"4": [True]}, {"4": [1.0]}, {"4": "1"},
    {"4": {"1": 1}}, {"1" * 23: [0]}, {"٤": [1]},
])
def test_partition_maps_are_decoded_strictly(kind, parts):
    """Alive records and start grants name partitions ``{"<COUNT>": [INDEX, ...]}``: a count
    is a short ASCII decimal > 0, an index an integer in ``0..COUNT-1``; nothing is converted."""
    with pytest.raises(RecordError):
        KINDS[kind].decode(json.dumps({**VALID[kind], "parts": parts}))
