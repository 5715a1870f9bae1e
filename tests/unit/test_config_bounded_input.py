"""Bounded config input, in process: every hostile file is refused with one line
within a second and a few MiB of memory (the real CLI is driven with the same
files in tests/e2e/test_config_input.py)."""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest

from etcdvisor.config import ConfigError, load
from etcdvisor.config.source import MAX_ALIAS_NODES, MAX_CONFIG_BYTES, read_document

TIME_BOUND = 1.0
MEMORY_BOUND = 16 * 1024 * 1024  # peak Python allocations while refusing one file


def _bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghijk"[: levels - 1]:
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
        previous = name
    return "\n".join(lines) + "\n"


def _write(tmp_path, kind):
    path = tmp_path / f"{kind}.yaml"
    if kind == "alias_bomb":
        path.write_text(_bomb())
    elif kind == "merge_key_bomb":
        path.write_text("a: &a {x: 1, y: 2, z: 3}\n" + "".join(
            f"k{i}: &k{i} {{<<: [*{'a' if i == 0 else f'k{i - 1}'}], w{i}: 1}}\n" for i in range(60))
            + "b: [" + ", ".join(["*k59"] * 2000) + "]\n")
    elif kind == "wide_alias":
        path.write_text("a: &a [" + ", ".join(["1"] * 1_000) + "]\nb: [" + ", ".join(["*a"] * 30) + "]\n")
    elif kind == "recursive_alias":
        path.write_text("roles: &r {a: *r}\n")
    elif kind == "deep_flow":
        path.write_text("cluster: " + "[" * 100_000 + "\n")
    elif kind == "deep_flow_mapping":
        path.write_text("cluster: " + "{a: " * 100_000 + "\n")
    elif kind == "deep_block":
        path.write_text("cluster:\n" + "".join(" " * i + "- \n" for i in range(1, 1200)))
    elif kind == "huge_file":
        with open(path, "wb") as fh:
            fh.write(b"cluster: x\n")
            fh.truncate(8 * 1024**3)
    elif kind == "just_over_limit":
        path.write_text("cluster: x\n#" + "x" * MAX_CONFIG_BYTES + "\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "non_utf8":
        path.write_bytes(b"cluster: caf\xe9\n")
    elif kind == "big_integer":
        path.write_text("cluster: " + "9" * 5000 + "\n")
    elif kind == "bad_timestamp":
        path.write_text("cluster: 2001-13-45\n")
    elif kind == "too_many_values":
        path.write_text("x: [" + ",".join(["1"] * 25_000) + "]\n")  # 50 KiB, under the size limit
    elif kind == "missing":
        pass
    else:
        raise AssertionError(kind)
    return str(path)


KINDS = {
    "alias_bomb": "alias bomb", "merge_key_bomb": "alias bomb", "wide_alias": "alias bomb",
    "recursive_alias": "refers to a collection that contains it",
    "deep_flow": "nest", "deep_flow_mapping": "nest", "deep_block": "nested deeper than 100 levels",
    "huge_file": "the limit is 1024 KiB", "just_over_limit": "the limit is 1024 KiB",
    "fifo": "a FIFO, not a regular file", "directory": "a directory, not a regular file",
    "non_utf8": "not UTF-8", "big_integer": "digits", "bad_timestamp": "invalid YAML",
    "too_many_values": "more than 20000 values",
    "missing": "No such file or directory",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_file_is_refused_fast_in_bounded_memory(tmp_path, kind):
    path = _write(tmp_path, kind)
    # "fast" is the work done: CPU time, which a loaded machine does not stretch (wall time does)
    started = time.process_time()
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    elapsed = time.process_time() - started
    message = str(caught.value)
    assert "\n" not in message and message.startswith(path)
    assert KINDS[kind] in message, message
    assert elapsed < TIME_BOUND, f"{kind}: {elapsed:.2f}s"
    if kind == "too_many_values":
        return  # 20000 small nodes: bounded by MAX_NODES; tracemalloc would take seconds here
    tracemalloc.start()  # a second pass for memory: tracemalloc slows allocation down
    try:
        with pytest.raises(ConfigError):
            load(path, environ={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{kind}: peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_devices_are_refused_without_reading(device):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="character device, not a regular file"):
        read_document(device)
    assert time.perf_counter() - started < TIME_BOUND


def test_ordinary_aliases_and_nesting_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    defaults = "defaults: &defaults {type: sharded, command: [w], stop_timeout: 1s}\n"
    roles = "".join(f"  r{i}: {{<<: *defaults}}\n" for i in range(200))
    nested = "[" * 90 + "]" * 90
    path.write_text(f"x-nested: {nested}\n" + defaults + "roles:\n" + roles)
    document = read_document(str(path))
    assert len(document["roles"]) == 200 and document["roles"]["r7"]["stop_timeout"] == "1s"
    assert MAX_ALIAS_NODES >= 200 * 8 * 10


def test_file_of_exactly_the_limit_is_read(tmp_path):
    path = tmp_path / "limit.yaml"
    head = b"cluster: x\n#"
    path.write_bytes(head + b"x" * (MAX_CONFIG_BYTES - len(head) - 1) + b"\n")
    assert read_document(str(path)) == {"cluster": "x"}
