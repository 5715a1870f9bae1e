"""HTTP/1.x on the wire for the member's listener (:mod:`.httpserve`): one request
per connection, parsed from a bounded buffer; answers encoded in one piece.

Limits (an answer with the status given, then the connection is closed):

* request line at most ``MAX_REQUEST_LINE`` bytes (414), request line and headers
  together at most ``MAX_HEAD`` bytes (431) and ``MAX_HEADERS`` header lines (431);
* a body only with ``Content-Length`` (``Transfer-Encoding``: 501), at most
  ``MAX_BODY`` bytes (413);
* ASCII only: a method is upper-case letters, a target starts with ``/`` and has no
  space or control character, a header name is a token, a header value has no control
  character but tab, no obsolete line folding; anything else is 400, another HTTP
  version 505.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD = 16 * 1024
MAX_HEADERS = 64
MAX_BODY = 64 * 1024

_METHOD = re.compile(rb"[A-Z]{1,16}\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
TEXT = "text/plain; charset=utf-8"


class BadRequest(Exception):
    """The request cannot be served; ``status`` is the answer's code."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the target without its query string
    query: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer: str  # "host:port" of the client

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = field(default=())


def text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (message + "\n").encode(), TEXT, headers)


def head_length(buffer: bytes | bytearray, start: int = 0) -> int | None:
    """Bytes of the request line and headers once they are complete (blank line
    included), else None; BadRequest once they can no longer fit the limits.
    ``start``: no blank line ends before it (what an earlier call searched)."""
    end = _HEAD_END.search(buffer, start)
    if end is None:
        if len(buffer) > MAX_REQUEST_LINE and buffer.find(b"\n", 0, MAX_REQUEST_LINE + 1) < 0:
            raise BadRequest(414, "request line too long")
        if len(buffer) > MAX_HEAD:
            raise BadRequest(431, "request headers too large")
        return None
    if end.end() > MAX_HEAD + 4:
        raise BadRequest(431, "request headers too large")
    return end.end()


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, path, query, headers) of a complete head (see :func:`head_length`)."""
    lines = head.rstrip(b"\r\n").split(b"\n")
    request_line = lines[0].removesuffix(b"\r")
    if len(request_line) > MAX_REQUEST_LINE:
        raise BadRequest(414, "request line too long")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _METHOD.match(parts[0]) or not _TARGET.match(parts[1]):
        raise BadRequest(400, "malformed request line")
    if parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise BadRequest(505 if parts[2].startswith(b"HTTP/") else 400, "HTTP/1.0 or HTTP/1.1 only")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many request headers")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.removesuffix(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise BadRequest(400, "malformed header line")
        value = value.strip(b" \t")
        if _VALUE_BAD.search(value) or not value.isascii():
            raise BadRequest(400, "control or non-ASCII character in a header")
        key = name.decode().lower()
        headers[key] = f"{headers[key]}, {value.decode()}" if key in headers else value.decode()
    target = parts[1].decode()
    path, _, query = target.partition("?")
    return parts[0].decode(), path, query, headers


def body_length(headers: Mapping[str, str]) -> int:
    """Bytes of body to read after the head (0 without ``Content-Length``)."""
    if "transfer-encoding" in headers:
        raise BadRequest(501, "Transfer-Encoding is not supported: send Content-Length")
    declared = headers.get("content-length")
    if declared is None:
        return 0
    if not declared.isdigit() or len(declared) > 12:
        raise BadRequest(400, "malformed Content-Length")
    if int(declared) > MAX_BODY:
        raise BadRequest(413, f"request body larger than {MAX_BODY} bytes")
    return int(declared)


def encode(response: Response, with_body: bool = True) -> bytes:
    """The whole answer: status line, headers (``Connection: close``: one request per
    connection), body unless ``with_body`` is false (HEAD)."""
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {phrase}", "Server: etcdvisor",
             f"Date: {formatdate(usegmt=True)}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}", "Cache-Control: no-store",
             "X-Content-Type-Options: nosniff", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + response.body if with_body else head
