"""Settings of the Portainer orchestrator, under `<platform>.daemon.portainer`.

The key names are those of the reference XTM Composer, plus `ca_file`,
`unsecured_certificate` and `request_timeout`. Formats are checked here. Whether
the section is complete (`api`, `api_key`, `env_id`, a Docker `env_type`) is
checked when the Portainer orchestrator is built, so that an unused section
never stops an agent that runs on another orchestrator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator

from xtm_composer.settings.models import Section

AUTO_API_VERSION = "auto"
API_VERSION = re.compile(r"^v?(\d+\.\d+)$")


def _id_to_string(value: Any) -> Any:
    """Accept `env_id: 3` from YAML as the string "3"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class PortainerSettings(Section):
    """Address of the Portainer API and the Docker environment it manages."""

    api: str | None = None
    """Base URL of Portainer, such as `https://portainer.example.com:9443`."""
    api_key: SecretStr | None = None
    """Access token of a Portainer user, sent as the `X-API-KEY` header."""
    env_id: Annotated[str | None, BeforeValidator(_id_to_string)] = None
    """Identifier of the Docker environment (endpoint) in Portainer."""
    env_type: str = "docker"
    """Kind of environment. Only `docker` is supported."""
    api_version: str = AUTO_API_VERSION
    """Docker Engine API version in request paths (`v1.41`), or `auto` to use
    the version the engine reports. A pinned version breaks once the engine
    stops serving it, so `auto` is the default."""
    stack: str | None = None
    """Compose project that connector containers are labelled with, so that
    Portainer lists them under that stack."""
    network_mode: str | None = None
    """Network mode of connector containers (`bridge`, `host`, a network name)."""
    unsecured_certificate: bool = False
    """Skip the TLS certificate check of Portainer. Off by default: a check
    failure must be fixed with `ca_file`, not hidden."""
    ca_file: Path | None = None
    """PEM file of the CA that signed Portainer's certificate, when the system
    trust store does not hold it."""
    request_timeout: float = Field(default=60, gt=0)
    """Seconds a request waits for Portainer (image pulls wait longer)."""

    @field_validator("api")
    @classmethod
    def _check_api(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "write the Portainer URL with its scheme, such as "
                "https://portainer.example.com:9443"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(
                "the Portainer URL must not contain credentials, a query or a "
                "fragment; give the API key in api_key"
            )
        return value

    @field_validator("env_id")
    @classmethod
    def _check_env_id(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.isdigit():
            raise ValueError(
                "a Portainer environment id is a number, shown in the "
                "environment's address in Portainer (.../#!/3/docker/...)"
            )
        return value

    @field_validator("api_version")
    @classmethod
    def _check_api_version(cls, value: str) -> str:
        value = value.strip()
        if value.lower() == AUTO_API_VERSION:
            return AUTO_API_VERSION
        if API_VERSION.match(value) is None:
            raise ValueError(
                "write a Docker Engine API version such as v1.41, or auto to use "
                "the version the engine reports"
            )
        return value

    @property
    def pinned_api_version(self) -> str | None:
        """The configured version without its `v` (`1.41`), or None for `auto`."""
        match = API_VERSION.match(self.api_version)
        return match.group(1) if match else None

    @property
    def environment_path(self) -> str:
        """The path prefix of the environment's Docker API in Portainer."""
        return f"/api/endpoints/{self.env_id}/docker"
