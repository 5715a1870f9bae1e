"""Reaper: orphans of a double fork are reaped; our own children keep their statuses."""

import json
import subprocess
import sys

# Runs in its own process so that pytest itself never becomes a subreaper.
SCRIPT = r"""
import json, os, subprocess, sys, time
from etcdvisor.process.reaper import Reaper, become_subreaper, is_subreaper

become_subreaper()
# A known child that exits first, with a status nobody may steal. It becomes the oldest
# zombie, so a naive peek-first reaper would never see the orphan behind it.
known = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
while os.waitid(os.P_PID, known.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
    time.sleep(0.01)
# A double fork: the middle process exits at once, the grandchild is orphaned to us.
forker = subprocess.Popen([sys.executable, "-c",
    "import os, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    time.sleep(0.3); os._exit(5)\n"
    "print(pid, flush=True)\n"], stdout=subprocess.PIPE)
orphan = int(forker.stdout.readline())
forker_code = forker.wait()
reaper = Reaper(lambda pid: pid in (known.pid, forker.pid))
reaped = []
deadline = time.monotonic() + 4
while time.monotonic() < deadline and orphan not in [pid for pid, _ in reaped]:
    reaped.extend(reaper.reap())
    time.sleep(0.02)
print(json.dumps({
    "subreaper": is_subreaper(),
    "orphan": orphan,
    "reaped": reaped,
    "known_code": known.wait(timeout=2),
    "forker_code": forker_code,
}))
"""


def test_double_forked_orphan_is_reaped_and_known_statuses_survive():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=15)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["subreaper"] is True
    statuses = {pid: status for pid, status in report["reaped"]}
    assert report["orphan"] in statuses
    assert (statuses[report["orphan"]] >> 8) == 5
    assert report["known_code"] == 7  # not stolen (Popen would report 0 if it had been)
    assert report["forker_code"] == 0
