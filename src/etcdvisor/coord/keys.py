"""Where a cluster keeps its state in the store (one prefix per cluster).

::

    /etcdvisor/<cluster>/members/<member>                  member record (JSON, lease)
    /etcdvisor/<cluster>/roles/<role>/shard/<member>       sharded membership (lease)
    /etcdvisor/<cluster>/roles/<role>/assignment           fixed shards: the coordinator's plan
    /etcdvisor/<cluster>/roles/<role>/alive/<member>       fenced sharded: partitions alive or announced (lease)
    /etcdvisor/<cluster>/roles/<role>/grants/<member>/grant  fenced sharded: start grant (coordinator's lease)
    /etcdvisor/<cluster>/roles/<role>/election/<lease>     singleton/cron/job election (lease)
    /etcdvisor/<cluster>/roles/<role>/status/<member>      a member's view of the role (JSON, lease)
    /etcdvisor/<cluster>/roles/<role>/ticks/<tick-id>      cron tick claims and results
    /etcdvisor/<cluster>/roles/<role>/job                  job completion record
    /etcdvisor/<cluster>/waitgroups/<name>                 distributed wait groups
    /etcdvisor/<cluster>/topics/<name>/...                 topic messages, claims, acks
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/etcdvisor/"


@dataclass(frozen=True)
class ClusterKeys:
    cluster: str

    @property
    def base(self) -> str:
        return f"{ROOT}{self.cluster}/"

    @property
    def members(self) -> str:
        return self.base + "members/"

    def member(self, member_id: str) -> str:
        return self.members + member_id

    def role(self, role: str) -> str:
        return f"{self.base}roles/{role}/"

    def shard(self, role: str) -> str:
        return self.role(role) + "shard/"

    def election(self, role: str) -> str:
        return self.role(role) + "election/"

    def role_status(self, role: str) -> str:
        return self.role(role) + "status/"

    def ticks(self, role: str) -> str:
        return self.role(role) + "ticks/"

    def job(self, role: str) -> str:
        return self.role(role) + "job"

    def waitgroup(self, name: str) -> str:
        return f"{self.base}waitgroups/{name}"

    def topic(self, name: str) -> str:
        return f"{self.base}topics/{name}/"
