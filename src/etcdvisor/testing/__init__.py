"""Test against a real etcd with one fixture.

Installing etcdvisor registers a pytest plugin (``etcdvisor.testing.plugin``)
with these fixtures:

* ``etcd_server`` (session): a real etcd on free loopback ports, temp data dir
* ``etcd_url``: its client URL
* ``etcd_prefix``: a random key prefix for this test (nothing wipes the keyspace)
* ``private_etcd``: a server of this test's own, to stop/pause/restart freely
* ``etcd_cluster``: a factory starting an N-member cluster (default 3)

The servers themselves are :class:`EtcdServer` and :class:`EtcdCluster`,
usable outside pytest too.
"""

from .server import EtcdCluster, EtcdNotFound, EtcdServer, find_etcd_binary, free_port

__all__ = ["EtcdCluster", "EtcdNotFound", "EtcdServer", "find_etcd_binary", "free_port"]
