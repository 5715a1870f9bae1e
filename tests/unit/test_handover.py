"""The hand-over state of an in-place upgrade (runtime/handover.py): encode/decode, the
version number, garbage, the inherited descriptor; the spec comparison of adopted
children (process/adopt.py); the ``upgrade`` control record."""

import json
import os

import pytest

from etcdvisor.coord.records import CONTROL
from etcdvisor.process.adopt import spec_difference, spec_digest
from etcdvisor.process.spawn import ChildSpec
from etcdvisor.runtime import control, handover
from etcdvisor.runtime.handover import HandoverError, decode, encode

STATE = {"member": {"id": "m0", "lease": 123, "ttl": 10}, "slots": {"w/0": {"restarts": 2}}}


def test_round_trip():
    data = encode(STATE, from_version="0.1.0", pid=42, written=1.5)
    doc = decode(data, pid=42)
    assert doc["state"] == STATE
    assert doc["version"] == handover.VERSION and doc["from_version"] == "0.1.0"


@pytest.mark.parametrize("version", [0, 2, 99, "1", None, True])
def test_a_version_this_build_cannot_read_is_refused_with_one_line(version):
    data = encode(STATE, from_version="9.9.9", pid=42, written=0.0, version=version)
    with pytest.raises(HandoverError) as err:
        decode(data)
    text = str(err.value)
    assert "\n" not in text and f"version {version!r}" in text and "9.9.9" in text


@pytest.mark.parametrize("data, words", [
    (b"", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (b'{"format": "etcdvisor-handover", "version": 1, "state": NaN}', "not JSON"),
    (b"[1, 2]", "not an etcdvisor hand-over"),
    (b'{"format": "other", "version": 1, "state": {}}', "not an etcdvisor hand-over"),
    (b'{"format": "etcdvisor-handover", "version": 1, "state": []}', "no 'state' object"),
    (b'{"format": "etcdvisor-handover", "version": 1}', "no 'state' object"),
])
def test_garbage_is_refused_with_one_line(data, words):
    with pytest.raises(HandoverError) as err:
        decode(data)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_another_processs_state_is_refused():
    data = encode(STATE, from_version="0.1.0", pid=42, written=0.0)
    with pytest.raises(HandoverError, match="written by pid 42"):
        decode(data, pid=43)


def test_oversized_state_is_refused(monkeypatch):
    monkeypatch.setattr(handover, "MAX_BYTES", 10)
    with pytest.raises(HandoverError, match="over the 10 byte limit"):
        decode(encode(STATE, from_version="0.1.0", pid=42, written=0.0))


def test_the_descriptor_is_inheritable_and_read_once():
    data = encode(STATE, from_version="0.1.0", pid=os.getpid(), written=0.0)
    fd = handover.write_fd(data)
    assert os.get_inheritable(fd)
    assert handover.read_fd(fd) == data
    with pytest.raises(OSError):
        os.fstat(fd)  # closed after reading


def test_take_from_environ_pops_the_variable():
    data = encode(STATE, from_version="0.1.0", pid=os.getpid(), written=0.0)
    environ = {handover.ENV: str(handover.write_fd(data)), "PATH": "/bin"}
    doc = handover.take_from_environ(environ)
    assert doc is not None and doc["state"] == STATE
    assert environ == {"PATH": "/bin"}
    assert handover.take_from_environ(environ) is None  # a normal start


@pytest.mark.parametrize("raw, words", [("x", "not a file descriptor"), ("999999", "cannot read")])
def test_take_from_environ_with_a_bad_descriptor(raw, words):
    with pytest.raises(HandoverError, match=words):
        handover.take_from_environ({handover.ENV: raw})


def test_encode_refuses_nan():
    with pytest.raises(ValueError):
        encode({"x": float("nan")}, from_version="0.1.0", pid=1, written=0.0)


def test_spec_difference_names_what_differs():
    spec = ChildSpec("w[0]", ("worker",), {"INDEX": "0", "EPOCH": "12"}, stop_timeout=3.0)
    digests = json.loads(json.dumps(spec_digest(spec)))  # as it travels
    assert spec_difference(spec, digests) == []
    other = ChildSpec("w[0]", ("worker",), {"INDEX": "0", "EPOCH": "13"}, stop_timeout=3.0)
    assert spec_difference(other, digests) == ["env.EPOCH"]
    more = ChildSpec("w[0]", ("worker",), {"INDEX": "0", "EPOCH": "12", "X": "1"}, stop_timeout=4.0)
    assert spec_difference(more, digests) == ["env.X", "stop_timeout"]
    assert spec_difference(None, digests) == ["(no child wanted)"]
    assert spec_difference(spec, "garbage") == ["(unreadable digest)"]  # type: ignore[arg-type]


def test_the_upgrade_control_record_decodes_strictly():
    record = control.make_record(control.UPGRADE, control.SUPERVISOR_SCOPE, member="m1")
    decoded = CONTROL.decode(json.dumps(record).encode())
    assert decoded["verb"] == "upgrade" and decoded["member"] == "m1"
    state = control.ControlState()
    prefix = "/etcdvisor/c/control/"
    kv_records = {"_supervisor": {"upgrade": {**record, "revision": 7}}}
    assert state.update(control.ControlChanged(kv_records, initial=True)) == []  # history
    newer = {"_supervisor": {"upgrade": {**record, "revision": 9}}}
    commands = state.update(control.ControlChanged(newer, initial=False))
    assert [(c.verb, c.role) for c in commands] == [("upgrade", "_supervisor")]
    assert prefix  # the key: control/_supervisor/upgrade
    assert control.control_key(control.ClusterKeys("c"), "_supervisor", "upgrade") == \
        prefix + "_supervisor/upgrade"


def test_build_info_and_upgrades_metrics():
    from etcdvisor import __version__
    from etcdvisor.runtime.metrics import Metrics, NullMetrics

    metrics = Metrics()
    text = metrics.render().decode()
    assert f'etcdvisor_build_info{{version="{__version__}"}} 1.0' in text
    assert "etcdvisor_upgrades_total 0.0" in text
    metrics.upgrades.inc(2)  # a re-executed member: the count it was handed
    assert "etcdvisor_upgrades_total 2.0" in metrics.render().decode()
    NullMetrics().upgrades.inc(2)  # without http: absorbed
