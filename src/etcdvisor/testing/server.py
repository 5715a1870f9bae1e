"""A multi-member etcd cluster for tests, built on :mod:`etcdvisor.etcd_server`."""

from __future__ import annotations

import os

from ..etcd_server import EtcdNotFound, EtcdServer, find_etcd_binary, free_port

__all__ = ["EtcdCluster", "EtcdNotFound", "EtcdServer", "find_etcd_binary", "free_port"]


class EtcdCluster:
    """A multi-member etcd cluster on loopback (default 3 members)."""

    def __init__(self, size: int = 3, binary: str | None = None):
        self.members = [EtcdServer(name=f"etcd{i}", binary=binary) for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"etcdvisor-{os.getpid()}-{self.members[0].peer_port}"
        for member in self.members:
            member.initial_cluster = initial
            member.cluster_token = token

    @property
    def url(self) -> str:
        return ",".join(m.url for m in self.members)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:
            member.start(wait=False)
        for member in self.members:
            member.wait_healthy(timeout)
        return self

    def cleanup(self) -> None:
        for member in self.members:
            member.cleanup()
