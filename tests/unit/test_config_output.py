"""Role keys stdout/stderr: inherit by default, or {file, max_size, backups} with defaults."""

from etcdvisor import config
from etcdvisor.config.model import OutputFile
from etcdvisor.process.spawn import ChildVars
from etcdvisor.roles.base import RuntimeContext


def _load(tmp_path, role_yaml):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: orders\nmember: {id: m1, ttl: 10}\netcd: {endpoints: memory://o}\n"
                    f"roles:\n  worker: {role_yaml}\n")
    return config.load(path, {})


def test_default_is_inherit(tmp_path):
    role = _load(tmp_path, "{type: sharded, command: [w]}").roles["worker"]
    assert role.stdout is None and role.stderr is None
    role = _load(tmp_path, "{type: job, command: [w], stdout: inherit, stderr: inherit}").roles["worker"]
    assert role.stdout is None and role.stderr is None


def test_file_with_defaults_and_explicit_values(tmp_path):
    role = _load(tmp_path, "{type: sharded, command: [w], stdout: {file: out.log},"
                           " stderr: {file: 'logs/{role}-{member}-{index}.err', max_size: 10MiB, backups: 0}}"
                 ).roles["worker"]
    assert role.stdout == OutputFile(file="out.log", max_size=50 * 1024 * 1024, backups=5)
    assert role.stderr == OutputFile(file="logs/{role}-{member}-{index}.err", max_size=10 * 1024 * 1024,
                                     backups=0)
    assert role.stderr.per_index and not role.stdout.per_index


def test_child_spec_resolves_the_path_in_the_role_cwd_with_the_child_index(tmp_path):
    cfg = _load(tmp_path, "{type: sharded, command: [w], cwd: work, processes: 2,"
                          " stdout: {file: 'logs/{role}-{member}-{index}.log', max_size: 1MiB, backups: 2}}")
    role = cfg.roles["worker"]
    ctx = RuntimeContext(config=cfg, backend=None, session=None, keys=None, member_id="m1",
                         endpoints="memory://o", post=lambda _e: None, clock=lambda: 0.0)
    spec = ctx.child_spec(role, "worker[3]", ChildVars(index=3, count=4))
    assert spec.stdout_file is not None and spec.stderr_file is None
    assert spec.stdout_file.path == str(tmp_path / "work" / "logs" / "worker-m1-3.log")
    assert spec.stdout_file.root == str(tmp_path / "work")
    assert (spec.stdout_file.max_size, spec.stdout_file.backups) == (1024 * 1024, 2)
    # a child without INDEX (singleton, cron, topic, per-member) gets {index} = 0, as register.port
    assert ctx.child_spec(role, "worker").stdout_file.path.endswith("worker-m1-0.log")
