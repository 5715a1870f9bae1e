"""Parse backend URLs and connection options.

Accepted forms (several etcd endpoints are separated by commas):

* ``memory://`` / ``memory://NAME`` / ``mem:`` -- the in-process backend; one
  store per NAME per process (default name ``default``).
* ``etcd://host:port[,host:port...]`` -- plaintext etcd
* ``http://host:port[,http://host:port...]`` -- plaintext etcd
* ``https://host:port[,...]`` -- etcd over TLS
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidURL


@dataclass(frozen=True)
class TLSOptions:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class BackendSpec:
    kind: str  # "etcd" | "memory"
    endpoints: tuple[Endpoint, ...] = ()
    memory_name: str = "default"
    tls: TLSOptions | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0

    @property
    def url(self) -> str:
        """The URL without credentials, for logs and children."""
        if self.kind == "memory":
            return f"memory://{self.memory_name}"
        return ",".join(str(e) for e in self.endpoints)


def parse_url(url: str | list[Any] | tuple[Any, ...]) -> BackendSpec:
    """Turn a URL (or a list of endpoint URLs) into a :class:`BackendSpec`.

    Raises :class:`InvalidURL` naming what is wrong."""
    if isinstance(url, (list, tuple)):
        parts = [str(u).strip() for u in url]
    else:
        if not isinstance(url, str) or not url.strip():
            raise InvalidURL(f"invalid backend URL {url!r}: empty")
        text = url.strip()
        if text == "mem:" or text.startswith("memory://"):
            name = text[len("memory://"):] if text.startswith("memory://") else ""
            if "/" in name or "," in name:
                raise InvalidURL(f"invalid backend URL {url!r}: memory name may not contain '/' or ','")
            return BackendSpec(kind="memory", memory_name=name or "default")
        parts = [p.strip() for p in text.split(",")]
    if not parts:
        raise InvalidURL("invalid backend URL: no endpoints")
    endpoints = []
    scheme_default = None
    for part in parts:
        if not part:
            raise InvalidURL(f"invalid backend URL {url!r}: empty endpoint")
        endpoints.append(_parse_endpoint(part, url, scheme_default))
        scheme_default = "https" if endpoints[-1].secure else "http"
    if len({e.secure for e in endpoints}) > 1:
        raise InvalidURL(f"invalid backend URL {url!r}: mixes http and https endpoints")
    return BackendSpec(kind="etcd", endpoints=tuple(endpoints))


def _parse_endpoint(part: str, whole: object, scheme_default: str | None) -> Endpoint:
    scheme = scheme_default or "http"
    rest = part
    if "://" in part:
        scheme, rest = part.split("://", 1)
        scheme = scheme.lower()
        if scheme == "etcd":
            scheme = "http"
        if scheme not in ("http", "https"):
            raise InvalidURL(
                f"invalid backend URL {whole!r}: unknown scheme {scheme!r} "
                "(use etcd://, http://, https:// or memory://)"
            )
    rest = rest.rstrip("/")
    if "@" in rest:
        raise InvalidURL(
            f"invalid backend URL {whole!r}: credentials in URLs are not accepted; "
            "use username and password_file/password_env"
        )
    if "/" in rest:
        raise InvalidURL(f"invalid backend URL {whole!r}: unexpected path in {part!r}")
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host, port_text = rest, "2379"
    host = host.strip("[]")
    if not host:
        raise InvalidURL(f"invalid backend URL {whole!r}: missing host in {part!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidURL(f"invalid backend URL {whole!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise InvalidURL(f"invalid backend URL {whole!r}: port {port} out of range")
    return Endpoint(host=host, port=port, secure=(scheme == "https"))


def read_password(*, password_file: str | None = None, password_env: str | None = None) -> str | None:
    """Read a password from a file or an environment variable (never argv)."""
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise InvalidURL(f"cannot read password_file {password_file!r}: {exc.strerror}") from None
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise InvalidURL(f"password_env {password_env!r} is not set in the environment")
        return value
    return None
