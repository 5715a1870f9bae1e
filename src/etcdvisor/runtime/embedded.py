"""``etcd.endpoints: embedded``: a private single-node etcd for one host.

Started only when the config asks for it (never as a silent fallback). It
listens on loopback, on 2379 when free (else a free port), keeps its data
under the state directory, and is stopped when the supervisor exits. A
second supervisor on the same host joins it with the printed endpoint.
"""

from __future__ import annotations

import os
import socket

from ..etcd_server import EtcdNotFound, EtcdServer, find_etcd_binary, free_port


class EmbeddedEtcdError(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_embedded(data_dir: str, timeout: float = 30.0) -> EtcdServer:
    try:
        binary = find_etcd_binary()
    except EtcdNotFound as exc:
        raise EmbeddedEtcdError(f"etcd.endpoints is 'embedded' but {exc}") from None
    os.makedirs(data_dir, exist_ok=True)
    client = 2379 if _port_free(2379) else free_port()
    peer = 2380 if _port_free(2380) else free_port()
    server = EtcdServer(name="etcdvisor-embedded", data_dir=os.path.join(data_dir, "data"),
                        client_port=client, peer_port=peer, binary=binary,
                        log_path=os.path.join(data_dir, "etcd.log"))
    try:
        server.start(timeout=timeout)
    except RuntimeError as exc:
        server.stop()
        raise EmbeddedEtcdError(f"embedded etcd did not start: {exc}") from None
    return server
