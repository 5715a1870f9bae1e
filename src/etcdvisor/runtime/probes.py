"""Running one probe of one child, off the decision loop.

``http``, ``tcp`` and the ``memory`` sample run on a small thread pool (at most
``POOL_SIZE`` at once); ``exec`` probes are process-layer children
(:class:`~etcdvisor.process.slot.Slot` with ``restart: never``): their own process
group, the child's environment and cwd, a marker and a cgroup leaf like any child,
so whatever a probe spawns is tracked and killed with it (docs/safety.md, rule 4).
The loop only forks them (as it forks children) and is told of their exit by
SIGCHLD; nothing here waits on the loop thread. Every outcome comes back as one
:class:`ProbeDone` on the inbox.

Contract of each kind: ``http`` GET, success on a 2xx or 3xx status (redirects are
not followed; no proxy; an https certificate is not verified, as Kubernetes does);
``tcp`` a connect within ``timeout``; ``exec`` exit status 0 within ``timeout`` (then
the probe's group and tree get SIGKILL); ``memory`` the resident set of the child's
process tree (psutil) at most the limit.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..process.manager import ProcessManager
from ..process.slot import Exited, RestartPolicy, Slot, SlotEvent, SpawnFailed, Started, Stopped
from ..process.spawn import ChildSpec

log = logging.getLogger("etcdvisor")

POOL_SIZE = 8
MESSAGE_MAX = 200  # characters of a failure message kept for status


@dataclass(frozen=True)
class ProbeDone:
    """The outcome of one probe run (an inbox event)."""

    slot: str     # the child's slot name (role/key)
    tag: str      # the child run it probed (ChildProcess.tag)
    probe: str    # startup | readiness | liveness | memory
    ok: bool
    message: str = ""


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MESSAGE_MAX else line[:MESSAGE_MAX - 3] + "..."


def check_http(url: str, timeout: float) -> tuple[bool, str]:
    """GET ``url``: (True, "HTTP 200") on 2xx/3xx, (False, why) otherwise."""
    import ssl  # only members with an http probe pay for the HTTP client
    import urllib.error
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_args: object, **_kwargs: object) -> None:
            return None  # a 3xx is an answer, not something to follow

    # as Kubernetes does: no proxy, and an https endpoint's certificate is not verified
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=insecure))
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "etcdvisor-probe"})
    try:
        with opener.open(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
    except (OSError, ValueError) as exc:  # refused, timeout, bad URL
        reason = getattr(exc, "reason", exc)
        return False, one_line(f"GET {url}: {reason}")
    if 200 <= status < 400:
        return True, f"HTTP {status}"
    return False, f"GET {url}: HTTP {status}"


def check_tcp(address: str, timeout: float) -> tuple[bool, str]:
    """Connect to ``HOST:PORT`` within ``timeout``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True, "connected"
    except (OSError, ValueError) as exc:
        return False, one_line(f"connect {address}: {exc}")


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (0 when gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def check_memory(pid: int, limit: int) -> tuple[bool, str]:
    rss = tree_rss(pid)
    if rss > limit:
        return False, f"process tree RSS {rss} bytes is above the limit of {limit} bytes"
    return True, f"RSS {rss} bytes"


class ProbeRunner:
    """Starts probe runs for the loop; their outcomes come back as ``ProbeDone``."""

    def __init__(self, post: Callable[[object], None], manager: ProcessManager | None):
        self.post = post
        self.manager = manager
        self._pool: ThreadPoolExecutor | None = None
        self._execs: dict[Slot, tuple[ProbeDone, float, float]] = {}  # slot -> (run, deadline, timeout)
        self._finished: list[Slot] = []  # exec probe slots to drop once idle
        self._tags: dict[Slot, str] = {}  # exec probe slot -> its run's marker

    def _submit(self, done: ProbeDone, call: Callable[[], tuple[bool, str]]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="etcdvisor-probe")

        def run() -> None:
            try:
                ok, message = call()
            except Exception as exc:  # noqa: BLE001 - a probe's own error is a failure
                ok, message = False, one_line(f"{type(exc).__name__}: {exc}")
            self.post(ProbeDone(done.slot, done.tag, done.probe, ok, message))

        self._pool.submit(run)

    def http(self, done: ProbeDone, url: str, timeout: float) -> None:
        self._submit(done, lambda: check_http(url, timeout))

    def tcp(self, done: ProbeDone, address: str, timeout: float) -> None:
        self._submit(done, lambda: check_tcp(address, timeout))

    def memory(self, done: ProbeDone, pid: int, limit: int) -> None:
        self._submit(done, lambda: check_memory(pid, limit))

    def exec(self, done: ProbeDone, argv: tuple[str, ...], child: ChildSpec, timeout: float,
             now: float) -> None:
        """Start ``argv`` as a tracked process (loop thread: it forks like a child start)."""
        if self.manager is None:
            self.post(ProbeDone(done.slot, done.tag, done.probe, False, "no process manager"))
            return
        spec = ChildSpec(name=f"{done.slot}/{done.probe}-probe", argv=argv, env=child.env, vars=child.vars,
                         cwd=child.cwd, stop_signal=int(signal.SIGKILL), stop_timeout=0.0)
        slot = self.manager.new_slot(spec, RestartPolicy.NEVER, start_retries=0,
                                     on_event=lambda event: self._exec_event(slot, event))
        self._execs[slot] = (done, now + timeout, timeout)

    def _exec_event(self, slot: Slot, event: SlotEvent) -> None:
        entry = self._execs.get(slot)
        if entry is None:
            return
        done, _deadline, timeout = entry
        if isinstance(event, Started):
            if slot.child is not None:
                self._tags[slot] = slot.child.tag
            return
        if isinstance(event, Exited):
            ok = event.code == 0
            outcome = (True, "exit status 0") if ok else (False, f"exit status {event.code}")
        elif isinstance(event, SpawnFailed):
            outcome = (False, one_line(event.message))
        elif isinstance(event, Stopped):
            outcome = (False, f"timed out after {timeout:g}s (killed)")
        else:
            return
        del self._execs[slot]
        tag = self._tags.pop(slot, None)
        if tag is not None and self.manager is not None:
            # whatever the probe left (a daemon) goes now, not at the next census
            self.manager.tracker.kill_tree(tag, None, None)
        slot.set_desired(None)
        self._finished.append(slot)
        self.post(ProbeDone(done.slot, done.tag, done.probe, *outcome))

    def cancel(self, slot_name: str) -> None:
        """The child of ``slot_name`` stops: kill its exec probes now (loop thread)."""
        for slot, (done, _deadline, _timeout) in self._execs.items():
            if done.slot == slot_name and slot.desired is not None:
                slot.set_desired(None)

    def tick(self, now: float) -> None:
        """Kill exec probes past their timeout; drop finished ones (loop thread)."""
        for slot, (_done, deadline, _timeout) in list(self._execs.items()):
            if now >= deadline and slot.desired is not None:
                slot.set_desired(None)  # SIGKILL to the group and its tree (stop_signal KILL)
        if self.manager is not None:
            keep = []
            for slot in self._finished:
                if slot.idle:
                    self.manager.remove_slot(slot)
                else:
                    keep.append(slot)
            self._finished = keep

    def next_deadline(self) -> float | None:
        pending = [deadline for slot, (_d, deadline, _t) in self._execs.items() if slot.desired is not None]
        return min(pending) if pending else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
