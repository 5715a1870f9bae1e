"""gRPC floor: RSS, CPU and wake-ups of (a) python bare, (b) import grpc+etcd3 protos,
(c) + one channel with one idle watch, (d) + one keepalive/s on a long-lived stream."""
import os, sys, time, subprocess, json
from etcdvisor.testing import EtcdServer

CHILD = r'''
import sys, time, os, threading
stage = sys.argv[1]; url = sys.argv[2]
if stage != "bare":
    from etcdvisor.coord.etcd import _grpc
if stage in ("watch", "keepalive", "backend"):
    from etcdvisor.coord import open_backend
    b = open_backend(url, timeout=5)
    w = b.watch("/x/", "/x0")
    threading.Thread(target=lambda: list(w), daemon=True).start()
    if stage in ("keepalive", "backend"):
        lease = b.lease_grant(10)
        def ka():
            while True:
                b.lease_keepalive(lease.id, timeout=1); time.sleep(1)
        threading.Thread(target=ka, daemon=True).start()
    if stage == "backend":
        for i in range(4):
            w2 = b.watch(f"/y{i}/", f"/y{i}0"); threading.Thread(target=lambda w2=w2: list(w2), daemon=True).start()
print("ready", flush=True)
time.sleep(1000)
'''

def sample(pid):
    tot = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = dict(l.split(":\t") for l in open(f"/proc/{pid}/task/{tid}/status").read().splitlines() if ":\t" in l)
            tot += int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
        except FileNotFoundError:
            pass
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return tot, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), len(os.listdir(f"/proc/{pid}/task"))

secs = float(sys.argv[1]) if len(sys.argv) > 1 else 20
etcd = EtcdServer(name="floor").start()
rows = []
try:
    for stage in ("bare", "import", "watch", "keepalive", "backend"):
        p = subprocess.Popen([sys.executable, "-c", CHILD, stage, etcd.url], stdout=subprocess.PIPE)
        p.stdout.readline(); time.sleep(3)
        w0, c0, _ = sample(p.pid); t0 = time.time(); time.sleep(secs)
        w1, c1, n = sample(p.pid); wall = time.time() - t0
        rss = int(open(f"/proc/{p.pid}/statm").read().split()[1]) * 4096 / 2**20
        rows.append({"stage": stage, "rss_mib": round(rss, 1), "threads": n, "wakeups_per_s": round((w1 - w0) / wall, 1), "cpu_pct": round(100 * (c1 - c0) / wall, 3)})
        print(rows[-1], flush=True)
        p.kill(); p.wait()
finally:
    etcd.cleanup()
print(json.dumps(rows))
