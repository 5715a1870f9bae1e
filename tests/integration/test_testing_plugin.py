"""The pytest plugin's servers start even when a port picked free is taken before etcd binds
it (tests run beside each other on 4 workers, and other programs pick ports too)."""

import socket

import pytest

from etcdvisor import etcd_server
from etcdvisor.testing import plugin

pytestmark = pytest.mark.slow


def test_a_server_whose_port_was_taken_meanwhile_starts_on_other_ports(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        real = etcd_server.free_port
        picks = iter([port])  # the first pick is a port someone else listens on by now
        monkeypatch.setattr(etcd_server, "free_port", lambda host="127.0.0.1": next(picks, None) or real(host))
        server = plugin._start("etcd-retry")
        try:
            assert server.client_port != port and server.healthy()
        finally:
            server.cleanup()
