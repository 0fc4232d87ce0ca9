"""TLS in front of the API with deploy/tls/haproxy.cfg, as Compose's `tls` profile runs it
(the compose smoke test runs it in containers): a client that trusts the certificate makes a
round trip; plain HTTP on the TLS port gets nothing; headers that never end are cut off."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess

import httpx

from app.demo import sinusoid_task
from bench.stack import KEYS, free_port, wait_until
from rapid_adapt_client import Client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def self_signed(tmp) -> tuple[str, str]:
    """-> (the PEM HAProxy serves: certificate and key, the certificate a client trusts)."""
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    (tmp / "server.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    return str(tmp / "server.pem"), str(cert)


def test_a_round_trip_over_tls_through_the_proxy(new_stack, monkeypatch):
    s = new_stack()
    s.start_redis()
    s.start_worker()
    s.start_api()
    pem, cert = self_signed(s.tmp)
    port = free_port()
    env = os.environ | {
        "TLS_BIND": "127.0.0.1",
        "TLS_PORT": str(port),
        "API_ADDR": f"127.0.0.1:{s.api_port}",
        "TLS_PEM": pem,
        "TLS_HEADER_TIMEOUT": "2s",
    }
    cfg = os.path.join(ROOT, "deploy", "tls", "haproxy.cfg")
    proxy = subprocess.Popen([shutil.which("haproxy"), "-f", cfg], env=env, start_new_session=True)
    try:
        url = f"https://127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=cert)
        wait_until(lambda: httpx.get(url + "/healthz", verify=trusted, timeout=2).status_code == 200, 30, "the proxy")
        health = httpx.get(url + "/healthz", verify=trusted)
        assert health.headers["strict-transport-security"].startswith("max-age=")
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # how a client is told to trust a private CA
        with Client(url, KEYS["acme"]) as c:
            done = c.create_adaptation("sinusoid-mlp", sinusoid_task(0)[0], wait=30)
            assert done["status"] == "succeeded"
            assert len(c.predict(done["id"], [[0.5]])) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:  # no TLS: no HTTP answer
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                assert b"HTTP/1.1 200" not in plain.recv(4096)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            conn = trusted.wrap_socket(raw, server_hostname="127.0.0.1")
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and the headers never end
            assert conn.recv(4096).startswith(b"HTTP/1.1 408")  # after TLS_HEADER_TIMEOUT, not the socket's 10 s
    finally:
        os.killpg(proxy.pid, signal.SIGTERM)
        proxy.wait(10)
