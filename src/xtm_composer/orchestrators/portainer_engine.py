"""The Docker Engine API of a Portainer environment, through the docker SDK.

Portainer serves each Docker environment's Engine API under
`{api}/api/endpoints/{env_id}/docker`, authenticated by an `X-API-KEY` header.
The docker SDK's `APIClient` is a `requests.Session` whose base URL may carry
that path, and whose session headers go with every request, so the Docker
adapter's helpers (pull, host options, container state, log demultiplexing)
work unchanged through Portainer. Requests go to
`{api}/api/endpoints/{env_id}/docker/v{version}/...`.

The session ignores the proxy and CA variables of the environment
(`trust_env` off): the Portainer connection uses exactly the URL, CA file and
verification setting of its configuration section.

Error mapping, on top of `docker_engine.EngineConnection`: 401 and 403 become
`PortainerAuthError` naming the API key setting, a TLS failure names the CA
and verification settings, and an API version that the engine rejects names
`api_version`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import docker
import docker.errors
import docker.tls
import requests
import urllib3

from xtm_composer.orchestrators import docker_engine
from xtm_composer.orchestrators.base import EngineUnavailableError, OrchestratorError
from xtm_composer.settings.portainer import PortainerSettings

API_KEY_HEADER = "X-API-KEY"
DEFAULT_PORTS = {"http": 80, "https": 443}
VERSION_MISMATCH_MARKER = "client version"
"""The engine's message for an API version it does not serve starts with this."""


class PortainerAuthError(OrchestratorError):
    """Portainer rejected the API key, or denied it the environment."""


class PortainerConnection(docker_engine.EngineConnection):
    """A docker SDK client of one Portainer Docker environment, opened at first use."""

    def __init__(self, settings: PortainerSettings, settings_path: str) -> None:
        super().__init__(docker_host=None)
        if not settings.api or settings.api_key is None or not settings.env_id:
            raise ValueError("api, api_key and env_id must be set")
        self.settings = settings
        self.settings_path = settings_path
        self.base_url = environment_url(settings.api, settings.environment_path)
        if settings.unsecured_certificate:
            # The operator chose this; urllib3 would warn at every request.
            warnings.filterwarnings(
                "ignore", category=urllib3.exceptions.InsecureRequestWarning
            )

    @property
    def address(self) -> str:
        """The environment's Docker API URL, for messages."""
        return f"{self.settings.api}{self.settings.environment_path}"

    @property
    def tls_verification(self) -> str:
        """The kind of check of Portainer's certificate, for logs."""
        if not self.base_url.startswith("https://"):
            return "none (plain HTTP)"
        if self.settings.unsecured_certificate:
            return "off"
        return str(self.settings.ca_file) if self.settings.ca_file else "system CAs"

    @contextmanager
    def errors(self, action: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
        """Translate SDK, HTTP and TLS errors raised while doing `action`."""
        try:
            yield
        except requests.exceptions.SSLError as error:
            raise EngineUnavailableError(self.tls_message(error)) from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise EngineUnavailableError(self.unreachable_message(error)) from error
        except docker.errors.APIError as error:
            raise self.api_error(action, error, secrets) from error

    def api_error(
        self, action: str, error: docker.errors.APIError, secrets: tuple[str, ...]
    ) -> OrchestratorError:
        """Map an error response of Portainer or the engine to an OrchestratorError."""
        key_setting = f"{self.settings_path}.api_key"
        status = error.status_code
        if status == requests.codes.unauthorized:
            return PortainerAuthError(
                f"Portainer at {self.settings.api} rejected the API key (HTTP 401) "
                f"while trying to {action}; check {key_setting}: it must be an "
                "access token of an enabled Portainer user"
            )
        if status == requests.codes.forbidden:
            return PortainerAuthError(
                f"Portainer at {self.settings.api} denied the API key access to "
                f"environment {self.settings.env_id} (HTTP 403) while trying to "
                f"{action}; give the user of {key_setting} access to that "
                f"environment, or check {self.settings_path}.env_id"
            )
        detail = docker_engine.mask_values(
            str(error.explanation or error), (*secrets, self.api_key)
        )
        if VERSION_MISMATCH_MARKER in detail.lower():
            return OrchestratorError(
                f"failed to {action}: {detail}; set {self.settings_path}.api_version "
                "to a version the engine serves, or to auto"
            )
        return OrchestratorError(f"failed to {action}: {detail}")

    @property
    def api_key(self) -> str:
        assert self.settings.api_key is not None
        return self.settings.api_key.get_secret_value()

    def unreachable_message(self, error: Exception) -> str:
        return (
            f"failed to connect to Portainer at {self.settings.api}: {error}. "
            f"Check {self.settings_path}.api and that Portainer is running"
        )

    def tls_message(self, error: Exception) -> str:
        if self.settings.ca_file:
            advice = (
                f"check that {self.settings_path}.ca_file ({self.settings.ca_file}) "
                "holds the CA that signed Portainer's certificate"
            )
        else:
            advice = (
                f"set {self.settings_path}.ca_file to the PEM file of the CA that "
                f"signed Portainer's certificate, or set "
                f"{self.settings_path}.unsecured_certificate to true to skip the check"
            )
        return (
            f"the TLS connection to Portainer at {self.settings.api} failed: "
            f"{error}; {advice}"
        )

    def _connect(self) -> docker.DockerClient:
        """Open a client, asking the engine for its API version under `auto`.

        Errors are raised as they come, for `errors` to translate.
        """
        version = self.settings.pinned_api_version
        if version is None:
            probe = self._open_client(docker.constants.DEFAULT_DOCKER_API_VERSION)
            try:
                version = str(probe.api.version(api_version=False)["ApiVersion"])
            finally:
                probe.close()
        return self._open_client(version)

    def _open_client(self, version: str) -> docker.DockerClient:
        tls: docker.tls.TLSConfig | bool = False
        if self.base_url.startswith("https://"):
            if self.settings.unsecured_certificate:
                tls = docker.tls.TLSConfig(verify=False)
            elif self.settings.ca_file is not None:
                tls = docker.tls.TLSConfig(
                    ca_cert=str(self.settings.ca_file), verify=True
                )
            else:
                tls = docker.tls.TLSConfig(verify=True)
        client = docker.DockerClient(
            base_url=self.base_url,
            version=version,
            tls=tls,
            timeout=self.settings.request_timeout,
        )
        client.api.trust_env = False
        client.api.headers[API_KEY_HEADER] = self.api_key
        return client


def environment_url(api: str, environment_path: str) -> str:
    """Join Portainer's URL and an environment path, with an explicit port.

    The docker SDK rejects an http(s) base URL without a port.
    """
    parts = urlsplit(api)
    netloc = parts.netloc
    if parts.port is None:
        netloc = f"{netloc}:{DEFAULT_PORTS[parts.scheme]}"
    path = parts.path.rstrip("/") + environment_path
    return urlunsplit((parts.scheme, netloc, path, "", ""))
