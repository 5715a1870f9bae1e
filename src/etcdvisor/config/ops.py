"""The operations settings ``http:`` and ``log:``, and the one parser of a listen address.

``parse_listen`` serves the config file, ``run --http`` / ``ETCDVISOR_HTTP`` and
``supervisor health --http``, so what validates also runs.
"""

from __future__ import annotations

from .errors import Problems
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


def ops_settings(document: dict, problems: Problems) -> tuple[HttpSettings, LogSettings]:
    """``http`` and ``log`` of a schema-checked document (shape problems already recorded)."""
    http, log = HttpSettings(), LogSettings()
    raw_http = document.get("http")
    if isinstance(raw_http, dict) and not problems.has_under(("http",)) and "listen" in raw_http:
        try:
            http = HttpSettings(listen=parse_listen(raw_http["listen"]))
        except ListenError as exc:
            problems.add(("http", "listen"), str(exc))
    raw_log = document.get("log")
    if isinstance(raw_log, dict) and not problems.has_under(("log",)):
        log = LogSettings(format=LogFormat(raw_log.get("format", "text")),
                          level=LogLevel(raw_log.get("level", "info")))
    return http, log


def format_listen(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"


def connect_address(address: tuple[str, int]) -> tuple[str, int]:
    """Where a local client reaches a server listening on ``address`` (a wildcard
    listen address is reached through the loopback interface)."""
    host, port = address
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port
