"""DockerOrchestrator against the testbed Docker Engine and registries.

Each test has its own manager id, and a finalizer removes every container that
carries it, so tests neither see nor leave each other's containers.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import pytest
from pydantic import SecretStr

from tests import conftest
from tests.support import log_image as log_images
from tests.support.docker_proxy import DockerProxy
from tests.support.polling import poll_until
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    MANAGER_LABEL,
    EngineUnavailableError,
    ImagePullError,
    OrchestratorError,
    RegistryAuthError,
    Workload,
    WorkloadSpec,
    WorkloadStatus,
)
from xtm_composer.orchestrators.docker import DockerOrchestrator
from xtm_composer.orchestrators.naming import workload_labels, workload_name
from xtm_composer.registry import resolve_image
from xtm_composer.settings import DockerSettings, RegistrySettings

pytestmark = pytest.mark.docker

PLATFORM = "opencti"
TEST_IMAGE = "opencti/connector-test:1.0.0"
CRASH_IMAGE = "opencti/connector-crash:1.0.0"
MISSING_IMAGE = "opencti/connector-missing:1.0.0"
LOCAL_IMAGE = "xtm-testbed/pause:latest"
LOG_IMAGE_REPOSITORY = "xtm-test/docker-logs"
OWNER_LABEL = "xtm-composer-test-owner"
"""Marks containers a test creates directly, so that its finalizer finds them."""

HOST_NETWORK = DockerSettings(network_mode="host")

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
    for label in (f"{MANAGER_LABEL}={manager}", f"{OWNER_LABEL}={manager}"):
        for container in engine.containers.list(all=True, filters={"label": label}):
            container.remove(force=True, v=True)


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
) -> Iterator[Callable[..., DockerOrchestrator]]:
    """Build prepared orchestrators of this test's manager, closed afterwards."""
    built: list[DockerOrchestrator] = []

    def make(
        *,
        settings: DockerSettings = HOST_NETWORK,
        registry: RegistrySettings | None = registry,
        docker_host: str = testbed.docker_host,
    ) -> DockerOrchestrator:
        orchestrator = DockerOrchestrator(
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
        )

    return make


@pytest.fixture
def proxy(testbed: conftest.Testbed) -> Iterator[DockerProxy]:
    with DockerProxy(testbed.docker_host) as recording_proxy:
        yield recording_proxy


def create_foreign_container(
    engine: docker.DockerClient, owner: str, name: str, labels: dict[str, str]
) -> Any:
    """Create a running container that the orchestrator under test must not touch."""
    return engine.containers.run(
        LOCAL_IMAGE,
        name=name,
        labels={**labels, OWNER_LABEL: owner},
        network_mode="none",
        detach=True,
    )


