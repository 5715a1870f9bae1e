"""``supervisor health`` against things that are not an etcdvisor member (issue 16,
class 1): one line on stdout, exit 1, never a traceback, bounded in time and in
bytes read. The fake servers are tiny socket servers on 127.0.0.1 in this process."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from etcdvisor.cli import main
from etcdvisor.runtime.health import Health
from etcdvisor.runtime.http import OpsServer
from etcdvisor.runtime.metrics import Metrics


class FakeServer:
    """Accepts connections on 127.0.0.1 and hands each to ``behave(conn)``."""

    def __init__(self, behave):
        self.behave = behave
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.behave(conn, self.stopped)
        except OSError:
            pass

    def close(self):
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()
        for conn in self.conns:
            conn.close()


def read_request(conn):
    conn.settimeout(2)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def banner(conn, stopped):
    conn.sendall(b"SSH-2.0-OpenSSH_9.6p1 Debian\r\n")
    stopped.wait(10)


def headers_then_silence(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n")
    stopped.wait(10)


def ok_without_our_server_header(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.0 200 OK\r\nServer: nginx\r\n\r\nok\n")
    conn.close()


def bare_200(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    conn.close()


def binary(conn, stopped):
    conn.sendall(bytes(range(256)) * 64)
    stopped.wait(10)


def reset(conn, stopped):
    read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def close_at_once(conn, stopped):
    conn.close()


def silence(conn, stopped):
    stopped.wait(10)


def endless_headers(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nServer: etcdvisor\r\n")
    while not stopped.is_set():
        conn.sendall(b"X-More: " + b"a" * 1000 + b"\r\n")


def huge_body(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nServer: etcdvisor\r\nContent-Length: 99999999999\r\n\r\nok\n")
    stopped.wait(10)


def endless_body(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nServer: etcdvisor\r\n\r\n")
    while not stopped.is_set():
        conn.sendall(b"ok\n" * 1000)


def control_characters(conn, stopped):
    read_request(conn)
    conn.sendall(b"HTTP/1.1 503 Nope\r\nServer: etcdvisor\r\nContent-Length: 12\r\n\r\nbad\r\n\x1b[2Jx\x00y")
    conn.close()


@pytest.mark.parametrize("behave", [banner, headers_then_silence, ok_without_our_server_header, bare_200,
                                    binary, reset, close_at_once, silence, endless_headers, huge_body,
                                    endless_body, control_characters])
@pytest.mark.slow  # seconds of real time: left out of the fast part (-m "not slow")
def test_health_against_something_else_is_one_line_and_exit_1(behave, capsys):
    fake = FakeServer(behave)
    try:
        started = time.monotonic()
        code = main(["health", "--http", f"127.0.0.1:{fake.port}", "--timeout", "1.5"])
        elapsed = time.monotonic() - started
    finally:
        fake.close()
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert err == "" and out.count("\n") == 1 and out.startswith("unhealthy: /healthz: "), (out, err)
    assert out.isprintable() or out[:-1].isprintable(), repr(out)
    assert elapsed < 1.5 + 1.0, elapsed


def test_nothing_listening_is_one_line_and_exit_1(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        assert main(["health", "--http", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    out, _ = capsys.readouterr()
    assert out.startswith("unhealthy: /healthz: no answer from 127.0.0.1:") and out.count("\n") == 1, out


def test_health_of_a_real_member_and_its_503(capsys):
    health = Health()
    health.turn(health.clock(), health.clock() + 3600)
    server = OpsServer(("127.0.0.1", 0), Metrics(), health).start()
    try:
        assert main(["health", "--live", "--http", f"127.0.0.1:{server.port}"]) == 0
        assert capsys.readouterr().out == "ok: alive\n"
        assert main(["health", "--http", f"127.0.0.1:{server.port}"]) == 1
        assert capsys.readouterr().out == "unhealthy: /readyz: 503 not joined the cluster yet\n"
        health.joined = True
        health.lease_alive_sent = health.clock
        assert main(["health", "--http", f":{server.port}"]) == 0
        assert capsys.readouterr().out == "ok: alive and ready\n"
    finally:
        server.stop()


def test_bad_timeout_is_a_usage_error(capsys):
    assert main(["health", "--http", "127.0.0.1:1", "--timeout", "0"]) == 2
    assert main(["health", "--http", "127.0.0.1:1", "--timeout", "nan"]) == 2


def test_the_cli_process_prints_no_traceback_against_binary_garbage():
    fake = FakeServer(binary)
    try:
        done = subprocess.run([sys.executable, "-m", "etcdvisor", "health", "--http", f"127.0.0.1:{fake.port}",
                               "--timeout", "2"], capture_output=True, timeout=30,
                              env=dict(os.environ, ETCDVISOR_HTTP=""))
    finally:
        fake.close()
    assert done.returncode == 1 and done.stderr == b"", done
    assert done.stdout.count(b"\n") == 1 and b"not an etcdvisor member" in done.stdout, done.stdout
