"""Start one child process from a ``ChildSpec``.

Guarantees of ``spawn()``:

- the child's environment is ``spec.environ()``: ``spec.env`` plus the variables the
  supervisor sets (``spec.vars``: ROLE, INDEX, COUNT, LEADER_TOKEN...), rendered here
  and nowhere else;
- argv is executed directly (never through a shell); argv[0] is looked up on the
  ``PATH`` of ``spec.environ()`` (the child's environment, as execvpe would), relative paths
  containing ``/`` are resolved against ``spec.cwd``;
- a missing / non-executable command or working directory raises ``SpawnError`` with one
  line such as ``worker[0]: command not found: 'pyhton' (searched PATH=/usr/bin:/bin)``
  and ``permanent=True`` (retrying cannot help); a transient failure (fork: EAGAIN,
  ENOMEM) raises ``SpawnError`` with ``permanent=False``;
- the child leads its own process group (pgid == pid), so a signal to the group reaches
  its descendants;
- ``extra_env`` (the tracking marker ``ETCDVISOR_CHILD_TAG``) is added to ``spec.environ()``;
- with ``parent_death=True`` (the default, for callers without a watchdog) the child
  gets a parent-death signal (PR_SET_PDEATHSIG = SIGKILL, set in a ``preexec_fn``) and an
  empty signal mask. Linux delivers it when the *thread* that forked exits, so call
  ``spawn`` from a long-lived thread;
- with ``parent_death=True`` and ``cgroup_procs``, the same hook first moves the child
  into its cgroup leaf, before exec;
- with ``parent_death=False`` (the process manager for children that are not lease-bound,
  e.g. topic runs; its watchdog helper replaces the signal) there is no ``preexec_fn``:
  the process group is set by CPython's C code (``process_group=0``), so ``subprocess`` uses ``vfork`` (measured in
  ``bench/spawn_cost.py``). If the supervisor dies, even by SIGKILL, the watchdog sees
  its pipe close and kills every group, the cgroups and every marked process
  (docs/safety.md, rule 4), which the parent-death signal never did for grandchildren.
  The signal mask is the spawning thread's (the supervisor blocks none); exec resets
  handlers and ``subprocess`` restores SIGPIPE/SIGXFSZ;
- stdin is /dev/null, or ``spec.stdin_data`` written at once without blocking when the
  pipe takes it all, else by a short-lived helper thread, and then closed (a child that
  exits without reading it is fine: EPIPE is ignored).
  Payloads never go through argv or a shell.

Limits: signals the supervisor *ignores* (SIG_IGN) stay ignored in children, as with
any exec; the supervisor ignores none. A ``preexec_fn`` forces the fork path.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from etcdvisor.process._linux import PR_SET_PDEATHSIG, _prctl
from etcdvisor.process.logfile import LogFileSpec


class SpawnError(Exception):
    """A child could not be started. ``str()`` is one line, prefixed with the child name.

    ``permanent`` is True when retrying cannot help (missing command, not executable,
    missing working directory): the caller should mark the role failed, not crash-loop.
    """

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class ChildVars:
    """The variables the supervisor sets for one child, as typed parts (the list is in
    docs/config-reference.md, ``roles``). Code reads these fields, never the rendered
    strings; :meth:`environ` renders them, only when a child is spawned. None (False
    for ``manual``) leaves a variable out.

    ``role``, ``member_id``, ``cluster``: ROLE, MEMBER_ID, CLUSTER and their
    ``ETCDVISOR_`` twins (with ``endpoints``: ETCDVISOR_ENDPOINTS); sharded children:
    ``index``/``shards`` (SHARDS="3,17,42", ascending), ``count``, ``epoch``; leaders:
    ``leader`` (LEADER=1, a standby LEADER=0 with ``leader_member``), ``leader_token``;
    cron runs ``scheduled_time`` and ``manual`` (MANUAL=1); topic runs ``topic``,
    ``message_id``, ``attempt``.
    """

    role: str | None = None
    member_id: str | None = None
    cluster: str | None = None
    endpoints: str | None = None
    index: int | None = None
    shards: tuple[int, ...] | None = None
    count: int | None = None
    epoch: int | None = None
    leader: bool | None = None
    leader_token: int | None = None
    leader_member: str | None = None
    scheduled_time: str | None = None
    manual: bool = False
    topic: str | None = None
    message_id: int | None = None
    attempt: int | None = None

    def __post_init__(self) -> None:
        if self.shards is not None:
            object.__setattr__(self, "shards", tuple(sorted(self.shards)))

    @property
    def indexes(self) -> frozenset[int]:
        """The INDEX, or the SHARDS, this child covers (empty for other roles)."""
        found = set(self.shards or ())
        if self.index is not None:
            found.add(self.index)
        return frozenset(found)

    @property
    def first_index(self) -> int:
        """INDEX, else the lowest of SHARDS, else 0 (a probe's ``{index}``)."""
        if self.index is not None:
            return self.index
        return self.shards[0] if self.shards else 0

    def environ(self) -> dict[str, str]:
        """The variables as the child sees them (names as docs/config-reference.md lists)."""
        env: dict[str, str] = {}
        if self.role is not None:
            env["ROLE"] = self.role
        if self.member_id is not None:
            env["MEMBER_ID"] = self.member_id
        if self.cluster is not None:
            env["CLUSTER"] = self.cluster
        if self.endpoints is not None:
            env["ETCDVISOR_ENDPOINTS"] = self.endpoints
        if self.cluster is not None:
            env["ETCDVISOR_CLUSTER"] = self.cluster
        if self.member_id is not None:
            env["ETCDVISOR_MEMBER_ID"] = self.member_id
        if self.index is not None:
            env["INDEX"] = str(self.index)
        if self.shards is not None:
            env["SHARDS"] = ",".join(str(shard) for shard in self.shards)
        if self.count is not None:
            env["COUNT"] = str(self.count)
        if self.epoch is not None:
            env["EPOCH"] = str(self.epoch)
        if self.leader is not None:
            env["LEADER"] = "1" if self.leader else "0"
        if self.leader_token is not None:
            env["LEADER_TOKEN"] = str(self.leader_token)
        if self.leader_member is not None:
            env["LEADER_MEMBER"] = self.leader_member
        if self.scheduled_time is not None:
            env["SCHEDULED_TIME"] = self.scheduled_time
        if self.manual:
            env["MANUAL"] = "1"
        if self.topic is not None:
            env["TOPIC"] = self.topic
        if self.message_id is not None:
            env["MESSAGE_ID"] = str(self.message_id)
        if self.attempt is not None:
            env["ATTEMPT"] = str(self.attempt)
        return env


@dataclass(frozen=True)
class ChildSpec:
    """Everything needed to start one child. Immutable; compared by value.

    ``env`` is the environment besides the variables the supervisor sets, which
    ``vars`` carries typed; the child gets ``environ()``, both together (``vars`` win;
    nothing is inherited implicitly). ``env`` is copied on construction, excluded from
    the hash and from ``repr`` (it may hold secrets), as is ``stdin_data``.
    ``stop_timeout`` is the grace period between ``stop_signal`` and SIGKILL.
    ``lease_bound`` marks a child whose right to run depends on the lease.
    ``stdout_file``/``stderr_file``: the file a stream goes to (None: the supervisor's own).
    ``memory_max``: the child's cgroup leaf gets this ``memory.max`` where the memory
    controller is on (``health.memory``; the supervisor samples RSS as well).
    """

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(repr=False, hash=False)
    cwd: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    stdin_data: bytes | None = field(default=None, repr=False)
    lease_bound: bool = False
    stdout_file: LogFileSpec | None = None  # None: the supervisor's stdout (process/output.py)
    stderr_file: LogFileSpec | None = None
    memory_max: int | None = None  # bytes: the cgroup leaf's memory.max, where there is one (health.memory)
    vars: ChildVars = field(default_factory=ChildVars)  # ROLE, INDEX, COUNT, LEADER_TOKEN... typed

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", dict(self.env))
        if not self.argv or not all(isinstance(arg, str) for arg in self.argv):
            raise ValueError(f"{self.name}: argv must be a non-empty tuple of str")
        if self.stop_timeout < 0:
            raise ValueError(f"{self.name}: stop_timeout must be >= 0")
        if self.stdin_data is not None and not isinstance(self.stdin_data, bytes):
            raise TypeError(f"{self.name}: stdin_data must be bytes or None")

    def environ(self) -> dict[str, str]:
        """The child's complete environment: ``env`` with the ``vars`` rendered over it."""
        return {**self.env, **self.vars.environ()}


def resolve_command(spec: ChildSpec) -> str:
    """Return the path that will be executed for ``spec.argv[0]`` or raise ``SpawnError``."""
    command = spec.argv[0]
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise SpawnError(f"{spec.name}: working directory not found: {spec.cwd!r}")
    if os.sep in command:
        path = command
        if not os.path.isabs(path) and spec.cwd is not None:
            path = os.path.join(spec.cwd, path)
        if not os.path.exists(path):
            raise SpawnError(f"{spec.name}: command not found: {command!r}")
        _check_executable(spec.name, command, path)
        return path
    search = os.pathsep.join(os.get_exec_path(spec.environ()))
    found = shutil.which(command, path=search)
    if found is None:
        for directory in search.split(os.pathsep):
            candidate = os.path.join(directory or ".", command)
            if os.path.exists(candidate):
                _check_executable(spec.name, command, candidate)
        raise SpawnError(f"{spec.name}: command not found: {command!r} (searched PATH={search})")
    return found


def _check_executable(name: str, command: str, path: str) -> None:
    if os.path.isdir(path):
        raise SpawnError(f"{name}: command is a directory: {command!r} ({path})")
    if not os.access(path, os.X_OK):
        raise SpawnError(f"{name}: command not executable: {command!r} ({path}: permission denied)")


def _child_setup(parent_pid: int, cgroup_procs: str | None) -> Callable[[], None]:
    """Return the post-fork hook: move into the child's cgroup leaf (best effort: the
    supervisor moves it again after the spawn), parent-death signal, then check the
    parent still lives."""

    def setup() -> None:
        if cgroup_procs is not None:
            try:
                fd = os.open(cgroup_procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")  # "0": the writing process itself
                finally:
                    os.close(fd)
            except OSError:
                pass
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            # The parent died between fork and prctl: the signal will never come.
            os._exit(127)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())

    return setup


def spawn(spec: ChildSpec, *, capture_output: bool = True,
          extra_env: dict[str, str] | None = None,
          parent_death: bool = True, cgroup_procs: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``spec`` and return its ``Popen`` (stdout/stderr are unbuffered pipes when
    ``capture_output``, else inherited). Raises ``SpawnError``; never blocks on the child.

    With ``stdin_data`` the returned ``proc.stdin`` is None: the feeder thread owns the
    pipe. ``cgroup_procs`` (the ``cgroup.procs`` file of the child's leaf; fork path
    only, i.e. with ``parent_death``) makes the child move itself there before exec, so
    nothing it forks starts outside its cgroup.
    """
    executable = resolve_command(spec)
    output = subprocess.PIPE if capture_output else None
    try:
        proc = subprocess.Popen(
            list(spec.argv),
            executable=executable,
            env={**spec.environ(), **(extra_env or {})},
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL if spec.stdin_data is None else subprocess.PIPE,
            stdout=output,
            stderr=output,
            bufsize=0,
            close_fds=True,
            process_group=0,
            # only without a watchdog: prctl + sigmask, async-signal-safe enough
            preexec_fn=_child_setup(os.getpid(), cgroup_procs) if parent_death else None,  # noqa: PLW1509
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as exc:
        raise SpawnError(f"{spec.name}: cannot execute {spec.argv[0]!r}: {exc.strerror}") from None
    except OSError as exc:
        permanent = exc.errno in (errno.ENOEXEC, errno.ELOOP, errno.ENAMETOOLONG, errno.E2BIG)
        raise SpawnError(f"{spec.name}: spawn failed: {exc.strerror or exc}",
                         permanent=permanent) from None
    except subprocess.SubprocessError as exc:
        raise SpawnError(f"{spec.name}: spawn failed: {exc}", permanent=False) from None
    if spec.stdin_data is not None:
        # Whoever feeds owns the pipe: hide it from Popen so that communicate(), wait()
        # or __exit__ can never close it under the feeder's feet.
        stdin_pipe, proc.stdin = proc.stdin, None
        assert stdin_pipe is not None  # stdin=PIPE
        rest = _write_what_fits(stdin_pipe, spec.stdin_data)
        if rest is not None:
            feeder = threading.Thread(target=_feed_stdin, args=(stdin_pipe, rest),
                                      name=f"stdin:{spec.name}", daemon=True)
            feeder.start()
    return proc


def _write_what_fits(pipe: IO[bytes], data: bytes) -> memoryview | None:
    """Write without blocking what the pipe takes now (a payload up to the pipe's
    capacity, 64 KiB by default, goes at once and needs no thread: starting one costs
    ~0.5 ms per child). Close the pipe when done; return the rest, or None."""
    view = memoryview(data)
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BlockingIOError:
        os.set_blocking(fd, True)
        return view
    except OSError:
        view = view[:0]  # EPIPE: the child is gone or closed stdin
    try:
        pipe.close()
    except OSError:
        pass
    return None


def _feed_stdin(pipe: IO[bytes], data: bytes | memoryview) -> None:
    """Write ``data`` fully (unbuffered pipes may accept partial writes), then close."""
    view = memoryview(data)
    try:
        while view:
            written = pipe.write(view)
            view = view[written:]
    except OSError:
        pass  # EPIPE: the child exited or closed stdin without reading everything
    finally:
        try:
            pipe.close()
        except OSError:
            pass
