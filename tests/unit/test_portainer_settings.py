"""Portainer settings: formats, defaults and the checks made at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from xtm_composer.orchestrators.factory import build_orchestrator
from xtm_composer.orchestrators.portainer import PortainerOrchestrator
from xtm_composer.orchestrators.portainer_engine import environment_url
from xtm_composer.settings import ConfigurationError, load_settings
from xtm_composer.settings.portainer import PortainerSettings

API_KEY = "ptr_standin-api-key-0123456789"


def complete(**changes: Any) -> PortainerSettings:
    values: dict[str, Any] = {
        "api": "https://portainer.example.com:9443",
        "api_key": SecretStr(API_KEY),
        "env_id": "3",
    }
    values.update(changes)
    return PortainerSettings.model_validate(values)


def test_defaults() -> None:
    """Verification is on and the API version is negotiated by default."""
    settings = PortainerSettings()

    assert settings.unsecured_certificate is False
    assert "auto" == settings.api_version
    assert settings.pinned_api_version is None
    assert "docker" == settings.env_type


def test_reference_keys_load(tmp_path: Path) -> None:
    """The reference configuration's keys load; a YAML number id becomes a string."""
    (tmp_path / "default.yaml").write_text(
        yaml.safe_dump(
            {
                "manager": {"id": "m"},
                "opencti": {
                    "daemon": {
                        "selector": "portainer",
                        "portainer": {
                            "api": "https://portainer.example.com:9443/",
                            "api_key": API_KEY,
                            "env_id": 3,
                            "env_type": "docker",
                            "api_version": "v1.41",
                            "stack": "opencti",
                            "network_mode": "opencti_default",
                        },
                    }
                },
            }
        )
    )

    portainer = load_settings(tmp_path, {}).opencti.daemon.portainer

    assert "https://portainer.example.com:9443" == portainer.api
    assert "3" == portainer.env_id
    assert "1.41" == portainer.pinned_api_version
    assert "/api/endpoints/3/docker" == portainer.environment_path
    assert "opencti" == portainer.stack
    assert API_KEY not in repr(portainer)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("api", "portainer.example.com", "with its scheme"),
        ("api", "https://user:pw@portainer.example.com", "must not contain"),
        ("env_id", "local", "is a number"),
        ("api_version", "1.41.2", "Docker Engine API version"),
    ],
)
def test_invalid_formats(key: str, value: str, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        PortainerSettings.model_validate({key: value})


def test_api_key_hidden_in_errors(tmp_path: Path) -> None:
    """A configuration error never shows the API key."""
    (tmp_path / "default.yaml").write_text(yaml.safe_dump({"manager": {"id": "m"}}))
    environ = {
        "OPENCTI__DAEMON__PORTAINER__API_KEY": API_KEY,
        "OPENCTI__DAEMON__PORTAINER__ENV_ID": "local",
    }

    with pytest.raises(ConfigurationError) as raised:
        load_settings(tmp_path, environ)

    assert "opencti.daemon.portainer.env_id" in str(raised.value)
    assert API_KEY not in str(raised.value)


@pytest.mark.parametrize("env_type", ["kubernetes", "swarm", "edge"])
def test_env_type_rejected_at_build(env_type: str) -> None:
    """An environment that is not Docker stops start-up with key, value and fix."""
    with pytest.raises(ConfigurationError) as raised:
        PortainerOrchestrator(
            complete(env_type=env_type),
            None,
            "manager",
            "opencti",
            settings_path="opencti.daemon.portainer",
        )

    message = str(raised.value)
    assert f"opencti.daemon.portainer.env_type = {env_type!r}" in message
    assert "set env_type to docker" in message


def test_missing_keys_rejected_at_build() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PortainerOrchestrator(
            PortainerSettings(), None, "manager", "opencti", settings_path="p"
        )

    assert "p.api, p.api_key, p.env_id must be set" in str(raised.value)


def test_missing_ca_file_rejected_at_build(tmp_path: Path) -> None:
    settings = complete(ca_file=tmp_path / "missing.pem")

    with pytest.raises(ConfigurationError, match="ca_file"):
        PortainerOrchestrator(settings, None, "manager", "opencti")


def test_unused_section_does_not_block(tmp_path: Path) -> None:
    """An unused Portainer section with a bad env_type does not block start-up."""
    (tmp_path / "default.yaml").write_text(
        yaml.safe_dump(
            {
                "manager": {"id": "m"},
                "opencti": {
                    "daemon": {
                        "selector": "swarm",
                        "portainer": {"env_type": "kubernetes"},
                    }
                },
            }
        )
    )
    settings = load_settings(tmp_path, {})

    orchestrator = build_orchestrator(settings.manager, settings.opencti, "opencti")

    assert "swarm" == orchestrator.name
    orchestrator.close()


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ("https://p.example.com", "https://p.example.com:443/api/endpoints/3/docker"),
        ("http://p.example.com", "http://p.example.com:80/api/endpoints/3/docker"),
        (
            "https://p.example.com:9443/portainer",
            "https://p.example.com:9443/portainer/api/endpoints/3/docker",
        ),
        ("http://[::1]:9000", "http://[::1]:9000/api/endpoints/3/docker"),
    ],
)
def test_environment_url(api: str, expected: str) -> None:
    """The base URL always has a port, which the docker SDK requires."""
    assert expected == environment_url(api, "/api/endpoints/3/docker")
