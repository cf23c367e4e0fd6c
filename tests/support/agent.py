"""Run the real `xtm-composer` command as a child process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def write_manager_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


class AgentProcess:
    """One `xtm-composer run` process; its standard error is kept in a file."""

    def __init__(
        self, environment: dict[str, str], workdir: Path, name: str = "agent"
    ) -> None:
        self.environment = environment
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        config_dir = self.workdir / "config"
        config_dir.mkdir(exist_ok=True)
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("MANAGER__", "OPENCTI__", "OPENAEV__"))
        }
        environment.update({"COMPOSER_CONFIG_DIR": str(config_dir), **self.environment})
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xtm_composer", "run"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log_file.close()
        return self

    def stop(self, timeout: float = 40) -> int:
        """Send SIGTERM and wait for the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"agent did not stop within {timeout} s") from None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def json_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def count(self, message: str) -> int:
        return self.log_text().count(message)


def wait_for(
    condition: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = ""
) -> Any:
    """Poll `condition` until it returns a truthy value, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
