"""SwarmOrchestrator against the testbed's one-node swarm and registries.

Each test has its own manager id, and a finalizer removes every service and
config that carries it, so tests neither see nor leave each other's services.
Services use the host network, the only one the testbed engine can give them.
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
from tests.support.docker_proxy import DockerProxy
from tests.support.polling import poll_until
from xtm_composer.orchestrators import swarm_api
from xtm_composer.orchestrators.base import (
    CA_BUNDLE_PATH,
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    MANAGER_LABEL,
    ImagePullError,
    OrchestratorError,
    RegistryAuthError,
    Workload,
    WorkloadSpec,
    WorkloadStatus,
)
from xtm_composer.orchestrators.naming import workload_labels, workload_name
from xtm_composer.orchestrators.swarm import SwarmOrchestrator
from xtm_composer.registry import resolve_image
from xtm_composer.settings import RegistrySettings
from xtm_composer.settings.swarm import SwarmSettings

pytestmark = pytest.mark.swarm

PLATFORM = "opencti"
TEST_IMAGE = "opencti/connector-test:1.0.0"
CRASH_IMAGE = "opencti/connector-crash:1.0.0"
MISSING_IMAGE = "opencti/connector-missing:1.0.0"
LOCAL_IMAGE = "xtm-testbed/pause:latest"
SERVICE_NAME_LABEL = "com.docker.swarm.service.name"

# A short restart delay keeps crash loops quick.
HOST_NETWORK = SwarmSettings(network="host", restart_delay=0.2)

T = TypeVar("T")


@pytest.fixture(scope="module")
def engine(testbed: conftest.Testbed) -> Iterator[docker.DockerClient]:
    """A plain docker SDK client of the swarm manager, to check and clean up."""
    try:
        client = docker.DockerClient(base_url=testbed.docker_host, version="auto")
        state = client.info()["Swarm"]["LocalNodeState"]
    except docker.errors.DockerException as error:
        conftest.missing_engine(f"the testbed Docker Engine does not answer: {error}")
    if state != "active":
        conftest.missing_engine(f"the testbed swarm is not active (state: {state})")
    yield client
    client.close()


@pytest.fixture
def manager_id(engine: docker.DockerClient) -> Iterator[str]:
    manager = f"test-manager-{uuid.uuid4().hex[:12]}"
    yield manager
    label = f"{MANAGER_LABEL}={manager}"
    for service in engine.services.list(filters={"label": label}):
        service.remove()
    for config in engine.configs.list(filters={"label": label}):
        # A task that is still shutting down can hold the config a little longer.
        poll_until(lambda config=config: remove_config(config), bool, timeout=20)


def remove_config(config: Any) -> bool:
    try:
        config.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True


@pytest.fixture
def registry(testbed: conftest.Testbed) -> RegistrySettings:
    return RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=SecretStr(testbed.registry_password),
    )


@pytest.fixture
def make_orchestrator(
    testbed: conftest.Testbed, manager_id: str, registry: RegistrySettings
) -> Iterator[Callable[..., SwarmOrchestrator]]:
    """Build prepared orchestrators of this test's manager, closed afterwards."""
    built: list[SwarmOrchestrator] = []

    def make(
        *,
        settings: SwarmSettings = HOST_NETWORK,
        registry: RegistrySettings | None = registry,
        docker_host: str = testbed.docker_host,
    ) -> SwarmOrchestrator:
        orchestrator = SwarmOrchestrator(
            settings, registry, manager_id, PLATFORM, docker_host=docker_host
        )
        built.append(orchestrator)
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
        connector_id: str | None = None,
        connector_name: str = "Test connector",
        environment: dict[str, str] | None = None,
        running: bool = True,
        contract_hash: str = "hash-1",
        registry: RegistrySettings | None = registry,
        ca_bundle: str = "",
    ) -> WorkloadSpec:
        connector_id = connector_id or str(uuid.uuid4())
        return WorkloadSpec(
            connector_id=connector_id,
            name=workload_name(connector_name, connector_id),
            image=resolve_image(image, registry),
            environment={"CONNECTOR_NAME": connector_name, **(environment or {})},
            labels=workload_labels(manager_id, PLATFORM, connector_id, contract_hash),
            contract_hash=contract_hash,
            running=running,
            ca_bundle=ca_bundle,
        )

    return make


