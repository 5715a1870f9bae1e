"""etcd recipes built on :mod:`etcdvisor.coord`, one per module, each working
on every backend (real etcd and the in-memory one):

* :mod:`.sequence` -- ``Sequence``, ``Info``: INDEX/COUNT by join order
* :mod:`.election` -- ``Election``, ``LeadershipWatch``: leader election with fencing tokens
* :mod:`.counter` -- ``Counter``: atomic distributed counter
* :mod:`.waitgroup` -- ``WaitGroup``: distributed ``sync.WaitGroup``
* :mod:`.topic` / :mod:`.topic_queue` -- ``Topic``, ``QueueConsumer``: pub/sub, broadcast and queue
* :mod:`.keepalive` -- ``KeepAliveNode``: a key that lives as long as the process
* :mod:`.ids` -- ``IdGenerator``: 64-bit time-sortable unique ids
* :mod:`.lock` -- ``Lock``: named distributed locks with fencing tokens and a maximum hold time
* :mod:`.queue_wait` -- ``WaitQueue``: the queue-wait protocol shared by lock and election
* :mod:`.registry` -- ``Registry``, ``ServiceInfo``: service registration and discovery
* :mod:`.applications` -- ``ApplicationRoute``: application routes of the registry, and their events
* :mod:`.layered_config` -- ``LayeredConfig``, ``Layout``: typed configuration in four levels,
  in the etcdvisor or the ergo registrar's key layout

Imports are lazy: ``from etcdvisor.recipes import Election`` loads only that module.
"""

from importlib import import_module

_EXPORTS = {
    "Sequence": "sequence", "Info": "sequence",
    "Election": "election", "LeadershipWatch": "election", "CampaignCancelled": "election",
    "Counter": "counter",
    "WaitGroup": "waitgroup", "WaitGroupNegative": "waitgroup",
    "Topic": "topic", "Message": "topic", "Subscription": "topic", "PayloadTooLarge": "topic",
    "QueueConsumer": "topic_queue",
    "KeepAliveNode": "keepalive",
    "IdGenerator": "ids", "decompose": "ids",
    "Lock": "lock", "LockTimeout": "lock", "LockLost": "lock", "LockReentry": "lock",
    "LockNotHeld": "lock", "LockState": "lock",
    "WaitQueue": "queue_wait", "WaitOutcome": "queue_wait", "EntryLost": "queue_wait",
    "Registry": "registry", "ServiceInfo": "registry",
    "ApplicationRoute": "applications", "ApplicationMode": "applications",
    "ApplicationState": "applications", "ApplicationEvent": "applications",
    "ApplicationEventKind": "applications",
    "LayeredConfig": "layered_config", "Layout": "layered_config", "ConfigValueError": "layered_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
