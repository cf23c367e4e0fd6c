"""Typed configuration of the agent.

The key set is the one of the reference XTM Composer so that existing YAML files
and environment variables keep working. Durations are seconds unless a name says
otherwise. Secrets are `SecretStr`, whose repr and str are masked.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from xtm_composer import references


def _indexed_map_to_list(value: Any) -> Any:
    """Accept `{0: a, 1: b}` (YAML or `KEY__0` env vars) where a list is expected."""
    if isinstance(value, dict) and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=lambda k: int(str(k)))]
    if isinstance(value, str):
        return [value]
    return value


StrList = Annotated[list[str], BeforeValidator(_indexed_map_to_list)]


class Section(BaseModel):
    """A configuration section: unknown keys are kept, not rejected.

    The reference implementation ignores keys it does not know (`directory`,
    `console` under the logger, for example), and existing files carry them.
    """

    model_config = ConfigDict(extra="allow", validate_default=True)


class LogFormat(StrEnum):
    JSON = "json"
    PRETTY = "pretty"


class LoggerSettings(Section):
    level: Literal["trace", "debug", "info", "warn", "warning", "error"] = "info"
    format: LogFormat = LogFormat.JSON


class DebugSettings(Section):
    show_env_vars: bool = False
    """Log the environment of each deployed connector (names and plain values)."""
    show_sensitive_env_vars: bool = False
    """Also show values that were encrypted; they are masked otherwise."""


class ManagerSettings(Section):
    id: str = Field(min_length=1)
    name: str = Field(default="Filigran connector manager", min_length=1)
    execute_schedule: float = Field(default=10, gt=0)
    """Seconds between two reconciliation cycles."""
    ping_alive_schedule: float = Field(default=60, gt=0)
    """Seconds between two pings of the platform."""
    credentials_key: SecretStr | None = None
    credentials_key_filepath: Annotated[
        Path | None, BeforeValidator(lambda value: value or None)
    ] = None
    max_concurrent_operations: int = Field(default=4, ge=1, le=64)
    """Connectors worked on at the same time; a slow pull takes one slot only."""
    shutdown_timeout: float = Field(default=30, gt=0)
    """Seconds to let in-flight operations finish after SIGTERM or SIGINT."""
    logger: LoggerSettings = LoggerSettings()
    debug: DebugSettings = DebugSettings()


class RegistrySettings(Section):
    server: str = "docker.io"
    username: str | None = None
    password: SecretStr | None = None
    email: str | None = None

    @field_validator("server")
    @classmethod
    def _server_is_valid(cls, value: str) -> str:
        # Checked at start so that a typo fails with the key, not at each pull.
        references.normalize_server(value)
        return value

    @property
    def has_credentials(self) -> bool:
        return bool(self.username) and self.password is not None


class DockerSettings(Section):
    """Host options applied to every connector container (Docker Engine API names)."""

    network_mode: str | None = None
    extra_hosts: StrList | None = None
    dns: StrList | None = None
    dns_search: StrList | None = None
    privileged: bool | None = None
    cap_add: StrList | None = None
    cap_drop: StrList | None = None
    security_opt: StrList | None = None
    userns_mode: str | None = None
    pid_mode: str | None = None
    ipc_mode: str | None = None
    uts_mode: str | None = None
    runtime: str | None = None
    shm_size: int | None = Field(default=None, ge=0)
    """Size of /dev/shm in bytes."""
    sysctls: dict[str, str] | None = None
    ulimits: list[dict[str, Any]] | None = None
    """Items `{name, soft, hard}` as in `docker run --ulimit name=soft:hard`."""
    restart_policy: Literal["no", "on-failure", "unless-stopped", "always"] = (
        "unless-stopped"
    )
    """Docker restart policy; the default lets the engine count restarts."""


class Orchestrator(StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    PORTAINER = "portainer"
    SWARM = "swarm"


# Imported here, not at the top: the Kubernetes settings subclass `Section`.
from xtm_composer.settings.kubernetes import KubernetesSettings  # noqa: E402
from xtm_composer.settings.portainer import PortainerSettings  # noqa: E402
from xtm_composer.settings.swarm import SwarmSettings  # noqa: E402


class DaemonSettings(Section):
    selector: Orchestrator = Orchestrator.KUBERNETES
    registry: RegistrySettings | None = None
    docker: DockerSettings = DockerSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    portainer: PortainerSettings = PortainerSettings()
    swarm: SwarmSettings = SwarmSettings()


class PlatformSettings(Section):
    enable: bool = False
    url: str = "http://localhost:4000"
    token: SecretStr = SecretStr("")
    unsecured_certificate: bool = False
    with_proxy: bool = False
    http_proxy: SecretStr | None = None
    https_proxy: SecretStr | None = None
    no_proxy: str | None = None
    https_proxy_ca: StrList = Field(default_factory=list)
    https_proxy_reject_unauthorized: bool = True
    logs_schedule: float = Field(default=10, gt=0)
    """Seconds between two log reports of one connector."""
    health_schedule: float = Field(default=30, gt=0)
    """Seconds between two health reports of one connector."""
    logs_max_lines: int = Field(default=100, ge=1, le=10_000)
    """Lines of a connector's log tail sent in one report."""
    request_timeout: float = Field(default=30, gt=0)
    """Seconds a platform request may take in all."""
    connect_timeout: float = Field(default=10, gt=0)
    """Seconds to open a connection to the platform."""
    daemon: DaemonSettings = DaemonSettings()

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("the URL must start with http:// or https://")
        return value.rstrip("/")


class OpenCTISettings(PlatformSettings):
    enable: bool = True
    """OpenCTI is managed unless disabled, as in the reference configuration."""


class Settings(Section):
    manager: ManagerSettings
    opencti: OpenCTISettings = OpenCTISettings()
    openaev: PlatformSettings = PlatformSettings()
