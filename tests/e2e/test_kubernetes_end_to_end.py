"""The real agent, the platform stand-in and the testbed Kubernetes cluster together."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.stream import stream

from tests.e2e.conftest import EXECUTE_SCHEDULE, Deployment
from tests.engines.conftest import KubernetesTestbed
from tests.support.agent import AgentProcess, wait_for
from tests.support.certificates import certificate_pem

pytestmark = pytest.mark.kubernetes

START_TIMEOUT = 90
"""Seconds for a first deploy: scheduling, pull by the kubelet, container start."""


def kubernetes_overrides(
    kubernetes_testbed: KubernetesTestbed, namespace: str
) -> dict[str, str]:
    return {
        "OPENCTI__DAEMON__SELECTOR": "kubernetes",
        "OPENCTI__DAEMON__KUBERNETES__KUBECONFIG": str(kubernetes_testbed.kubeconfig),
        "OPENCTI__DAEMON__KUBERNETES__NAMESPACE": namespace,
        "OPENCTI__DAEMON__KUBERNETES__HOST_NETWORK": "true",
    }


def add_connector(deployment: Deployment, name: str) -> str:
    api_key = f"api-key-{secrets.token_hex(8)}"
    deployment.secrets.append(api_key)
    admin = deployment.platform.admin
    created = admin.add_connector("connector-test", name, {"TEST_API_KEY": api_key})
    admin.request_status(created["id"], "starting")
    return str(created["id"])


def deployments_of(
    kube_admin: client.ApiClient, namespace: str, connector_id: str
) -> list[Any]:
    apps = client.AppsV1Api(kube_admin)
    return list(
        apps.list_namespaced_deployment(
            namespace, label_selector=f"opencti-connector-id={connector_id}"
        ).items
    )


def view(deployment: Deployment, connector_id: str) -> dict[str, Any]:
    return deployment.platform.admin.connector(connector_id)


def cycles(agent: AgentProcess) -> int:
    return agent.count("Reconciliation cycle finished")


def test_connector_lifecycle_on_kubernetes(
    deployment: Deployment,
    kubernetes_testbed: KubernetesTestbed,
    kube_namespace: str,
    kube_admin: client.ApiClient,
) -> None:
    """Deploy, report, stop, start, edit, rename and delete reach the cluster."""
    apps = client.AppsV1Api(kube_admin)
    foreign = {
        "metadata": {
            "name": "other-manager-connector",
            "labels": {
                "opencti-manager": "someone-else",
                "opencti-platform": "opencti",
            },
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "other"}},
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {
                    "containers": [{"name": "c", "image": "xtm-testbed/pause:latest"}]
                },
            },
        },
    }
    apps.create_namespaced_deployment(kube_namespace, foreign)
    agent = deployment.start_agent(
        **kubernetes_overrides(kubernetes_testbed, kube_namespace)
    )
    connector_id = add_connector(deployment, "Kube connector")
    admin = deployment.platform.admin

    reported = wait_for(
        lambda: (
            (v := view(deployment, connector_id))["current_status"] == "started"
            and v["logs"]
            and v["health"]
            and v
        ),
        START_TIMEOUT,
        what="the connector reported started with logs and health",
    )
    assert any("Kube connector" in line for line in reported["logs"])
    (created,) = deployments_of(kube_admin, kube_namespace, connector_id)
    template = created.spec.template.spec
    image = f"{deployment.testbed.registry}/opencti/connector-test:1.0.0"
    assert image == template.containers[0].image
    assert ["opencti-registry-auth"] == [s.name for s in template.image_pull_secrets]

    def within_two_cycles(change: Any, effect: Any, what: str) -> None:
        before = cycles(agent)
        change()
        wait_for(effect, 6 * EXECUTE_SCHEDULE + 30, what=what)
        assert cycles(agent) - before <= 2, f"{what} took more than two cycles"

    within_two_cycles(
        lambda: admin.request_status(connector_id, "stopping"),
        lambda: (
            deployments_of(kube_admin, kube_namespace, connector_id)[0].spec.replicas
            == 0
        ),
        "the scale down to 0",
    )
    within_two_cycles(
        lambda: admin.request_status(connector_id, "starting"),
        lambda: (
            deployments_of(kube_admin, kube_namespace, connector_id)[0].spec.replicas
            == 1
        ),
        "the scale up to 1",
    )
    new_key = f"edited-{secrets.token_hex(6)}"
    deployment.secrets.append(new_key)

    def edited_env() -> bool:
        found = deployments_of(kube_admin, kube_namespace, connector_id)
        containers = found[0].spec.template.spec.containers if found else []
        values = (
            {e.name: e.value for e in (containers[0].env or [])} if containers else {}
        )
        return values.get("TEST_API_KEY") == new_key

    within_two_cycles(
        lambda: admin.edit_connector(
            connector_id, "Kube connector", {"TEST_API_KEY": new_key}
        ),
        edited_env,
        "the redeploy with the new environment",
    )

    def renamed() -> bool:
        found = deployments_of(kube_admin, kube_namespace, connector_id)
        return len(found) == 1 and found[0].metadata.name.startswith("kube-renamed-")

    within_two_cycles(
        lambda: admin.edit_connector(
            connector_id, "Kube renamed", {"TEST_API_KEY": new_key}
        ),
        renamed,
        "the Deployment under the new name",
    )
    within_two_cycles(
        lambda: admin.delete_connector(connector_id),
        lambda: not deployments_of(kube_admin, kube_namespace, connector_id),
        "the Deployment removal",
    )
    names = [
        d.metadata.name for d in apps.list_namespaced_deployment(kube_namespace).items
    ]
    assert ["other-manager-connector"] == names


def test_wrong_registry_password_on_kubernetes(
    deployment: Deployment,
    kubernetes_testbed: KubernetesTestbed,
    kube_namespace: str,
) -> None:
    """A pod that cannot pull is reported stopped with the pull error in its logs."""
    wrong = f"wrong-{secrets.token_hex(6)}"
    deployment.secrets.append(wrong)
    agent = deployment.start_agent(
        OPENCTI__DAEMON__REGISTRY__PASSWORD=wrong,
        # With IfNotPresent, a node that already has the image runs it without
        # asking the registry, so wrong credentials would go unnoticed.
        OPENCTI__DAEMON__KUBERNETES__IMAGE_PULL_POLICY="Always",
        **kubernetes_overrides(kubernetes_testbed, kube_namespace),
    )
    connector_id = add_connector(deployment, "Denied connector")

    reported = wait_for(
        lambda: (
            (v := view(deployment, connector_id))["logs"]
            and any("[xtm-composer]" in line for line in v["logs"])
            and v
        ),
        START_TIMEOUT,
        what="the pull error in the connector's logs",
    )
    problem = " ".join(reported["logs"]).lower()
    assert (
        "unauthorized" in problem
        or "no basic auth credentials" in problem
        or ("pull" in problem)
    )
    assert "started" != reported["current_status"]
    assert agent.running


def test_proxy_settings_reach_the_pod(
    deployment: Deployment,
    kubernetes_testbed: KubernetesTestbed,
    kube_namespace: str,
    kube_admin: client.ApiClient,
    tmp_path: Path,
) -> None:
    """A connector pod gets the proxy variables and reads the CA bundle at its path."""
    ca_pem = certificate_pem()
    ca_file = tmp_path / "proxy-ca.pem"
    ca_file.write_text(ca_pem)
    proxy_url = "http://127.0.0.1:3128"
    deployment.start_agent(
        OPENCTI__WITH_PROXY="true",
        OPENCTI__HTTP_PROXY=proxy_url,
        OPENCTI__HTTPS_PROXY=proxy_url,
        # The agent itself reaches the stand-in directly; connectors get the proxy.
        OPENCTI__NO_PROXY="127.0.0.0/8",
        OPENCTI__HTTPS_PROXY_CA=f'["{ca_file}"]',
        **kubernetes_overrides(kubernetes_testbed, kube_namespace),
    )
    connector_id = add_connector(deployment, "Proxied kube connector")
    wait_for(
        lambda: view(deployment, connector_id)["current_status"] == "started",
        START_TIMEOUT,
        what="the proxied connector to start",
    )

    core = client.CoreV1Api(kube_admin)
    (pod,) = core.list_namespaced_pod(
        kube_namespace, label_selector=f"opencti-connector-id={connector_id}"
    ).items
    (container,) = pod.spec.containers
    environment = {item.name: item.value for item in container.env}
    assert proxy_url == environment["HTTPS_PROXY"]
    assert proxy_url == environment["http_proxy"]
    assert "/etc/ssl/certs/xtm-proxy-ca.crt" == environment["SSL_CERT_FILE"]
    assert "NODE_TLS_REJECT_UNAUTHORIZED" not in environment
    output = stream(
        core.connect_get_namespaced_pod_exec,
        pod.metadata.name,
        kube_namespace,
        container=container.name,
        command=["cat", "/etc/ssl/certs/xtm-proxy-ca.crt"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert ca_pem.strip() == output.strip()
    secret_owner = core.read_namespaced_secret(
        f"{pod.spec.containers[0].name}-proxy-ca", kube_namespace
    ).metadata.owner_references[0]
    assert "Deployment" == secret_owner.kind
