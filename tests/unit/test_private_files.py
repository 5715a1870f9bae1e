"""Issue 16, section 5: no file written outside what the user chose, and
nothing left behind (runtime/private_files.py, the watchdog's ``D``).

* ``peers.file`` escapes (``..``, an absolute path elsewhere) are refused by
  ``validate`` with one line naming the key; a symlink that leads out is
  refused when the file is written, before any directory is made outside.
* The children's config-file directory is named after its owner; ``run``
  removes this member's directories whose owner is dead, never a live one's
  or another member's; the watchdog helper removes it when the supervisor
  is SIGKILLed, and leaves it on a clean stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from etcdvisor.config import ConfigError, load
from etcdvisor.process.watchdog import Watchdog
from etcdvisor.runtime.private_files import (
    PathEscape,
    make_config_dir,
    process_start,
    remove_stale_config_dirs,
    write_confined,
)


def gateway(file: str, cwd: str | None = None) -> dict:
    role = {"type": "singleton", "command": ["true"], "peers": {"api": {"file": file}}}
    return {**role, "cwd": cwd} if cwd else role


def write_config(tmp_path, role: dict):
    path = tmp_path / "c.yaml"
    doc = {"cluster": "c", "etcd": {"endpoints": "memory://x"}, "roles": {"gw": role}}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("file, why", [
    ("../../x", "is outside the role's working directory"),
    ("peers/../../x", "is outside the role's working directory"),
    ("/tmp/elsewhere/peers.json", "absolute path '/tmp/elsewhere/peers.json' is outside"),
    (".", "names a directory"),
    ("peers/", "names a directory"),
])
def test_validate_refuses_a_peers_file_outside_the_cwd(tmp_path, file, why):
    path = write_config(tmp_path, gateway(file))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert len(info.value.errors) == 1, info.value.errors
    line = info.value.errors[0]
    assert line.startswith(f"{path}: roles.gw.peers.api.file: ") and why in line, line
    done = subprocess.run([sys.executable, "-m", "etcdvisor.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    assert "roles.gw.peers.api.file" in done.stderr + done.stdout


def test_validate_accepts_paths_inside_the_cwd(tmp_path):
    inside = tmp_path / "app" / "peers" / "api.json"
    for file, cwd in (("peers/api.json", "app"), ("./a/../api.json", "app"), (str(inside), "app"),
                      ("api.json", None)):
        config = load(write_config(tmp_path, gateway(file, cwd)))
        assert config.role("gw").peers["api"].file == file
    # a cwd elsewhere is how a file goes elsewhere
    config = load(write_config(tmp_path, gateway("api.json", "/var/tmp")))
    assert config.role_cwd(config.role("gw")) == "/var/tmp"


def test_write_refuses_a_symlink_that_leads_out_and_makes_no_directory_there(tmp_path):
    root, outside = tmp_path / "cwd", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "peers").symlink_to(outside)
    with pytest.raises(PathEscape) as info:
        write_confined(str(root), "peers/new/api.json", b"[]\n", key="roles.gw.peers.api.file")
    assert str(info.value).startswith("roles.gw.peers.api.file: 'peers/new/api.json' resolves to ")
    assert "outside the role's working directory" in str(info.value)
    assert list(outside.iterdir()) == []  # not even the directory 'new'
    with pytest.raises(PathEscape):
        write_confined(str(root), "../x.json", b"[]\n", key="k")
    assert not (tmp_path / "x.json").exists()


def test_write_inside_and_over_a_symlinked_file_replaces_the_link(tmp_path):
    root = tmp_path / "cwd"
    root.mkdir()
    write_confined(str(root), "peers/api.json", b"[1]\n", key="k")
    assert (root / "peers" / "api.json").read_bytes() == b"[1]\n"
    secret = tmp_path / "secret"
    secret.write_text("keep")
    (root / "link.json").symlink_to(secret)
    write_confined(str(root), "link.json", b"[2]\n", key="k")
    assert secret.read_text() == "keep" and not (root / "link.json").is_symlink()
    # the cwd itself may be a symlink: what counts is where it resolves
    (tmp_path / "alias").symlink_to(root)
    write_confined(str(tmp_path / "alias"), "peers/api.json", b"[3]\n", key="k")
    assert (root / "peers" / "api.json").read_bytes() == b"[3]\n"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_config_dirs_of_a_dead_owner_are_removed_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    mine = make_config_dir("c", "m0")  # owned by this live process
    assert os.path.dirname(mine) == str(tmp_path) and os.stat(mine).st_mode & 0o777 == 0o700
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tag = os.path.basename(mine).split(f"{os.getpid()}.")[0]
        live = tmp_path / f"{tag}{sleeper.pid}.{process_start(sleeper.pid)}-abc"
        stale = tmp_path / f"{tag}{dead_pid()}.123-def"
        reused = tmp_path / f"{tag}{sleeper.pid}.1-ghi"  # that pid, but another process then
        other_member = tmp_path / f"{make_config_dir('c', 'm1').rsplit('/', 1)[1]}"
        other_cluster = make_config_dir("d", "m0")
        for path in (live, stale, reused):
            path.mkdir()
            (path / "x.json").write_text("{}")
        removed = remove_stale_config_dirs("c", "m0")
        assert sorted(removed) == sorted([str(stale), str(reused)])
        assert not stale.exists() and not reused.exists()
        assert live.exists() and os.path.isdir(mine) and other_member.exists() and os.path.isdir(other_cluster)
    finally:
        sleeper.kill()
        sleeper.wait()
    # a symlink with an owner's name is never followed
    target = tmp_path / "precious"
    target.mkdir()
    (tmp_path / f"{tag}{dead_pid()}.5-lnk").symlink_to(target)
    remove_stale_config_dirs("c", "m0")
    assert target.exists()


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# A supervisor-like parent: its watchdog is told to remove a directory, then it idles.
OWNER = """
import sys, time
from etcdvisor.process.watchdog import Watchdog
watchdog = Watchdog(batched=True)
watchdog.start()
watchdog.remove_on_exit(sys.argv[1])
print(watchdog.pid, flush=True)
if sys.argv[2] == "stop":
    watchdog.stop()
    print("stopped", flush=True)
