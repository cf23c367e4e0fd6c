"""Kubernetes settings: defaults, reference key names and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xtm_composer.settings import ConfigurationError, load_settings
from xtm_composer.settings.kubernetes import KubernetesSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_CONFIG = REPO_ROOT / "config"


def load_kubernetes(
    tmp_path: Path, section: dict[str, object] | None = None, **environ: str
) -> KubernetesSettings:
    document = {"manager": {"id": "m"}, "opencti": {"daemon": {"kubernetes": section}}}
    (tmp_path / "default.yaml").write_text(yaml.safe_dump(document))
    return load_settings(tmp_path, environ).opencti.daemon.kubernetes


def load_error(tmp_path: Path, section: dict[str, object]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_kubernetes(tmp_path, section)
    return str(caught.value)


def test_defaults() -> None:
    """Without a section: IfNotPresent, no host network, no base, no secrets."""
    settings = KubernetesSettings()

    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.host_network is False
    assert settings.base == {}
    assert settings.pull_secret_names == []
    assert settings.namespace is None
    assert settings.kubeconfig is None


def test_shipped_defaults_match_model() -> None:
    """config/default.yaml agrees with the model defaults."""
    shipped = load_settings(REPO_CONFIG, {}).opencti.daemon.kubernetes

    assert KubernetesSettings().model_dump() == shipped.model_dump()


def test_shipped_configmap_loads(tmp_path: Path) -> None:
    """The configuration in deploy/kubernetes/configmap.yaml is valid."""
    configmap = yaml.safe_load(
        (REPO_ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text()
    )
    (tmp_path / "production.yaml").write_text(configmap["data"]["production.yaml"])

    settings = load_settings(tmp_path, {"COMPOSER_ENV": "production"})

    assert settings.opencti.enable is True
    assert settings.opencti.daemon.selector == "kubernetes"
    assert settings.opencti.daemon.kubernetes.namespace is None


def test_empty_reference_base_deployment(tmp_path: Path) -> None:
    """`base_deployment:` with nothing after it, as in reference files, is accepted."""
    settings = load_kubernetes(tmp_path, {"base_deployment": None})

    assert settings.base == {}


def test_environment_variables(tmp_path: Path) -> None:
    """Every key can come from an environment variable, lists and maps as JSON."""
    settings = load_kubernetes(
        tmp_path,
        None,
        OPENCTI__DAEMON__KUBERNETES__NAMESPACE="connectors",
        OPENCTI__DAEMON__KUBERNETES__IMAGE_PULL_POLICY="Always",
        OPENCTI__DAEMON__KUBERNETES__IMAGE_PULL_SECRETS='["mirror", "team"]',
        OPENCTI__DAEMON__KUBERNETES__IMAGE_PULL_SECRET_NAME="legacy",
        OPENCTI__DAEMON__KUBERNETES__HOST_NETWORK="true",
        OPENCTI__DAEMON__KUBERNETES__IMAGE_RESOURCES='{"limits": {"memory": "1Gi"}}',
    )

    assert settings.namespace == "connectors"
    assert settings.image_pull_policy == "Always"
    assert settings.pull_secret_names == ["mirror", "team", "legacy"]
    assert settings.host_network is True
    assert settings.image_resources.to_manifest() == {"limits": {"memory": "1Gi"}}


def test_base_deployment_json_from_yaml_string(tmp_path: Path) -> None:
    """A JSON string in YAML is parsed into the base Deployment."""
    text = '{"spec": {"template": {"spec": {"nodeSelector": {"pool": "a"}}}}}'
    settings = load_kubernetes(tmp_path, {"base_deployment_json": text})

    assert settings.base["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a"}


def test_base_deployment_json_from_environment(tmp_path: Path) -> None:
    """The loader parses a JSON variable first, and the model takes the mapping."""
    base = {"metadata": {"labels": {"a": "b"}}}
    settings = load_kubernetes(
        tmp_path,
        None,
        OPENCTI__DAEMON__KUBERNETES__BASE_DEPLOYMENT_JSON=json.dumps(base),
    )

    assert settings.base == base


def test_invalid_base_deployment_json(tmp_path: Path) -> None:
    """Broken JSON names the key and the position, never a traceback."""
    message = load_error(tmp_path, {"base_deployment_json": '{"spec": '})

    assert "opencti.daemon.kubernetes.base_deployment_json" in message
    assert "not valid JSON" in message


def test_base_deployment_json_must_be_object(tmp_path: Path) -> None:
    """A JSON list is not a Deployment."""
    message = load_error(tmp_path, {"base_deployment_json": "[1, 2]"})

    assert "JSON object" in message


def test_both_base_keys_rejected(tmp_path: Path) -> None:
    """Only one of the two base keys may be set."""
    message = load_error(
        tmp_path,
        {"base_deployment": {"spec": {}}, "base_deployment_json": '{"spec": {}}'},
    )

    assert "keep only one" in message


def test_invalid_pull_policy(tmp_path: Path) -> None:
    """The pull policy is one of the three Kubernetes values."""
    message = load_error(tmp_path, {"image_pull_policy": "always"})

    assert "opencti.daemon.kubernetes.image_pull_policy" in message
    assert "IfNotPresent" in message


@pytest.mark.parametrize("namespace", ["Connectors", "a_b", "-x", "x" * 64])
def test_invalid_namespace(tmp_path: Path, namespace: str) -> None:
    """A namespace must be an RFC 1123 label."""
    message = load_error(tmp_path, {"namespace": namespace})

    assert "opencti.daemon.kubernetes.namespace" in message


def test_invalid_secret_name(tmp_path: Path) -> None:
    """Pull secret names are checked before any deploy."""
    message = load_error(tmp_path, {"image_pull_secrets": ["ok", "Not OK"]})

    assert "'Not OK' is not a valid Secret name" in message


def test_resources_numbers_become_quantities(tmp_path: Path) -> None:
    """YAML numbers are accepted as quantities."""
    settings = load_kubernetes(
        tmp_path, {"image_resources": {"requests": {"cpu": 1, "memory": "128Mi"}}}
    )

    assert (settings.image_resources.to_manifest()) == {
        "requests": {"cpu": "1", "memory": "128Mi"}
    }


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"limits": {"memory": "lots"}}, "not a Kubernetes quantity"),
        ({"limit": {"memory": "1Gi"}}, "image_resources.limit"),
    ],
)
def test_invalid_resources(
    tmp_path: Path, resources: dict[str, object], expected: str
) -> None:
    """Bad quantities and unknown resource keys are rejected."""
    message = load_error(tmp_path, {"image_resources": resources})

    assert expected in message
