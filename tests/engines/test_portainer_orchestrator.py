"""PortainerOrchestrator against a Portainer stand-in in front of the testbed engine.

The stand-in checks the API key and the environment path, then forwards to the
testbed dockerd, so containers behave as on a real Portainer Docker
environment. Each test has its own manager id, and a finalizer removes every
container that carries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import docker
import docker.errors
import pytest
from pydantic import SecretStr

from tests import conftest
from tests.support import log_image as log_images
from tests.support.polling import poll_until
from tests.support.portainer_standin import PortainerStandin
from xtm_composer.orchestrators.base import (
    CA_BUNDLE_PATH,
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    MANAGER_LABEL,
    EngineUnavailableError,
    OrchestratorError,
    RegistryAuthError,
    Workload,
    WorkloadSpec,
    WorkloadStatus,
)
from xtm_composer.orchestrators.naming import workload_labels, workload_name
from xtm_composer.orchestrators.portainer import STACK_LABEL, PortainerOrchestrator
from xtm_composer.orchestrators.portainer_engine import PortainerAuthError
from xtm_composer.registry import resolve_image
from xtm_composer.settings import RegistrySettings
from xtm_composer.settings.portainer import PortainerSettings

pytestmark = pytest.mark.docker

PLATFORM = "opencti"
API_KEY = "ptr_test-key-8c1d9b7e4a"
ENV_ID = 1
STACK = "opencti-connectors"
TEST_IMAGE = "opencti/connector-test:1.0.0"
LOCAL_IMAGE = "xtm-testbed/pause:latest"
LOG_IMAGE_REPOSITORY = "xtm-test/portainer-interleaved-logs"

T = TypeVar("T")


@pytest.fixture(scope="module")
def engine(testbed: conftest.Testbed) -> Iterator[docker.DockerClient]:
    """A plain docker SDK client of the testbed engine, to check and clean up."""
    try:
        client = docker.DockerClient(base_url=testbed.docker_host, version="auto")
    except docker.errors.DockerException as error:
        conftest.missing_engine(f"the testbed Docker Engine does not answer: {error}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def log_image(engine: docker.DockerClient, testbed: conftest.Testbed) -> str:
    repository = f"{testbed.open_registry}/{LOG_IMAGE_REPOSITORY}"
    return log_images.push_log_image(engine, LOCAL_IMAGE, repository)


@pytest.fixture
def manager_id(engine: docker.DockerClient) -> Iterator[str]:
    manager = f"test-manager-{uuid.uuid4().hex[:12]}"
    yield manager
    label = f"{MANAGER_LABEL}={manager}"
    for container in engine.containers.list(all=True, filters={"label": label}):
        container.remove(force=True, v=True)


@pytest.fixture
def standin(testbed: conftest.Testbed) -> Iterator[PortainerStandin]:
    with PortainerStandin(
        testbed.docker_host, api_key=API_KEY, env_id=ENV_ID
    ) as running_standin:
        yield running_standin


@pytest.fixture
def registry(testbed: conftest.Testbed) -> RegistrySettings:
    return RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=SecretStr(testbed.registry_password),
    )


def portainer_settings(standin: PortainerStandin, **changes: Any) -> PortainerSettings:
    values: dict[str, Any] = {
        "api": standin.api,
        "api_key": SecretStr(API_KEY),
        "env_id": ENV_ID,
        "stack": STACK,
        "network_mode": "host",
    }
    values.update(changes)
    return PortainerSettings.model_validate(values)


@pytest.fixture
def make_orchestrator(
    standin: PortainerStandin, manager_id: str, registry: RegistrySettings
) -> Iterator[Callable[..., PortainerOrchestrator]]:
    """Build orchestrators of this test's manager, closed afterwards."""
    built: list[PortainerOrchestrator] = []

    def make(
        *,
        settings: PortainerSettings | None = None,
        registry: RegistrySettings | None = registry,
        prepare: bool = True,
    ) -> PortainerOrchestrator:
        orchestrator = PortainerOrchestrator(
            settings or portainer_settings(standin),
            registry,
            manager_id,
            PLATFORM,
            settings_path="opencti.daemon.portainer",
        )
        built.append(orchestrator)
        if prepare:
            orchestrator.prepare()
        return orchestrator

    yield make
    for orchestrator in built:
        orchestrator.close()


