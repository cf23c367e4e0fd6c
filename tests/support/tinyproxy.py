"""A real HTTP proxy (Debian's tinyproxy) on loopback, with basic authentication."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from tests.support.agent import wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Tinyproxy:
    """tinyproxy in the foreground; `requests()` reads its access log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.username = "proxy-user"
        self.password = f"proxy-{secrets.token_hex(8)}"
        self.log_path = workdir / "tinyproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy URL with its credentials: a secret."""
        return f"http://{self.username}:{self.password}@127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise FileNotFoundError(
                "tinyproxy is not installed (Debian package tinyproxy)"
            )
        config = self.workdir / "tinyproxy.conf"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "Listen 127.0.0.1",
                    "Timeout 60",
                    f'LogFile "{self.log_path}"',
                    "LogLevel Info",
                    "MaxClients 20",
                    "Allow 127.0.0.1",
                    'ViaProxyName "tinyproxy"',
                    f"BasicAuth {self.username} {self.password}",
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [binary, "-d", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, 10, interval=0.1, what="tinyproxy to listen")
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def requests(self) -> list[str]:
        """Return the request lines tinyproxy logged (`POST http://... HTTP/1.1`)."""
        if not self.log_path.exists():
            return []
        marker = "): "
        return [
            line.split(marker, 1)[1]
            for line in self.log_path.read_text(errors="replace").splitlines()
            if "Request (file descriptor" in line and marker in line
        ]
