"""spawn(): command lookup errors, stdin payloads, process group, parent-death signal."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from etcdvisor.process.spawn import ChildSpec, ChildVars, SpawnError, spawn


def _spec(*argv, **kwargs):
    return ChildSpec(name="worker[0]", argv=argv, env=dict(os.environ), **kwargs)


def _gone(pid, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_missing_command_is_one_clear_line():
    spec = ChildSpec(name="worker[0]", argv=("pyhton", "-c", "1"), env={"PATH": "/usr/bin:/bin"})
    with pytest.raises(SpawnError) as info:
        spawn(spec)
    message = str(info.value)
    assert message == "worker[0]: command not found: 'pyhton' (searched PATH=/usr/bin:/bin)"
    assert info.value.permanent


def test_not_executable_file_and_missing_cwd(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(SpawnError, match=r"^worker\[0\]: command not executable: .*permission denied\)$"):
        spawn(_spec(str(script)))
    with pytest.raises(SpawnError, match=r"working directory not found"):
        spawn(_spec(sys.executable, "-c", "1", cwd=str(tmp_path / "missing")))


def test_stdin_payload_with_shell_metacharacters_arrives_byte_for_byte():
    payload = (b"$(touch /tmp/pwned) `id`; rm -rf / | cat > x & 'q' \"dq\" *\n\\\x00"
               + bytes(range(256)) * 300)  # > one pipe buffer, exercises partial writes
    reader = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    proc = spawn(_spec(sys.executable, "-c", reader, stdin_data=payload))
    out, _ = proc.communicate(timeout=10)
    assert out == payload
    assert proc.returncode == 0


def test_without_payload_stdin_is_devnull():
    proc = spawn(_spec(sys.executable, "-c", "import sys; print(len(sys.stdin.buffer.read()))"))
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == b"0"


def test_child_leads_its_own_process_group():
    proc = spawn(_spec(sys.executable, "-c", "import time; time.sleep(30)"), capture_output=False)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        proc.kill()
        proc.wait()


def test_parent_death_signal_kills_the_child_when_the_parent_is_sigkilled():
    parent_code = (
        "import os, sys, time\n"
        "from etcdvisor.process.spawn import ChildSpec, spawn\n"
        "spec = ChildSpec(name='c', argv=(sys.executable, '-c', 'import time; time.sleep(60)'),"
        " env=dict(os.environ))\n"
        "proc = spawn(spec, capture_output=False)\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    child_pid = int(parent.stdout.readline())
    try:
        assert psutil.pid_exists(child_pid)
        parent.kill()
        parent.wait()
        assert _gone(child_pid)
    finally:
        _kill_quietly(child_pid)


def test_spec_repr_hides_env_and_payload_and_spec_is_hashable():
    spec = ChildSpec(name="w", argv=["true"], env={"PASSWORD": "hunter2"}, stdin_data=b"secret")
    assert "hunter2" not in repr(spec) and "secret" not in repr(spec)
    assert spec.argv == ("true",)
    assert hash(spec) == hash(ChildSpec(name="w", argv=("true",), env={}, stdin_data=b"secret"))
    assert spec != ChildSpec(name="w", argv=("true",), env={}, stdin_data=b"secret")


def test_child_vars_render_the_documented_variables_and_win_over_env():
    every = ChildVars(role="worker", member_id="m1", cluster="prod", endpoints="http://e:2379", index=3,
                      count=8, epoch=12, leader=True, leader_token=7, scheduled_time="2026-05-01T03:00:00+00:00",
                      manual=True, topic="jobs", message_id=42, attempt=2)
    assert every.environ() == {
        "ROLE": "worker", "MEMBER_ID": "m1", "CLUSTER": "prod", "ETCDVISOR_ENDPOINTS": "http://e:2379",
        "ETCDVISOR_CLUSTER": "prod", "ETCDVISOR_MEMBER_ID": "m1", "INDEX": "3", "COUNT": "8", "EPOCH": "12",
        "LEADER": "1", "LEADER_TOKEN": "7", "SCHEDULED_TIME": "2026-05-01T03:00:00+00:00", "MANUAL": "1",
        "TOPIC": "jobs", "MESSAGE_ID": "42", "ATTEMPT": "2"}
    per_member = ChildVars(shards=(42, 3, 17), count=64, epoch=5)
    assert per_member.environ() == {"SHARDS": "3,17,42", "COUNT": "64", "EPOCH": "5"}
    assert (per_member.indexes, per_member.first_index) == (frozenset({3, 17, 42}), 3)
    assert ChildVars(leader=False, leader_member="").environ() == {"LEADER": "0", "LEADER_MEMBER": ""}
    assert ChildVars().environ() == {} and ChildVars().first_index == 0
    # the child sees env with the vars rendered over it (an inherited INDEX does not win)
    spec = ChildSpec(name="w", argv=(sys.executable, "-c", "import os; print(os.environ['INDEX'], os.environ['X'])"),
                     env={**os.environ, "INDEX": "99", "X": "y"}, vars=ChildVars(index=3))
    proc = spawn(spec)
    out, _ = proc.communicate(timeout=10)
    assert out.split() == [b"3", b"y"]
    assert spec != ChildSpec(name="w", argv=spec.argv, env=spec.env, vars=ChildVars(index=4))


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def test_payload_larger_than_the_pipe_arrives_whole_and_a_small_one_needs_no_thread():
    import threading
    reader = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    big = os.urandom(1 << 20) + b"\0$(rm -rf /)"  # far more than a pipe holds
    proc = spawn(_spec(sys.executable, "-c", reader, stdin_data=big))
    out, _ = proc.communicate(timeout=30)
    assert out == big
    before = threading.active_count()
    proc = spawn(_spec(sys.executable, "-c", reader, stdin_data=b"small"))
    assert threading.active_count() == before  # written at once, pipe closed
    out, _ = proc.communicate(timeout=30)
    assert out == b"small"
