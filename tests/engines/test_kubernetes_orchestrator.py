"""KubernetesOrchestrator against the testbed cluster and its private registry.

Each test runs in its own namespace with its own manager id. The testbed node has
no CNI plugin, so every test sets `host_network: true`. Images come from the
authenticated registry (127.0.0.1:5000) through prefix resolution, or from the
open one (127.0.0.1:5001) where a test is not about credentials.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests import conftest
from tests.engines.conftest import KubernetesTestbed
from tests.support.polling import poll_until
from xtm_composer import logs
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    MANAGER_LABEL,
    PLATFORM_LABEL,
    EngineUnavailableError,
    OrchestratorError,
    Workload,
    WorkloadSpec,
    WorkloadStatus,
)
from xtm_composer.orchestrators.kubernetes import KubernetesOrchestrator
from xtm_composer.orchestrators.naming import workload_labels, workload_name
from xtm_composer.registry import resolve_image
from xtm_composer.settings import RegistrySettings
from xtm_composer.settings.kubernetes import KubernetesSettings

pytestmark = pytest.mark.kubernetes

PLATFORM = "opencti"
SECRET_NAME = "opencti-registry-auth"
PRIVATE_IMAGE = "opencti/connector-test:1.0.0"
CRASH_IMAGE = "opencti/connector-crash:1.0.0"
PULL_TIMEOUT = 60
"""Seconds for a pod to pull its image from the testbed registry and start."""

Orchestrate = Callable[..., KubernetesOrchestrator]


@pytest.fixture
def manager_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def credentials(testbed: conftest.Testbed) -> RegistrySettings:
    """Registry settings with the testbed registry's valid credentials."""
    return RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=testbed.registry_password,
    )


@pytest.fixture
def orchestrate(
    kubernetes_testbed: KubernetesTestbed, kube_namespace: str, manager_id: str
) -> Iterator[Orchestrate]:
    """Build orchestrators for the test's namespace; each is closed afterwards."""
    built: list[KubernetesOrchestrator] = []

    def build(
        registry: RegistrySettings | None = None, **settings: Any
    ) -> KubernetesOrchestrator:
        options = {
            "kubeconfig": kubernetes_testbed.kubeconfig,
            "namespace": kube_namespace,
            "host_network": True,
            **settings,
        }
        orchestrator = KubernetesOrchestrator(
            KubernetesSettings(**options), registry, manager_id, PLATFORM
        )
        built.append(orchestrator)
        return orchestrator

    yield build
    for orchestrator in built:
        orchestrator.close()


@pytest.fixture
def captured_logs() -> Iterator[Callable[[str], io.StringIO]]:
    """Send structured logs to a buffer in the given format for one test."""

    def capture(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        logs.configure_logging("debug", log_format, stream=stream)
        return stream

    yield capture
    logs.configure_logging()


def connector_spec(
    manager_id: str,
    image: str,
    registry: RegistrySettings | None = None,
    name: str = "Test connector",
    connector_id: str | None = None,
    contract_hash: str = "hash-1",
    running: bool = True,
    environment: dict[str, str] | None = None,
) -> WorkloadSpec:
    connector_id = connector_id or str(uuid.uuid4())
    return WorkloadSpec(
        connector_id=connector_id,
        name=workload_name(name, connector_id),
        image=resolve_image(image, registry),
        environment=environment or {"CONNECTOR_NAME": name},
        labels=workload_labels(manager_id, PLATFORM, connector_id, contract_hash),
        contract_hash=contract_hash,
        running=running,
    )


def open_image(testbed: conftest.Testbed) -> str:
    """The stand-in connector on the registry that needs no credentials."""
    return f"{testbed.open_registry}/public/connector-test:1.0.0"


def find(orchestrator: KubernetesOrchestrator, connector_id: str) -> Workload | None:
    return next(
        (w for w in orchestrator.list_workloads() if w.connector_id == connector_id),
        None,
    )


def wait_workload(
    orchestrator: KubernetesOrchestrator,
    connector_id: str,
    accept: Callable[[Workload], bool],
    timeout: float = PULL_TIMEOUT,
) -> Workload:
    workload = poll_until(
        lambda: find(orchestrator, connector_id),
        lambda found: found is not None and accept(found),
        timeout=timeout,
    )
    assert workload is not None
    return workload


def is_started(workload: Workload) -> bool:
    return workload.status is WorkloadStatus.STARTED


def read_deployment(
    kube_admin: client.ApiClient, namespace: str, name: str
) -> dict[str, Any]:
    deployment = client.AppsV1Api(kube_admin).read_namespaced_deployment(
        name, namespace
    )
    result: dict[str, Any] = kube_admin.sanitize_for_serialization(deployment)
    return result


def deployment_names(kube_admin: client.ApiClient, namespace: str) -> list[str]:
    listing = client.AppsV1Api(kube_admin).list_namespaced_deployment(namespace)
    return sorted(item.metadata.name for item in listing.items)


def read_secret(kube_admin: client.ApiClient, namespace: str) -> client.V1Secret | None:
    try:
        return client.CoreV1Api(kube_admin).read_namespaced_secret(
            SECRET_NAME, namespace
        )
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise


def pod_events(kube_admin: client.ApiClient, namespace: str, reason: str) -> list[str]:
    events = client.CoreV1Api(kube_admin).list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Pod,reason={reason}"
    )
    return [event.message or "" for event in events.items]


