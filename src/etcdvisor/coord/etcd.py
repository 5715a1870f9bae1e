"""The etcd v3 backend: the only module that imports the etcd client and grpc.

It speaks the etcd v3 gRPC API through the protobuf stubs shipped with
``cslab-etcd3`` (``etcd3.etcdrpc``), managing channels itself so that:

* every call carries a timeout (``spec.timeout`` unless given) and a failed
  endpoint is retried at once on the next call (no lock-out period: the
  client library's own endpoint book-keeping, which locks a failed node out
  for 300 s by default, is not used);
* gRPC reconnects quickly after an etcd restart (reconnect backoff capped at
  1 s instead of gRPC's default two minutes);
* client errors are translated at this boundary into
  :mod:`etcdvisor.coord.errors` (tooz's failure translator);
* an expired auth token is renewed transparently, once per call.

Limits: reads go to one endpoint at a time (linearizable, through that
member's leader); with several endpoints a failed call moves the next call
to the next endpoint, the failed call itself is not retried (a write may or
may not have been applied, only the caller can tell).
"""

from __future__ import annotations

import os
import queue
import ssl
import tempfile
import threading
from typing import Iterator, Sequence

# The supervisor forks children while gRPC threads run; gRPC's fork handlers
# are not needed (children exec at once) and log noise at every fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from etcd3 import etcdrpc  # noqa: E402

try:  # idle cost: see _quiet_blocked_streams
    from grpc import _common as _grpc_common  # noqa: E402
except ImportError:  # pragma: no cover - a gRPC without the private module
    _grpc_common = None


def _quiet_blocked_streams() -> None:
    """gRPC's sync API waits for the next stream message in slices of 0.1 s
    so that the main thread can see KeyboardInterrupt: every thread blocked
    on a watch then wakes ten times a second, which is most of an idle
    supervisor's CPU. Our streams are read on worker threads and cancelled
    by notification, so a long slice loses nothing; unary calls all carry
    their own deadlines."""
    if _grpc_common is not None and getattr(_grpc_common, "MAXIMUM_WAIT_TIMEOUT", 0) < 30:
        _grpc_common.MAXIMUM_WAIT_TIMEOUT = 30.0


_quiet_blocked_streams()

from .base import Backend, WatchStream  # noqa: E402
from .errors import AuthFailed, Closed, Compacted, CoordError, CoordTimeout, LeaseNotFound, Unavailable
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
)
from .url import BackendSpec, Endpoint

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # detect a dead peer under an open watch; etcd accepts pings every 5 s,
    # but only while a call is active (otherwise it answers GOAWAY too_many_pings)
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

