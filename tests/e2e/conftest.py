"""End-to-end fixtures: the platform stand-in, the real agent and the real dockerd."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import REFERENCE_DIR, Testbed
from tests.engines.conftest import (  # noqa: F401 (fixtures shared with engine tests)
    kube_admin,
    kube_namespace,
    kubernetes_testbed,
)
from tests.support.agent import AgentProcess, wait_for, write_manager_key
from xtm_composer.sandbox.admin import SandboxAdmin
from xtm_composer.sandbox.catalog import DEFAULT_CATALOG_DIR, load_catalog
from xtm_composer.sandbox.server import SandboxServer
from xtm_composer.sandbox.state import SandboxState

EXECUTE_SCHEDULE = 2
"""Seconds between reconciliation cycles in these tests."""


@pytest.fixture(scope="session")
def manager_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def write_catalog_entry(folder: Path, slug: str, image: str, version: str) -> Path:
    """Write a small catalog entry of our own whose image is `image:version`."""
    entry = folder / slug
    entry.mkdir(parents=True)
    manifest = {
        "title": slug,
        "slug": slug,
        "description": "End-to-end test entry.",
        "short_description": "End-to-end test entry.",
        "manager_supported": True,
        "container_image": image,
        "container_version": version,
        "container_type": "EXTERNAL_IMPORT",
    }
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "CONNECTOR_LOG_LEVEL": {"type": "string", "default": "info"},
            "TEST_API_KEY": {"type": "string", "format": "password", "writeOnly": True},
        },
        "required": [],
        "additionalProperties": True,
    }
    (entry / "connector_manifest.json").write_text(json.dumps(manifest))
    (entry / "connector_config_schema.json").write_text(json.dumps(schema))
    return entry


@dataclass
class Platform:
    server: SandboxServer
    admin: SandboxAdmin
    token: str


@pytest.fixture
def platform(tmp_path: Path, testbed: Testbed) -> Iterator[Platform]:
    """A running platform stand-in with the bundled catalog and two test entries."""
    extra = tmp_path / "catalog"
    write_catalog_entry(
        extra,
        "open-registry-test",
        f"{testbed.open_registry}/public/connector-test",
        "1.0.0",
    )
    write_catalog_entry(
        extra, "missing-image-test", "opencti/connector-absent", "9.9.9"
    )
    folders = [DEFAULT_CATALOG_DIR, extra]
    if (REFERENCE_DIR / "catalog").is_dir():
        folders.append(REFERENCE_DIR / "catalog")
    catalog = load_catalog(folders)
    token = secrets.token_urlsafe(24)
    server = SandboxServer(SandboxState(catalog), token=token)
    server.start()
    admin = SandboxAdmin(server.url, token)
    yield Platform(server, admin, token)
    admin.close()
    server.stop()


@dataclass
class Deployment:
    """Everything one end-to-end test needs to start agents and check results."""

    testbed: Testbed
    platform: Platform
    workdir: Path
    manager_id: str
    key_path: Path
    docker: docker.DockerClient
    agents: list[AgentProcess] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def environment(self, **overrides: str) -> dict[str, str]:
        values = {
            "MANAGER__ID": self.manager_id,
            "MANAGER__NAME": "End-to-end manager",
            "MANAGER__EXECUTE_SCHEDULE": str(EXECUTE_SCHEDULE),
            "MANAGER__PING_ALIVE_SCHEDULE": "2",
            "MANAGER__CREDENTIALS_KEY_FILEPATH": str(self.key_path),
            "MANAGER__LOGGER__LEVEL": "debug",
            "MANAGER__LOGGER__FORMAT": "json",
            "MANAGER__DEBUG__SHOW_ENV_VARS": "true",
            "OPENCTI__ENABLE": "true",
            "OPENCTI__URL": self.platform.server.url,
            "OPENCTI__TOKEN": self.platform.token,
            "OPENCTI__LOGS_SCHEDULE": "2",
            "OPENCTI__HEALTH_SCHEDULE": "2",
            "OPENCTI__DAEMON__SELECTOR": "docker",
            "OPENCTI__DAEMON__DOCKER__NETWORK_MODE": "host",
            "OPENCTI__DAEMON__REGISTRY__SERVER": self.testbed.registry,
            "OPENCTI__DAEMON__REGISTRY__USERNAME": self.testbed.registry_username,
            "OPENCTI__DAEMON__REGISTRY__PASSWORD": self.testbed.registry_password,
            "DOCKER_HOST": self.testbed.docker_host,
        }
        values.update(overrides)
        return values

    def start_agent(
        self, wait_registered: bool = True, **overrides: str
    ) -> AgentProcess:
        """Start an agent and, by default, wait until it registered its key.

        The platform encrypts connector secrets for the registered manager key,
        so connectors with secrets can only be created after registration.
        """
        name = f"agent-{len(self.agents)}"
        agent = AgentProcess(self.environment(**overrides), self.workdir, name).start()
        self.agents.append(agent)
        if wait_registered:
            wait_for(
                lambda: self.platform.server.state.manager() is not None,
                30,
                what="the agent's registration",
            )
        return agent

    def containers(self) -> list[docker.models.containers.Container]:
        return self.docker.containers.list(
            all=True, filters={"label": f"opencti-manager={self.manager_id}"}
        )

    def container_of(
        self, connector_id: str
    ) -> docker.models.containers.Container | None:
        for container in self.containers():
            if container.labels.get("opencti-connector-id") == connector_id:
                return container
        return None

    def all_agent_logs(self) -> str:
        return "".join(agent.log_text() for agent in self.agents)


@pytest.fixture
def deployment(
    tmp_path: Path, testbed: Testbed, platform: Platform, manager_key: rsa.RSAPrivateKey
) -> Iterator[Deployment]:
    """An isolated manager id, its key file, and clean-up of its containers.

    At the end, every agent is stopped with SIGTERM and its whole log is checked
    for secrets: the platform token, the registry password and every decrypted
    value the test registered in `deployment.secrets`.
    """
    client = docker.DockerClient(base_url=testbed.docker_host, version="auto")
    result = Deployment(
        testbed=testbed,
        platform=platform,
        workdir=tmp_path,
        manager_id=f"e2e-{uuid.uuid4().hex[:12]}",
        key_path=write_manager_key(tmp_path / "manager-key.pem", manager_key),
        docker=client,
    )
    result.secrets += [platform.token, testbed.registry_password]
    try:
        yield result
    finally:
        exit_codes = [agent.stop() for agent in result.agents]
        for container in result.containers():
            container.remove(force=True)
        client.close()
    logs = result.all_agent_logs()
    for secret in result.secrets:
        assert secret not in logs, "a secret appeared in the agent's log"
    assert all(code == 0 for code in exit_codes), f"agent exit codes {exit_codes}"
