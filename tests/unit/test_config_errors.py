"""Every broken file gives exactly one one-line error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from etcdvisor import config
from etcdvisor.config import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"
BAD = DATA / "bad"

# file stem -> (key path printed after "FILE: ", or None for whole-file problems; reason fragment)
EXPECTED = {
    "bad_yaml": (None, "expected ',' or ']'"),
    "empty": (None, "config file is empty"),
    "comments_only": (None, "config file is empty"),
    "top_level_list": (None, "expected a mapping of keys at the top level, got a list"),
    "duplicate_role": (None, "invalid YAML: duplicate key 'worker' (first at line 4)"),
    "unknown_top_level_key": ("role", "unknown key 'role' (did you mean 'roles'?)"),
    "unknown_role_key": ("roles.worker.comand", "unknown key 'comand' (did you mean 'command'?)"),
    "wrong_type": ("roles.worker.command", "expected a list of strings, got a string"),
    "bad_duration": ("roles.worker.stop_timeout", "'5 secs' is not a duration"),
    "negative_duration": ("roles.worker.settle", "must not be negative"),
    "missing_command": ("roles.worker.command", "required key is missing"),
    "empty_command": ("roles.worker.command", "must not be empty"),
    "empty_program": ("roles.worker.command[0]", "program name is empty"),
    "unknown_signal": ("roles.worker.stop_signal", "'SIGSTOP' is not a stop signal (one of: TERM, INT"),
    "no_slack": ("roles.compactor.stop_timeout",
                 "10s leaves no slack under member.ttl 10s (need member.ttl >= 14s or stop_timeout < 6.5s; "
                 "tolerates no round trip, needs more than 0.9s)"),
    "unknown_role_type": ("roles.worker.type",
                          "'sharded2' is not a role type (one of: sharded, singleton, cron, job, topic)"),
    "after_cycle": ("roles.a.after", "cycle in after: a -> c -> b -> a"),
    "after_self": ("roles.a.after[0]", "role 'a' cannot wait for itself"),
    "after_unknown": ("roles.web.after[0]", "unknown role 'migrat' (did you mean 'migrate'?)"),
    "after_never_completes": ("roles.report.after[0]", "role 'web' never completes (it has restart: always)"),
    "bad_cron": ("roles.nightly.schedule", "invalid cron expression '61 * * * *': Bad minute"),
    "cron_six_fields": ("roles.nightly.schedule", "has 6 fields, expected 5"),
    "cron_every_too_fast": ("roles.nightly.schedule", "shorter than the 1s minimum"),
    "cron_unknown_alias": ("roles.nightly.schedule", "unknown schedule alias '@fortnightly'"),
    "cron_missing_schedule": ("roles.nightly.schedule", "required key is missing (cron roles need it)"),
    "cron_bad_concurrency": ("roles.nightly.concurrency", "2 is not a cron concurrency policy"),
    "bad_timezone": ("roles.nightly.timezone", "'Europe/Atlantis' is not a known IANA time zone"),
    "literal_password": ("etcd.password", "a literal password is not accepted"),
    "schedule_on_sharded": ("roles.worker.schedule", "'schedule' only applies to cron roles, not sharded roles"),
    "standby_on_cron": ("roles.nightly.standby", "'standby' only applies to singleton roles, not cron roles"),
    "rollout_on_cron": ("roles.nightly.rollout",
                        "'rollout' only applies to sharded and singleton roles, not cron roles"),
    "rollout_percent_over_100": ("roles.api.rollout.max_unavailable",
                                 "must be a percentage above 0% and at most 100%, got '150%'"),
    "rollout_zero": ("roles.api.rollout.max_unavailable", "must be >= 1, got 0"),
    "rollout_unknown_key": ("roles.api.rollout.max_surge", "unknown key 'max_surge'"),
    "bad_role_name": ("roles.Worker", "'Worker' is not a valid role name"),
    "restart_always_job": ("roles.migrate.restart", "'always' is not allowed for job roles"),
    "bad_endpoint": ("etcd.endpoints", "unknown scheme 'ftp'"),
    "tls_with_http": ("etcd.tls", "endpoints use http://"),
    "bad_cluster_name": ("cluster", "'Orders!' is not valid"),
    "missing_cluster": ("cluster", "required key is missing"),
    "ttl_too_small": ("member.ttl", "must be >= 2, got 1"),
    "ttl_not_integer": ("member.ttl", "expected an integer, got 10.5"),
    "payload_too_big": ("roles.q.max_payload", "2MiB is more than the limit of 1MiB"),
    "bad_size": ("roles.q.max_payload", "'lots' is not a size"),
    "reserved_env": ("roles.worker.env.INDEX", "INDEX is set by the supervisor"),
    "env_value_list": ("roles.worker.env.HOSTS", "expected a string, a number or a boolean, got a list"),
    "backoff_inverted": ("roles.worker.backoff.max", "must be >= backoff.initial (10s), got 2s"),
    "password_without_username": ("etcd.password_env", "'password_env' needs 'username' as well"),
    "data_dir_without_embedded": ("etcd.data_dir", "only applies with endpoints: embedded"),
    "cron_every_with_space": ("roles.nightly.schedule", "'1h 30m' is not a duration"),
    "cron_every_too_long": ("roles.nightly.schedule", "'9000h' is longer than the maximum of 366 days"),
    "duration_sub_millisecond": ("roles.worker.stop_timeout", "'1.0005s' is not a whole number of milliseconds"),
    "size_with_space": ("roles.q.max_payload", "'64 KiB' is not a size"),
    # integers are integers: 2.0 used to validate, then the role failed with a TypeError
    "processes_integral_float": ("roles.worker.processes", "expected an integer, got 2.0 (an integer is written "
                                 "without a decimal point: 2)"),
    "shards_integral_float": ("roles.worker.shards", "expected an integer, got 4.0"),
    # one cap on a role's children per member, whatever produces them
    "per_shard_children_over_cap": ("roles.worker.shards", "4096 shards with children: per-shard can run 4096 "
                                    "children on one member (a member may hold every shard), more than the "
                                    "limit of 1024 children per member"),
    "processes_over_cap": ("roles.worker.processes", "1025 is more than the limit of 1024 children per member"),
    "log_file_escape": ("roles.worker.stdout.file", "path '../../var/log/worker.log' is outside the role's "
                        "working directory"),
    "log_file_placeholder": ("roles.worker.stdout.file", "unknown placeholder {shard} in 'worker-{shard}.log' "
                             "(use {role}, {member}, {index})"),
    "log_output_word": ("roles.worker.stderr", "expected 'inherit' or a mapping {file: PATH, max_size: SIZE, "
                        "backups: N}, got 'stdout'"),
    "log_backups_negative": ("roles.worker.stdout.backups", "must be >= 0, got -1"),
    "log_max_size_small": ("roles.worker.stdout.max_size", "100 bytes is less than the minimum of 1KiB"),
    "log_file_unknown_key": ("roles.worker.stdout.max_bytes", "unknown key 'max_bytes' (known keys: file, "
                             "max_size, backups)"),
}


def bad_files():
    return sorted(p.stem for p in BAD.glob("*.yaml"))


def test_every_bad_file_has_an_expectation():
    assert set(bad_files()) == set(EXPECTED)


@pytest.mark.parametrize("stem", bad_files())
def test_bad_file_gives_one_line_naming_file_and_key(stem):
    path = BAD / f"{stem}.yaml"
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    error = caught.value
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    assert error.errors == [message], "each bad file should hold exactly one problem"
    key, reason = EXPECTED[stem]
    if key is None:
        assert message.startswith(f"{path}:"), message
    else:
        assert message.startswith(f"{path}: {key}: "), message
    assert reason in message


def test_missing_file_is_one_line(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert str(caught.value) == f"{path}: cannot read config file: No such file or directory"


def test_invalid_yaml_reports_line_and_column():
    with pytest.raises(ConfigError) as caught:
        config.load(BAD / "bad_yaml.yaml", {})
    assert str(caught.value).startswith(f"{BAD / 'bad_yaml.yaml'}:6:1: invalid YAML: ")


def test_all_problems_are_collected_in_file_order(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text(
        "cluster: orders\n"
        "member: {ttl: 10}\n"
        "roles:\n"
        "  a: {type: sharded, command: [a], stop_signal: NOPE}\n"
        "  b: {type: job, comand: [b]}\n"
        "  c: {type: cron, command: [c], schedule: '@daily', timezone: Mars/Base, stop_timeout: 1h}\n"
        "  d: {type: job, command: [d], after: [zz]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    reported = [line.removeprefix(f"{path}: ") for line in caught.value.errors]
    assert [line.split(": ", 1)[0] for line in reported] == [
        "roles.b.comand", "roles.b.command",  # schema problems first, in file order
        "roles.a.stop_signal", "roles.c.timezone", "roles.c.stop_timeout", "roles.d.after[0]",
    ]
    assert str(caught.value) == f"{path}: {reported[0]} (+5 more)"
    assert all("\n" not in line for line in caught.value.errors)


def test_references_of_a_role_with_another_problem_are_reported_in_the_same_run(tmp_path):
    """validate lists an unknown after:/needs: entry of a role that fails another check
    (its slack here) in the same run, not once the other problem is fixed (issue 18, 5)."""
    path = tmp_path / "refs.yaml"
    path.write_text(
        "cluster: orders\n"
        "member: {ttl: 10}\n"
        "roles:\n"
        "  api: {type: singleton, command: [a], stop_timeout: 20s, after: [nosuch], needs: [api]}\n"
        "  b: {type: sharded, command: [b], needs: [c]}\n"
        "  c: {type: sharded, command: [c], stop_timeout: 1h, needs: [b]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    keys = [line.removeprefix(f"{path}: ").split(": ", 1)[0] for line in caught.value.errors]
    assert sorted(keys) == sorted(["roles.api.stop_timeout", "roles.c.stop_timeout", "roles.api.after[0]",
                                   "roles.api.needs[0]", "roles.b.needs"]), caught.value.errors


def test_bad_type_does_not_pile_on_type_only_key_errors(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("cluster: x\nroles:\n  w: {type: shard, command: [w], settle: 1, schedule: '@daily'}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert len(caught.value.errors) == 1 and "roles.w.type" in str(caught.value)


def test_yaml_merge_keys_may_override_without_counting_as_duplicates(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "cluster: x\n"
        "roles:\n"
        "  a: &base {type: job, command: [a], stop_timeout: 2}\n"
        "  b:\n    <<: *base\n    command: [b]\n"
    )
    cfg = config.load(path, {})
    assert cfg.role("b").command == ("b",) and cfg.role("b").stop_timeout == 2.0


def test_env_key_must_be_a_valid_name(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("cluster: x\nroles:\n  w: {type: job, command: [w], env: {'BAD-NAME': x}}\n")
    with pytest.raises(ConfigError, match=r"roles\.w\.env\.BAD-NAME: 'BAD-NAME' is not a valid environment"):
        config.load(path, {})


def test_endpoints_cannot_mix_embedded_with_urls(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("cluster: x\netcd: {endpoints: [embedded, 'http://a:1']}\n")
    with pytest.raises(ConfigError, match=r"etcd\.endpoints: 'embedded' cannot be combined"):
        config.load(path, {})


def test_data_dir_is_allowed_when_env_moves_away_from_embedded(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("cluster: x\netcd: {endpoints: embedded, data_dir: db}\n")
    assert config.load(path, {}).etcd.data_dir == str(tmp_path / "db")
    cfg = config.load(path, {"ETCDVISOR_ENDPOINTS": "http://h:2379"})
    assert cfg.etcd.endpoints == ("http://h:2379",) and cfg.etcd.data_dir is None


def test_slack_check_uses_the_default_stop_timeout(tmp_path):
    path = tmp_path / "ttl.yaml"
    path.write_text("cluster: x\nmember: {ttl: 6}\nroles:\n  w: {type: sharded, command: [w]}\n"
                    "  q: {type: topic, command: [q]}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    # topic roles do not hold the lease, so only the sharded role is reported
    assert caught.value.errors == [
        f"{path}: roles.w.stop_timeout: the default 5s leaves no slack under member.ttl 6s "
        "(need member.ttl >= 9s or stop_timeout < 2.7s; tolerates no round trip, needs more than 0.9s)"
    ]


SHARDED_PROBLEMS = [
    ({"shards": 8, "processes": 2}, "roles.w.processes: cannot be combined with shards"),
    ({"children": "per-member"}, "roles.w.children: needs shards"),
    ({"shards": 0}, "roles.w.shards: must be at least 1, got 0"),
    ({"processes": 0}, "roles.w.processes: must be at least 1, got 0"),
    ({"shards": 4097}, "roles.w.shards: 4097 is more than the limit of 4096 shards"),
    ({"processes": 100000}, "roles.w.processes: 100000 is more than the limit of 1024 children"),
    ({"processes": 1025}, "roles.w.processes: 1025 is more than the limit of 1024 children per member"),
    ({"processes": 10**40}, "roles.w.processes: a huge number is more than the limit of 1024 children"),
    # the one cap on children per member holds whatever produces them: a member may hold every shard
    ({"shards": 4096}, "roles.w.shards: 4096 shards with children: per-shard can run 4096 children on one "
                       "member (a member may hold every shard), more than the limit of 1024 children per member"),
    ({"shards": 1025, "children": "per-shard"}, "roles.w.shards: 1025 shards with children: per-shard can run "
                                                "1025 children on one member"),
    ({"handoff": "eager"}, "roles.w.handoff"),
    ({"shards": True}, "roles.w.shards"),
    ({"processes": "2"}, "roles.w.processes"),
]


@pytest.mark.parametrize("keys,expected", SHARDED_PROBLEMS)
def test_sharded_keys_are_checked_one_line_each(tmp_path, keys, expected):
    import yaml

    from etcdvisor import config as config_module

    role = {"type": "sharded", "command": ["x"], **keys}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": "c", "roles": {"w": role}}))
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load(path, {})
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_sharded_modes_load_with_their_defaults(tmp_path):
    import yaml

    from etcdvisor import config as config_module

    roles = {"j": {"type": "sharded", "command": ["x"], "processes": 3, "handoff": "overlap"},
             "f": {"type": "sharded", "command": ["x"], "shards": 1024},
             "m": {"type": "sharded", "command": ["x"], "shards": 4096, "children": "per-member"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": "c", "roles": roles}))
    cfg = config_module.load(path, {})
    j, f, m = cfg.role("j"), cfg.role("f"), cfg.role("m")
    assert (j.processes, j.handoff, j.shards, j.children) == (3, "overlap", None, None)
    assert (f.processes, f.handoff, f.shards, f.children) == (None, "fenced", 1024, "per-shard")
    assert (m.shards, m.children) == (4096, "per-member")


def test_one_cap_on_a_roles_children_per_member(tmp_path):
    """1,024 children of one role on one member, whatever produces them: processes,
    shards with a child per shard (a member may hold every shard), topic concurrency
    (each message being handled is a child). At the cap loads; one past it is one line."""
    import yaml

    at_cap = {"p": {"type": "sharded", "command": ["x"], "processes": 1024},
              "s": {"type": "sharded", "command": ["x"], "shards": 1024, "children": "per-shard"},
              "m": {"type": "sharded", "command": ["x"], "shards": 4096, "children": "per-member"},
              "t": {"type": "topic", "command": ["x"], "concurrency": 1024}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": "c", "roles": at_cap}))
    cfg = config.load(path, {})
    assert (cfg.role("p").processes, cfg.role("s").shards, cfg.role("t").concurrency) == (1024, 1024, 1024)
    past = {"p": {**at_cap["p"], "processes": 1025}, "s": {**at_cap["s"], "shards": 1025},
            "m": at_cap["m"], "t": {**at_cap["t"], "concurrency": 1025}}
    path.write_text(yaml.safe_dump({"cluster": "c", "roles": past}))
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert caught.value.errors == [
        f"{path}: roles.p.processes: 1025 is more than the limit of 1024 children per member",
        f"{path}: roles.s.shards: 1025 shards with children: per-shard can run 1025 children on one member "
        "(a member may hold every shard), more than the limit of 1024 children per member "
        "(use children: per-member, or at most 1024 shards)",
        f"{path}: roles.t.concurrency: 1025 is more than the limit of 1024 children per member "
        "(each message being handled is a child)",
    ]