def test_private_image_pulled_with_secret(
    orchestrate: Orchestrate,
    credentials: RegistrySettings,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """A prefixed private image is pulled by the kubelet with the created secret."""
    orchestrator = orchestrate(credentials, image_pull_policy="Always")
    orchestrator.prepare()
    spec = connector_spec(manager_id, PRIVATE_IMAGE, credentials)

    orchestrator.deploy(spec)
    workload = wait_workload(orchestrator, spec.connector_id, is_started)

    deployment = read_deployment(kube_admin, kube_namespace, spec.name)
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == (
        "127.0.0.1:5000/opencti/connector-test:1.0.0"
    )
    assert pod_spec["containers"][0]["imagePullPolicy"] == "Always"
    assert pod_spec["imagePullSecrets"] == [{"name": SECRET_NAME}]
    assert any(
        "Successfully pulled image" in message
        for message in pod_events(kube_admin, kube_namespace, "Pulled")
    )
    assert workload.problem is None
    lines = poll_until(lambda: orchestrator.logs(workload, 10), bool)
    assert "connector started, CONNECTOR_NAME=Test connector" in lines[0]


@pytest.mark.parametrize("log_format", ["json", "pretty"])
def test_existing_secret_replaced(
    orchestrate: Orchestrate,
    credentials: RegistrySettings,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    captured_logs: Callable[[str], io.StringIO],
    log_format: str,
) -> None:
    """A secret of that name is replaced, with three log lines and no password."""
    stale = {"auths": {"elsewhere.example.com": {"auth": "c3RhbGU6c3RhbGU="}}}
    client.CoreV1Api(kube_admin).create_namespaced_secret(
        kube_namespace,
        {
            "metadata": {"name": SECRET_NAME},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps(stale)},
        },
    )
    stream = captured_logs(log_format)

    orchestrate(credentials).prepare()

    secret = read_secret(kube_admin, kube_namespace)
    assert secret is not None
    assert secret.type == "kubernetes.io/dockerconfigjson"
    document = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
    assert list(document["auths"]) == ["127.0.0.1:5000"]
    entry = document["auths"]["127.0.0.1:5000"]
    assert entry["username"] == credentials.username
    expected_auth = f"{credentials.username}:{credentials.password.get_secret_value()}"
    assert base64.b64decode(entry["auth"]).decode() == expected_auth

    output = stream.getvalue()
    assert credentials.password.get_secret_value() not in output
    assert entry["auth"] not in output
    messages = [
        "Deleting existing imagePullSecret if present",
        "Creating imagePullSecret for private registry",
        "Successfully created imagePullSecret",
    ]
    lines = [line for line in output.splitlines() if "imagePullSecret" in line]
    assert len(lines) == 3
    if log_format == "json":
        events = [json.loads(line) for line in lines]
        assert [event["message"] for event in events] == messages
        for event in events:
            assert event["orchestrator"] == "kubernetes"
            assert event["secret"] == SECRET_NAME
            assert event["level"] == "info"
        assert events[1]["server"] == "127.0.0.1:5000"
    else:
        fields = 'orchestrator="kubernetes" secret="opencti-registry-auth"'
        for line, message in zip(lines, messages, strict=True):
            assert f"INFO {fields}" in line
            assert line.endswith(message)
        assert 'server="127.0.0.1:5000"' in lines[1]