@pytest.fixture
def make_spec(
    manager_id: str, registry: RegistrySettings
) -> Callable[..., WorkloadSpec]:
    def make(
        image: str = TEST_IMAGE,
        *,
        connector_name: str = "Portainer connector",
        running: bool = True,
        ca_bundle: str = "",
    ) -> WorkloadSpec:
        connector_id = str(uuid.uuid4())
        return WorkloadSpec(
            connector_id=connector_id,
            name=workload_name(connector_name, connector_id),
            image=resolve_image(image, registry),
            environment={"CONNECTOR_NAME": connector_name},
            labels=workload_labels(manager_id, PLATFORM, connector_id, "hash-1"),
            contract_hash="hash-1",
            running=running,
            ca_bundle=ca_bundle,
        )

    return make


def find_workload(orchestrator: PortainerOrchestrator, connector_id: str) -> Workload:
    matches = [
        workload
        for workload in orchestrator.list_workloads()
        if workload.connector_id == connector_id
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_deploy_with_registry_credentials(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    standin: PortainerStandin,
    engine: docker.DockerClient,
) -> None:
    """The pull carries the registry credentials and the container its labels."""
    orchestrator = make_orchestrator()
    spec = make_spec()
    assert spec.image.send_credentials

    workload = orchestrator.deploy(spec)

    assert WorkloadStatus.STARTED == workload.status
    pulls = standin.requests_to("/images/create")
    assert len(pulls) == 1
    assert pulls[0].has_registry_auth
    assert pulls[0].path.startswith(f"/api/endpoints/{ENV_ID}/docker/v1.41/")
    for request in standin.requests:
        assert request.path.startswith(f"/api/endpoints/{ENV_ID}/docker/")
        assert "x-api-key" in request.header_names
    container = engine.containers.get(spec.name)
    labels = container.labels
    assert STACK == labels[STACK_LABEL]
    assert spec.connector_id == labels[CONNECTOR_ID_LABEL]
    assert "hash-1" == labels[CONTRACT_HASH_KEY]
    assert "host" == container.attrs["HostConfig"]["NetworkMode"]
    assert "unless-stopped" == container.attrs["HostConfig"]["RestartPolicy"]["Name"]
    lines = poll_until(
        lambda: orchestrator.logs(workload, 10),
        lambda lines: any("connector started" in line for line in lines),
    )
    assert "connector started, CONNECTOR_NAME=Portainer connector" in lines


def test_deploy_open_registry_without_credentials(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    standin: PortainerStandin,
    testbed: conftest.Testbed,
) -> None:
    """An image of another registry is pulled without the configured credentials."""
    orchestrator = make_orchestrator()
    spec = make_spec(f"{testbed.open_registry}/public/connector-test:1.0.0")

    orchestrator.deploy(spec)

    pulls = standin.requests_to("/images/create")
    assert len(pulls) == 1
    assert not pulls[0].has_registry_auth


def test_deploy_wrong_registry_password(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    testbed: conftest.Testbed,
) -> None:
    """A denied pull is a registry error, not mistaken for a rejected API key."""
    registry = RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=SecretStr(f"wrong-{uuid.uuid4().hex}"),
    )
    orchestrator = make_orchestrator(registry=registry)

    with pytest.raises(RegistryAuthError) as raised:
        orchestrator.deploy(make_spec())

    assert "denied the credentials" in str(raised.value)


