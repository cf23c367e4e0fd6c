"""Cluster and namespace resolution, and apiserver error translation.

Nothing here sends a request: the kubeconfigs point at the testbed's loopback
address but only the client configuration is built.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from xtm_composer.orchestrators import kubernetes_api
from xtm_composer.orchestrators.base import EngineUnavailableError, OrchestratorError
from xtm_composer.settings import ConfigurationError
from xtm_composer.settings.kubernetes import KubernetesSettings

SERVER = "https://127.0.0.1:6443"
SETTINGS_PATH = "opencti.daemon.kubernetes"


def write_kubeconfig(path: Path, namespace: str | None) -> Path:
    context: dict[str, str] = {"cluster": "testbed", "user": "tester"}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {"server": SERVER, "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "testbed", "context": context}],
        "current-context": "testbed",
    }
    path.write_text(json.dumps(document))
    return path


def write_service_account(directory: Path, namespace: str) -> Path:
    directory.mkdir()
    (directory / "token").write_text("not-a-real-token")
    (directory / "ca.crt").write_text("not a real certificate")
    (directory / "namespace").write_text(namespace + "\n")
    return directory


IN_POD = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}


def test_configured_kubeconfig_and_namespace(tmp_path: Path) -> None:
    """The configured namespace wins over the context's."""
    path = write_kubeconfig(tmp_path / "config", namespace="from-context")
    settings = KubernetesSettings(kubeconfig=path, namespace="configured")

    connection = kubernetes_api.connect(settings, SETTINGS_PATH, environ={})

    assert connection.namespace == "configured"
    assert connection.server == SERVER
    assert str(path) == connection.source


def test_context_namespace_used(tmp_path: Path) -> None:
    """Without a configured namespace the kubeconfig context's is used."""
    path = write_kubeconfig(tmp_path / "config", namespace="from-context")
    settings = KubernetesSettings(kubeconfig=path)

    connection = kubernetes_api.connect(settings, SETTINGS_PATH, environ={})

    assert connection.namespace == "from-context"


def test_default_namespace_last(tmp_path: Path) -> None:
    """A context without namespace gives `default`."""
    path = write_kubeconfig(tmp_path / "config", namespace=None)

    connection = kubernetes_api.connect(
        KubernetesSettings(kubeconfig=path), SETTINGS_PATH, environ={}
    )

    assert connection.namespace == "default"


def test_in_cluster_namespace_file(tmp_path: Path) -> None:
    """In a pod, the service account's namespace is used."""
    account = write_service_account(tmp_path / "account", "agents")

    connection = kubernetes_api.connect(
        KubernetesSettings(),
        SETTINGS_PATH,
        environ=IN_POD,
        service_account_dir=account,
    )

    assert connection.namespace == "agents"
    assert connection.source == "in-cluster"
    assert connection.server == SERVER


def test_configured_kubeconfig_wins_in_pod(tmp_path: Path) -> None:
    """In a pod, a configured kubeconfig and its context namespace still win."""
    account = write_service_account(tmp_path / "account", "agents")
    path = write_kubeconfig(tmp_path / "config", namespace="remote")

    connection = kubernetes_api.connect(
        KubernetesSettings(kubeconfig=path),
        SETTINGS_PATH,
        environ=IN_POD,
        service_account_dir=account,
    )

    assert connection.namespace == "remote"
    assert str(path) == connection.source


def test_kubeconfig_environment_variable(tmp_path: Path) -> None:
    """Outside a pod, KUBECONFIG names the file."""
    path = write_kubeconfig(tmp_path / "config", namespace="from-variable")

    connection = kubernetes_api.connect(
        KubernetesSettings(),
        SETTINGS_PATH,
        environ={"KUBECONFIG": str(path)},
        service_account_dir=tmp_path / "absent",
        home=tmp_path,
    )

    assert connection.namespace == "from-variable"


def test_no_configuration_found(tmp_path: Path) -> None:
    """Without any configuration the error names the setting to use."""
    with pytest.raises(ConfigurationError) as caught:
        kubernetes_api.connect(
            KubernetesSettings(),
            SETTINGS_PATH,
            environ={},
            service_account_dir=tmp_path / "absent",
            home=tmp_path,
        )

    assert "opencti.daemon.kubernetes.kubeconfig" in str(caught.value)


def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    """A kubeconfig that is not one gives a configuration error with its path."""
    path = tmp_path / "config"
    path.write_text("just text")

    with pytest.raises(ConfigurationError) as caught:
        kubernetes_api.connect(
            KubernetesSettings(kubeconfig=path), SETTINGS_PATH, environ={}
        )

    assert str(path) in str(caught.value)


