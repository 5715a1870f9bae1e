"""Every shell example in README.md and docs/*.md runs as the doc shows it.

The convention (CONTRIBUTING.md, "Shell examples in the docs"):

* a ```` ```console ```` block is a transcript: a line starting with ``$ `` is a command
  (a trailing ``\\`` continues it on the next line), the lines below it up to the next
  ``$ `` are what it prints (stdout and stderr together); ``$ echo $?`` followed by a
  number is the exit status of the command before it;
* a ```` ```sh ```` / ```` ```bash ```` block is a script: every line (continuations
  joined; blank and comment lines skipped) is a command; no output is shown;
* a fence without a language is a synopsis or an output sample: never run, and it may not
  hold ``$ `` lines (a transcript must say ``console``);
* HTML comments on the lines just above a fence, invisible on GitHub:
  ``<!-- not-run: REASON -->`` leaves the block out (Docker, kubectl, etcdctl, pip install,
  a foreground ``supervisor run``, a command that follows until Ctrl-C);
  ``<!-- sample-output: REASON -->`` runs it and checks the exit statuses only (the output
  is from a bigger cluster than the doc's); ``<!-- run-env: VAR=VALUE ... -->`` sets
  variables for the block (an empty VALUE removes the variable).

Each command runs in ``bash -c`` in a temporary directory (``examples/`` is the repository's),
with ``ETCDVISOR_ENDPOINTS`` pointing at a private etcd and ``ETCDVISOR_CLUSTER`` naming the
doc's cluster; a doc whose commands need a running member (``status``, ``restart``,
``config set --member``...) gets one, started from the doc's cluster config below (what
its examples use: ``fleet.yaml``, ``/etc/etcdvisor.yaml``, member ``web-2``), one per doc.

Exit status: the ``echo $?`` shown, else non-zero when the output shows an ``error: `` line
(zero for ``cmd || fallback``), else 0. Output: each line shown must match a line printed,
in order (more lines may come between); numbers, timestamps, URLs, ``user@host`` and
rollout ids are compared by shape, runs of spaces as one, ``...`` matches anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from etcdvisor.coord import open_backend
from etcdvisor.etcd_server import EtcdServer, find_etcd_binary, free_port
from etcdvisor.recipes.applications import ApplicationRoute
from etcdvisor.recipes.registry import Registry, ServiceInfo
from etcdvisor.testing import wait_for

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"console", "sh", "bash"}
COMMAND_TIMEOUT = 60

pytestmark = [pytest.mark.etcd]


# --- reading the docs ---------------------------------------------------------------------------

@dataclasses.dataclass
class Command:
    line: int            # line number in the doc
    text: str
    output: list[str] | None  # None: no output shown (a script line)
    status: int | None = None  # from `$ echo $?`

    def expected_status(self) -> str:
        if self.status is not None:
            return str(self.status)
        if self.output and any(line.startswith("error: ") for line in self.output) and "||" not in self.text:
            return "non-zero"
        return "0"


@dataclasses.dataclass
class Block:
    doc: str
    line: int            # line of the opening fence
    lang: str
    body: list[str]
    notes: dict[str, str]  # the HTML comments above the fence: key -> value

    def where(self, offset: int = 0) -> str:
        return f"{self.doc}:{self.line + offset}"

    def commands(self) -> list[Command]:
        if self.lang == "console":
            return _transcript(self.body, self.line)
        return _script(self.body, self.line)

    def env(self) -> dict[str, str]:
        pairs = shlex.split(self.notes.get("run-env", ""))
        return dict(pair.split("=", 1) for pair in pairs)


_NOTE = re.compile(r"<!--\s*([a-z-]+):\s*(.*?)\s*-->\s*\Z")


def read_blocks(doc: str) -> list[Block]:
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    blocks, number = [], 0
    while number < len(lines):
        line = lines[number]
        if line.startswith("```"):
            notes, above = {}, number - 1
            while above >= 0 and (match := _NOTE.match(lines[above].strip())):
                notes[match.group(1)] = match.group(2)
                above -= 1
            end = next(i for i in range(number + 1, len(lines)) if lines[i].startswith("```"))
            blocks.append(Block(doc, number + 1, line[3:].strip(), lines[number + 1:end], notes))
            number = end
        number += 1
    return blocks


def _transcript(body: list[str], fence: int) -> list[Command]:
    commands: list[Command] = []
    pending = None
    for offset, line in enumerate(body, start=1):
        if pending is not None:  # a continued command
            pending.text += "\n" + line  # the shell joins the lines
            if not line.endswith("\\"):
                pending = None
            continue
        if line.startswith("$ "):
            text = line[2:]
            if text.strip() == "echo $?":
                commands.append(Command(fence + offset, text, []))
                continue
            command = Command(fence + offset, text, [])
            commands.append(command)
            if text.endswith("\\"):
                pending = command
        elif commands:
            commands[-1].output.append(line)  # type: ignore[union-attr]
    # `$ echo $?` + N: the status of the command before it
    result: list[Command] = []
    for command in commands:
        if command.text.strip() == "echo $?":
            assert result and command.output, f"line {command.line}: `echo $?` needs a command and a number"
            result[-1].status = int(command.output[0].strip())
        else:
            result.append(command)
    return result


def _script(body: list[str], fence: int) -> list[Command]:
    commands: list[Command] = []
    text, first = "", 0
    for offset, line in enumerate(body, start=1):
        if not text and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not text:
            first = fence + offset
        text += line
        if line.endswith("\\"):
            text += "\n"  # the shell joins the lines
            continue
        commands.append(Command(first, text, None))
        text = ""
    return commands


# --- comparing output ---------------------------------------------------------------------------

_VOLATILE = [
    (re.compile(r"https?://[^\s)\]'\",]+"), "<url>"),
    (re.compile(r"[\w.-]+@[\w.-]+"), "<who>"),
    (re.compile(r"\b[0-9a-f]{8,}-[0-9a-f]{4,}\b"), "<id>"),  # rollout ids
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,}\b"), "<hex>"),  # spec hashes, leases
    (re.compile(r"\d+"), "0"),                               # numbers, times, durations
    (re.compile(r"\s+"), " "),
]


def skeleton(line: str) -> str:
    """A line as compared: volatile parts by shape, spaces collapsed."""
    for pattern, replacement in _VOLATILE:
        line = pattern.sub(replacement, line)
    return line.strip()


def expected_pattern(line: str) -> re.Pattern[str] | None:
    """The regex a shown line must match (its skeleton; ``...`` matches anything);
    None for a line that is only ``...`` (any number of lines)."""
    shape = skeleton(line.replace("…", "..."))
    if shape == "...":
        return None
    return re.compile(".*".join(re.escape(part) for part in shape.split("...")) + r"\Z")


def output_mismatch(shown: list[str], printed: str) -> str | None:
    """None when every shown line matches a printed line, in order; else the first that
    does not."""
    actual = [skeleton(line) for line in printed.splitlines()]
    position = 0
    for line in shown:
        pattern = expected_pattern(line)
        if pattern is None or not line.strip():
            continue
        while position < len(actual) and not pattern.match(actual[position]):
            position += 1
        if position == len(actual):
            return line
        position += 1
    return None


# --- the clusters the docs talk about -----------------------------------------------------------

@dataclasses.dataclass
class DocCluster:
    """What a doc's examples assume: a cluster, its config (written under each of
    ``config_names``), a member running it, extra files, and the doc's paths and addresses
    mapped to local ones (``{http}``: the member's HTTP address)."""

    cluster: str = "orders"
    member: str | None = None
    config: str | None = None
    config_names: tuple[str, ...] = ()
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    substitutions: dict[str, str] = dataclasses.field(default_factory=dict)
    ready: Callable[[dict], bool] | None = None  # on the member's /api/status roles: its children are up
    seed: Callable[[str, str], Callable[[], None]] | None = None  # (etcd url, cluster) -> undo
    check: Callable[[DocRun], list[str]] | None = None  # after the blocks: more problems


SLEEPER = '["sh", "-c", "exec sleep 3600"]'

CLI_FLEET = f"""
cluster: orders
etcd: {{endpoints: ["http://127.0.0.1:2379"], timeout: 2s}}
member: {{ttl: 4}}
roles:
  worker:
    type: sharded
    processes: 3
    settle: 0.2s
    stop_timeout: 0.5s
    command: ["sh", "-c", "echo \\"$(date -u '+%F %T') INFO processed batch 41\\"; exec sleep 3600"]
    stdout: {{file: "logs/worker-{{index}}.log"}}
  api:
    type: sharded
    processes: 6
    settle: 0.2s
    stop_timeout: 0.5s
    rollout: {{max_unavailable: 2, min_ready: 1s}}
    command: {SLEEPER}
    config:
      LOG_LEVEL: {{item: log.level, default: info, on_change: restart}}
      DB_PORT: {{item: database.port, default: 5432, on_change: restart}}
  scheduler:
    type: singleton
    stop_timeout: 0.5s
    command: {SLEEPER}
  report:
    type: cron
    schedule: "0 3 * * *"
    stop_timeout: 0.5s
    command: ["true"]
  migrate:
    type: job
    stop_timeout: 0.5s
    command: ["sh", "-c", "test -e migrated && exec sleep 3600; touch migrated"]
  thumbs:
    type: topic
    topic: images.uploaded
    max_payload: 64KiB
    command: ["sh", "-c", "cat > /dev/null"]
  reports:
    type: topic
    topic: reports
    command: ["sh", "-c", "cat > /dev/null"]
"""

REFERENCE_FLEET = f"""
cluster: orders
etcd: {{endpoints: ["http://127.0.0.1:2379"], timeout: 2s}}
member: {{ttl: 4}}
http: {{listen: "127.0.0.1:9100", token_file: secrets/metrics-token}}
roles:
  worker:
    type: sharded
    processes: 3
    settle: 0.2s
    stop_timeout: 0.5s
    command: {SLEEPER}
"""


def _running(roles: dict, role: str) -> int:
    """How many children of ``role`` run (a `status --json` document's ``roles``)."""
    return sum(child["state"] == "running" for a in roles.get(role, {}).get("assignments", [])
               for child in (a.get("children") or {}).values())


def _cli_ready(roles: dict) -> bool:
    """The cli.md cluster is up: every worker and api child running, the job done."""
    job = roles.get("migrate", {}).get("job") or {}
    return _running(roles, "worker") == 3 and _running(roles, "api") == 6 and job.get("state") == "succeeded"


def _seed_cli(url: str, cluster: str) -> Callable[[], None]:
    """What the examples show besides the member: a second cluster in the store, and the
    registry entries `supervisor services` lists."""
    backend = open_backend(url, timeout=5)
    backend.put(f"/etcdvisor/staging/members/{'stage-1'}", b"{}")
    registry = Registry.for_cluster(backend, cluster, ttl=30)
    registry.register(ServiceInfo(name="api", id="m2-api-0", address="10.0.0.2:8000", port=8000,
                                  metadata={"zone": "eu-1"}))
    registry.register(ServiceInfo(name="api", id="m1-api-1", address="10.0.0.1:8001", port=8001, version="1.2"))
    registry.register_application(ApplicationRoute("web", node="m1", weight=10, mode="permanent"))
    registry.set_application_state("web", "m1", "running")
    registry.register_application(ApplicationRoute("web", node="m2", weight=5))

    def undo() -> None:
        registry.close()
        backend.close()
    return undo


def _reference_ready(roles: dict) -> bool:
    return _running(roles, "worker") == 3


def _status_sample_check(run: DocRun) -> list[str]:
    """cli.md's status sample is from a bigger cluster (sample-output), but its children's
    names, section titles and table headers are what `status` prints."""
    sample = next(command for block in read_blocks(run.doc) if "sample-output" in block.notes
                  for command in block.commands() if command.text == "supervisor status")
    printed = run.shell("supervisor status", {}).stdout.decode(errors="replace")
    problems = []
    shown_names = re.findall(r"(\S+): running pid \d+", "\n".join(sample.output or []))
    names = set(re.findall(r"(\S+): running pid \d+", printed))
    problems += [f"{run.doc}:{sample.line}: the status sample names a child {name!r}; status names them "
                 f"{sorted(names)}" for name in shown_names if name not in names]
    fixed = [line for line in sample.output or []
             if line.endswith(":") and not line.startswith(" ") or re.fullmatch(r"\s*(?:[A-Z]+ +)+[A-Z]+", line)]
    printed_lines = {skeleton(line) for line in printed.splitlines()}
    problems += [f"{run.doc}:{sample.line}: the status sample shows {line!r}; status printed:\n{_indent(printed)}"
                 for line in fixed if skeleton(line) not in printed_lines]
    return problems


CLUSTERS: dict[str, DocCluster] = {
    "docs/cli.md": DocCluster(
        member="web-2", config=CLI_FLEET, config_names=("fleet.yaml", "etcdvisor.yaml"),
        files={"report.csv": "day,orders\n2026-05-01,42\n"},
        substitutions={"/etc/etcdvisor.yaml": "etcdvisor.yaml"},
        ready=_cli_ready, seed=_seed_cli, check=_status_sample_check),
    "docs/config-reference.md": DocCluster(
        member="web-2", config=REFERENCE_FLEET, config_names=("etcdvisor.yaml",),
        files={"secrets/metrics-token": "doc-token\n"},
        substitutions={"/run/secrets/metrics-token": "secrets/metrics-token", "127.0.0.1:9100": "{http}"},
        ready=_reference_ready),
}


# --- running ------------------------------------------------------------------------------------

class DocRun:
    """A temporary directory with the doc's files, a private etcd and, if the doc needs
    one, a member; runs the doc's commands there."""

    def __init__(self, doc: str, tmp_path: Path):
        self.doc = doc
        self.setup = CLUSTERS.get(doc, DocCluster())
        self.dir = tmp_path
        self.etcd: EtcdServer | None = None
        self.member: subprocess.Popen | None = None
        self.undo: Callable[[], None] | None = None
        self.http = f"127.0.0.1:{free_port()}"
        self.times: list[tuple[float, str]] = []  # (seconds, command): shown when the test fails
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                        ETCDVISOR_CLUSTER=self.setup.cluster, PYTHONUNBUFFERED="1")
        for name in ("ETCDVISOR_MEMBER_ID", "ETCDVISOR_HTTP", "ETCDVISOR_LOG_FORMAT", "ETCDVISOR_LOG_LEVEL"):
            self.env.pop(name, None)

    def start(self) -> None:
        self.etcd = EtcdServer(name="etcd-docs", binary=find_etcd_binary())
        self.etcd.start()
        self.env["ETCDVISOR_ENDPOINTS"] = self.etcd.url
        (self.dir / "examples").symlink_to(REPO / "examples")
        for name, text in self.setup.files.items():
            (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / name).write_text(text, encoding="utf-8")
        for name in self.setup.config_names:
            (self.dir / name).write_text(self.local(self.setup.config or ""), encoding="utf-8")
        if self.setup.seed is not None:
            self.undo = self.setup.seed(self.etcd.url, self.setup.cluster)
        if self.setup.member is not None:
            with open(self.dir / "member.out", "wb") as out:
                self.member = subprocess.Popen(
                    [sys.executable, "-m", "etcdvisor.cli", "run", self.setup.config_names[0]], cwd=self.dir,
                    env=dict(self.env, ETCDVISOR_MEMBER_ID=self.setup.member, ETCDVISOR_HTTP=self.http),
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self.setup.ready is not None:
                ready = self.setup.ready
                try:
                    wait_for(lambda: ready(self.api_status()["roles"]), 150, f"{self.setup.member}'s children")
                except AssertionError as exc:  # say what the member did and showed
                    log = (self.dir / "member.out").read_text(errors="replace").splitlines()[-40:]
                    roles = json.dumps(self.api_status()["roles"], sort_keys=True)[-3000:]
                    raise AssertionError(f"{exc}\nmember output (last lines):\n" + "\n".join(log)
                                         + f"\n/api/status roles: {roles}") from None

    def stop(self) -> None:
        if self.member is not None and self.member.poll() is None:
            self.member.terminate()
            try:
                self.member.wait(30)
            except subprocess.TimeoutExpired:
                self.member.kill()
                self.member.wait(5)
        if self.undo is not None:
            self.undo()
        if self.etcd is not None:
            self.etcd.cleanup()

    def local(self, text: str) -> str:
        for doc_text, local_text in self.setup.substitutions.items():
            text = text.replace(doc_text, local_text.replace("{http}", self.http))
        return text

    def api_status(self) -> dict:
        """The member's `status --json` document, from its /api/status ({} while it does not answer)."""
        token = self.dir / "secrets" / "metrics-token"
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://{self.http}/api/status", headers=headers),
                                        timeout=5) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return {"roles": {}}

    def shell(self, text: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        full = dict(self.env)
        for name, value in env.items():
            if value:
                full[name] = value
            else:
                full.pop(name, None)
        return subprocess.run(["bash", "-c", self.local(text)], cwd=self.dir, env=full, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT)

    def member_output(self) -> str:
        path = self.dir / "member.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def check(self, block: Block) -> list[str]:
        """Run the block's commands; the problems found, one line each."""
        problems = []
        for command in block.commands():
            started = time.monotonic()
            done = self.shell(command.text, block.env())
            printed = done.stdout.decode(errors="replace")
            expected = command.expected_status()
            ok = (done.returncode != 0) if expected == "non-zero" else (done.returncode == int(expected))
            shown = f"{self.doc}:{command.line}: $ {command.text}"
            if not ok:
                problems.append(f"{shown}\n  exit status {done.returncode}, the doc implies {expected}; it printed:\n"
                                + _indent(printed))
            elif command.output and "sample-output" not in block.notes:
                missing = output_mismatch(command.output, printed)
                if missing is not None:
                    problems.append(f"{shown}\n  the doc shows {missing!r}; it printed:\n" + _indent(printed))
            self.times.append((time.monotonic() - started, shown))
        return problems


def _indent(text: str) -> str:
    return "".join(f"    | {line}\n" for line in text.splitlines()) or "    (nothing)\n"


def runnable(doc: str) -> list[Block]:
    return [b for b in read_blocks(doc) if b.lang in SHELL_LANGS and "not-run" not in b.notes]


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 40 CLI processes for cli.md: 30 s on a quiet machine, minutes on a loaded one
@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_run_as_shown(doc, tmp_path):
    """Every command of the doc's shell examples exits as the doc implies and prints what
    it shows (see the module docstring)."""
    blocks = runnable(doc)
    if not blocks:
        return
    run = DocRun(doc, tmp_path)
    try:
        run.start()
        problems = [problem for block in blocks for problem in run.check(block)]
        if run.setup.check is not None:
            problems += run.setup.check(run)
    finally:
        run.stop()
    slowest = "".join(f"  {seconds:5.1f}s {what}\n" for seconds, what in sorted(run.times, reverse=True)[:5])
    assert not problems, "\n".join(problems) + f"\nmember output (tail):\n{_indent(run.member_output())}" \
        + f"slowest commands:\n{slowest}"


@pytest.mark.parametrize("doc", DOCS)
def test_shell_examples_follow_the_convention(doc):
    """A transcript is fenced `console`; a not-run block says why; notes are known ones."""
    for block in read_blocks(doc):
        if block.lang == "" and any(line.startswith("$ ") for line in block.body):
            pytest.fail(f"{block.where()}: a block with `$ ` commands must be fenced ```console")
        for key, value in block.notes.items():
            assert key in ("not-run", "sample-output", "run-env"), f"{block.where()}: unknown note {key!r}"
            assert value, f"{block.where()}: <!-- {key}: ... --> needs a reason or a value"
        if block.lang in ("sh", "bash"):
            assert not any(line.startswith("$ ") for line in block.body), \
                f"{block.where()}: `$ ` prompts belong in a ```console block"
        if block.lang == "console":
            assert any(line.startswith("$ ") for line in block.body), f"{block.where()}: a transcript without `$ `"
        if block.notes and block.lang not in SHELL_LANGS:
            pytest.fail(f"{block.where()}: a note on a block that is not a shell example")


def test_the_convention_reads_what_it_says():
    """The reader of the convention: transcripts, scripts, notes, shapes."""
    text = ["$ supervisor a \\", "    --b", "out 1841", "$ echo $?", "2", "$ supervisor c || echo no",
            "error: x", "no"]
    first, second = _transcript(text, 10)
    assert (first.text, first.output, first.status, first.line) == ("supervisor a \\\n    --b", ["out 1841"], 2, 11)
    assert second.expected_status() == "0" and Command(1, "x", ["error: y"]).expected_status() == "non-zero"
    assert [c.text for c in _script(["# a comment", "", "export A=1", "b \\", "  c"], 0)] == \
        ["export A=1", "b \\\n  c"]
    assert output_mismatch(["role api: rollout 18f2a4c1b20-3e9a1c: done, 6/6 children restarted (9.4s)"],
                           "x\nrole api: rollout 19a0b1c2d3e-77aa01: done, 6/6 children restarted (12.0s)\n") is None
    assert output_mismatch(["by ann@laptop at http://10.0.0.1:2379 ..."], "by root@vm at http://127.0.0.1:1 z") is None
    assert output_mismatch(["worker[0]: running"], "worker: running") == "worker[0]: running"
    assert output_mismatch(["a", "b"], "b\na") == "b"  # order matters
