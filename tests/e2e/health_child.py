"""A child for health tests: serves HTTP, speaks sd_notify (its own datagram
client, as a library would), hangs itself with SIGSTOP when asked.

Environment: WORK_RECORD (file: JSON lines start/hang/stop, as examples/worker.py
writes them), HC_PORT (serve GET on
this port: 200 for every path), HC_NOTIFY_AFTER (seconds, then READY=1 and
STATUS=serving), HC_WATCHDOG_EVERY (seconds between WATCHDOG=1), HC_HANG_AFTER
(seconds, then SIGSTOP itself, only if HC_HANG_ONCE names a file that does not
exist yet: it is created, so the replacement runs normally), HC_NEVER_READY=1
(never send READY=1), HC_ALLOCATE_MB (hold this much resident memory), HC_BACKLOG (listen backlog, default 16).
"""

import http.server
import json
import os
import signal
import socket
import threading
import time


def notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args):
        pass


FIELDS = ("ROLE", "MEMBER_ID", "INDEX", "COUNT", "EPOCH", "SHARDS", "LEADER", "LEADER_TOKEN")


def record(event: str) -> None:
    path = os.environ.get("WORK_RECORD")
    if path:
        entry = {"event": event, "pid": os.getpid(), "t": time.time(),
                 **{k.lower(): os.environ.get(k) for k in FIELDS}}
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def main() -> None:
    env = os.environ
    record("start")
    if env.get("HC_PORT"):
        http.server.ThreadingHTTPServer.request_queue_size = int(env.get("HC_BACKLOG") or 16)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(env["HC_PORT"])), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    ready_at = started + float(env.get("HC_NOTIFY_AFTER", "0"))
    hang_at = started + float(env["HC_HANG_AFTER"]) if env.get("HC_HANG_AFTER") else None
    if hang_at is not None and os.path.exists(env.get("HC_HANG_ONCE", "")):
        hang_at = None
    every = float(env.get("HC_WATCHDOG_EVERY", "0"))
    ballast = bytearray(int(float(env.get("HC_ALLOCATE_MB", "0")) * 1024 * 1024))
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: resident, not just reserved
    next_dog = started
    ready_sent = env.get("HC_NEVER_READY") == "1"
    while not stop.is_set():
        now = time.monotonic()
        if not ready_sent and now >= ready_at:
            notify("READY=1\nSTATUS=serving")
            ready_sent = True
        if every and now >= next_dog:
            notify("WATCHDOG=1")
            next_dog = now + every
        if hang_at is not None and now >= hang_at:
            open(env["HC_HANG_ONCE"], "w").close()
            record("hang")
            os.kill(os.getpid(), signal.SIGSTOP)
            hang_at = None
        stop.wait(0.05)
    notify("STOPPING=1")
    record("stop")


if __name__ == "__main__":
    main()