def test_without_credentials_no_secret(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """Without credentials no secret exists and none is attached."""
    registry = RegistrySettings(server=testbed.registry)
    orchestrator = orchestrate(registry)
    orchestrator.prepare()
    spec = connector_spec(manager_id, PRIVATE_IMAGE, registry, running=False)

    orchestrator.deploy(spec)

    assert read_secret(kube_admin, kube_namespace) is None
    deployment = read_deployment(kube_admin, kube_namespace, spec.name)
    assert "imagePullSecrets" not in deployment["spec"]["template"]["spec"]


def test_stale_secret_of_manager_removed(
    orchestrate: Orchestrate,
    credentials: RegistrySettings,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
) -> None:
    """The secret of earlier credentials goes when the credentials are removed."""
    orchestrate(credentials).prepare()
    assert read_secret(kube_admin, kube_namespace) is not None

    orchestrate(RegistrySettings(server=testbed.registry)).prepare()

    assert read_secret(kube_admin, kube_namespace) is None


def test_operator_secret_kept_and_attached(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """An operator's secret of that name stays, and is attached when named."""
    client.CoreV1Api(kube_admin).create_namespaced_secret(
        kube_namespace,
        {
            "metadata": {"name": SECRET_NAME},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps({"auths": {}})},
        },
    )
    registry = RegistrySettings(server=testbed.registry)
    orchestrator = orchestrate(registry, image_pull_secrets=[SECRET_NAME, "mirror"])
    orchestrator.prepare()
    spec = connector_spec(manager_id, PRIVATE_IMAGE, registry, running=False)

    orchestrator.deploy(spec)

    assert read_secret(kube_admin, kube_namespace) is not None
    deployment = read_deployment(kube_admin, kube_namespace, spec.name)
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": SECRET_NAME},
        {"name": "mirror"},
    ]


def test_wrong_credentials_report_pull_error(
    orchestrate: Orchestrate, testbed: conftest.Testbed, manager_id: str
) -> None:
    """A denied pull leaves the workload stopped with the registry error."""
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    registry = RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=wrong_password,
    )
    orchestrator = orchestrate(registry, image_pull_policy="Always")
    orchestrator.prepare()
    spec = connector_spec(manager_id, PRIVATE_IMAGE, registry)

    orchestrator.deploy(spec)
    workload = wait_workload(
        orchestrator,
        spec.connector_id,
        lambda found: found.problem is not None,
    )

    assert workload.status is WorkloadStatus.STOPPED
    assert workload.in_reboot_loop is False
    assert workload.problem.startswith(("ErrImagePull: ", "ImagePullBackOff: "))
    assert any(
        answer in workload.problem
        for answer in ("unauthorized", "no basic auth credentials")
    )
    assert wrong_password not in workload.problem


def test_crash_image_reboot_loop(
    orchestrate: Orchestrate, credentials: RegistrySettings, manager_id: str
) -> None:
    """A connector that keeps exiting is a reboot loop with restarts counted."""
    orchestrator = orchestrate(credentials)
    orchestrator.prepare()
    spec = connector_spec(manager_id, CRASH_IMAGE, credentials)

    orchestrator.deploy(spec)
    workload = wait_workload(
        orchestrator, spec.connector_id, lambda found: found.in_reboot_loop
    )

    assert workload.restart_count > 0
    assert workload.problem is not None
    assert "exit code 1" in workload.problem
    lines = orchestrator.logs(workload, 10)
    assert any("simulated crash" in line for line in lines)


