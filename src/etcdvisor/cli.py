"""``supervisor`` / ``etcdvisor`` command line: argument parsing and exit codes only.

Exit codes: 0 success, 1 runtime failure (etcd unreachable, member id in
use...), 2 bad usage or bad config. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from . import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def lease_tolerance(config) -> str:
    """The etcd round trip ``config`` tolerates, as one line (docs/safety.md rule 1)."""
    from .timing import config_tolerance_line

    bound = {r.name: r.stop_timeout for r in config.roles.values() if r.lease_bound}
    return config_tolerance_line(config.member.ttl, bound)


def cmd_validate(args) -> int:
    from .config import ConfigError, load
    from .config.errors import unexpected_problem

    status = EXIT_OK
    for path in args.config:
        try:
            config = load(path)
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            status = EXIT_USAGE
            continue
        except Exception as exc:  # a checker bug must still be one line, not a traceback
            print(unexpected_problem(path, exc), file=sys.stderr)
            status = EXIT_USAGE
            continue
        for line in config.warnings:
            print(line, file=sys.stderr)
        roles = ", ".join(f"{r.name} ({r.type.value})" for r in config.roles.values()) or "no roles"
        print(f"{path}: ok: cluster {config.cluster}, {roles}")
        print(f"{path}: {lease_tolerance(config)}")
    return status


def cmd_run(args) -> int:
    from .config import ConfigError
    from .config.isolated import load_isolated
    from .runtime.supervisor import StartupError, Supervisor
    from .runtime.upgrade import handed_config

    try:
        # re-executed by an upgrade: the config its check just loaded; else load it
        config = handed_config(args.config) or load_isolated(args.config)  # the schema machinery stays out of PID 1
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)  # the first problem, plus "(+N more)"
        return EXIT_USAGE
    try:
        config = _run_overrides(config, args)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    from .logs import configure

    configure(config.member.id, config.log.level, config.log.format)
    supervisor = Supervisor(config, watch_config=args.watch_config)

    def add_dashboard(server) -> None:  # only with http.listen: the dashboard's imports stay out of PID 1 otherwise
        from .dashboard import install

        install(server, supervisor)

    supervisor.ops.http_routes.append(add_dashboard)
    try:
        return supervisor.run()
    except StartupError as exc:
        _error(str(exc))
        return EXIT_FAIL


def _run_overrides(config, args):
    """``--http``, ``--log-format`` and ``--log-level`` win over the file and the
    environment (already applied by the loader); ValueError (one line) if bad."""
    import dataclasses

    from .config.ops import parse_listen
    from .logs import parse_format, parse_level

    log, http = config.log, config.http
    if args.log_level is not None:
        log = dataclasses.replace(log, level=parse_level(args.log_level, "--log-level"))
    if args.log_format is not None:
        log = dataclasses.replace(log, format=parse_format(args.log_format, "--log-format"))
    if args.http is not None:
        try:
            http = dataclasses.replace(http, listen=parse_listen(args.http))  # keeps token_file
        except ValueError as exc:
            raise ValueError(f"--http: {exc}") from None
    return dataclasses.replace(config, log=log, http=http)


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, like every other error
    (argparse prints the whole usage block first); ``--help`` still shows it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def _program_name() -> str:
    name = os.path.basename(sys.argv[0])
    return "supervisor" if name in ("", "__main__.py", "cli.py", "-c") else name


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=_program_name(),
        description="Declarative process supervisor for fleets of workers, coordinated through etcd.")
    parser.add_argument("--version", action="version", version=f"etcdvisor {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    run = sub.add_parser("run", help="join the cluster and supervise the roles of CONFIG")
    run.add_argument("config", metavar="CONFIG")
    run.add_argument("--log-level", metavar="LEVEL",
                     help="debug | info | warning | error (default: log.level, ETCDVISOR_LOG_LEVEL, info)")
    run.add_argument("--log-format", metavar="FORMAT",
                     help="text | json (default: log.format, ETCDVISOR_LOG_FORMAT, text)")
    run.add_argument("--http", metavar="ADDR",
                     help="serve /metrics, /healthz, /readyz and the dashboard (/) on HOST:PORT "
                          "(default: http.listen, ETCDVISOR_HTTP)")
    run.add_argument("--watch-config", action="store_true",
                     help="reload when CONFIG changes (as on SIGHUP)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check CONFIG files; one line per problem")
    validate.add_argument("config", metavar="CONFIG", nargs="+")
    validate.set_defaults(func=cmd_validate)

    try:
        from .cli_ops import add_operator_verbs
    except ImportError:
        pass
    else:
        add_operator_verbs(sub)
    from .cli_control import add_control_verbs

    add_control_verbs(sub)
    from .cli_logs import add_logs_verb

    add_logs_verb(sub)
    from .cli_upgrade import add_upgrade_verb

    add_upgrade_verb(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
