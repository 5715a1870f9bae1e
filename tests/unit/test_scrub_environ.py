"""The password variable leaves the exec-time environment block too: /proc/<pid>/environ of
the supervisor, and of a child between its fork and its exec (the fork path runs a preexec
hook, long enough for a sampler to see it: CI caught the password there)."""

import os
import subprocess
import sys

SCRIPT = r"""
import os, sys, time
from etcdvisor.process._linux import scrub_initial_environ
os.environ.pop("ETCDVISOR_TEST_SECRET")
assert scrub_initial_environ("ETCDVISOR_TEST_SECRET")
assert not scrub_initial_environ("ETCDVISOR_TEST_SECRET")  # nothing left to blank
pid = os.fork()
if pid == 0:  # a child before exec: the parent's image, environment block included
    time.sleep(5)
    os._exit(0)
with open(f"/proc/{pid}/environ", "rb") as fh:
    child = fh.read()
with open("/proc/self/environ", "rb") as fh:
    own = fh.read()
os.kill(pid, 9)
os.waitpid(pid, 0)
print("LEAK" if b"hunter2-secret" in child + own else "CLEAN", "PATH=" in own.decode(errors="replace"))
"""


def test_scrubbed_variable_is_gone_from_own_and_forked_environ():
    env = dict(os.environ, ETCDVISOR_TEST_SECRET="hunter2-secret")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CLEAN", "True"]  # the rest of the block is untouched
