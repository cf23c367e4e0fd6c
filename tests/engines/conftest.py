"""Fixtures of the engine tests that need the testbed Kubernetes cluster.

`scripts/testbed/kubernetes.sh up` writes `kubernetes.env` with the kubeconfig of
an admin and of a user without any RBAC rights. Every kubeconfig used here is
one of those, or one built from them: a default kubeconfig is never loaded.
Each test gets its own namespace, deleted afterwards with everything in it.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests import conftest
from tests.support.polling import poll_until

T = TypeVar("T")

NAMESPACE_PREFIX = "xtm-test-"
TOKEN_TIMEOUT = 30
"""Seconds for the token controller to give a new service account its token."""


@dataclass(frozen=True)
class KubernetesTestbed:
    """The testbed cluster: kubeconfigs of the admin and of a user without rights."""

    kubeconfig: Path
    restricted_kubeconfig: Path


@pytest.fixture(scope="session")
def kubernetes_testbed() -> KubernetesTestbed:
    """The testbed Kubernetes cluster, checked to respond to the admin kubeconfig."""
    values = conftest.read_env_file(conftest.TESTBED_DIR / "kubernetes.env")
    for name in ("XTM_TEST_KUBECONFIG", "XTM_TEST_KUBECONFIG_RESTRICTED"):
        if os.environ.get(name):
            values[name] = os.environ[name]
    kubeconfig = values.get("XTM_TEST_KUBECONFIG")
    restricted = values.get("XTM_TEST_KUBECONFIG_RESTRICTED")
    if not kubeconfig or not restricted:
        conftest.missing_engine(
            "the testbed Kubernetes cluster is not set up (no "
            f"{conftest.TESTBED_DIR / 'kubernetes.env'})"
        )
    testbed = KubernetesTestbed(Path(str(kubeconfig)), Path(str(restricted)))
    try:
        with admin_client(testbed) as api_client:
            client.VersionApi(api_client).get_code(_request_timeout=(5, 10))
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
        conftest.missing_engine(f"the testbed Kubernetes API does not respond: {error}")
    return testbed


def admin_client(testbed: KubernetesTestbed) -> client.ApiClient:
    """Return an API client with the admin kubeconfig of the testbed."""
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(testbed.kubeconfig),
        client_configuration=configuration,
        persist_config=False,
    )
    return client.ApiClient(configuration)


@pytest.fixture(scope="session")
def kube_admin(kubernetes_testbed: KubernetesTestbed) -> Iterator[client.ApiClient]:
    """An admin API client of the testbed cluster, to set up and check tests."""
    with admin_client(kubernetes_testbed) as api_client:
        yield api_client


@pytest.fixture
def kube_namespace(kube_admin: client.ApiClient) -> Iterator[str]:
    """A new namespace, ready for pods, deleted after the test."""
    core = client.CoreV1Api(kube_admin)
    name = NAMESPACE_PREFIX + uuid.uuid4().hex[:10]
    core.create_namespace({"metadata": {"name": name}})
    try:
        # The apiserver rejects pods until the default service account exists
        # with its token, which the controllers add within about a second.
        poll_until(
            lambda: account_token_names(core, name, "default"),
            bool,
            timeout=TOKEN_TIMEOUT,
        )
        yield name
    finally:
        core.delete_namespace(name, body={"propagationPolicy": "Background"})


def account_token_names(
    core: client.CoreV1Api, namespace: str, service_account: str
) -> list[str]:
    """Return the token Secret names of a service account, none while it is absent."""
    try:
        account = core.read_namespaced_service_account(service_account, namespace)
    except ApiException as error:
        if error.status == 404:
            return []
        raise
    return [reference.name for reference in account.secrets or [] if reference.name]


def service_account_kubeconfig(
    api_client: client.ApiClient,
    namespace: str,
    service_account: str,
    path: Path,
) -> Path:
    """Write a kubeconfig that authenticates as a service account, and return it.

    Kubernetes 1.20 gives every service account a token Secret, created by the
    token controller. The kubeconfig uses that token and the admin's CA.
    """
    core = client.CoreV1Api(api_client)
    tokens = poll_until(
        lambda: account_token_names(core, namespace, service_account),
        bool,
        timeout=TOKEN_TIMEOUT,
    )
    secret = core.read_namespaced_secret(tokens[0], namespace)
    token = decode(secret.data["token"])
    configuration = api_client.configuration
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {
                    "server": configuration.host,
                    "certificate-authority": configuration.ssl_ca_cert,
                },
            }
        ],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [
            {
                "name": service_account,
                "context": {
                    "cluster": "testbed",
                    "user": service_account,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": service_account,
    }
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def decode(value: str) -> str:
    return base64.b64decode(value).decode()