@pytest.fixture
def proxy(testbed: conftest.Testbed) -> Iterator[DockerProxy]:
    with DockerProxy(testbed.docker_host) as recording_proxy:
        yield recording_proxy


def find_workload(orchestrator: SwarmOrchestrator, connector_id: str) -> Workload:
    matches = [
        workload
        for workload in orchestrator.list_workloads()
        if workload.connector_id == connector_id
    ]
    assert len(matches) == 1, matches
    return matches[0]


def wait_for_status(
    orchestrator: SwarmOrchestrator, connector_id: str, status: WorkloadStatus
) -> Workload:
    return poll_until(
        lambda: find_workload(orchestrator, connector_id),
        lambda workload: workload.status == status,
    )


def task_container(engine: docker.DockerClient, service_name: str) -> Any:
    """Return the running container of a service's task on the testbed node."""
    containers = poll_until(
        lambda: engine.containers.list(
            filters={"label": f"{SERVICE_NAME_LABEL}={service_name}"}
        ),
        lambda found: len(found) == 1,
    )
    return containers[0]


def test_deploy_with_registry_credentials(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    proxy: DockerProxy,
    engine: docker.DockerClient,
    testbed: conftest.Testbed,
) -> None:
    """An image named without a registry runs from the authenticated one."""
    orchestrator = make_orchestrator(docker_host=proxy.url)
    spec = make_spec(connector_name="Credentials connector")
    assert spec.image.reference == f"{testbed.registry}/{TEST_IMAGE}"
    assert spec.image.send_credentials

    orchestrator.deploy(spec)

    creates = proxy.requests_to("/services/create")
    assert len(creates) == 1
    assert creates[0].has_registry_auth
    lookups = proxy.requests_to("/distribution/")
    assert len(lookups) == 1
    assert lookups[0].has_registry_auth
    workload = wait_for_status(orchestrator, spec.connector_id, WorkloadStatus.STARTED)
    assert workload.started_at is not None
    assert spec.name == workload.name
    service = engine.services.get(spec.name)
    assert spec.connector_id == service.attrs["Spec"]["Labels"][CONNECTOR_ID_LABEL]
    container_spec = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert "hash-1" == container_spec["Labels"][CONTRACT_HASH_KEY]
    assert container_spec["Image"].startswith(f"{spec.image.reference}@sha256:")
    lines = poll_until(
        lambda: orchestrator.logs(workload, 10),
        lambda lines: any("connector started" in line for line in lines),
    )
    assert "connector started, CONNECTOR_NAME=Credentials connector" in lines


def test_deploy_open_registry_without_credentials(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    proxy: DockerProxy,
    testbed: conftest.Testbed,
) -> None:
    """An image of another registry goes without the configured credentials."""
    orchestrator = make_orchestrator(docker_host=proxy.url)
    spec = make_spec(f"{testbed.open_registry}/public/connector-test:1.0.0")
    assert not spec.image.send_credentials

    orchestrator.deploy(spec)

    creates = proxy.requests_to("/services/create")
    assert len(creates) == 1
    assert not creates[0].has_registry_auth
    assert not proxy.requests_to("/distribution/")[0].has_registry_auth
    wait_for_status(orchestrator, spec.connector_id, WorkloadStatus.STARTED)


def test_deploy_wrong_password_is_denied(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    testbed: conftest.Testbed,
    engine: docker.DockerClient,
) -> None:
    """A rejected password raises RegistryAuthError and creates no service."""
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    registry = RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=SecretStr(wrong_password),
    )
    orchestrator = make_orchestrator(registry=registry)
    spec = make_spec(registry=registry)

    with pytest.raises(RegistryAuthError) as raised:
        orchestrator.deploy(spec)

    assert "denied the credentials" in str(raised.value)
    assert wrong_password not in str(raised.value)
    assert [] == engine.services.list(filters={"name": spec.name})


