"""The etcd backend class (see the package docstring)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..base import Backend, WatchStream
from ..errors import AuthFailed, Closed, CoordError, LeaseNotFound, PermissionDenied, Unavailable
from ..types import Compare, KeyValue, Lease, Op, Put, RangeResult, TxnResult
from ..url import BackendSpec, Endpoint
from ._grpc import (
    _CHANNEL_OPTIONS,
    Message,
    Metadata,
    compare_msg,
    etcdrpc,
    grpc,
    kb,
    op_msg,
    op_result,
    short_reason,
    to_kv,
    translate,
)
from .keepalive import KeepAliveStream
from .tls import tls_credentials
from .watch import EtcdWatchStream, WatchMux


class _Connection:
    """One gRPC channel to one endpoint, with its stubs."""

    def __init__(self, endpoint: Endpoint, creds: Any, target_override: str | None,
                 metadata: Callable[[], Metadata | None]) -> None:
        """``creds``: grpc.ChannelCredentials (from tls_credentials), used when the endpoint
        is secure; ``metadata`` gives the backend's current auth metadata."""
        options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS)
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
        self.keepalive = KeepAliveStream(self.lease, metadata)
        self.watches = WatchMux(self.watch, metadata)  # every watch on one stream

    def close(self) -> None:
        self.keepalive.close()
        self.watches.close()
        self.channel.close()


