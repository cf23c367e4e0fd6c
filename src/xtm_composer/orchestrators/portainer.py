"""Connector workloads as containers of a Portainer Docker environment.

Portainer forwards its environments' Docker Engine API, so this adapter is the
Docker one (`docker.DockerApiOrchestrator`) with a connection through Portainer,
`portainer_engine.PortainerConnection`. Container names, labels, ownership
checks, the pull (`docker_pull`, with `X-Registry-Auth` only for the configured
registry), the host options (`docker_options`), the container state
(`docker_state`) and the log reading (`docker_logs`) are the Docker adapter's.

With `stack` set, containers also carry `com.docker.compose.project=<stack>`,
so that Portainer shows them under that stack. `network_mode` applies to every
container. The restart policy is `unless-stopped`, for the reasons given in
the Docker adapter: the engine restarts a crashed connector and counts the
restarts, and a stopped connector stays stopped.

A denied pull is followed by a ping, because a revoked API key can look like a
registry denial: the ping then raises `PortainerAuthError`.
"""

from __future__ import annotations

from typing import Final

import docker.errors

from xtm_composer import logs
from xtm_composer.logs import get_logger
from xtm_composer.orchestrators import docker_options, portainer_engine
from xtm_composer.orchestrators.base import OrchestratorError
from xtm_composer.orchestrators.docker import DockerApiOrchestrator
from xtm_composer.settings import ConfigurationError, DockerSettings, RegistrySettings
from xtm_composer.settings.portainer import PortainerSettings

logger = get_logger(__name__)

STACK_LABEL = "com.docker.compose.project"
SUPPORTED_ENV_TYPE = "docker"
RESTART_POLICY: Final = "unless-stopped"


class PortainerOrchestrator(DockerApiOrchestrator):
    """Runs connector containers in one Docker environment of Portainer."""

    name = "portainer"

    def __init__(
        self,
        settings: PortainerSettings,
        registry: RegistrySettings | None,
        manager_id: str,
        platform: str,
        settings_path: str = "daemon.portainer",
    ) -> None:
        super().__init__(registry, manager_id, platform)
        check_settings(settings, settings_path)
        assert settings.api_key is not None
        logs.register_secret(settings.api_key.get_secret_value())
        self.settings = settings
        self.settings_path = settings_path
        self.host_options = docker_options.host_config_options(
            DockerSettings(
                network_mode=settings.network_mode, restart_policy=RESTART_POLICY
            )
        )
        self._portainer = portainer_engine.PortainerConnection(settings, settings_path)
        self._engine = self._portainer

    def prepare(self) -> None:
        """Reach the environment through Portainer with the API key."""
        with self._engine.errors("reach the Docker environment"):
            try:
                self._engine.api.ping()
            except docker.errors.NotFound:
                raise OrchestratorError(
                    f"Portainer at {self.settings.api} has no environment with id "
                    f"{self.settings.env_id}; check {self.settings_path}.env_id "
                    "(the number in the environment's address in Portainer)"
                ) from None

        if self.settings.unsecured_certificate:
            logger.warning(
                "TLS certificate verification of Portainer is off",
                orchestrator=self.name,
                setting=f"{self.settings_path}.unsecured_certificate",
            )
        ignored = sorted(self.settings.model_extra or {})
        if ignored:
            logger.warning(
                "Ignoring unknown Portainer settings",
                orchestrator=self.name,
                keys=ignored,
            )
        logger.info(
            "Connected to the Portainer environment",
            orchestrator=self.name,
            portainer=self.settings.api,
            env_id=self.settings.env_id,
            api_version=self._engine.api.api_version,
            tls_verification=self._portainer.tls_verification,
        )

    def _check_denied_pull(self) -> None:
        """Raise `PortainerAuthError` when the API key was revoked."""
        with self._engine.errors("check the API key after a denied pull"):
            self._engine.api.ping()

    def _extra_labels(self) -> dict[str, str]:
        if self.settings.stack:
            return {STACK_LABEL: self.settings.stack}
        return {}


def check_settings(settings: PortainerSettings, settings_path: str) -> None:
    """Raise `ConfigurationError` unless the section can reach a Docker environment."""
    missing = [
        f"{settings_path}.{key}"
        for key, value in (
            ("api", settings.api),
            ("api_key", settings.api_key and settings.api_key.get_secret_value()),
            ("env_id", settings.env_id),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"{', '.join(missing)} must be set to use the Portainer orchestrator: "
            "give Portainer's URL, the access token of a Portainer user and the "
            "id of the Docker environment"
        )
    if settings.env_type.strip().lower() != SUPPORTED_ENV_TYPE:
        raise ConfigurationError(
            f"{settings_path}.env_type = {settings.env_type!r} is not supported: "
            "connectors run only in Portainer Docker environments; set env_type "
            "to docker, or for a Kubernetes cluster use daemon.selector: "
            "kubernetes instead of Portainer"
        )
    if settings.ca_file is not None and not settings.ca_file.is_file():
        raise ConfigurationError(
            f"{settings_path}.ca_file = {str(settings.ca_file)!r} is not a "
            "readable file; give the path of the PEM file of Portainer's CA"
        )
