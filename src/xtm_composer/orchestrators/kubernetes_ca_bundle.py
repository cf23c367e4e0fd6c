"""The proxy CA bundle of a connector, as a Secret owned by its Deployment.

The pod mounts the Secret's `ca.crt` read-only at `CA_BUNDLE_PATH`. The Secret
names the Deployment as its owner, so the garbage collector deletes it with the
Deployment. A change of bundle content changes the pod template (the deployment
hash annotation includes the proxy settings), so the pods are replaced and read
the new content. Writing uses only get, create and delete on secrets, the verbs
the agent's Role already grants for the registry pull secret.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client

from xtm_composer.orchestrators.base import CA_BUNDLE_PATH
from xtm_composer.orchestrators.kubernetes_api import (
    KubernetesApiError,
    api_errors,
)

SECRET_KEY = "ca.crt"
VOLUME_NAME = "xtm-proxy-ca"
READ_ONLY_MODE = 0o444
NOT_FOUND = 404
REQUEST_TIMEOUT = (10, 30)


def secret_name(deployment_name: str) -> str:
    return f"{deployment_name}-proxy-ca"


def pod_additions(deployment_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the pod volume and the container volume mount of the bundle."""
    volume = {
        "name": VOLUME_NAME,
        "secret": {
            "secretName": secret_name(deployment_name),
            "defaultMode": READ_ONLY_MODE,
        },
    }
    mount = {
        "name": VOLUME_NAME,
        "mountPath": CA_BUNDLE_PATH,
        "subPath": SECRET_KEY,
        "readOnly": True,
    }
    return volume, mount


def write_secret(
    core: client.CoreV1Api,
    server: str,
    namespace: str,
    deployment: Mapping[str, Any],
    labels: Mapping[str, str],
    bundle: str,
) -> None:
    """Replace the bundle Secret of `deployment`; delete it when `bundle` is empty."""
    metadata = deployment["metadata"]
    name = secret_name(metadata["name"])
    delete_secret(core, server, namespace, name)
    if not bundle:
        return
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "labels": dict(labels),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                }
            ],
        },
        "data": {SECRET_KEY: base64.b64encode(bundle.encode()).decode()},
    }
    with api_errors(server, f"create Secret {name} with the proxy CA bundle"):
        core.create_namespaced_secret(
            namespace, cast(Any, body), _request_timeout=REQUEST_TIMEOUT
        )


def delete_secret(
    core: client.CoreV1Api, server: str, namespace: str, name: str
) -> None:
    try:
        with api_errors(server, f"delete Secret {name}"):
            core.delete_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
    except KubernetesApiError as error:
        if error.status != NOT_FOUND:
            raise
