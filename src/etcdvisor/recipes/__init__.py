"""etcd recipes built on :mod:`etcdvisor.coord`: one recipe per module (locks, election,
sequence, service registry, layered config, ...), each working on every backend."""