time.sleep(60)
"""


def test_the_watchdog_removes_the_directory_when_its_supervisor_is_killed(tmp_path):
    private = tmp_path / "etcdvisor-config-x"
    (private / "sub").mkdir(parents=True)
    (private / "child.json").write_text('{"SECRET": "s"}')
    outside = tmp_path / "outside"
    outside.mkdir()
    (private / "sub" / "link").symlink_to(outside)
    parent = subprocess.Popen([sys.executable, "-c", OWNER, str(private), "idle"], stdout=subprocess.PIPE)
    try:
        helper = int(parent.stdout.readline())
        assert private.exists()  # the D line is in the pipe: the helper reads it before the EOF
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not private.exists(), 5), "the config directory outlived its supervisor"
        assert outside.exists()  # a symlink inside is removed, not followed
        assert wait_until(lambda: not _alive(helper), 5)
    finally:
        parent.kill()
        parent.wait()


def test_a_clean_stop_of_the_watchdog_leaves_the_directory_to_the_supervisor(tmp_path):
    private = tmp_path / "kept"
    private.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", OWNER, str(private), "stop"], stdout=subprocess.PIPE)
    try:
        helper = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == b"stopped"
        assert wait_until(lambda: not _alive(helper), 5)
        assert private.exists()
    finally:
        parent.kill()
        parent.wait()


def test_directories_are_replayed_to_a_restarted_helper():
    watchdog = Watchdog()
    watchdog._cgroup_base = "/sys/fs/cgroup/x"
    watchdog.remove_on_exit("/tmp/etcdvisor-config-a")  # no helper yet: kept for the replay
    assert watchdog._replay() == "B /sys/fs/cgroup/x\nD /tmp/etcdvisor-config-a\n"
    with pytest.raises(ValueError):
        watchdog.remove_on_exit("/tmp/a\nQ")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_the_helper_never_follows_a_symlinked_directory(tmp_path):
    from etcdvisor.process import watchdog_main

    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("x")
    (tmp_path / "link").symlink_to(target)
    watchdog_main._remove_tree(str(tmp_path / "link"))
    assert (target / "keep").exists()
