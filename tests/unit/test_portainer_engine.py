"""Portainer error responses mapped to orchestrator errors."""

from __future__ import annotations

import json

import docker.errors
import pytest
import requests
from pydantic import SecretStr

from xtm_composer.orchestrators.base import EngineUnavailableError, OrchestratorError
from xtm_composer.orchestrators.portainer_engine import (
    PortainerAuthError,
    PortainerConnection,
)
from xtm_composer.settings.portainer import PortainerSettings

API_KEY = "ptr_unit-test-key-5f3a"
PATH = "opencti.daemon.portainer"


def connection(**changes: object) -> PortainerConnection:
    values: dict[str, object] = {
        "api": "https://portainer.example.com:9443",
        "api_key": SecretStr(API_KEY),
        "env_id": "3",
    }
    values.update(changes)
    return PortainerConnection(PortainerSettings.model_validate(values), PATH)


def api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"message": message}).encode()
    response.url = "https://portainer.example.com:9443/api/endpoints/3/docker/v1.41/x"
    return docker.errors.APIError("error", response=response, explanation=message)


def raised_by(error: Exception, portainer: PortainerConnection) -> Exception:
    with (
        pytest.raises(OrchestratorError) as raised,
        portainer.errors("list containers"),
    ):
        raise error
    return raised.value


def test_unauthorized_names_api_key_setting() -> None:
    error = raised_by(api_error(401, "Invalid API key"), connection())

    assert isinstance(error, PortainerAuthError)
    assert "rejected the API key (HTTP 401)" in str(error)
    assert f"{PATH}.api_key" in str(error)
    assert API_KEY not in str(error)


def test_forbidden_names_environment() -> None:
    error = raised_by(api_error(403, "Access denied"), connection())

    assert isinstance(error, PortainerAuthError)
    assert "environment 3" in str(error)
    assert f"{PATH}.env_id" in str(error)


def test_version_mismatch_names_api_version() -> None:
    message = "client version 1.44 is too new. Maximum supported API version is 1.41"

    error = raised_by(api_error(400, message), connection())

    assert not isinstance(error, PortainerAuthError)
    assert message in str(error)
    assert f"{PATH}.api_version" in str(error)


def test_engine_error_masks_api_key() -> None:
    """An engine message that echoes the API key never shows it."""
    error = raised_by(api_error(500, f"bad header {API_KEY}"), connection())

    assert "failed to list containers" in str(error)
    assert API_KEY not in str(error)


def test_tls_failure_gives_both_fixes() -> None:
    portainer = connection()
    with (
        pytest.raises(EngineUnavailableError) as raised,
        portainer.errors("reach Portainer"),
    ):
        raise requests.exceptions.SSLError("certificate verify failed")

    assert "certificate verify failed" in str(raised.value)
    assert f"{PATH}.ca_file" in str(raised.value)
    assert f"{PATH}.unsecured_certificate" in str(raised.value)


def test_connection_failure_names_api_setting() -> None:
    portainer = connection()
    with (
        pytest.raises(EngineUnavailableError) as raised,
        portainer.errors("reach Portainer"),
    ):
        raise requests.exceptions.ConnectionError("connection refused")

    assert "https://portainer.example.com:9443" in str(raised.value)
    assert f"{PATH}.api" in str(raised.value)


def test_tls_verification_described() -> None:
    assert "system CAs" == connection().tls_verification
    assert "off" == connection(unsecured_certificate=True).tls_verification
    assert "none (plain HTTP)" == connection(api="http://p:9000").tls_verification