def test_missing_kubeconfig_file(tmp_path: Path) -> None:
    """A configured kubeconfig that does not exist is named with the fix."""
    path = tmp_path / "absent"

    with pytest.raises(ConfigurationError) as caught:
        kubernetes_api.connect(
            KubernetesSettings(kubeconfig=path), SETTINGS_PATH, environ={}
        )

    assert f"kubeconfig file {path} not found" in str(caught.value)
    assert "opencti.daemon.kubernetes.kubeconfig" in str(caught.value)


def test_kubeconfig_list_skips_missing(tmp_path: Path) -> None:
    """A KUBECONFIG list works when one of its files exists."""
    path = write_kubeconfig(tmp_path / "config", namespace="listed")
    listed = f"{tmp_path / 'absent'}:{path}"

    connection = kubernetes_api.connect(
        KubernetesSettings(),
        SETTINGS_PATH,
        environ={"KUBECONFIG": listed},
        service_account_dir=tmp_path / "absent-account",
        home=tmp_path,
    )

    assert connection.namespace == "listed"


def test_client_retries_bounded(tmp_path: Path) -> None:
    """An unreachable apiserver is not retried three times per request."""
    path = write_kubeconfig(tmp_path / "config", namespace=None)

    connection = kubernetes_api.connect(
        KubernetesSettings(kubeconfig=path), SETTINGS_PATH, environ={}
    )

    assert (
        connection.api_client.configuration.retries
    ) == kubernetes_api.CONNECTION_RETRIES


def api_exception(status: int, body: dict[str, object]) -> ApiException:
    return ApiException(status=status, reason="reason", body=json.dumps(body))


def raise_through(
    error: Exception, secrets: tuple[str, ...] = (), unavailable: bool = False
) -> OrchestratorError:
    """Return what `api_errors` turns `error` into."""
    translating = kubernetes_api.api_errors(
        SERVER, "update Deployment x", secrets, unavailable
    )
    with pytest.raises(OrchestratorError) as caught, translating:
        raise error
    return caught.value


SELECTOR_MISMATCH = {
    "kind": "Status",
    "message": 'Deployment.apps "x" is invalid: spec.template.metadata.labels: '
    "Invalid value: ...: `selector` does not match template `labels`",
    "details": {
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: ...: `selector` does not match template "
                "`labels`",
                "field": "spec.template.metadata.labels",
            }
        ]
    },
    "code": 422,
}

SELECTOR_IMMUTABLE = {
    "kind": "Status",
    "message": 'Deployment.apps "x" is invalid: spec.selector: Invalid value: '
    "...: field is immutable",
    "details": {
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: ...: field is immutable",
                "field": "spec.selector",
            }
        ]
    },
    "code": 422,
}

OTHER_INVALID = {
    "kind": "Status",
    "message": 'Deployment.apps "x" is invalid: spec.template.spec.containers[0].'
    "image: Required value",
    "details": {
        "causes": [
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.template.spec.containers[0].image",
            }
        ]
    },
    "code": 422,
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [(SELECTOR_MISMATCH, True), (SELECTOR_IMMUTABLE, True), (OTHER_INVALID, False)],
)
def test_selector_conflict_detected(body: dict[str, object], expected: bool) -> None:
    """Only selector errors call for a delete and create."""
    error = raise_through(api_exception(422, body))

    assert isinstance(error, kubernetes_api.KubernetesApiError)
    assert error.status == 422
    assert expected == error.selector_conflict
    assert str(body["message"]) in str(error)


def test_forbidden_names_fix() -> None:
    """A 403 keeps the apiserver's message and names where to grant the verb."""
    body = {
        "message": 'deployments.apps "x" is forbidden: User "u" cannot patch '
        'resource "deployments" in API group "apps" in the namespace "n"'
    }
    error = raise_through(api_exception(403, body))

    assert 'cannot patch resource "deployments"' in str(error)
    assert "Role" in str(error)


def test_transport_error_is_unavailable() -> None:
    """A refused connection means the engine is unavailable."""
    error = raise_through(urllib3.exceptions.NewConnectionError(None, "refused"))  # type: ignore[arg-type]

    assert isinstance(error, EngineUnavailableError)
    assert SERVER in str(error)


def test_unavailable_flag_for_listings() -> None:
    """With `unavailable`, any apiserver error is an unavailable engine."""
    error = raise_through(api_exception(404, {"message": "gone"}), unavailable=True)

    assert isinstance(error, EngineUnavailableError)


def test_environment_values_masked() -> None:
    """Connector values echoed by the apiserver are masked."""
    body = {"message": 'env[0].value: Invalid value: "s3cr3t-value"'}
    error = raise_through(api_exception(422, body), secrets=("s3cr3t-value",))

    assert "s3cr3t-value" not in str(error)
    assert "***" in str(error)


def test_non_json_error_body() -> None:
    """An error without a Status body still gives status and reason."""
    error = raise_through(ApiException(status=502, reason="Bad Gateway"))

    assert "502 Bad Gateway" in str(error)
