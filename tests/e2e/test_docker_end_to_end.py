"""The real agent, the platform stand-in, the real dockerd and registries together."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import EXECUTE_SCHEDULE, Deployment
from tests.support.agent import AgentProcess, wait_for
from tests.support.docker_proxy import DockerProxy

pytestmark = pytest.mark.docker

PULL_TIMEOUT = 60
"""Seconds allowed for a first deploy, which includes an image pull."""


def add_test_connector(
    deployment: Deployment, name: str = "E2E connector", api_key: str | None = None
) -> tuple[str, str]:
    """Create a started connector from the bundled catalog; return id and API key."""
    api_key = api_key or f"api-key-{secrets.token_hex(8)}"
    deployment.secrets.append(api_key)
    admin = deployment.platform.admin
    created = admin.add_connector(
        "connector-test",
        name,
        {"TEST_API_KEY": api_key},
    )
    admin.request_status(created["id"], "starting")
    return created["id"], api_key


def sandbox_view(deployment: Deployment, connector_id: str) -> dict[str, Any]:
    return deployment.platform.admin.connector(connector_id)


def container_env(container: Any) -> dict[str, str]:
    container.reload()
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def cycles(agent: AgentProcess) -> int:
    return agent.count("Reconciliation cycle finished")


def test_prefixed_image_runs_and_reports(deployment: Deployment) -> None:
    """An image naming no registry is pulled from the private one, runs and reports."""
    agent = deployment.start_agent()
    connector_id, api_key = add_test_connector(deployment)

    view = wait_for(
        lambda: (
            (v := sandbox_view(deployment, connector_id))["current_status"] == "started"
            and v
        ),
        PULL_TIMEOUT,
        what="the connector to be reported started",
    )
    container = deployment.container_of(connector_id)
    assert container is not None
    assert (
        f"{deployment.testbed.registry}/opencti/connector-test:1.0.0"
        == (container.attrs["Config"]["Image"])
    )
    environment = container_env(container)
    assert api_key == environment["TEST_API_KEY"]
    assert deployment.platform.server.url == environment["OPENCTI_URL"]
    assert "started" == view["current_status"]

    view = wait_for(
        lambda: (
            (v := sandbox_view(deployment, connector_id))["health"] and v["logs"] and v
        ),
        20,
        what="health and logs in the sandbox",
    )
    assert any("E2E connector" in line for line in view["logs"])
    assert 0 == view["health"]["restart_count"]
    assert view["health"]["started_at"]
    assert agent.running


def test_lifecycle_reaches_dockerd_within_two_cycles(deployment: Deployment) -> None:
    """Stop, start, edit and delete in the sandbox reach dockerd within two cycles."""
    agent = deployment.start_agent()
    connector_id, _ = add_test_connector(deployment)
    admin = deployment.platform.admin
    wait_for(lambda: deployment.container_of(connector_id), PULL_TIMEOUT, what="deploy")
    wait_for(
        lambda: deployment.container_of(connector_id).status == "running",
        20,
        what="running",
    )

    def within_two_cycles(change: Any, effect: Any, what: str) -> None:
        before = cycles(agent)
        change()
        wait_for(effect, 6 * EXECUTE_SCHEDULE + 20, what=what)
        assert cycles(agent) - before <= 2, f"{what} took more than two cycles"

    within_two_cycles(
        lambda: admin.request_status(connector_id, "stopping"),
        lambda: deployment.container_of(connector_id).status == "exited",
        "the container to stop",
    )
    within_two_cycles(
        lambda: admin.request_status(connector_id, "starting"),
        lambda: deployment.container_of(connector_id).status == "running",
        "the container to start again",
    )
    new_key = f"edited-{secrets.token_hex(6)}"
    deployment.secrets.append(new_key)
    within_two_cycles(
        lambda: admin.edit_connector(
            connector_id,
            "E2E connector",
            {"TEST_API_KEY": new_key},
        ),
        lambda: (
            (c := deployment.container_of(connector_id)) is not None
            and container_env(c).get("TEST_API_KEY") == new_key
            and c.status == "running"
        ),
        "the redeploy with the new environment",
    )
    within_two_cycles(
        lambda: admin.delete_connector(connector_id),
        lambda: deployment.container_of(connector_id) is None,
        "the container removal",
    )


def test_wrong_password_reported_then_fixed(deployment: Deployment) -> None:
    """A denied pull is reported in the connector's logs; a fixed password deploys."""
    wrong = f"wrong-{secrets.token_hex(6)}"
    deployment.secrets.append(wrong)
    agent = deployment.start_agent(OPENCTI__DAEMON__REGISTRY__PASSWORD=wrong)
    connector_id, _ = add_test_connector(deployment)

    view = wait_for(
        lambda: (v := sandbox_view(deployment, connector_id))["logs"] and v,
        PULL_TIMEOUT,
        what="the pull failure in the connector's logs",
    )
    assert any("denied the credentials" in line for line in view["logs"])
    assert deployment.container_of(connector_id) is None
    assert agent.running
    assert 0 == agent.stop()

    deployment.start_agent()
    wait_for(
        lambda: sandbox_view(deployment, connector_id)["current_status"] == "started",
        PULL_TIMEOUT,
        what="the deploy once the password is fixed",
    )