class EtcdBackend(Backend):
    """A :class:`Backend` on a real etcd v3 cluster (see module docstring)."""

    def __init__(self, spec: BackendSpec, *, connect: bool = True) -> None:
        self.spec = spec
        self.url = spec.url
        self.timeout = spec.timeout
        self._lock = threading.Lock()
        self._closed = False
        self._token: str | None = None
        creds, override = tls_credentials(spec)
        self._conns = [_Connection(ep, creds, override, self._metadata) for ep in spec.endpoints]
        self._current = 0
        self._streams: set[EtcdWatchStream] = set()
        if connect:
            self._connect()

    # --- plumbing ----------------------------------------------------------
    def _connect(self) -> None:
        """Reach one endpoint, trying them in turn until ``timeout`` has passed.

        gRPC gives a connection attempt little time (``min_reconnect_backoff_ms``
        is also its minimum connect timeout) and lets the next attempts grow, so a
        single try fails on a starved machine (many supervisors starting on few
        cores) where the second or third would succeed."""
        errors: dict[str, str] = {}
        deadline = time.monotonic() + self.timeout
        pause = threading.Event()  # never set: a wait that cannot be cut short by a signal
        while True:
            for _ in self._conns:
                conn = self._conn()
                try:
                    if self.spec.username:
                        self._authenticate()
                    self.revision()
                    return
                except PermissionDenied:
                    raise
                except AuthFailed as exc:
                    raise AuthFailed(f"etcd at {conn.endpoint}: authentication failed "
                                     f"for user {self.spec.username!r}") from exc
                except CoordError as exc:
                    errors[str(conn.endpoint)] = short_reason(exc)
                    self._rotate(conn)  # timeouts too: try the next endpoint
            if time.monotonic() >= deadline:
                break
            pause.wait(0.2)
        raise Unavailable("cannot reach etcd at " + ", ".join(f"{ep} ({why})" for ep, why in errors.items()))

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

    def _metadata(self) -> Metadata | None:
        return (("token", self._token),) if self._token else None

    def _call(self, stub: str, method: str, request: Message, what: str, timeout: float | None = None) -> Message:
        if self._closed:
            raise Closed(f"{what}: backend closed")
        deadline = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            conn = self._conn()
            try:
                return getattr(getattr(conn, stub), method)(request, deadline, metadata=self._metadata())
            except grpc.RpcError as exc:
                err = translate(exc, what)
                if isinstance(err, PermissionDenied):
                    raise self.denied(err) from None
                if isinstance(err, AuthFailed) and self.spec.username and attempt == 1 \
                        and "token" in str(err).lower():
                    self._authenticate()
                    continue
                if isinstance(err, Unavailable):
                    self._rotate(conn)
                raise err from None
            except ValueError:  # grpc: "Cannot invoke RPC on closed channel!"
                if self._closed:  # closed by another thread meanwhile (shutdown)
                    raise Closed(f"{what}: backend closed") from None
                raise
        raise AssertionError("unreachable")

    def denied(self, err: PermissionDenied) -> PermissionDenied:
        """``err`` naming the etcd user the store refused (the key is in it already)."""
        return PermissionDenied(f"{err} for etcd user {self.spec.username!r}") if self.spec.username else err

    def _rotate(self, failed: _Connection) -> None:
        with self._lock:
            if len(self._conns) > 1 and self._conn() is failed:
                self._current = (self._current + 1) % len(self._conns)

    # --- reads -------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        result = self.range(key)
        return result.kvs[0] if result.kvs else None

    def range(self, start: str, end: str | None = None, *, revision: int = 0, limit: int = 0,
              keys_only: bool = False) -> RangeResult:
        req = etcdrpc.RangeRequest(key=kb(start), revision=revision, limit=limit, keys_only=keys_only)
        if end is not None:
            req.range_end = kb(end)
        resp = self._call("kv", "Range", req, f"range {start!r}")
        return RangeResult(kvs=tuple(to_kv(kv) for kv in resp.kvs), revision=resp.header.revision,
                           count=resp.count)

    # --- writes ------------------------------------------------------------
    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        data = value.encode("utf-8") if isinstance(value, str) else value
        req = etcdrpc.PutRequest(key=kb(key), value=Put(key, data).value, lease=lease)
        return int(self._call("kv", "Put", req, f"put {key!r}").header.revision)

    def delete(self, key: str, end: str | None = None) -> int:
        req = etcdrpc.DeleteRangeRequest(key=kb(key))
        if end is not None:
            req.range_end = kb(end)
        return int(self._call("kv", "DeleteRange", req, f"delete {key!r}").deleted)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = ()) -> TxnResult:
        req = etcdrpc.TxnRequest(compare=[compare_msg(c) for c in compares],
                                 success=[op_msg(op) for op in success],
                                 failure=[op_msg(op) for op in failure])
        what = "txn on " + ", ".join(sorted({c.key for c in compares})) if compares else "txn"
        resp = self._call("kv", "Txn", req, what)
        return TxnResult(succeeded=resp.succeeded, revision=resp.header.revision,
                         responses=tuple(op_result(r) for r in resp.responses))

    # --- leases ------------------------------------------------------------
    def lease_grant(self, ttl: int) -> Lease:
        resp = self._call("lease", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=int(ttl)), "lease grant")
        if resp.error:
            raise CoordError(f"lease grant: {resp.error}")
        return Lease(id=resp.ID, ttl=resp.TTL)

    def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        if self._closed:
            raise Closed("lease keepalive: backend closed")
        conn = self._conn()
        try:  # on the connection's long-lived stream (see keepalive.py)
            return conn.keepalive.refresh(lease_id, self.timeout if timeout is None else timeout)
        except Unavailable:
            self._rotate(conn)
            raise

    def lease_revoke(self, lease_id: int) -> None:
        try:
            self._call("lease", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id),
                       f"lease revoke {lease_id:x}")
        except LeaseNotFound:
            pass

    def lease_ttl(self, lease_id: int) -> int:
        resp = self._call("lease", "LeaseTimeToLive", etcdrpc.LeaseTimeToLiveRequest(ID=lease_id),
                          f"lease ttl {lease_id:x}")
        return int(resp.TTL) if resp.TTL >= 0 else -1

    # --- watches -----------------------------------------------------------
    def watch(self, key: str, end: str | None = None, *, start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False) -> WatchStream:
        if self._closed:
            raise Closed("watch: backend closed")
        create = etcdrpc.WatchCreateRequest(key=kb(key), start_revision=start_revision,
                                            prev_kv=prev_kv, progress_notify=progress_notify)
        if end is not None:
            create.range_end = kb(end)
        stream = EtcdWatchStream(self, self._conn(), etcdrpc.WatchRequest(create_request=create), key)
        with self._lock:
            self._streams.add(stream)
        try:
            stream.wait_created(self.timeout)
        except CoordError:
            stream.cancel()
            raise
        return stream

    def _forget(self, stream: EtcdWatchStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    # --- maintenance -------------------------------------------------------
    def revision(self) -> int:
        # Maintenance.Status carries the revision in its header and needs no
        # key permission: a member whose etcd user may read only its cluster's
        # prefix can still connect (docs/etcd-auth.md). A range read of any
        # fixed key would be outside that prefix.
        return int(self._call("maintenance", "Status", etcdrpc.StatusRequest(), "read revision").header.revision)

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