_COMPARE_TARGET = {
    "value": etcdrpc.Compare.VALUE,
    "version": etcdrpc.Compare.VERSION,
    "create": etcdrpc.Compare.CREATE,
    "mod": etcdrpc.Compare.MOD,
    "lease": etcdrpc.Compare.LEASE,
}
_COMPARE_OP = {
    "=": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
_COMPARE_FIELD = {"value": "value", "version": "version", "create": "create_revision",
                  "mod": "mod_revision", "lease": "lease"}


def _kb(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _ks(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _kv(msg) -> KeyValue:
    return KeyValue(key=_ks(msg.key), value=bytes(msg.value), create_revision=msg.create_revision,
                    mod_revision=msg.mod_revision, version=msg.version, lease=msg.lease)


def _short_reason(exc: CoordError) -> str:
    """'Connection refused' out of gRPC's long 'failed to connect to all
    addresses; last error: ...: Connection refused'."""
    if isinstance(exc, CoordTimeout):
        return "timed out"
    text = str(exc).rstrip()
    return text.rsplit(": ", 1)[-1] or type(exc).__name__


def translate(exc: grpc.RpcError, what: str) -> CoordError:
    """Map a gRPC error to our hierarchy, with a one-line message."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    text = f"{what}: {details or code}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CoordTimeout(f"{what}: timed out")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return Unavailable(text)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthFailed(text)
    if "lease not found" in details:
        return LeaseNotFound(text)
    if "compacted" in details:
        return Compacted(0)
    return CoordError(text)


class _Connection:
    """One gRPC channel to one endpoint, with its stubs."""

    def __init__(self, endpoint: Endpoint, creds, target_override: str | None):
        options = list(_CHANNEL_OPTIONS)
        if target_override:
            options.append(("grpc.ssl_target_name_override", target_override))
        if endpoint.secure:
            self.channel = grpc.secure_channel(f"{endpoint.host}:{endpoint.port}", creds, options=options)
        else:
            self.channel = grpc.insecure_channel(f"{endpoint.host}:{endpoint.port}", options=options)
        self.endpoint = endpoint
        self.kv = etcdrpc.KVStub(self.channel)
        self.lease = etcdrpc.LeaseStub(self.channel)
        self.watch = etcdrpc.WatchStub(self.channel)
        self.maintenance = etcdrpc.MaintenanceStub(self.channel)
        self.auth = etcdrpc.AuthStub(self.channel)

    def close(self):
        self.channel.close()


class EtcdBackend(Backend):
    """A :class:`Backend` on a real etcd v3 cluster (see module docstring)."""

    def __init__(self, spec: BackendSpec, *, connect: bool = True):
        self.spec = spec
        self.url = spec.url
        self.timeout = spec.timeout
        self._lock = threading.Lock()
        self._closed = False
        self._token: str | None = None
        creds, override = _tls_credentials(spec)
        self._conns = [_Connection(ep, creds, override) for ep in spec.endpoints]
        self._current = 0
        self._streams: set[_EtcdWatchStream] = set()
        if connect:
            self._connect()

    # --- plumbing ----------------------------------------------------------
    def _connect(self) -> None:
        errors = []
        for _ in self._conns:
            try:
                if self.spec.username:
                    self._authenticate()
                self.revision()
                return
            except AuthFailed as exc:
                raise AuthFailed(f"etcd at {self._conn().endpoint}: authentication failed "
                                 f"for user {self.spec.username!r}") from exc
            except CoordError as exc:
                errors.append(f"{self._conn().endpoint} ({_short_reason(exc)})")
        raise Unavailable("cannot reach etcd at " + ", ".join(errors))

    def _conn(self) -> _Connection:
        return self._conns[self._current]

    def _authenticate(self) -> None:
        req = etcdrpc.AuthenticateRequest(name=self.spec.username, password=self.spec.password or "")
        try:
            resp = self._conn().auth.Authenticate(req, self.timeout)
        except grpc.RpcError as exc:
            err = translate(exc, "authenticate")
            if "authentication failed" in str(err) or "invalid" in str(err):
                raise AuthFailed(str(err)) from None
            raise err from None
        self._token = resp.token

    def _metadata(self):
        return (("token", self._token),) if self._token else None

    def _call(self, stub: str, method: str, request, what: str, timeout: float | None = None):
        if self._closed:
            raise Closed(f"{what}: backend closed")
        deadline = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            conn = self._conn()
            try:
                return getattr(getattr(conn, stub), method)(request, deadline, metadata=self._metadata())
            except grpc.RpcError as exc:
                err = translate(exc, what)
                if isinstance(err, AuthFailed) and self.spec.username and attempt == 1 \
                        and "token" in str(err).lower():
                    self._authenticate()
                    continue
                if isinstance(err, Unavailable):
                    self._rotate(conn)
                raise err from None
        raise AssertionError("unreachable")

    def _rotate(self, failed: _Connection) -> None:
        with self._lock:
            if len(self._conns) > 1 and self._conn() is failed:
                self._current = (self._current + 1) % len(self._conns)

    # --- reads -------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        result = self.range(key)
        return result.kvs[0] if result.kvs else None

    def range(self, start, end=None, *, revision=0, limit=0, keys_only=False) -> RangeResult:
        req = etcdrpc.RangeRequest(key=_kb(start), revision=revision, limit=limit, keys_only=keys_only)
        if end is not None:
            req.range_end = _kb(end)
        resp = self._call("kv", "Range", req, f"range {start!r}")
        return RangeResult(kvs=tuple(_kv(kv) for kv in resp.kvs), revision=resp.header.revision,
                           count=resp.count)

    # --- writes ------------------------------------------------------------
    def put(self, key, value, *, lease=0) -> int:
        req = etcdrpc.PutRequest(key=_kb(key), value=Put(key, value).value, lease=lease)
        return self._call("kv", "Put", req, f"put {key!r}").header.revision

    def delete(self, key, end=None) -> int:
        req = etcdrpc.DeleteRangeRequest(key=_kb(key))
        if end is not None:
            req.range_end = _kb(end)
        return self._call("kv", "DeleteRange", req, f"delete {key!r}").deleted

    def txn(self, compares: Sequence[Compare], success=(), failure=()) -> TxnResult:
        req = etcdrpc.TxnRequest(compare=[_compare_msg(c) for c in compares],
                                 success=[_op_msg(op) for op in success],
                                 failure=[_op_msg(op) for op in failure])
        what = "txn on " + ", ".join(sorted({c.key for c in compares})) if compares else "txn"
        resp = self._call("kv", "Txn", req, what)
        return TxnResult(succeeded=resp.succeeded, revision=resp.header.revision,
                         responses=tuple(_op_result(r) for r in resp.responses))

    # --- leases ------------------------------------------------------------
    def lease_grant(self, ttl: int) -> Lease:
        resp = self._call("lease", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=int(ttl)), "lease grant")
        if resp.error:
            raise CoordError(f"lease grant: {resp.error}")
        return Lease(id=resp.ID, ttl=resp.TTL)

    def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        if self._closed:
            raise Closed("lease keepalive: backend closed")
        deadline = self.timeout if timeout is None else timeout
        conn = self._conn()
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        try:
            responses = conn.lease.LeaseKeepAlive(iter([request]), deadline, metadata=self._metadata())
            for resp in responses:
                ttl = resp.TTL
                responses.cancel()
                return max(0, ttl)
        except grpc.RpcError as exc:
            err = translate(exc, f"lease keepalive {lease_id:x}")
            if isinstance(err, Unavailable):
                self._rotate(conn)
            raise err from None
        raise Unavailable(f"lease keepalive {lease_id:x}: stream ended without an answer")

    def lease_revoke(self, lease_id: int) -> None:
        try:
            self._call("lease", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id),
                       f"lease revoke {lease_id:x}")
        except LeaseNotFound:
            pass

    def lease_ttl(self, lease_id: int) -> int:
        resp = self._call("lease", "LeaseTimeToLive", etcdrpc.LeaseTimeToLiveRequest(ID=lease_id),
                          f"lease ttl {lease_id:x}")
        return resp.TTL if resp.TTL >= 0 else -1

    # --- watches -----------------------------------------------------------
    def watch(self, key, end=None, *, start_revision=0, prev_kv=False, progress_notify=False) -> WatchStream:
        if self._closed:
            raise Closed("watch: backend closed")
        create = etcdrpc.WatchCreateRequest(key=_kb(key), start_revision=start_revision,
                                            prev_kv=prev_kv, progress_notify=progress_notify)
        if end is not None:
            create.range_end = _kb(end)
        stream = _EtcdWatchStream(self, self._conn(), etcdrpc.WatchRequest(create_request=create), key)
        with self._lock:
            self._streams.add(stream)
        try:
            stream.wait_created(self.timeout)
        except CoordError:
            stream.cancel()
            raise
        return stream

    def _forget(self, stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    # --- maintenance -------------------------------------------------------
    def revision(self) -> int:
        req = etcdrpc.RangeRequest(key=b"\0", keys_only=True, count_only=True)
        return self._call("kv", "Range", req, "read revision").header.revision

    def compact(self, revision: int) -> None:
        self._call("kv", "Compact", etcdrpc.CompactionRequest(revision=revision, physical=True),
                   f"compact {revision}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()
        for conn in self._conns:
            conn.close()


class _EtcdWatchStream(WatchStream):
    """One gRPC Watch stream carrying one watch."""

    def __init__(self, backend: EtcdBackend, conn: _Connection, create_request, key: str):
        self._backend = backend
        self._key = key
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(create_request)
        self._cancelled = threading.Event()
        self._responses = conn.watch.Watch(self._request_iter(), metadata=backend._metadata())
        self._first = None
        self._conn = conn

    def _request_iter(self):
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def wait_created(self, timeout: float) -> None:
        """Block until the server confirmed the watch (or failed it)."""
        done = threading.Event()
        holder: list = []

        def first():
            try:
                holder.append(next(self._responses))
            except grpc.RpcError as exc:
                holder.append(translate(exc, f"watch {self._key!r}"))
            except StopIteration:
                holder.append(Unavailable(f"watch {self._key!r}: stream closed"))
            done.set()

        threading.Thread(target=first, daemon=True, name="etcd-watch-create").start()
        if not done.wait(timeout):
            raise CoordTimeout(f"watch {self._key!r}: not confirmed within {timeout:g}s")
        result = holder[0]
        if isinstance(result, CoordError):
            if isinstance(result, Unavailable):
                self._backend._rotate(self._conn)
            raise result
        self._first = result

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            pending = [self._first] if self._first is not None else []
            self._first = None
            while True:
                resp = pending.pop() if pending else next(self._responses)
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise Unavailable(f"watch {self._key!r} cancelled by server: {resp.cancel_reason}")
                if resp.created and not resp.events:
                    continue
                events = tuple(_event(ev) for ev in resp.events)
                yield WatchBatch(events=events, revision=resp.header.revision)
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                return
            raise translate(exc, f"watch {self._key!r}") from None
        except StopIteration:
            if self._cancelled.is_set():
                return
            raise Unavailable(f"watch {self._key!r}: stream ended") from None
        finally:
            self._backend._forget(self)

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._requests.put(None)
        self._responses.cancel()


def _event(ev) -> Event:
    kind = EventType.DELETE if ev.type == 1 else EventType.PUT
    prev = _kv(ev.prev_kv) if ev.HasField("prev_kv") else None
    return Event(type=kind, kv=_kv(ev.kv), prev_kv=prev)


def _compare_msg(c: Compare):
    msg = etcdrpc.Compare(key=_kb(c.key), target=_COMPARE_TARGET[c.target], result=_COMPARE_OP[c.op])
    setattr(msg, _COMPARE_FIELD[c.target], c.operand)
    return msg


def _op_msg(op):
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=_kb(op.key), value=op.value,
                                                                 lease=op.lease))
    if isinstance(op, Delete):
        req = etcdrpc.DeleteRangeRequest(key=_kb(op.key))
        if op.range_end is not None:
            req.range_end = _kb(op.range_end)
        return etcdrpc.RequestOp(request_delete_range=req)
    if isinstance(op, Get):
        req = etcdrpc.RangeRequest(key=_kb(op.key))
        if op.range_end is not None:
            req.range_end = _kb(op.range_end)
        return etcdrpc.RequestOp(request_range=req)
    raise TypeError(f"unknown txn op {op!r}")


def _op_result(resp):
    kind = resp.WhichOneof("response")
    if kind == "response_put":
        return resp.response_put.header.revision
    if kind == "response_delete_range":
        return resp.response_delete_range.deleted
    if kind == "response_range":
        return tuple(_kv(kv) for kv in resp.response_range.kvs)
    return None


def _tls_credentials(spec: BackendSpec):
    """gRPC channel credentials and an optional target-name override."""
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


def _trust_server_certificate(endpoint: Endpoint, cert: str | None, key: str | None):
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
            pem = ssl.DER_cert_to_PEM_cert(tls_sock.getpeercert(binary_form=True))
    name = endpoint.host
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as fh:
        fh.write(pem)
        fh.flush()
        decoded = ssl._ssl._test_decode_cert(fh.name)  # noqa: SLF001 - stdlib has no public decoder
    for kind, value in decoded.get("subjectAltName", ()):
        if kind in ("DNS", "IP Address"):
            name = value
            break
    return pem.encode(), name
