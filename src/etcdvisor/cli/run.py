"""``supervisor run CONFIG`` and ``supervisor validate CONFIG...``: a member's life, and
the check of a file before it runs (what ``run`` accepts, ``validate`` accepts).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .kit import EXIT_FAIL, EXIT_OK, EXIT_USAGE, error

if TYPE_CHECKING:
    from ..config import Config


def lease_tolerance(config: Config) -> str:
    """The etcd round trip ``config`` tolerates, as one line (docs/safety.md rule 1)."""
    from ..timing import config_tolerance_line

    bound = {r.name: r.stop_timeout for r in config.roles.values() if r.lease_bound}
    return config_tolerance_line(config.member.ttl, bound)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load
    from ..config.errors import unexpected_problem

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


def cmd_run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..config.isolated import load_isolated
    from ..runtime.supervisor import StartupError, Supervisor
    from ..runtime.upgraded import handed_config

    try:
        # re-executed by an upgrade: the config its check just loaded; else load it
        config = handed_config(args.config) or load_isolated(args.config)  # the schema machinery stays out of PID 1
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)  # the first problem, plus "(+N more)"
        return EXIT_USAGE
    try:
        config = _run_overrides(config, args)
    except ValueError as exc:
        error(exc)
        return EXIT_USAGE
    from ..logs import configure

    configure(config.member.id, config.log.level, config.log.format)
    supervisor = Supervisor(config, watch_config=args.watch_config)

    def add_dashboard(server: Any) -> None:
        # only with http.listen: the dashboard's imports stay out of PID 1 otherwise
        from ..dashboard import install

        install(server, supervisor)

    supervisor.ops.http_routes.append(add_dashboard)
    try:
        return supervisor.run()
    except StartupError as exc:
        error(exc)
        return EXIT_FAIL


def _run_overrides(config: Config, args: argparse.Namespace) -> Config:
    """``--http``, ``--log-format`` and ``--log-level`` win over the file and the
    environment (already applied by the loader); ValueError (one line) if bad."""
    import dataclasses

    from ..config.ops import parse_listen
    from ..logs import parse_format, parse_level

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


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """run, validate (they read CONFIG themselves: no ``-c``)."""
    run = subparsers.add_parser("run", help="join the cluster and supervise the roles of CONFIG")
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

    validate = subparsers.add_parser("validate", help="check CONFIG files; one line per problem")
    validate.add_argument("config", metavar="CONFIG", nargs="+")
    validate.set_defaults(func=cmd_validate)
