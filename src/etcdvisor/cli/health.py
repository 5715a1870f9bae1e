"""``supervisor health [--http ADDR] [--live] [-c CONFIG]``: the exec probe.

It asks ``/healthz`` and ``/readyz`` of a running member (``--live``: only ``/healthz``) at
``--http ADDR``, else ``ETCDVISOR_HTTP``, else ``http.listen`` of ``-c CONFIG``; it prints
the answer and exits 0 (200) or 1 (anything else, or no answer within ``--timeout``
seconds). No address at all: exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import time
from collections.abc import Callable

from .kit import EXIT_FAIL, EXIT_OK, EXIT_USAGE, UsageError, error

HEALTH_MAX_BYTES = 64 * 1024  # more than this is not a probe answer
EXPECTED_BODY = {"/healthz": "ok", "/readyz": "ready"}


class NotOurAnswer(Exception):
    """What came back is not an etcdvisor member's probe answer; one line."""


def cmd_health(args: argparse.Namespace) -> int:
    from ..config.ops import ListenError, connect_address, format_listen, parse_listen

    try:
        address = _health_address(args, parse_listen)
        if not 0 < args.timeout <= 3600:
            raise UsageError(f"--timeout {args.timeout:g}: give seconds, more than 0 and at most 3600")
    except (UsageError, ListenError) as exc:
        error(exc)
        return EXIT_USAGE
    host, port = connect_address(address)
    deadline = time.monotonic() + args.timeout  # one bound for the whole command
    paths = ["/healthz"] if args.live else ["/healthz", "/readyz"]
    for path in paths:
        ok, reason = _probe(host, port, path, deadline, format_listen((host, port)))
        if not ok:
            print(f"unhealthy: {path}: {reason}")
            return EXIT_FAIL
    print("ok: alive" if args.live else "ok: alive and ready")
    return EXIT_OK


def _health_address(args: argparse.Namespace, parse_listen: Callable[[str], tuple[str, int]]) -> tuple[str, int]:
    if args.http:
        return parse_listen(args.http)
    if os.environ.get("ETCDVISOR_HTTP", "").strip():
        return parse_listen(os.environ["ETCDVISOR_HTTP"])
    if args.config:
        from ..config import ConfigError, load

        try:
            config = load(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config.http.listen is not None:
            return config.http.listen
        raise UsageError(f"{args.config}: http.listen is not set (nothing to ask)")
    raise UsageError("no address to ask: pass --http ADDR, set ETCDVISOR_HTTP or give -c CONFIG "
                     "with http.listen")


def _probe(host: str, port: int, path: str, deadline: float, shown: str) -> tuple[bool, str]:
    """GET ``path``: (True, body) only for a 200 with the expected body from an
    etcdvisor member (``Server: etcdvisor``). Whatever else answers (a banner, binary,
    a reset, silence, another HTTP server) is (False, one line), read within
    ``deadline`` and ``HEALTH_MAX_BYTES``."""
    try:
        status, headers, body = _exchange(host, port, path, deadline)
    except TimeoutError as exc:  # from a connect or a send, or ours with what came
        what = str(exc) if str(exc) in ("no answer", "an incomplete answer") else "no answer"
        return False, f"{what} from {shown} within --timeout"
    except NotOurAnswer as exc:
        return False, f"{shown} is not an etcdvisor member: {exc}"
    except OSError as exc:
        return False, f"no answer from {shown}: {exc.strerror or exc}"
    text = _one_line(body)
    if headers.get("server", "").split("/")[0].split(" ")[0] != "etcdvisor":
        server = _one_line(headers.get("server", "").encode(), 60)
        source = f"from {server!r}" if server else "without a Server header"
        return False, f"{shown} is not an etcdvisor member: HTTP {status} {source}"
    if status == 200 and text == EXPECTED_BODY[path]:
        return True, text
    return False, f"{status} {text}"


def _exchange(host: str, port: int, path: str, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET, ``Connection: close``; (status, headers, body)."""
    data = bytearray()

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("an incomplete answer" if data else "no answer")
        return left

    with socket.create_connection((host, port), timeout=remaining()) as sock:
        sock.settimeout(remaining())
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: etcdvisor-health\r\n"
                     f"Accept: text/plain\r\nConnection: close\r\n\r\n".encode())
        while True:
            answer = _parse_answer(bytes(data), eof=False)
            if answer is not None:
                return answer
            sock.settimeout(remaining())
            try:
                chunk = sock.recv(HEALTH_MAX_BYTES + 1 - len(data))
            except TimeoutError:
                raise TimeoutError("an incomplete answer" if data else "no answer") from None
            if not chunk:
                answer = _parse_answer(bytes(data), eof=True)
                assert answer is not None
                return answer
            data += chunk
            if len(data) > HEALTH_MAX_BYTES:
                raise NotOurAnswer(f"more than {HEALTH_MAX_BYTES} bytes came back")


def _parse_answer(data: bytes, eof: bool) -> tuple[int, dict[str, str], bytes] | None:
    """The answer once complete, None while more may come; NotOurAnswer if it is
    not HTTP/1.x (or ends early)."""
    if not data.startswith(b"HTTP/"[:len(data)]):
        start = data[:40]
        if all(32 <= byte < 127 or byte in b"\r\n\t" for byte in start):
            raise NotOurAnswer(f"it answered {_one_line(start)!r}, not HTTP")
        raise NotOurAnswer("it answered binary data, not HTTP")
    end = data.find(b"\r\n\r\n")
    head_end = end + 4 if end >= 0 else -1
    if head_end < 0:
        if eof:
            raise NotOurAnswer("the HTTP answer ended before its headers did" if data
                               else "it closed without answering")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: .*)?", lines[0])
    if match is None:
        raise NotOurAnswer(f"bad status line {_one_line(lines[0][:60].encode())!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    body = data[head_end:]
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > HEALTH_MAX_BYTES:
            raise NotOurAnswer(f"Content-Length {_one_line(length[:20].encode())!r}")
        if len(body) < int(length):
            if eof:
                raise NotOurAnswer("the HTTP answer ended before its body did")
            return None
        body = body[:int(length)]
    elif not eof:
        return None
    return int(match.group(1)), headers, body


def _one_line(data: bytes, limit: int = 200) -> str:
    """Printable text of a peer's bytes: no control characters, no line breaks."""
    text = data.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def add_verbs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
              common: argparse.ArgumentParser) -> None:
    """health (it takes ``-c`` for its address, not a cluster)."""
    health = subparsers.add_parser("health", help="probe a running member's /healthz and /readyz "
                                   "(exit 0 ok, 1 not)")
    health.add_argument("-c", "--config", metavar="CONFIG", help="take the address from http.listen")
    health.add_argument("--http", metavar="ADDR", help="HOST:PORT of the member (default: ETCDVISOR_HTTP)")
    health.add_argument("--live", action="store_true", help="only /healthz (liveness)")
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    health.set_defaults(func=cmd_health)
