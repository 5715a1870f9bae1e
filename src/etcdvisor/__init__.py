"""etcdvisor: a config-driven process supervisor coordinated through etcd,
and a library of etcd recipes (sequence, election, counter, wait group,
topic, keep-alive, ids, registry, layered config, KV facade with locks).
"""

__version__ = "0.1.0"
