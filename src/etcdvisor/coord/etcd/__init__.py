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

from ._grpc import translate
from .backend import EtcdBackend

__all__ = ["EtcdBackend", "translate"]