def test_stop_start_redeploy_remove(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """The whole life of a connector, with a base Deployment merged in."""
    base = {
        "metadata": {"labels": {"team": "intel"}},
        "spec": {
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"env": [{"name": "FROM_BASE", "value": "yes"}]}],
                }
            }
        },
    }
    orchestrator = orchestrate(base_deployment=base)
    spec = connector_spec(manager_id, open_image(testbed), name="First name")

    orchestrator.deploy(spec)
    workload = wait_workload(orchestrator, spec.connector_id, is_started)
    assert workload.contract_hash == "hash-1"
    assert workload.started_at is not None
    deployment = read_deployment(kube_admin, kube_namespace, spec.name)
    assert deployment["metadata"]["labels"]["team"] == "intel"
    assert deployment["metadata"]["annotations"][CONTRACT_HASH_KEY] == "hash-1"
    assert CONTRACT_HASH_KEY not in deployment["spec"]["selector"]["matchLabels"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FROM_BASE", "value": "yes"} in env

    orchestrator.stop(workload)
    workload = wait_workload(
        orchestrator, spec.connector_id, lambda found: not is_started(found)
    )
    assert (
        read_deployment(kube_admin, kube_namespace, spec.name)["spec"]["replicas"] == 0
    )

    orchestrator.start(workload)
    workload = wait_workload(orchestrator, spec.connector_id, is_started)

    changed = connector_spec(
        manager_id,
        open_image(testbed),
        name="First name",
        connector_id=spec.connector_id,
        contract_hash="hash-2",
        environment={"CONNECTOR_NAME": "Second contract"},
    )
    result = orchestrator.redeploy(changed, workload)
    assert result.contract_hash == "hash-2"
    workload = wait_workload(
        orchestrator,
        spec.connector_id,
        lambda found: is_started(found) and found.contract_hash == "hash-2",
    )
    lines = poll_until(
        lambda: orchestrator.logs(workload, 5),
        lambda found: any("CONNECTOR_NAME=Second contract" in line for line in found),
    )
    assert not any("First name" in line for line in lines)
    env = read_deployment(kube_admin, kube_namespace, spec.name)["spec"]["template"][
        "spec"
    ]["containers"][0]["env"]
    assert {"name": "CONNECTOR_NAME", "value": "Second contract"} in env
    assert {"name": "FROM_BASE", "value": "yes"} in env

    orchestrator.remove(workload)
    assert find(orchestrator, spec.connector_id) is None
    assert spec.name not in deployment_names(kube_admin, kube_namespace)


def test_rename_replaces_deployment(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """A renamed connector gets its new Deployment before the old one goes."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), name="Old name")
    workload = orchestrator.deploy(spec)
    renamed = connector_spec(
        manager_id,
        open_image(testbed),
        name="New name",
        connector_id=spec.connector_id,
    )

    orchestrator.redeploy(renamed, workload)

    assert deployment_names(kube_admin, kube_namespace) == [renamed.name]
    workload = wait_workload(orchestrator, spec.connector_id, is_started)
    assert workload.name == renamed.name


def test_foreign_deployments_untouched(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """Deployments of another manager or connector are neither listed nor changed."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), running=False)
    other_manager = {
        MANAGER_LABEL: "someone-else",
        PLATFORM_LABEL: PLATFORM,
        CONNECTOR_ID_LABEL: spec.connector_id,
    }
    apps = client.AppsV1Api(kube_admin)
    apps.create_namespaced_deployment(
        kube_namespace,
        {
            "metadata": {"name": spec.name, "labels": other_manager},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": other_manager},
                "template": {
                    "metadata": {"labels": other_manager},
                    "spec": {
                        "containers": [{"name": "other", "image": open_image(testbed)}]
                    },
                },
            },
        },
    )
    before = read_deployment(kube_admin, kube_namespace, spec.name)
    foreign = Workload(
        connector_id=spec.connector_id,
        name=spec.name,
        status=WorkloadStatus.STOPPED,
    )

    assert orchestrator.list_workloads() == []
    with pytest.raises(OrchestratorError, match="does not belong"):
        orchestrator.deploy(spec)
    with pytest.raises(OrchestratorError, match="does not belong"):
        orchestrator.start(foreign)
    with pytest.raises(OrchestratorError, match="does not belong"):
        orchestrator.remove(foreign)

    after = read_deployment(kube_admin, kube_namespace, spec.name)
    # The controller updates the status, so the spec generation shows changes.
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"][MANAGER_LABEL] == "someone-else"


@pytest.mark.parametrize(
    "name",
    [
        "A connector with a very long name " * 4,
        "Abuse.ch / URLhaus (feed #2)!",
        "Connecteur données — 東京",
    ],
)
def test_connector_names_valid(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    manager_id: str,
    name: str,
) -> None:
    """Long, punctuated and non-ASCII names give Deployments the apiserver takes."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), name=name, running=False)

    orchestrator.deploy(spec)

    workload = find(orchestrator, spec.connector_id)
    assert workload is not None
    assert workload.name == spec.name
    assert len(workload.name) <= 63


def test_leftover_deployment_updated(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """Deploying over a Deployment of the same connector updates it in place."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), running=False)
    first = orchestrator.deploy(spec)
    uid = read_deployment(kube_admin, kube_namespace, spec.name)["metadata"]["uid"]
    newer = connector_spec(
        manager_id,
        open_image(testbed),
        connector_id=spec.connector_id,
        contract_hash="hash-2",
        running=False,
    )

    second = orchestrator.deploy(newer)

    assert first.contract_hash == "hash-1"
    assert second.contract_hash == "hash-2"
    assert (
        read_deployment(kube_admin, kube_namespace, spec.name)["metadata"]["uid"] == uid
    )


def test_selector_conflict_recreates(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """A Deployment whose selector needs other labels is deleted and created."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), running=False)
    legacy_labels = {
        MANAGER_LABEL: manager_id,
        PLATFORM_LABEL: PLATFORM,
        CONNECTOR_ID_LABEL: spec.connector_id,
        "app": "legacy",
    }
    client.AppsV1Api(kube_admin).create_namespaced_deployment(
        kube_namespace,
        {
            "metadata": {
                "name": spec.name,
                "labels": legacy_labels,
                "annotations": {CONTRACT_HASH_KEY: "old"},
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": legacy_labels},
                "template": {
                    "metadata": {"labels": legacy_labels},
                    "spec": {
                        "containers": [{"name": "legacy", "image": open_image(testbed)}]
                    },
                },
            },
        },
    )
    old_uid = read_deployment(kube_admin, kube_namespace, spec.name)["metadata"]["uid"]
    current = find(orchestrator, spec.connector_id)
    assert current is not None
    assert current.contract_hash == "old"

    result = orchestrator.redeploy(spec, current)

    deployment = read_deployment(kube_admin, kube_namespace, spec.name)
    assert deployment["metadata"]["uid"] != old_uid
    assert "app" not in deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["selector"]["matchLabels"][MANAGER_LABEL] == manager_id
    assert result.contract_hash == "hash-1"


def test_other_invalid_update_reported(
    orchestrate: Orchestrate,
    testbed: conftest.Testbed,
    kube_admin: client.ApiClient,
    kube_namespace: str,
    manager_id: str,
) -> None:
    """A 422 that is not about the selector is raised and nothing is recreated."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), running=False)
    workload = orchestrator.deploy(spec)
    uid = read_deployment(kube_admin, kube_namespace, spec.name)["metadata"]["uid"]
    invalid = connector_spec(
        manager_id,
        open_image(testbed),
        connector_id=spec.connector_id,
        contract_hash="hash-2",
        running=False,
        environment={"1-STARTS-WITH-A-DIGIT": "value"},
    )

    with pytest.raises(OrchestratorError, match="is invalid") as caught:
        orchestrator.redeploy(invalid, workload)

    assert "1-STARTS-WITH-A-DIGIT" in str(caught.value)
    deployment = read_deployment(kube_admin, kube_namespace, spec.name)
    assert deployment["metadata"]["uid"] == uid
    assert deployment["metadata"]["annotations"][CONTRACT_HASH_KEY] == "hash-1"


def test_logs_without_pod_empty(
    orchestrate: Orchestrate, testbed: conftest.Testbed, manager_id: str
) -> None:
    """A stopped connector has no pod and so no log lines."""
    orchestrator = orchestrate()
    spec = connector_spec(manager_id, open_image(testbed), running=False)
    workload = orchestrator.deploy(spec)

    assert orchestrator.logs(workload, 10) == []


def test_listing_forbidden_is_unavailable(
    kubernetes_testbed: KubernetesTestbed, kube_namespace: str, manager_id: str
) -> None:
    """A forbidden listing is reported as an unavailable engine."""
    settings = KubernetesSettings(
        kubeconfig=kubernetes_testbed.restricted_kubeconfig, namespace=kube_namespace
    )
    orchestrator = KubernetesOrchestrator(settings, None, manager_id, PLATFORM)
    try:
        with pytest.raises(EngineUnavailableError, match="forbidden"):
            orchestrator.list_workloads()
    finally:
        orchestrator.close()