def test_missing_image_reported(deployment: Deployment) -> None:
    """An image that does not exist is reported as not found, and retried."""
    admin = deployment.platform.admin
    agent = deployment.start_agent()
    created = admin.add_connector("missing-image-test", "Missing image", {})
    admin.request_status(created["id"], "starting")

    view = wait_for(
        lambda: (v := sandbox_view(deployment, created["id"]))["logs"] and v,
        PULL_TIMEOUT,
        what="the missing image in the connector's logs",
    )
    assert any("not found" in line for line in view["logs"])
    assert agent.running


def test_other_registry_pulled_without_credentials(deployment: Deployment) -> None:
    """An image naming another registry is not prefixed and gets no credentials."""
    admin = deployment.platform.admin
    with DockerProxy(deployment.testbed.docker_host) as proxy:
        deployment.start_agent(DOCKER_HOST=proxy.url)
        open_one = admin.add_connector("open-registry-test", "Open registry", {})
        private_id, _ = add_test_connector(deployment, name="Private registry")
        admin.request_status(open_one["id"], "starting")

        for connector_id in (open_one["id"], private_id):
            wait_for(
                lambda cid=connector_id: (
                    sandbox_view(deployment, cid)["current_status"] == "started"
                ),
                PULL_TIMEOUT,
                what="both connectors to start",
            )
        pulls = proxy.requests_to("/images/create")

    container = deployment.container_of(open_one["id"])
    assert container is not None
    assert (
        f"{deployment.testbed.open_registry}/public/connector-test:1.0.0"
        == (container.attrs["Config"]["Image"])
    )
    open_pulls = [r for r in pulls if "public" in r.path]
    private_pulls = [r for r in pulls if "opencti" in r.path]
    assert open_pulls
    assert private_pulls
    assert not any(r.has_registry_auth for r in open_pulls)
    assert all(r.has_registry_auth for r in private_pulls)


def test_platform_down_at_start_and_mid_run(deployment: Deployment) -> None:
    """The agent backs off while the platform is down, keeps containers, recovers."""
    server = deployment.platform.server
    server.stop()
    agent = deployment.start_agent(wait_registered=False)

    wait_for(
        lambda: agent.count("Platform unreachable, will retry") >= 2, 30, what="retries"
    )
    assert agent.running
    server.start()
    wait_for(lambda: server.state.manager() is not None, 90, what="registration")
    connector_id, _ = add_test_connector(deployment)
    wait_for(
        lambda: sandbox_view(deployment, connector_id)["current_status"] == "started",
        PULL_TIMEOUT,
        what="recovery after the platform came up",
    )
    container_id = deployment.container_of(connector_id).id

    server.stop()
    listing_failures = agent.count("Cannot list connectors")
    wait_for(
        lambda: agent.count("Cannot list connectors") >= listing_failures + 2,
        30,
        what="failed listings while the platform is down",
    )
    container = deployment.container_of(connector_id)
    assert container is not None
    assert container_id == container.id
    assert "running" == container.status

    server.start()
    deployment.platform.admin.request_status(connector_id, "stopping")
    wait_for(
        lambda: deployment.container_of(connector_id).status == "exited",
        30,
        what="the stop request after recovery",
    )


def test_pretty_logs_hold_no_secret(deployment: Deployment) -> None:
    """In the pretty format too, no secret reaches the agent's log."""
    agent = deployment.start_agent(MANAGER__LOGGER__FORMAT="pretty")
    connector_id, _ = add_test_connector(deployment)

    wait_for(
        lambda: sandbox_view(deployment, connector_id)["current_status"] == "started",
        PULL_TIMEOUT,
        what="the deploy",
    )
    wait_for(lambda: agent.count("Connector environment") >= 1, 10, what="env log")
    assert 'INFO manager_id="' in agent.log_text()


def test_sigterm_stops_cleanly(deployment: Deployment) -> None:
    """SIGTERM ends the agent with exit code 0 and leaves its containers running."""
    agent = deployment.start_agent()
    connector_id, _ = add_test_connector(deployment)
    wait_for(
        lambda: sandbox_view(deployment, connector_id)["current_status"] == "started",
        PULL_TIMEOUT,
        what="the deploy",
    )

    assert 0 == agent.stop()
    assert "Agent stopped" in agent.log_text()
    assert "running" == deployment.container_of(connector_id).status


def test_reference_catalog_connector_deploys(
    deployment: Deployment, reference_dir: Path
) -> None:
    """A real catalog entry becomes a running container of its versioned image."""
    manifest = json.loads(
        (reference_dir / "catalog/ipinfo/connector_manifest.json").read_text()
    )
    image = f"{manifest['container_image']}:{manifest['container_version']}"
    token = f"ipinfo-{secrets.token_hex(8)}"
    deployment.secrets.append(token)
    deployment.start_agent()
    admin = deployment.platform.admin
    created = admin.add_connector(
        "ipinfo", "IPInfo from the catalog", {"IPINFO_TOKEN": token}
    )
    admin.request_status(created["id"], "starting")

    wait_for(
        lambda: sandbox_view(deployment, created["id"])["current_status"] == "started",
        PULL_TIMEOUT,
        what="the catalog connector to start",
    )
    container = deployment.container_of(created["id"])
    assert (
        f"{deployment.testbed.registry}/{image}" == container.attrs["Config"]["Image"]
    )
    environment = container_env(container)
    assert token == environment["IPINFO_TOKEN"]
    assert "TLP:AMBER" == environment["IPINFO_MAX_TLP"]
    assert created["id"] == environment["CONNECTOR_ID"]
