"""TLS to etcd: CA + client certificate, a server the client does not trust,
and insecure_skip_verify."""

import subprocess

import pytest

from etcdvisor.coord import TLSOptions, Unavailable, open_backend
from etcdvisor.testing import EtcdServer

pytestmark = pytest.mark.slow


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)
    return d


@pytest.fixture(scope="module")
def tls_etcd(pki):
    server = EtcdServer(name="etcd-tls", tls={"cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
                                              "ca": str(pki / "ca.pem"),
                                              "client_cert": str(pki / "client.pem"),
                                              "client_key": str(pki / "client.key")})
    server.start()
    yield server
    server.cleanup()


def test_tls_with_ca_and_client_certificate(tls_etcd, pki):
    assert tls_etcd.url.startswith("https://")
    tls = TLSOptions(ca=str(pki / "ca.pem"), cert=str(pki / "client.pem"), key=str(pki / "client.key"))
    backend = open_backend(tls_etcd.url, tls=tls, timeout=3)
    backend.put("/tls-test", "ok")
    assert backend.get("/tls-test").value == b"ok"
    backend.close()


def test_untrusted_server_is_refused_with_one_line(tls_etcd, pki):
    tls = TLSOptions(cert=str(pki / "client.pem"), key=str(pki / "client.key"))  # system roots only
    with pytest.raises(Unavailable) as info:
        open_backend(tls_etcd.url, tls=tls, timeout=2)
    assert tls_etcd.url in str(info.value) and "\n" not in str(info.value)


def test_insecure_skip_verify_trusts_what_the_server_presents(tls_etcd, pki):
    tls = TLSOptions(cert=str(pki / "client.pem"), key=str(pki / "client.key"), insecure_skip_verify=True)
    backend = open_backend(tls_etcd.url, tls=tls, timeout=3)
    assert backend.revision() >= 1
    backend.close()
