"""The shipped Role, and identities with fewer rights, on the testbed cluster.

The ServiceAccount, Role and RoleBinding of `deploy/kubernetes` are applied to a
test namespace, and the orchestrator runs with the service account's token.
Any request that the Role does not allow fails the test with a 403.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from tests import conftest
from tests.engines.conftest import (
    KubernetesTestbed,
    service_account_kubeconfig,
)
from tests.engines.test_kubernetes_orchestrator import (
    PLATFORM,
    PRIVATE_IMAGE,
    connector_spec,
    find,
    is_started,
    open_image,
    wait_workload,
)
from tests.support.polling import poll_until
from xtm_composer import logs
from xtm_composer.orchestrators.base import EngineUnavailableError
from xtm_composer.orchestrators.kubernetes import KubernetesOrchestrator
from xtm_composer.settings import RegistrySettings
from xtm_composer.settings.kubernetes import KubernetesSettings

pytestmark = pytest.mark.kubernetes

DEPLOY_DIR = conftest.REPO_ROOT / "deploy" / "kubernetes"
SERVICE_ACCOUNT = "xtm-composer"
MANAGER_ID = "rbac-manager"


def load_manifest(name: str, namespace: str) -> dict[str, Any]:
    """Read a shipped manifest and move it to `namespace`."""
    manifest: dict[str, Any] = yaml.safe_load((DEPLOY_DIR / name).read_text())
    manifest["metadata"]["namespace"] = namespace
    for subject in manifest.get("subjects", []):
        subject["namespace"] = namespace
    return manifest


def apply_identity(
    kube_admin: client.ApiClient, namespace: str, role: dict[str, Any]
) -> None:
    """Create the shipped ServiceAccount and RoleBinding, and `role`."""
    core = client.CoreV1Api(kube_admin)
    rbac = client.RbacAuthorizationV1Api(kube_admin)
    core.create_namespaced_service_account(
        namespace, load_manifest("serviceaccount.yaml", namespace)
    )
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(
        namespace, load_manifest("rolebinding.yaml", namespace)
    )


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Capture JSON logs; the returned function parses what was logged so far."""
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.configure_logging()


@pytest.fixture
def credentials(testbed: conftest.Testbed) -> RegistrySettings:
    return RegistrySettings(
        server=testbed.registry,
        username=testbed.registry_username,
        password=testbed.registry_password,
    )


def orchestrator_as(
    kubeconfig: Path, registry: RegistrySettings | None, **settings: Any
) -> KubernetesOrchestrator:
    """Build an orchestrator that uses the context namespace of `kubeconfig`."""
    options = {"kubeconfig": kubeconfig, "host_network": True, **settings}
    return KubernetesOrchestrator(
        KubernetesSettings(**options), registry, MANAGER_ID, PLATFORM
    )


def test_shipped_role_is_enough(
    kube_admin: client.ApiClient,
    kube_namespace: str,
    credentials: RegistrySettings,
    log_lines: Callable[[], list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    """The whole connector life runs under the shipped Role without any error."""
    apply_identity(
        kube_admin, kube_namespace, load_manifest("role.yaml", kube_namespace)
    )
    kubeconfig = service_account_kubeconfig(
        kube_admin, kube_namespace, SERVICE_ACCOUNT, tmp_path / "kubeconfig"
    )
    orchestrator = orchestrator_as(kubeconfig, credentials, image_pull_policy="Always")
    try:
        orchestrator.prepare()
        assert orchestrator.namespace == kube_namespace
        spec = connector_spec(MANAGER_ID, PRIVATE_IMAGE, credentials)

        orchestrator.deploy(spec)
        workload = wait_workload(orchestrator, spec.connector_id, is_started)
        lines = poll_until(lambda: orchestrator.logs(workload, 5), bool)
        orchestrator.stop(workload)
        stopped = find(orchestrator, spec.connector_id)
        orchestrator.remove(workload)
        remaining = orchestrator.list_workloads()
    finally:
        orchestrator.close()

    assert any("connector started" in line for line in lines)
    assert stopped is not None
    assert stopped.status.value == "stopped"
    assert remaining == []
    assert [event for event in log_lines() if event["level"] != "info"] == []


def test_missing_secret_create_logged(
    kube_admin: client.ApiClient,
    kube_namespace: str,
    credentials: RegistrySettings,
    testbed: conftest.Testbed,
    log_lines: Callable[[], list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    """Without `create` on secrets, prepare names it and open images still run."""
    role = load_manifest("role.yaml", kube_namespace)
    for rule in role["rules"]:
        if rule["resources"] == ["secrets"]:
            rule["verbs"].remove("create")
    apply_identity(kube_admin, kube_namespace, role)
    kubeconfig = service_account_kubeconfig(
        kube_admin, kube_namespace, SERVICE_ACCOUNT, tmp_path / "kubeconfig"
    )
    orchestrator = orchestrator_as(kubeconfig, credentials)
    try:
        orchestrator.prepare()
        spec = connector_spec(MANAGER_ID, open_image(testbed), credentials)
        orchestrator.deploy(spec)
        workload = wait_workload(orchestrator, spec.connector_id, is_started)
    finally:
        orchestrator.close()

    errors = [event for event in log_lines() if event["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["secret"] == "opencti-registry-auth"
    assert errors[0]["missing_permissions"] == "create on secrets"
    assert kube_namespace in errors[0]["fix"]
    assert workload.problem is None
    assert spec.image.reference == open_image(testbed)


def test_user_without_rights(
    kubernetes_testbed: KubernetesTestbed,
    kube_namespace: str,
    credentials: RegistrySettings,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    """With no rights, prepare names every secret verb and listing fails."""
    orchestrator = orchestrator_as(
        kubernetes_testbed.restricted_kubeconfig,
        credentials,
        namespace=kube_namespace,
    )
    try:
        orchestrator.prepare()
        with pytest.raises(EngineUnavailableError, match="forbidden"):
            orchestrator.list_workloads()
    finally:
        orchestrator.close()

    errors = [event for event in log_lines() if event["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["missing_permissions"] == "get, create, delete on secrets"
    assert credentials.password is not None
    assert credentials.password.get_secret_value() not in json.dumps(log_lines())


@pytest.mark.parametrize(
    "name",
    [
        "namespace.yaml",
        "serviceaccount.yaml",
        "role.yaml",
        "rolebinding.yaml",
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
    ],
)
def test_shipped_manifest_accepted(
    kube_admin: client.ApiClient, kube_namespace: str, name: str
) -> None:
    """The apiserver accepts each shipped manifest (server-side dry run)."""
    manifest = yaml.safe_load((DEPLOY_DIR / name).read_text())
    if manifest["kind"] == "Namespace":
        manifest["metadata"]["name"] = f"{kube_namespace}-dry-run"
    else:
        manifest = load_manifest(name, kube_namespace)
    namespace = None if manifest["kind"] == "Namespace" else kube_namespace

    created = utils.create_from_dict(
        kube_admin, manifest, namespace=namespace, dry_run="All"
    )

    assert [item.metadata.name for item in created] == [manifest["metadata"]["name"]]