def find_workload(orchestrator: DockerOrchestrator, connector_id: str) -> Workload:
    matches = [
        workload
        for workload in orchestrator.list_workloads()
        if workload.connector_id == connector_id
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_deploy_with_registry_credentials(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    proxy: DockerProxy,
    engine: docker.DockerClient,
) -> None:
    """An image of the authenticated registry is pulled with credentials and runs."""
    orchestrator = make_orchestrator(docker_host=proxy.url)
    spec = make_spec(connector_name="Credentials connector")
    assert spec.image.send_credentials

    workload = orchestrator.deploy(spec)

    assert workload.status == WorkloadStatus.STARTED
    assert spec.name == workload.name
    pulls = proxy.requests_to("/images/create")
    assert len(pulls) == 1
    assert pulls[0].has_registry_auth
    lines = poll_until(
        lambda: orchestrator.logs(workload, 10),
        lambda lines: any("connector started" in line for line in lines),
    )
    assert "connector started, CONNECTOR_NAME=Credentials connector" in lines
    labels = engine.containers.get(spec.name).labels
    assert spec.connector_id == labels[CONNECTOR_ID_LABEL]
    assert labels[CONTRACT_HASH_KEY] == "hash-1"


def test_deploy_open_registry_without_credentials(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    proxy: DockerProxy,
    testbed: conftest.Testbed,
) -> None:
    """An image of another registry is pulled without the configured credentials."""
    orchestrator = make_orchestrator(docker_host=proxy.url)
    spec = make_spec(f"{testbed.open_registry}/public/connector-test:1.0.0")
    assert not spec.image.send_credentials

    workload = orchestrator.deploy(spec)

    assert workload.status == WorkloadStatus.STARTED
    pulls = proxy.requests_to("/images/create")
    assert len(pulls) == 1
    assert not pulls[0].has_registry_auth


def test_deploy_wrong_password_is_denied(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    testbed: conftest.Testbed,
    engine: docker.DockerClient,
) -> None:
    """A rejected password raises RegistryAuthError without the password in it."""
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

    message = str(raised.value)
    assert "denied the credentials" in message
    assert testbed.registry in message
    assert spec.image.reference in message
    assert wrong_password not in message
    assert engine.containers.list(all=True, filters={"name": spec.name}) == []


def test_deploy_without_credentials_is_denied(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    testbed: conftest.Testbed,
) -> None:
    """A registry that needs credentials and gets none raises RegistryAuthError."""
    registry = RegistrySettings(server=testbed.registry)
    orchestrator = make_orchestrator(registry=registry)

    with pytest.raises(RegistryAuthError) as raised:
        orchestrator.deploy(make_spec(registry=registry))

    assert "denied" in str(raised.value)
    assert "no registry credentials are configured" in str(raised.value)


def test_deploy_missing_image(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
) -> None:
    """An image the registry does not have raises ImagePullError, not an auth error."""
    orchestrator = make_orchestrator()

    with pytest.raises(ImagePullError) as raised:
        orchestrator.deploy(make_spec(MISSING_IMAGE))

    assert not isinstance(raised.value, RegistryAuthError)
    assert "was not found" in str(raised.value)


def test_start_stop_remove(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """A stopped deploy can be started, stopped and removed, and removal repeats."""
    orchestrator = make_orchestrator()
    spec = make_spec(running=False)

    workload = orchestrator.deploy(spec)
    assert workload.status == WorkloadStatus.STOPPED
    assert (
        find_workload(orchestrator, spec.connector_id).status == WorkloadStatus.STOPPED
    )

    orchestrator.start(workload)
    started = find_workload(orchestrator, spec.connector_id)
    assert started.status == WorkloadStatus.STARTED
    assert started.started_at is not None

    orchestrator.stop(workload)
    stopped = find_workload(orchestrator, spec.connector_id)
    assert stopped.status == WorkloadStatus.STOPPED
    assert stopped.started_at is None

    orchestrator.remove(workload)
    assert orchestrator.list_workloads() == []
    assert engine.containers.list(all=True, filters={"name": spec.name}) == []
    orchestrator.remove(workload)


def test_list_returns_only_this_manager(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    manager_id: str,
) -> None:
    """Containers of another manager or platform are neither listed nor touched."""
    orchestrator = make_orchestrator()
    spec = make_spec()
    orchestrator.deploy(spec)
    other_manager = create_foreign_container(
        engine,
        manager_id,
        f"other-manager-{uuid.uuid4().hex[:8]}",
        workload_labels("another-manager", PLATFORM, str(uuid.uuid4()), "hash"),
    )
    other_platform = create_foreign_container(
        engine,
        manager_id,
        f"other-platform-{uuid.uuid4().hex[:8]}",
        workload_labels(manager_id, "openaev", str(uuid.uuid4()), "hash"),
    )

    workloads = orchestrator.list_workloads()

    assert [spec.connector_id] == [workload.connector_id for workload in workloads]
    for foreign in (other_manager, other_platform):
        foreign.reload()
        assert foreign.status == "running"


def test_same_connector_name_gets_two_containers(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
) -> None:
    """Two connectors with one name run in two containers."""
    orchestrator = make_orchestrator()
    first = make_spec(connector_name="Same name")
    second = make_spec(connector_name="Same name")

    orchestrator.deploy(first)
    orchestrator.deploy(second)

    workloads = orchestrator.list_workloads()
    assert {first.name, second.name} == {workload.name for workload in workloads}
    assert first.name != second.name


@pytest.mark.parametrize(
    "foreign_labels",
    [
        pytest.param("other-connector", id="other-connector"),
        pytest.param("unlabelled", id="unlabelled"),
    ],
)
def test_deploy_name_taken_by_foreign_container(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    manager_id: str,
    foreign_labels: str,
) -> None:
    """A name used by a container of someone else raises and spares that container."""
    orchestrator = make_orchestrator()
    spec = make_spec()
    labels = (
        workload_labels(manager_id, PLATFORM, str(uuid.uuid4()), "hash")
        if foreign_labels == "other-connector"
        else {}
    )
    foreign = create_foreign_container(engine, manager_id, spec.name, labels)

    with pytest.raises(OrchestratorError) as raised:
        orchestrator.deploy(spec)

    assert "is taken by a container" in str(raised.value)
    assert "left untouched" in str(raised.value)
    foreign.reload()
    assert foreign.id == engine.containers.get(spec.name).id
    assert foreign.status == "running"


def test_deploy_replaces_leftover_of_same_connector(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    manager_id: str,
) -> None:
    """A container of the same connector with the same name is replaced."""
    orchestrator = make_orchestrator()
    spec = make_spec()
    leftover = create_foreign_container(
        engine,
        manager_id,
        spec.name,
        workload_labels(manager_id, PLATFORM, spec.connector_id, "old-hash"),
    )

    workload = orchestrator.deploy(spec)

    replacement = engine.containers.get(spec.name)
    assert leftover.id != replacement.id
    assert workload.contract_hash == "hash-1"
    assert workload.status == WorkloadStatus.STARTED


def test_start_failure_leaves_labelled_container(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
) -> None:
    """A container that fails to start stays labelled and stopped for a later cycle."""
    # The kernel rejects a nofile limit above fs.nr_open (1048576 by default)
    # when the container starts, not when it is created.
    settings = DockerSettings(
        network_mode="host",
        ulimits=[{"name": "nofile", "soft": 2**21, "hard": 2**21}],
    )
    orchestrator = make_orchestrator(settings=settings)
    spec = make_spec()

    with pytest.raises(OrchestratorError) as raised:
        orchestrator.deploy(spec)

    assert f"failed to start the new container {spec.name}" in str(raised.value)
    workload = find_workload(orchestrator, spec.connector_id)
    assert workload.status == WorkloadStatus.STOPPED
    assert spec.name == workload.name
    assert workload.problem is not None
    assert "rlimit" in workload.problem


def test_redeploy_changes_environment(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """A redeploy replaces the container, and a failed pull keeps the old one."""
    orchestrator = make_orchestrator()
    connector_id = str(uuid.uuid4())
    first = make_spec(connector_id=connector_id, environment={"LEVEL": "one"})
    current = orchestrator.deploy(first)
    second = make_spec(
        connector_id=connector_id,
        environment={"LEVEL": "two"},
        contract_hash="hash-2",
    )

    redeployed = orchestrator.redeploy(second, current)

    assert redeployed.contract_hash == "hash-2"
    assert redeployed.status == WorkloadStatus.STARTED
    container = engine.containers.get(second.name)
    assert "LEVEL=two" in container.attrs["Config"]["Env"]

    broken = make_spec(MISSING_IMAGE, connector_id=connector_id, contract_hash="hash-3")
    with pytest.raises(ImagePullError):
        orchestrator.redeploy(broken, redeployed)

    container.reload()
    assert container.status == "running"
    assert find_workload(orchestrator, connector_id).contract_hash == "hash-2"


def test_crashing_connector_is_in_reboot_loop(
    make_orchestrator: Callable[..., DockerOrchestrator],
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
    assert later.status == WorkloadStatus.STARTED
    assert later.problem is not None
    assert "keeps exiting" in later.problem


def test_logs_tail_honours_max_lines(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
) -> None:
    """The log tail returns the latest lines, at most `max_lines` of them."""
    orchestrator = make_orchestrator()
    workload = orchestrator.deploy(make_spec())
    poll_until(lambda: orchestrator.logs(workload, 10), lambda lines: len(lines) >= 3)
    # A stopped container writes no more lines between two reads.
    orchestrator.stop(workload)

    every_line = orchestrator.logs(workload, 1000)
    last_two = orchestrator.logs(workload, 2)
    stamped = orchestrator.logs(workload, 1, timestamps=True)

    assert every_line[-2:] == last_two
    assert len(stamped) == 1
    assert stamped[0].endswith(every_line[-1])
    assert stamped[0][:4].isdigit()
    assert orchestrator.logs(workload, 0) == []


def test_logs_keep_long_line_whole(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    log_image: str,
) -> None:
    """Stderr lines written during a 70 KB stdout line stay out of it."""
    orchestrator = make_orchestrator()
    workload = orchestrator.deploy(make_spec(log_image))

    poll_until(
        lambda: log_images.summarize(orchestrator.logs(workload, 100)),
        lambda summary: log_images.LAST_LINE in summary,
    )
    lines = orchestrator.logs(workload, 100)

    log_images.assert_lines_whole(lines)


def test_host_options_reach_engine(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
) -> None:
    """Every Docker setting shows in the container's HostConfig."""
    settings = DockerSettings(
        network_mode="host",
        extra_hosts=["registry.test:127.0.0.1"],
        dns=["127.0.0.53"],
        dns_search=["example.test"],
        privileged=False,
        cap_add=["NET_ADMIN"],
        cap_drop=["MKNOD"],
        security_opt=["no-new-privileges"],
        userns_mode="host",
        pid_mode="host",
        ipc_mode="private",
        uts_mode="host",
        runtime="runc",
        shm_size=64 * 1024 * 1024,
        # An IPC sysctl: the engine rejects net.* sysctls with the host network.
        sysctls={"kernel.msgmax": "65536"},
        ulimits=[{"name": "nofile", "soft": 1024, "hard": 2048}],
        restart_policy="on-failure",
    )
    orchestrator = make_orchestrator(settings=settings)
    spec = make_spec()

    workload = orchestrator.deploy(spec)

    assert workload.status == WorkloadStatus.STARTED
    host_config = engine.containers.get(spec.name).attrs["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["ExtraHosts"] == ["registry.test:127.0.0.1"]
    assert host_config["Dns"] == ["127.0.0.53"]
    assert host_config["DnsSearch"] == ["example.test"]
    assert host_config["Privileged"] is False
    assert host_config["CapAdd"] == ["NET_ADMIN"]
    assert host_config["CapDrop"] == ["MKNOD"]
    # The engine adds `label=disable` to SecurityOpt for the host PID namespace.
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert host_config["UsernsMode"] == "host"
    assert host_config["PidMode"] == "host"
    assert host_config["IpcMode"] == "private"
    assert host_config["UTSMode"] == "host"
    assert host_config["Runtime"] == "runc"
    assert host_config["ShmSize"] == 64 * 1024 * 1024
    assert host_config["Sysctls"] == {"kernel.msgmax": "65536"}
    assert host_config["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert host_config["RestartPolicy"]["Name"] == "on-failure"


def test_prepare_unreachable_engine(tmp_path: Path, manager_id: str) -> None:
    """An engine socket that does not exist raises EngineUnavailableError."""
    missing_socket = f"unix://{tmp_path}/missing.sock"
    orchestrator = DockerOrchestrator(
        HOST_NETWORK, None, manager_id, PLATFORM, docker_host=missing_socket
    )

    with pytest.raises(EngineUnavailableError) as raised:
        orchestrator.prepare()

    assert missing_socket in str(raised.value)
    assert "dockerd is running" in str(raised.value)


def test_list_fails_when_engine_goes_away(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    testbed: conftest.Testbed,
) -> None:
    """A listing that fails raises EngineUnavailableError, never an empty list."""
    proxy = DockerProxy(testbed.docker_host).start()
    orchestrator = make_orchestrator(docker_host=proxy.url)
    orchestrator.deploy(make_spec(running=False))
    proxy.close()

    with pytest.raises(EngineUnavailableError):
        orchestrator.list_workloads()


def test_proxy_checks_prefix_and_api_key(testbed: conftest.Testbed) -> None:
    """With a prefix and an API key, the proxy forwards only matching requests."""
    prefix = "/api/endpoints/1/docker"
    with DockerProxy(testbed.docker_host, path_prefix=prefix, api_key="key") as proxy:
        assert raw_status(proxy, f"{prefix}/_ping", {"X-API-KEY": "key"}) == 200
        assert raw_status(proxy, f"{prefix}/_ping", {"X-API-KEY": "bad"}) == 401
        assert raw_status(proxy, f"{prefix}/_ping", {}) == 401
        assert raw_status(proxy, "/_ping", {"X-API-KEY": "key"}) == 404
        assert len(proxy.requests) == 4


def raw_status(proxy: DockerProxy, path: str, headers: dict[str, str]) -> int:
    """Send one GET through the proxy socket and return the response status."""
    lines = [f"GET {path} HTTP/1.1", "Host: docker"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(proxy.socket_path))
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = client.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def test_docker_config_proxies_do_not_leak(
    make_orchestrator: Callable[..., DockerOrchestrator],
    make_spec: Callable[..., WorkloadSpec],
    engine: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Proxies of the agent's Docker client config never reach connectors."""
    (tmp_path / "config.json").write_text(
        '{"proxies": {"default": {"httpProxy": "http://127.0.0.1:9"}}}'
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    orchestrator = make_orchestrator()

    workload = orchestrator.deploy(make_spec(connector_name="Config check"))

    environment = engine.containers.get(workload.name).attrs["Config"]["Env"]
    assert not [item for item in environment if "proxy" in item.lower()]