def test_start_stop_remove(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """A stopped deploy can be started, stopped and removed, and removal repeats."""
    orchestrator = make_orchestrator()
    spec = make_spec(running=False)

    workload = orchestrator.deploy(spec)
    assert WorkloadStatus.STOPPED == workload.status

    orchestrator.start(workload)
    started = find_workload(orchestrator, spec.connector_id)
    assert WorkloadStatus.STARTED == started.status
    assert started.started_at is not None

    orchestrator.stop(workload)
    assert (
        WorkloadStatus.STOPPED == find_workload(orchestrator, spec.connector_id).status
    )

    orchestrator.remove(workload)
    assert [] == orchestrator.list_workloads()
    assert [] == engine.containers.list(all=True, filters={"name": spec.name})
    orchestrator.remove(workload)


def test_logs_demultiplexed(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    log_image: str,
) -> None:
    """Stdout and stderr come back as plain lines, a 70 KB line whole."""
    orchestrator = make_orchestrator()
    workload = orchestrator.deploy(make_spec(log_image))

    poll_until(
        lambda: log_images.summarize(orchestrator.logs(workload, 100)),
        lambda summary: log_images.LAST_LINE in summary,
    )
    lines = orchestrator.logs(workload, 100)

    log_images.assert_lines_whole(lines)


def test_ca_bundle_readable(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """The proxy CA bundle is copied into the container, read-only."""
    bundle = "-----BEGIN CERTIFICATE-----\nstandin\n-----END CERTIFICATE-----\n"
    orchestrator = make_orchestrator()
    spec = make_spec(ca_bundle=bundle)

    orchestrator.deploy(spec)

    container = engine.containers.get(spec.name)
    assert bundle == container.exec_run(["cat", CA_BUNDLE_PATH]).output.decode()
    mode = container.exec_run(["stat", "-c", "%a", CA_BUNDLE_PATH]).output.decode()
    assert "444" == mode.strip()


def test_list_returns_only_this_manager(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    manager_id: str,
) -> None:
    """Containers of another manager are neither listed nor touched."""
    orchestrator = make_orchestrator()
    spec = make_spec(running=False)
    orchestrator.deploy(spec)
    other = engine.containers.create(
        LOCAL_IMAGE,
        name=f"other-manager-{uuid.uuid4().hex[:8]}",
        labels=workload_labels("another-manager", PLATFORM, str(uuid.uuid4()), "h"),
        network_mode="none",
    )
    try:
        workloads = orchestrator.list_workloads()

        assert [spec.connector_id] == [workload.connector_id for workload in workloads]
        assert other.id == engine.containers.get(other.name).id
    finally:
        other.remove(force=True)


def test_wrong_api_key(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    standin: PortainerStandin,
) -> None:
    """A rejected API key raises PortainerAuthError naming the setting, not the key."""
    wrong_key = f"ptr_wrong-{uuid.uuid4().hex}"
    settings = portainer_settings(standin, api_key=SecretStr(wrong_key))
    orchestrator = make_orchestrator(settings=settings, prepare=False)

    with pytest.raises(PortainerAuthError) as raised:
        orchestrator.prepare()
    with pytest.raises(OrchestratorError) as listing:
        orchestrator.list_workloads()

    message = str(raised.value)
    assert "rejected the API key" in message
    assert "opencti.daemon.portainer.api_key" in message
    assert wrong_key not in message
    assert isinstance(listing.value, PortainerAuthError)


def test_unknown_environment(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    standin: PortainerStandin,
) -> None:
    """An environment id that Portainer does not serve is named in the error."""
    settings = portainer_settings(standin, env_id=ENV_ID + 1, api_version="v1.41")
    orchestrator = make_orchestrator(settings=settings, prepare=False)

    with pytest.raises(OrchestratorError) as raised:
        orchestrator.prepare()

    assert f"no environment with id {ENV_ID + 1}" in str(raised.value)
    assert "opencti.daemon.portainer.env_id" in str(raised.value)


def test_api_version_too_new(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    standin: PortainerStandin,
) -> None:
    """A pinned API version that the engine does not serve names `api_version`."""
    settings = portainer_settings(standin, api_version="v1.44")
    orchestrator = make_orchestrator(settings=settings, prepare=False)

    with pytest.raises(OrchestratorError) as raised:
        orchestrator.prepare()

    assert "opencti.daemon.portainer.api_version" in str(raised.value)
    assert "1.44" in str(raised.value)


@pytest.fixture
def tls_standin(testbed: conftest.Testbed) -> Iterator[PortainerStandin]:
    with PortainerStandin(
        testbed.docker_host, api_key=API_KEY, env_id=ENV_ID, tls=True
    ) as running_standin:
        yield running_standin


def test_tls_verification_on_by_default(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    tls_standin: PortainerStandin,
) -> None:
    """A self-signed certificate fails the check, and the error names the fixes."""
    orchestrator = make_orchestrator(
        settings=portainer_settings(tls_standin), prepare=False
    )

    with pytest.raises(EngineUnavailableError) as raised:
        orchestrator.prepare()

    message = str(raised.value)
    assert "TLS connection to Portainer" in message
    assert "opencti.daemon.portainer.ca_file" in message
    assert "opencti.daemon.portainer.unsecured_certificate" in message
    assert [] == tls_standin.requests


@pytest.mark.parametrize("option", ["ca_file", "unsecured_certificate"])
def test_tls_options_reach_portainer(
    make_orchestrator: Callable[..., PortainerOrchestrator],
    tls_standin: PortainerStandin,
    option: str,
) -> None:
    """The CA file or turning verification off lets the agent reach Portainer."""
    change: dict[str, Any] = (
        {"ca_file": tls_standin.certificate_path}
        if option == "ca_file"
        else {"unsecured_certificate": True}
    )
    settings = portainer_settings(tls_standin, **change)

    orchestrator = make_orchestrator(settings=settings)

    assert [] == orchestrator.list_workloads()
    assert tls_standin.requests_to("/containers/json")
