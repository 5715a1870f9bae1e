"""Coordination backends behind one interface (see :mod:`.base`).

>>> backend = open_backend("memory://test")          # in-process
>>> backend = open_backend("http://127.0.0.1:2379")  # real etcd

Imports are lazy: ``from etcdvisor.coord.errors import CoordError`` loads no more
than that module (the command line's quick verbs pay for nothing else).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Backend, WatchStream
    from .errors import (
        AuthFailed,
        Closed,
        Compacted,
        CoordError,
        CoordTimeout,
        InvalidURL,
        LeaseNotFound,
        Unavailable,
    )
    from .types import (
        Compare,
        Delete,
        Event,
        EventType,
        Get,
        KeyValue,
        Lease,
        Put,
        RangeResult,
        TxnResult,
        WatchBatch,
        prefix_end,
    )
    from .url import BackendSpec, TLSOptions, parse_url, read_password

_EXPORTS = {
    **dict.fromkeys(("Backend", "WatchStream"), "base"),
    **dict.fromkeys(("AuthFailed", "Closed", "Compacted", "CoordError", "CoordTimeout", "InvalidURL",
                     "LeaseNotFound", "Unavailable"), "errors"),
    **dict.fromkeys(("Compare", "Delete", "Event", "EventType", "Get", "KeyValue", "Lease", "Put",
                     "RangeResult", "TxnResult", "WatchBatch", "prefix_end"), "types"),
    **dict.fromkeys(("BackendSpec", "TLSOptions", "parse_url", "read_password"), "url"),
}


def open_backend(
    url: str | list[Any] | tuple[Any, ...],
    *,
    timeout: float = 5.0,
    tls: TLSOptions | None = None,
    username: str | None = None,
    password: str | None = None,
    password_file: str | None = None,
    password_env: str | None = None,
    connect: bool = True,
) -> Backend:
    """Open a backend by URL (see :mod:`.url` for the forms).

    With ``connect=True`` (the default) an etcd backend checks that an
    endpoint answers (and that credentials work) before returning, raising
    ``Unavailable``/``AuthFailed`` with a one-line reason otherwise.
    """
    from dataclasses import replace

    from .errors import InvalidURL
    from .url import parse_url, read_password

    spec = parse_url(url)
    if password is None:
        password = read_password(password_file=password_file, password_env=password_env)
    if password is not None and not username:
        raise InvalidURL("a password was given without a username")
    spec = replace(spec, timeout=float(timeout), tls=tls, username=username, password=password)
    return open_spec(spec, connect=connect)


def open_spec(spec: BackendSpec, *, connect: bool = True) -> Backend:
    if spec.kind == "memory":
        from .memory import MemoryBackend

        return MemoryBackend.named(spec.memory_name, timeout=spec.timeout)
    from .etcd import EtcdBackend

    return EtcdBackend(spec, connect=connect)


__all__ = [
    "AuthFailed", "Backend", "BackendSpec", "Closed", "Compacted", "Compare", "CoordError",
    "CoordTimeout", "Delete", "Event", "EventType", "Get", "InvalidURL", "KeyValue", "Lease",
    "LeaseNotFound", "Put", "RangeResult", "TLSOptions", "TxnResult", "Unavailable",
    "WatchBatch", "WatchStream", "open_backend", "open_spec", "parse_url", "prefix_end",
    "read_password",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
