"""``supervisor`` / ``etcdvisor`` command line: argument parsing and exit codes only.

Exit codes: 0 success, 1 runtime failure (etcd unreachable, member id in
use...), 2 bad usage or bad config. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _configure_logging(member: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"etcdvisor[{member}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("etcdvisor").setLevel(getattr(logging, level.upper(), logging.INFO))


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


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
    return status


def cmd_run(args) -> int:
    from .config import ConfigError
    from .config.isolated import load_isolated
    from .runtime.supervisor import StartupError, Supervisor

    try:
        config = load_isolated(args.config)  # the schema machinery stays out of PID 1
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)  # the first problem, plus "(+N more)"
        return EXIT_USAGE
    _configure_logging(config.member.id, args.log_level)
    supervisor = Supervisor(config, watch_config=args.watch_config)
    try:
        return supervisor.run()
    except StartupError as exc:
        _error(str(exc))
        return EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or "supervisor",
        description="Declarative process supervisor for fleets of workers, coordinated through etcd.")
    parser.add_argument("--version", action="version", version=f"etcdvisor {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    run = sub.add_parser("run", help="join the cluster and supervise the roles of CONFIG")
    run.add_argument("config", metavar="CONFIG")
    run.add_argument("--log-level", default=os.environ.get("ETCDVISOR_LOG_LEVEL", "info"),
                     choices=["debug", "info", "warning", "error"])
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
