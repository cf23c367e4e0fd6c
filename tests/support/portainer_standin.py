"""A stand-in of Portainer's Docker environment API, for tests.

Portainer serves each Docker environment's Engine API under
`/api/endpoints/{env_id}/docker/...` and authenticates requests by their
`X-API-KEY` header. `PortainerStandin` does that much on a TCP port of
127.0.0.1. It rejects a wrong or missing key with 401 and any other path with
404, and forwards the other requests to the real dockerd unix socket, so
containers keep real Docker semantics. It is `DockerProxy` listening on TCP instead of a
unix socket, so it records each request with its header names, and a test can
check which requests carried `X-Registry-Auth`.

With `tls=True` it serves HTTPS with a self-signed certificate for 127.0.0.1,
written to `certificate_path`, so a test can check that the client verifies
the certificate unless configured not to.
"""

from __future__ import annotations

import datetime
import ipaddress
import socketserver
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import docker_proxy
from tests.support.docker_proxy import DockerProxy

LOOPBACK = "127.0.0.1"
CERTIFICATE_DAYS = 2


class PortainerStandin(DockerProxy):
    """Portainer's environment proxy: API key and path checks, then dockerd."""

    def __init__(
        self, upstream: str, *, api_key: str, env_id: int = 1, tls: bool = False
    ) -> None:
        super().__init__(
            upstream, path_prefix=f"/api/endpoints/{env_id}/docker", api_key=api_key
        )
        self.env_id = env_id
        self.tls = tls
        self._files = tempfile.TemporaryDirectory(prefix="portainer-standin-")
        self.certificate_path = Path(self._files.name) / "portainer.crt"
        self._tls_context: ssl.SSLContext | None = None
        if tls:
            self._tls_context = self._make_tls_context(Path(self._files.name))
        self._tcp_server: _TcpServer | None = None
        self._tcp_thread: threading.Thread | None = None

    @property
    def api(self) -> str:
        """The value of `daemon.portainer.api` that reaches this stand-in."""
        if self._tcp_server is None:
            raise RuntimeError("the stand-in is not started")
        port = self._tcp_server.server_address[1]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{port}"

    def start(self) -> PortainerStandin:
        self._tcp_server = _TcpServer((LOOPBACK, 0), _Handler)
        self._tcp_server.proxy = self
        self._tcp_server.tls_context = self._tls_context
        self._tcp_thread = threading.Thread(
            target=self._tcp_server.serve_forever, name="portainer-standin", daemon=True
        )
        self._tcp_thread.start()
        return self

    def close(self) -> None:
        if self._tcp_server is not None:
            self._tcp_server.shutdown()
            self._tcp_server.server_close()
            self._tcp_server = None
        if self._tcp_thread is not None:
            self._tcp_thread.join(timeout=5)
            self._tcp_thread = None
        super().close()
        self._files.cleanup()

    def __enter__(self) -> PortainerStandin:
        return self.start()

    def _make_tls_context(self, directory: Path) -> ssl.SSLContext:
        key_path = directory / "portainer.key"
        write_self_signed_certificate(self.certificate_path, key_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate_path, key_path)
        return context


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: DockerProxy
    tls_context: ssl.SSLContext | None


class _Handler(docker_proxy._Handler):
    """The proxy's handler, behind a TLS handshake when the server has a context."""

    server: _TcpServer  # type: ignore[assignment]

    def handle(self) -> None:
        context = self.server.tls_context
        if context is None:
            super().handle()
            return
        try:
            # The handshake runs in the handler thread: a client that rejects
            # the certificate must not stall the accept loop.
            self.request = context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().handle()
        finally:
            self.request.close()


def write_self_signed_certificate(certificate_path: Path, key_path: Path) -> None:
    """Write a certificate and key valid for 127.0.0.1 for a couple of days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portainer-standin")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
