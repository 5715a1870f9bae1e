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
    /etcdvisor/<cluster>/roles/<role>/done/<count>/<index> a one-shot child's final exit (after: barriers)
    /etcdvisor/<cluster>/waitgroups/<name>                 distributed wait groups
    /etcdvisor/<cluster>/topics/<name>/...                 topic messages, claims, acks, cursors
                                                           (layout inside: recipes/topic.py)
    /etcdvisor/<cluster>/control/<role>/...                operator commands (runtime/control.py)
    /etcdvisor/<cluster>/rollouts/<role>                   rolling restarts (runtime/rollout_store.py)

Every key of a cluster is built here: runners, status, metrics, ops and the CLI
never spell a segment of this layout themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/etcdvisor/"
SHARED_ROOT = ROOT + "_shared"  # layered config shared by clusters (no cluster name starts with _)


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

    @property
    def roles(self) -> str:
        return self.base + "roles/"

    def role(self, role: str) -> str:
        return f"{self.roles}{role}/"

    def shard(self, role: str) -> str:
        return self.role(role) + "shard/"

    def election(self, role: str) -> str:
        return self.role(role) + "election/"

    def role_status(self, role: str) -> str:
        return self.role(role) + "status/"

    def ticks(self, role: str) -> str:
        return self.role(role) + "ticks/"

    def tick(self, role: str, tick_id: str) -> str:
        return self.ticks(role) + tick_id

    def job(self, role: str) -> str:
        return self.role(role) + "job"

    def done(self, role: str) -> str:
        """Prefix of a role's completion records (``done/<count>/<index>``)."""
        return self.role(role) + "done/"

    def done_record(self, role: str, count: int, index: int) -> str:
        return f"{self.done(role)}{count}/{index}"

    def alive(self, role: str) -> str:
        """Prefix of a fenced sharded role's alive records (``alive/<member>``)."""
        return self.role(role) + "alive/"

    def grant(self, role: str, member: str) -> str:
        """A fenced sharded member's start grant: ``grants/<member>/grant``, under a prefix of its
        own so that the member's watch on that prefix sees its grant and nothing else."""
        return f"{self.role(role)}grants/{member}/grant"

    def assignment(self, role: str) -> str:
        return self.role(role) + "assignment"

    @property
    def waitgroups(self) -> str:
        return self.base + "waitgroups/"

    def waitgroup(self, name: str) -> str:
        return self.waitgroups + name

    @property
    def topics(self) -> str:
        return self.base + "topics/"

    def topic(self, name: str) -> str:
        return f"{self.topics}{name}/"

    def topic_messages(self, name: str) -> str:
        return self.topic(name) + "msg/"

    def topic_done(self, name: str, group: str) -> str:
        """Prefix of a queue group's done markers (``done/<group>/<id>``)."""
        return f"{self.topic(name)}done/{group}/"

    def topic_cursor(self, name: str, role: str, member: str) -> str:
        """A broadcast subscriber's cursor: the last message id it processed."""
        return f"{self.topic(name)}cursors/{role}/{member}"

    @property
    def control(self) -> str:
        return self.base + "control/"

    @property
    def rollouts(self) -> str:
        return self.base + "rollouts/"

    def rollout(self, role: str) -> str:
        return self.rollouts + role
