"""The connection to one Docker Engine, with SDK errors mapped to orchestrator errors.

The docker SDK client is created at first use, so an engine that was down when
the agent started is reached once it is back. A transport failure (no socket,
connection refused, timeout) becomes `EngineUnavailableError`, and an error
response of the engine becomes `OrchestratorError` with the engine's message,
cut short and with the given secret values masked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests

from xtm_composer.orchestrators.base import EngineUnavailableError, OrchestratorError
from xtm_composer.settings import ConfigurationError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
"""The docker SDK's address when neither `docker_host` nor DOCKER_HOST is set."""

MAX_DETAIL_LENGTH = 300
MASK = "***"
MIN_MASKED_LENGTH = 4
"""Shorter values are not masked: they would blank out ordinary words."""


class EngineConnection:
    """A docker SDK client of the engine at `docker_host`, opened at first use.

    Without `docker_host` the client is configured as `docker.from_env()` does,
    from `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`.
    """

    def __init__(self, docker_host: str | None) -> None:
        self.docker_host = docker_host
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """The engine socket or URL, for messages."""
        return self.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST

    @property
    def api(self) -> docker.APIClient:
        """The low-level SDK client, connecting first if needed."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client.api

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    @contextmanager
    def errors(self, action: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
        """Translate SDK and transport errors raised while doing `action`."""
        try:
            yield
        except (requests.ConnectionError, requests.Timeout) as error:
            raise EngineUnavailableError(self.unreachable_message(error)) from error
        except docker.errors.APIError as error:
            detail = mask_values(str(error.explanation or error), secrets)
            raise OrchestratorError(f"failed to {action}: {detail}") from error

    def unreachable_message(self, error: Exception) -> str:
        return (
            f"failed to connect to the Docker Engine at {self.address}: {error}. "
            "Check that dockerd is running, that this address is its socket "
            "(DOCKER_HOST) and that this user may open it"
        )

    def _connect(self) -> docker.DockerClient:
        # `version="auto"` requests the engine's API version, so this call
        # already fails when the engine is unreachable.
        try:
            if self.docker_host is None:
                return docker.from_env(version="auto")
            return docker.DockerClient(base_url=self.docker_host, version="auto")
        except docker.errors.DockerException as error:
            if "Invalid bind address" in str(error):
                # A malformed address never heals: stop the start instead of
                # retrying it forever.
                raise ConfigurationError(
                    f"the Docker Engine address {self.address!r} is invalid "
                    f"({error}); set DOCKER_HOST to unix:///path/to/docker.sock "
                    "or tcp://host:port"
                ) from None
            raise EngineUnavailableError(self.unreachable_message(error)) from error


def mask_values(text: str, values: tuple[str, ...]) -> str:
    """Mask each of `values` in `text` and cut it short."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= MIN_MASKED_LENGTH:
            text = text.replace(value, MASK)
    return text[:MAX_DETAIL_LENGTH]