def test_deploy_missing_image(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
) -> None:
    """An image the registry does not have raises ImagePullError, not an auth error."""
    orchestrator = make_orchestrator()

    with pytest.raises(ImagePullError) as raised:
        orchestrator.deploy(make_spec(MISSING_IMAGE))

    assert not isinstance(raised.value, RegistryAuthError)
    assert "was not found" in str(raised.value)


def test_start_stop_remove(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """A stopped deploy has 0 replicas, starts, stops, and is removed twice."""
    orchestrator = make_orchestrator()
    spec = make_spec(running=False)

    workload = orchestrator.deploy(spec)
    assert WorkloadStatus.STOPPED == workload.status
    assert (
        0
        == engine.services.get(spec.name).attrs["Spec"]["Mode"]["Replicated"][
            "Replicas"
        ]
    )

    orchestrator.start(workload)
    started = wait_for_status(orchestrator, spec.connector_id, WorkloadStatus.STARTED)
    assert started.started_at is not None
    orchestrator.start(workload)

    orchestrator.stop(workload)
    stopped = find_workload(orchestrator, spec.connector_id)
    assert WorkloadStatus.STOPPED == stopped.status
    assert stopped.started_at is None
    # Scaling to 0 sends SIGTERM to the task, which logs that it stops.
    lines = poll_until(
        lambda: orchestrator.logs(workload, 100),
        lambda lines: any("connector stopping on SIGTERM" in line for line in lines),
    )
    assert "connector started, CONNECTOR_NAME=Test connector" in lines

    orchestrator.remove(workload)
    assert [] == orchestrator.list_workloads()
    assert [] == engine.services.list(filters={"name": spec.name})
    orchestrator.remove(workload)


def test_redeploy_changes_environment(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """A redeploy updates the service in place and the new task gets the new env."""
    orchestrator = make_orchestrator()
    connector_id = str(uuid.uuid4())
    current = orchestrator.deploy(
        make_spec(connector_id=connector_id, environment={"LEVEL": "one"})
    )
    service_id = engine.services.get(current.name).id
    second = make_spec(
        connector_id=connector_id,
        environment={"LEVEL": "two"},
        contract_hash="hash-2",
    )

    redeployed = orchestrator.redeploy(second, current)

    assert "hash-2" == redeployed.contract_hash
    assert service_id == engine.services.get(second.name).id
    container = poll_until(
        lambda: task_container(engine, second.name),
        lambda found: "LEVEL=two" in found.attrs["Config"]["Env"],
    )
    assert "running" == container.status
    assert "hash-2" == find_workload(orchestrator, connector_id).contract_hash

    broken = make_spec(MISSING_IMAGE, connector_id=connector_id, contract_hash="hash-3")
    with pytest.raises(ImagePullError):
        orchestrator.redeploy(broken, redeployed)

    assert "hash-2" == find_workload(orchestrator, connector_id).contract_hash


def test_update_retries_out_of_sequence(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An update sent with a stale version is read again and retried once."""
    orchestrator = make_orchestrator()
    spec = make_spec(running=False)
    workload = orchestrator.deploy(spec)
    stale = engine.api.inspect_service(spec.name)
    # Another client changes the service, so the version read above is stale.
    engine.services.get(spec.name).update(labels={**spec.labels, "touched": "yes"})
    real_inspect = orchestrator._inspect_or_none
    answers = iter([stale])

    def inspect_stale_once(name: str) -> dict[str, Any] | None:
        return next(answers, None) or real_inspect(name)

    monkeypatch.setattr(orchestrator, "_inspect_or_none", inspect_stale_once)
    sent_versions: list[int] = []
    real_update = swarm_api.update_service

    def record_update(api: Any, service_id: str, version: int, *args: Any) -> None:
        sent_versions.append(version)
        real_update(api, service_id, version, *args)

    monkeypatch.setattr(swarm_api, "update_service", record_update)

    orchestrator.start(workload)

    service = engine.services.get(spec.name)
    assert 1 == service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
    assert 2 == len(sent_versions)
    assert stale["Version"]["Index"] == sent_versions[0]
    assert sent_versions[1] > sent_versions[0]
    with pytest.raises(docker.errors.APIError) as raised:
        real_update(
            engine.api,
            stale["ID"],
            stale["Version"]["Index"],
            stale["Spec"],
        )
    assert swarm_api.is_out_of_sequence(raised.value)


def test_ca_bundle_readable_and_replaced(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    manager_id: str,
) -> None:
    """The CA bundle is a read-only file in the task, and old configs go away."""
    orchestrator = make_orchestrator()
    connector_id = str(uuid.uuid4())
    first_bundle = "-----BEGIN CERTIFICATE-----\nfirst\n-----END CERTIFICATE-----\n"
    second_bundle = "-----BEGIN CERTIFICATE-----\nsecond\n-----END CERTIFICATE-----\n"
    current = orchestrator.deploy(
        make_spec(connector_id=connector_id, ca_bundle=first_bundle)
    )

    container = task_container(engine, current.name)
    assert first_bundle == read_file(container, CA_BUNDLE_PATH)
    assert (
        "444 0:0"
        == container.exec_run(["stat", "-c", "%a %u:%g", CA_BUNDLE_PATH])
        .output.decode()
        .strip()
    )

    second = make_spec(
        connector_id=connector_id, ca_bundle=second_bundle, contract_hash="hash-2"
    )
    redeployed = orchestrator.redeploy(second, current)
    container = poll_until(
        lambda: task_container(engine, second.name),
        lambda found: read_file(found, CA_BUNDLE_PATH) == second_bundle,
    )

    configs = engine.configs.list(filters={"label": f"{MANAGER_LABEL}={manager_id}"})
    assert 1 == len(configs)
    assert connector_id == configs[0].attrs["Spec"]["Labels"][CONNECTOR_ID_LABEL]

    orchestrator.remove(redeployed)
    assert [] == engine.configs.list(filters={"label": f"{MANAGER_LABEL}={manager_id}"})


def read_file(container: Any, path: str) -> str:
    """Return a file of a task container, or "" when the task is shutting down."""
    try:
        result = container.exec_run(["cat", path])
    except docker.errors.APIError:
        return ""
    return str(result.output.decode())


def test_list_returns_only_this_manager(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    manager_id: str,
) -> None:
    """Services of another manager are neither listed nor touched."""
    orchestrator = make_orchestrator()
    spec = make_spec(running=False)
    orchestrator.deploy(spec)
    other_connector = str(uuid.uuid4())
    other = engine.services.create(
        LOCAL_IMAGE,
        name=f"other-manager-{uuid.uuid4().hex[:8]}",
        labels=workload_labels("another-manager", PLATFORM, other_connector, "h"),
        networks=["host"],
    )
    try:
        workloads = orchestrator.list_workloads()

        assert [spec.connector_id] == [workload.connector_id for workload in workloads]
        with pytest.raises(OrchestratorError) as raised:
            orchestrator.remove(
                Workload(other_connector, other.name, WorkloadStatus.STARTED)
            )
        assert "does not belong to connector" in str(raised.value)
        assert other.id == engine.services.get(other.name).id
    finally:
        other.remove()


def test_task_error_reaches_problem(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    engine: docker.DockerClient,
    manager_id: str,
    testbed: conftest.Testbed,
) -> None:
    """A task whose image cannot be pulled reports the engine's error."""
    orchestrator = make_orchestrator()
    connector_id = str(uuid.uuid4())
    labels = workload_labels(manager_id, PLATFORM, connector_id, "hash-1")
    # Created without the orchestrator, which would have stopped at the lookup.
    engine.services.create(
        f"{testbed.registry}/{MISSING_IMAGE}",
        name=workload_name("Broken", connector_id),
        labels=labels,
        container_labels=labels,
        networks=["host"],
    )

    workload = poll_until(
        lambda: find_workload(orchestrator, connector_id),
        lambda found: found.problem is not None,
    )

    assert workload.problem is not None
    assert "No such image" in workload.problem
    assert workload.in_reboot_loop


def test_crashing_connector_is_in_reboot_loop(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
) -> None:
    """A crashing connector shows a growing restart count and the loop flag."""
    orchestrator = make_orchestrator()
    spec = make_spec(CRASH_IMAGE)
    orchestrator.deploy(spec)

    first = poll_until(
        lambda: find_workload(orchestrator, spec.connector_id),
        lambda workload: workload.restart_count >= 2,
    )
    later = poll_until(
        lambda: find_workload(orchestrator, spec.connector_id),
        lambda workload: workload.restart_count > first.restart_count,
    )

    assert later.in_reboot_loop
    assert WorkloadStatus.STARTED == later.status
    assert later.problem is not None
    assert "keep failing" in later.problem
    assert "non-zero exit (1)" in later.problem
    lines = orchestrator.logs(later, 4)
    assert 4 == len(lines)
    assert "connector failed: simulated crash" in lines


def test_options_reach_task_container(
    make_orchestrator: Callable[..., SwarmOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """Every Swarm setting shows in the task container or the service spec."""
    settings = SwarmSettings.model_validate(
        {
            "network": "host",
            "extra_hosts": ["registry.test:127.0.0.1"],
            "dns": ["127.0.0.53"],
            "dns_search": ["example.test"],
            "cap_add": ["CAP_NET_ADMIN"],
            "cap_drop": ["CAP_MKNOD"],
            # An IPC sysctl: the engine rejects net.* sysctls with the host network.
            "sysctls": {"kernel.msgmax": 65536},
            "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}],
            "hostname": "connector-host",
            "user": "nobody",
            "read_only": True,
            "init": True,
            "stop_grace_period": "5s",
            "resources": {"cpu_limit": 0.5, "memory_limit": "64m"},
            "placement_constraints": ["node.role==manager"],
            "placement_preferences": ["spread=node.labels.zone"],
            "restart_condition": "any",
            "restart_delay": "200ms",
            "restart_max_attempts": 0,
        }
    )
    orchestrator = make_orchestrator(settings=settings)
    spec = make_spec()

    orchestrator.deploy(spec)

    container = task_container(engine, spec.name)
    host_config = container.attrs["HostConfig"]
    assert "host" == host_config["NetworkMode"]
    assert ["registry.test:127.0.0.1"] == host_config["ExtraHosts"]
    assert ["127.0.0.53"] == host_config["Dns"]
    assert ["example.test"] == host_config["DnsSearch"]
    assert ["CAP_NET_ADMIN"] == host_config["CapAdd"]
    assert ["CAP_MKNOD"] == host_config["CapDrop"]
    assert {"kernel.msgmax": "65536"} == host_config["Sysctls"]
    assert [{"Name": "nofile", "Soft": 1024, "Hard": 2048}] == host_config["Ulimits"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["Init"] is True
    assert 500_000_000 == host_config["NanoCpus"]
    assert 64 * 1024**2 == host_config["Memory"]
    assert "connector-host" == container.attrs["Config"]["Hostname"]
    assert "nobody" == container.attrs["Config"]["User"]
    template = engine.services.get(spec.name).attrs["Spec"]["TaskTemplate"]
    assert 5_000_000_000 == template["ContainerSpec"]["StopGracePeriod"]
    assert ["node.role==manager"] == template["Placement"]["Constraints"]
    assert {"Condition": "any", "Delay": 200_000_000, "MaxAttempts": 0} == template[
        "RestartPolicy"
    ]
