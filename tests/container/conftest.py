"""Fixtures for the container tests: a Docker engine, the image built once per session (and
reused while its build context is unchanged), and containers on the host network that are
always removed.

The engine: ``../shared/tools/docker-engine start`` (or any engine ``docker info`` reaches).
The base image comes from ``ETCDVISOR_TEST_PYTHON_IMAGE`` (default
``local/python:3.11-bookworm``, the stand-in that script builds); it must already be present:
the tests never pull. Without an engine (or without that image) every test here skips with
one line saying why.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcdvisor.testing import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("ETCDVISOR_TEST_PYTHON_IMAGE", "local/python:3.11-bookworm")
REPOSITORY = "etcdvisor-test"
LABEL = "etcdvisor-test"
# what the Dockerfile copies (.dockerignore keeps the rest out): a change here rebuilds
CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "schemas", "src", "examples"]
BUILD_TIMEOUT = 1200.0  # the first build on vfs storage (full layer copies) under load
SESSION_STARTED = int(time.time())
KEEP_IMAGES = 4  # older etcdvisor-test tags are removed after a build (vfs layers are large)


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: "
                             f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result


@functools.cache
def engine_problem() -> str | None:
    """None when an engine answers and the base image is there; else why not (one line)."""
    hint = "start one with ../shared/tools/docker-engine start"
    if shutil.which("docker") is None:
        return f"container tests skipped: no docker client on PATH ({hint})"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return f"container tests skipped: no Docker engine answers (`docker info` timed out; {hint})"
    if info.returncode != 0:
        return f"container tests skipped: no Docker engine answers (`docker info` failed; {hint})"
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        return f"container tests skipped: base image {BASE_IMAGE} is not on the engine ({hint})"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> str:
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    return BASE_IMAGE


def _context_digest(build_args: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(build_args.items())).encode())
    for name in CONTEXT:
        top = ROOT / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _prune_old_images(keep: str) -> None:
    """Disk: the newest KEEP_IMAGES tags stay (removing an older one frees its last layer,
    the code); the Dockerfile's build stage of earlier sessions goes (intermediate images
    labelled etcdvisor.stage=build; a build running elsewhere since we started is spared)."""
    listed = docker("image", "ls", REPOSITORY, "--format", "{{.Tag}} {{.CreatedAt}}", check=False)
    tags = [line.split(" ", 1) for line in listed.stdout.splitlines() if " " in line]
    tags.sort(key=lambda tag: tag[1], reverse=True)
    for tag, _ in tags[KEEP_IMAGES:]:
        if tag != keep:  # one in use by a container stays (docker refuses, which is fine)
            docker("image", "rm", f"{REPOSITORY}:{tag}", check=False)
    docker("image", "prune", "-f", "--filter", "label=etcdvisor.stage=build",
           "--filter", f"until={SESSION_STARTED}", check=False, timeout=300)


def build_image(base: str, embedded: bool) -> str:
    """The image for this build context: reused when one was built from the same context,
    else ``docker build`` (its layer cache keeps the dependency stage across code changes)."""
    build_args = {"PYTHON_IMAGE": base, "EMBEDDED": "1" if embedded else "0"}
    tag = f"{REPOSITORY}:{_context_digest(build_args)}{'-embedded' if embedded else ''}"
    # one build at a time on this machine: the xdist workers that need the image wait for
    # the one building it (four parallel builds on vfs took 75 to 96 s each on 2 cores),
    # and the second image reuses the first one's dependency layers
    with open(os.path.join(tempfile.gettempdir(), "etcdvisor-image-build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(tag, build_args)


def _build_locked(tag: str, build_args: dict[str, str]) -> str:
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    command = ["docker", "build", "--network=host", "--label", f"{LABEL}=1", "-t", tag]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    started = time.monotonic()
    result = subprocess.run([*command, str(ROOT)], capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"docker build ({tag}) failed:\n{(result.stdout + result.stderr)[-4000:]}",
                    pytrace=False)
    print(f"built {tag} in {time.monotonic() - started:.0f} s")
    _prune_old_images(keep=tag.split(":", 1)[1])
    return tag


@pytest.fixture(scope="session")
def image(docker_engine: str) -> str:
    return build_image(docker_engine, embedded=False)


@pytest.fixture(scope="session")
def embedded_image(docker_engine: str) -> str:
    return build_image(docker_engine, embedded=True)


@dataclass
class Container:
    name: str
    member: str
    data: Path
    http_port: int

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def health(self) -> str:
        return self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def host_pid(self) -> int:
        return int(self.inspect("{{.State.Pid}}"))

    def logs(self) -> str:
        result = docker("logs", "--tail", "60", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def read(self, suffix: str) -> str | None:
        try:
            return (self.data / f"{self.member}.{suffix}").read_text().strip()
        except FileNotFoundError:
            return None

    def wait(self, predicate, timeout: float, message: str, alive: bool = True):
        """wait_for, with the container's last log lines in the failure; with ``alive``, a
        container that exits meanwhile fails at once."""
        polls = iter(range(1 << 30))

        def check():
            value = predicate()
            if not value and alive and next(polls) % 10 == 9 and not self.running():
                raise AssertionError(f"container exited while waiting for {message}")
            return value

        try:
            return wait_for(check, timeout=timeout, message=message, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- docker logs {self.name} ---\n{self.logs()}") from None


@pytest.fixture
def run_container(tmp_path_factory) -> Iterator:
    """Factory: ``run_container(image, config_text, member, env={...})`` starts a detached
    container on the host network (its own HTTP port, the config mounted at
    /etc/etcdvisor.yaml, a host directory writable by uid 10001 at /data); removed after."""
    names: list[str] = []

    def start(image: str, config: str, member: str, env: dict[str, str] | None = None,
              data: Path | None = None, files: dict[str, str] | None = None) -> Container:
        if data is None:
            data = tmp_path_factory.mktemp("container-data")
            data.chmod(0o777)  # the container runs as uid 10001
        for filename, text in (files or {}).items():
            (data / filename).write_text(text)
        config_file = data / f"{member}.yaml"
        config_file.write_text(config)
        config_file.chmod(0o644)
        name = f"etcdvisor-test-{member}-{uuid.uuid4().hex[:8]}"
        port = free_port()
        environment = {"ETCDVISOR_MEMBER_ID": member, "ETCDVISOR_HTTP": f"127.0.0.1:{port}",
                       **(env or {})}
        args = ["run", "-d", "--name", name, "--label", f"{LABEL}=1", "--network=host",
                # the image's HEALTHCHECK command, probed every second instead of every 15 s
                "--health-interval=1s", "--health-start-period=60s",
                "-v", f"{config_file}:/etc/etcdvisor.yaml:ro", "-v", f"{data}:/data"]
        for key, value in environment.items():
            args += ["-e", f"{key}={value}"]
        names.append(name)
        docker(*args, image, timeout=120)
        return Container(name=name, member=member, data=data, http_port=port)

    yield start
    for name in names:
        docker("rm", "-f", "-v", name, timeout=120, check=False)
