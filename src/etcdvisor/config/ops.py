"""The operations settings ``http:`` and ``log:``, the one parser of a listen address
and the one reader of the bearer token file.

``parse_listen`` serves the config file, ``run --http`` / ``ETCDVISOR_HTTP`` and
``supervisor health --http``, and ``read_token_file`` serves ``validate`` and the
listener, so what validates also runs.
"""

from __future__ import annotations

import os
import stat

from .errors import Document, Problems
from .model import HttpSettings, LogFormat, LogLevel, LogSettings


class ListenError(ValueError):
    """A listen address that cannot be used; the message is one line."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` -> (host, port); host "" = every interface."""
    value = str(text).strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ListenError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9100 or :9100)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ListenError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:9100")
    # ASCII digits only: str.isdigit() also takes '²' (int() refuses it) and '٣' (int() reads 3)
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) < 65536:
        raise ListenError(f"{value!r}: the port must be a number from 1 to 65535")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ListenError(f"{value!r}: {host!r} is not a host name or address")
    return host, int(port)


def ops_settings(document: Document, problems: Problems, base_dir: str = "") -> tuple[HttpSettings, LogSettings]:
    """``http`` and ``log`` of a schema-checked document (shape problems already recorded).
    ``http.token_file`` is resolved against ``base_dir`` and read once (not kept)."""
    http, log = HttpSettings(), LogSettings()
    raw_http = document.get("http")
    if isinstance(raw_http, dict) and not problems.has_under(("http",)):
        listen = None
        if "listen" in raw_http:
            try:
                listen = parse_listen(raw_http["listen"])
            except ListenError as exc:
                problems.add(("http", "listen"), str(exc))
        token_file = None
        if raw_http.get("token_file"):
            token_file = os.path.normpath(os.path.join(base_dir, os.path.expanduser(raw_http["token_file"])))
            try:
                read_token_file(token_file)
            except TokenFileError as exc:
                problems.add(("http", "token_file"), str(exc))
        http = HttpSettings(listen=listen, token_file=token_file)
    raw_log = document.get("log")
    if isinstance(raw_log, dict) and not problems.has_under(("log",)):
        log = LogSettings(format=LogFormat(raw_log.get("format", "text")),
                          level=LogLevel(raw_log.get("level", "info")))
    return http, log


TOKEN_MAX_BYTES = 4096


class TokenFileError(ValueError):
    """The token file cannot be used; the message is one line and never holds the token."""


def read_token_file(path: str) -> bytes:
    """The bearer token in ``path``: a regular file of at most ``TOKEN_MAX_BYTES``
    bytes, surrounding whitespace (a trailing newline) stripped, then 1 or more
    printable ASCII characters without spaces (what ``Authorization: Bearer`` carries)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO never blocks
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenFileError(f"{path} is not a regular file")
        data = os.read(fd, TOKEN_MAX_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > TOKEN_MAX_BYTES:
        raise TokenFileError(f"{path} is larger than {TOKEN_MAX_BYTES} bytes (a token, not a document)")
    token = data.strip()
    if not token:
        raise TokenFileError(f"{path} is empty (write the token, e.g. openssl rand -hex 32 > FILE)")
    if any(not 0x21 <= byte <= 0x7E for byte in token):
        raise TokenFileError(f"{path}: the token must be printable ASCII without spaces")
    return token


def format_listen(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"


def connect_address(address: tuple[str, int]) -> tuple[str, int]:
    """Where a local client reaches a server listening on ``address`` (a wildcard
    listen address is reached through the loopback interface)."""
    host, port = address
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port
