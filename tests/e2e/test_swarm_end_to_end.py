"""The real agent, the platform stand-in and the testbed's one-node swarm together."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.e2e.conftest import Deployment
from tests.support.agent import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

START_TIMEOUT = 90
"""Seconds for a first deploy: digest lookup, task scheduling, pull, start."""


def services_of(deployment: Deployment, connector_id: str) -> list[Any]:
    return deployment.docker.services.list(
        filters={"label": f"opencti-connector-id={connector_id}"}
    )


def test_connector_lifecycle_on_swarm(deployment: Deployment) -> None:
    """A prefixed image runs as a service, reports, stops and is removed."""
    deployment.start_agent(
        OPENCTI__DAEMON__SELECTOR="swarm",
        OPENCTI__DAEMON__SWARM__NETWORK="host",
        OPENCTI__DAEMON__SWARM__RESTART_DELAY="1",
    )
    api_key = f"api-key-{secrets.token_hex(8)}"
    deployment.secrets.append(api_key)
    admin = deployment.platform.admin
    created = admin.add_connector(
        "connector-test", "Swarm connector", {"TEST_API_KEY": api_key}
    )
    connector_id = created["id"]
    admin.request_status(connector_id, "starting")

    try:
        view = wait_for(
            lambda: (
                (v := admin.connector(connector_id))["current_status"] == "started"
                and v["logs"]
                and v
            ),
            START_TIMEOUT,
            what="the swarm connector reported started with logs",
        )
        assert any("Swarm connector" in line for line in view["logs"])
        (service,) = services_of(deployment, connector_id)
        image = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image.startswith(
            f"{deployment.testbed.registry}/opencti/connector-test:1.0.0"
        )

        admin.request_status(connector_id, "stopping")
        wait_for(
            lambda: (
                services_of(deployment, connector_id)[0].attrs["Spec"]["Mode"][
                    "Replicated"
                ]["Replicas"]
                == 0
            ),
            30,
            what="the service scaled to 0",
        )
        admin.delete_connector(connector_id)
        wait_for(
            lambda: not services_of(deployment, connector_id),
            30,
            what="the service removal",
        )
    finally:
        for service in services_of(deployment, connector_id):
            service.remove()
