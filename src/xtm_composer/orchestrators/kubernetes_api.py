"""How the Kubernetes orchestrator talks to the apiserver: which cluster and
namespace, and how client errors become orchestrator errors.

The API client is built explicitly and never installed as the Kubernetes
client's global default configuration, so several orchestrators (or tests) can
talk to different clusters in one process.

Cluster, the first that applies:
1. `kubernetes.kubeconfig`, the configured kubeconfig file;
2. the in-cluster configuration, when the agent runs in a pod
   (`KUBERNETES_SERVICE_HOST` is set and the service account token is mounted);
3. `KUBECONFIG` (one file or a `:`-separated list), else `~/.kube/config`.

Namespace, the first that applies:
1. `kubernetes.namespace`;
2. in-cluster: the agent's own namespace, from the service account files;
3. kubeconfig: the namespace of the current context;
4. `default`.
The service account's namespace file is not read when a kubeconfig is used: an
agent that runs in a pod and targets another cluster by kubeconfig follows that
kubeconfig.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from xtm_composer.orchestrators.base import EngineUnavailableError, OrchestratorError
from xtm_composer.settings import ConfigurationError
from xtm_composer.settings.kubernetes import KubernetesSettings

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_NAMESPACE = "default"
MAX_MESSAGE_LENGTH = 300
CONNECTION_RETRIES = 1
"""Retries of a failed connection. The urllib3 default of 3 retries makes an
unreachable apiserver cost four connect timeouts per request."""

REQUEST_TIMEOUT = (10.0, 30.0)
"""Seconds to connect to the apiserver and to wait for each response."""

FORBIDDEN = 403
# The client's kubeconfig loader raises any of these on a malformed file.
KUBECONFIG_ERRORS = (
    ConfigException,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    yaml.YAMLError,
)
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)
MASK = "***"
MIN_MASKED_LENGTH = 4


class KubernetesApiError(OrchestratorError):
    """A request that the apiserver rejected, with its status and Status causes."""

    def __init__(self, message: str, status: int, causes: list[dict[str, Any]]):
        super().__init__(message)
        self.status = status
        self.causes = causes

    @property
    def selector_conflict(self) -> bool:
        """Whether a 422 is about the selector being immutable or not matching."""
        for cause in self.causes:
            field = str(cause.get("field", ""))
            message = str(cause.get("message", ""))
            if field.startswith("spec.selector"):
                return True
            if field.startswith("spec.template.metadata.labels") and (
                "selector" in message
            ):
                return True
        return False


@dataclass(frozen=True)
class Connection:
    """An API client and the namespace of the connector Deployments."""

    api_client: client.ApiClient
    namespace: str
    source: str
    """Source of the configuration for messages: a kubeconfig path or `in-cluster`."""

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)


def connect(
    settings: KubernetesSettings,
    settings_path: str,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    home: Path | None = None,
) -> Connection:
    """Build the API client by the rules of the module docstring, sending nothing.

    Raises `ConfigurationError` naming `settings_path` (for example
    `opencti.daemon.kubernetes`) when no usable configuration is found.
    """
    environ = os.environ if environ is None else environ
    if settings.kubeconfig is not None:
        return from_kubeconfig(str(settings.kubeconfig), settings, settings_path)
    if in_cluster(environ, service_account_dir):
        return from_service_account(settings, environ, service_account_dir)

    kubeconfig = environ.get("KUBECONFIG")
    if not kubeconfig:
        default = (home or Path.home()) / ".kube" / "config"
        if not default.is_file():
            raise ConfigurationError(
                "no Kubernetes configuration found: the agent does not run in a "
                f"pod, KUBECONFIG is not set and {default} does not exist. Set "
                f"{settings_path}.kubeconfig to a kubeconfig file"
            )
        kubeconfig = str(default)
    return from_kubeconfig(kubeconfig, settings, settings_path)


def in_cluster(environ: Mapping[str, str], service_account_dir: Path) -> bool:
    return (
        bool(environ.get("KUBERNETES_SERVICE_HOST"))
        and (service_account_dir / "token").is_file()
    )


def from_kubeconfig(
    path: str, settings: KubernetesSettings, settings_path: str
) -> Connection:
    # KUBECONFIG may list several files, and missing ones are skipped as
    # kubectl does; the client's own message for none is unclear.
    if not any(Path(part).is_file() for part in path.split(os.pathsep) if part):
        raise ConfigurationError(
            f"kubeconfig file {path} not found. Set {settings_path}.kubeconfig "
            "to an existing kubeconfig file"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path,
            client_configuration=configuration,
            persist_config=False,
        )
        _, current_context = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=path
        )
    except KUBECONFIG_ERRORS as error:
        raise ConfigurationError(
            f"cannot use the kubeconfig {path} ({error}). Fix the file or set "
            f"{settings_path}.kubeconfig to another one"
        ) from None
    context_namespace = (current_context or {}).get("context", {}).get("namespace")
    namespace = settings.namespace or context_namespace or DEFAULT_NAMESPACE
    return Connection(api_client(configuration), namespace, source=path)


def from_service_account(
    settings: KubernetesSettings,
    environ: Mapping[str, str],
    service_account_dir: Path,
) -> Connection:
    configuration = client.Configuration()
    loader = config.incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=str(service_account_dir / "token"),
        cert_filename=str(service_account_dir / "ca.crt"),
        environ=environ,
    )
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as error:
        raise ConfigurationError(
            f"cannot use the in-cluster Kubernetes configuration ({error}). Check "
            f"the pod's service account token in {service_account_dir}"
        ) from None
    namespace = settings.namespace or read_namespace_file(service_account_dir)
    return Connection(api_client(configuration), namespace, source="in-cluster")


def api_client(configuration: client.Configuration) -> client.ApiClient:
    configuration.retries = CONNECTION_RETRIES
    return client.ApiClient(configuration)


def read_namespace_file(service_account_dir: Path) -> str:
    try:
        namespace = (service_account_dir / "namespace").read_text().strip()
    except OSError:
        return DEFAULT_NAMESPACE
    return namespace or DEFAULT_NAMESPACE


def api_error_message(error: ApiException) -> str:
    """Return the apiserver's message from an error's Status body, cut short."""
    try:
        message = json.loads(error.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        message = f"{error.status} {error.reason}"
    return str(message)[:MAX_MESSAGE_LENGTH]


@contextmanager
def api_errors(
    server: str,
    action: str,
    secrets: tuple[str, ...] = (),
    unavailable: bool = False,
) -> Iterator[None]:
    """Translate client errors into orchestrator errors.

    Transport errors become `EngineUnavailableError`, and so does every error
    with `unavailable`, because that error means to the reconciler that nothing
    can be concluded about workloads. Other apiserver errors become
    `KubernetesApiError`. `secrets` are masked in the apiserver's message.
    """
    try:
        yield
    except pydantic.ValidationError as error:
        # The client checks request bodies against its models before sending.
        # Input values are left out because they may be connector secrets.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in detail['loc'])}: {detail['msg']}"
            for detail in error.errors(include_url=False, include_input=False)[:5]
        )
        raise OrchestratorError(
            f"failed to {action}: the request is invalid: {problems}"
        ) from error
    except TRANSPORT_ERRORS as error:
        raise EngineUnavailableError(
            f"cannot reach the Kubernetes API at {server} to {action}: "
            f"{str(error)[:MAX_MESSAGE_LENGTH]}"
        ) from error
    except ApiException as error:
        message = mask_values(api_error_message(error), secrets)
        if error.status == FORBIDDEN:
            message += "; grant this permission to the agent's Role"
        text = f"failed to {action}: {message}"
        if unavailable or not error.status:
            raise EngineUnavailableError(text) from error
        raise KubernetesApiError(text, error.status, status_causes(error)) from error


def status_causes(error: ApiException) -> list[dict[str, Any]]:
    """Return the `details.causes` of an apiserver Status body."""
    try:
        causes = json.loads(error.body or "")["details"]["causes"]
    except (ValueError, KeyError, TypeError):
        return []
    return [cause for cause in causes if isinstance(cause, dict)]


def mask_values(text: str, values: tuple[str, ...]) -> str:
    """Mask each of `values` in `text`, except short ones that are ordinary words."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= MIN_MASKED_LENGTH:
            text = text.replace(value, MASK)
    return text
