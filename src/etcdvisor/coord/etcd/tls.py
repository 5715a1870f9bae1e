"""TLS credentials for the etcd channels, including insecure_skip_verify."""

from __future__ import annotations

import ssl
import tempfile
from typing import Any

from ..errors import CoordError, Unavailable
from ..url import BackendSpec, Endpoint

# from _grpc, which sets gRPC's environment before importing it; _grpc.py does not re-export it
# explicitly yet (owned elsewhere): drop the ignore once it does
from ._grpc import grpc  # type: ignore[attr-defined]


def tls_credentials(spec: BackendSpec) -> tuple[Any, str | None]:
    """gRPC channel credentials (``grpc.ChannelCredentials``, untyped: grpc ships no
    type information) and an optional target-name override; ``(None, None)`` for plain http."""
    if not spec.endpoints or not spec.endpoints[0].secure:
        return None, None
    tls = spec.tls
    root = cert = key = None
    override = None
    try:
        if tls and tls.ca:
            root = _read(tls.ca, "tls.ca")
        if tls and tls.cert:
            cert = _read(tls.cert, "tls.cert")
        if tls and tls.key:
            key = _read(tls.key, "tls.key")
        if tls and tls.insecure_skip_verify:
            root, override = _trust_server_certificate(spec.endpoints[0], tls.cert, tls.key)
    except OSError as exc:
        raise Unavailable(f"cannot fetch TLS certificate of {spec.endpoints[0]}: {exc}") from None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=cert), override


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise CoordError(f"cannot read {what} {path!r}: {exc.strerror}") from None


def _trust_server_certificate(endpoint: Endpoint, cert: str | None, key: str | None) -> tuple[bytes, str]:
    """insecure_skip_verify: gRPC Python cannot turn verification off, so we
    fetch the certificate the server presents, trust exactly it, and match
    the name it carries. This defeats MITM protection, as the option says."""
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert and key:  # a server that wants client certificates hangs up otherwise
        context.load_cert_chain(cert, key)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=endpoint.host) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    if der is None:  # an OSError: the caller reports it as Unavailable, naming the endpoint
        raise ssl.SSLError("the server presented no certificate")
    pem = ssl.DER_cert_to_PEM_cert(der)
    name = endpoint.host
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as fh:
        fh.write(pem)
        fh.flush()
        # stdlib has no public decoder; typeshed omits this private one
        decoded = ssl._ssl._test_decode_cert(fh.name)  # type: ignore[attr-defined]  # noqa: SLF001
    for kind, value in decoded.get("subjectAltName", ()):
        if kind in ("DNS", "IP Address"):
            name = value
            break
    return pem.encode(), name
