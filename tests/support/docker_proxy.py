"""A recording HTTP proxy in front of the Docker Engine socket, for tests.

`DockerProxy` listens on its own unix socket and forwards each request, as raw
HTTP, to the engine's unix socket. It records the request line and the names of
the request headers, so a test can prove which requests carried
`X-Registry-Auth`. Header values are not kept: they hold credentials.

It can also stand in for an API gateway in front of the engine, such as
Portainer's `/api/endpoints/{id}/docker`. With `path_prefix`, only paths under
the prefix are served, and the prefix is cut before forwarding. With `api_key`,
a request must carry that value in `X-API-KEY`.

One request is served per client connection. The proxy asks the engine to close
the connection after its response (`Connection: close`, which the engine
echoes), then copies the response bytes as they come until the engine closes.
Chunked bodies, pull progress and followed logs therefore pass through
unchanged and without delay.
"""

from __future__ import annotations

import json
import selectors
import socket
import socketserver
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

API_KEY_HEADER = "x-api-key"
REGISTRY_AUTH_HEADER = "x-registry-auth"
# Headers that describe the client's connection, not the request. The proxy
# sets its own towards the engine.
HOP_BY_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection"})
MAX_HEAD_BYTES = 64 * 1024
COPY_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the proxy received it, without header values."""

    method: str
    path: str
    header_names: frozenset[str]
    """Lower-case names of the request headers."""

    @property
    def has_registry_auth(self) -> bool:
        return REGISTRY_AUTH_HEADER in self.header_names


class DockerProxy:
    """A recording proxy from a unix socket of its own to the engine's socket."""

    def __init__(
        self,
        upstream: str,
        socket_path: Path | None = None,
        *,
        path_prefix: str = "",
        api_key: str | None = None,
    ) -> None:
        self.upstream_path = upstream.removeprefix("unix://")
        self._own_directory: tempfile.TemporaryDirectory[str] | None = None
        if socket_path is None:
            # A unix socket path is limited to 107 bytes: keep it short.
            self._own_directory = tempfile.TemporaryDirectory(prefix="docker-proxy-")
            socket_path = Path(self._own_directory.name) / "docker.sock"
        self.socket_path = socket_path
        self.path_prefix = path_prefix.rstrip("/")
        self.api_key = api_key
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The `DOCKER_HOST` value of the proxy."""
        return f"unix://{self.socket_path}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_part: str) -> list[RecordedRequest]:
        """Return the recorded requests whose path contains `path_part`."""
        return [request for request in self.requests if path_part in request.path]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def start(self) -> DockerProxy:
        self._server = _Server(str(self.socket_path), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="docker-proxy", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.socket_path.unlink(missing_ok=True)
        if self._own_directory is not None:
            self._own_directory.cleanup()
            self._own_directory = None

    def __enter__(self) -> DockerProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    proxy: DockerProxy


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        client: socket.socket = self.request
        reader = client.makefile("rb")
        head = read_head(reader)
        if head is None:
            return
        method, target, version, headers = parse_head(head)
        proxy.record(
            RecordedRequest(
                method=method,
                path=target,
                header_names=frozenset(name for name, _ in headers),
            )
        )

        rejection = self.check_access(proxy, target, headers)
        if rejection is not None:
            client.sendall(rejection)
            return

        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(proxy.upstream_path)
            forward_target = target[len(proxy.path_prefix) :] or "/"
            upstream.sendall(build_head(method, forward_target, version, headers))
            copy_body(reader, upstream, headers)
            relay(upstream, client)
        except OSError:
            # The client or the engine closed the connection: no response can go out.
            pass
        finally:
            upstream.close()

    @staticmethod
    def check_access(
        proxy: DockerProxy, target: str, headers: list[tuple[str, str]]
    ) -> bytes | None:
        """Return an error response for a request the proxy must not forward."""
        if proxy.api_key is not None:
            keys = [value for name, value in headers if name == API_KEY_HEADER]
            if keys != [proxy.api_key]:
                return error_response(401, "Unauthorized", "invalid or missing API key")
        prefix = proxy.path_prefix
        if prefix and not (target == prefix or target.startswith(prefix + "/")):
            return error_response(404, "Not Found", f"no route for {target}")
        return None


def read_head(reader: BinaryIO) -> bytes | None:
    """Read a request line and headers, or return None when the client sent nothing."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(MAX_HEAD_BYTES)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)
        lines.append(line)
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("request head too large")


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """Split a request head into method, target, version and lower-case headers."""
    request_line, *header_lines = head.decode("latin-1").splitlines()
    method, target, version = request_line.split(" ", 2)
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return method, target, version, headers


def build_head(
    method: str, target: str, version: str, headers: list[tuple[str, str]]
) -> bytes:
    """Rebuild the request head for the engine, which must close after its response."""
    lines = [f"{method} {target} {version}"]
    for name, value in headers:
        if name in HOP_BY_HOP_HEADERS or name == API_KEY_HEADER:
            continue
        lines.append(f"{name}: {value}")
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def copy_body(
    reader: BinaryIO, upstream: socket.socket, headers: list[tuple[str, str]]
) -> None:
    """Copy the request body, framed by Content-Length or chunked encoding."""
    fields = dict(headers)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        copy_chunked(reader, upstream)
        return
    remaining = int(fields.get("content-length", "0") or 0)
    while remaining > 0:
        data = reader.read(min(remaining, COPY_BUFFER_BYTES))
        if not data:
            raise ConnectionError("the client closed during the request body")
        upstream.sendall(data)
        remaining -= len(data)


def copy_chunked(reader: BinaryIO, upstream: socket.socket) -> None:
    """Copy a chunked body as it is, through the last chunk and trailers."""
    while True:
        size_line = reader.readline(MAX_HEAD_BYTES)
        if not size_line:
            raise ConnectionError("the client closed during a chunked body")
        upstream.sendall(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        # The chunk data is followed by CRLF.
        upstream.sendall(reader.read(size + 2))
    while True:
        trailer = reader.readline(MAX_HEAD_BYTES)
        upstream.sendall(trailer)
        if trailer in (b"\r\n", b"\n", b""):
            return


def relay(upstream: socket.socket, client: socket.socket) -> None:
    """Copy the engine's response to the client until either side closes."""
    with selectors.DefaultSelector() as selector:
        selector.register(upstream, selectors.EVENT_READ, client)
        selector.register(client, selectors.EVENT_READ, upstream)
        while True:
            for key, _ in selector.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(COPY_BUFFER_BYTES)
                if not data:
                    return
                key.data.sendall(data)


def error_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
