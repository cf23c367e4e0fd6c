"""The real agent, the platform stand-in and a Portainer API stand-in together."""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.conftest import Deployment
from tests.support.agent import wait_for
from tests.support.portainer_standin import PortainerStandin

pytestmark = pytest.mark.docker

START_TIMEOUT = 60


def test_connector_runs_through_portainer(deployment: Deployment) -> None:
    """A connector deploys through Portainer's API with the key and stack label."""
    api_key = f"ptr_{secrets.token_hex(16)}"
    deployment.secrets.append(api_key)
    with PortainerStandin(
        deployment.testbed.docker_host, api_key=api_key, env_id=7
    ) as standin:
        deployment.start_agent(
            OPENCTI__DAEMON__SELECTOR="portainer",
            OPENCTI__DAEMON__PORTAINER__API=standin.api,
            OPENCTI__DAEMON__PORTAINER__API_KEY=api_key,
            OPENCTI__DAEMON__PORTAINER__ENV_ID="7",
            OPENCTI__DAEMON__PORTAINER__ENV_TYPE="docker",
            OPENCTI__DAEMON__PORTAINER__STACK="opencti-connectors",
            OPENCTI__DAEMON__PORTAINER__NETWORK_MODE="host",
        )
        connector_key = f"api-key-{secrets.token_hex(8)}"
        deployment.secrets.append(connector_key)
        admin = deployment.platform.admin
        created = admin.add_connector(
            "connector-test", "Portainer connector", {"TEST_API_KEY": connector_key}
        )
        admin.request_status(created["id"], "starting")

        view = wait_for(
            lambda: (
                (v := admin.connector(created["id"]))["current_status"] == "started"
                and v["logs"]
                and v
            ),
            START_TIMEOUT,
            what="the connector reported started with logs",
        )
        pulls = standin.requests_to("/images/create")

    assert any("Portainer connector" in line for line in view["logs"])
    container = deployment.container_of(created["id"])
    assert container is not None
    assert "opencti-connectors" == container.labels["com.docker.compose.project"]
    assert pulls
    assert all(request.has_registry_auth for request in pulls)
