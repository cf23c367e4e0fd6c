"""Connector Deployments in one namespace, read and written with ownership checks.

A Deployment is changed or deleted only after a read shows this manager, this
platform and the expected connector id in its labels.

Updates are JSON merge patches (RFC 7386) without `spec.selector`. A merge
patch replaces lists wholesale, so the container, its env and the pull Secrets
end up exactly as generated. A strategic merge patch would merge `env` by name
and keep the variables that a new contract dropped. When the apiserver rejects
a patch with 422 because the selector is immutable or no longer matches the pod
template (a Deployment written by another version, say), the Deployment is
deleted and created again. Deletes use the `Background` propagation policy: the
Deployment disappears at once, so its name is free for the new one, and the
garbage collector removes its ReplicaSets and pods afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client

from xtm_composer.logs import get_logger
from xtm_composer.orchestrators import kubernetes_manifest as manifests
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    MANAGER_LABEL,
    PLATFORM_LABEL,
    OrchestratorError,
    WorkloadSpec,
)
from xtm_composer.orchestrators.kubernetes_api import (
    REQUEST_TIMEOUT,
    Connection,
    KubernetesApiError,
    api_errors,
)

logger = get_logger(__name__)

NOT_FOUND = 404
CONFLICT = 409
UNPROCESSABLE = 422
MERGE_PATCH = "application/merge-patch+json"


class DeploymentStore:
    """Reads and writes the connector Deployments of one manager and platform."""

    def __init__(self, connection: Connection, manager_id: str, platform: str) -> None:
        self.connection = connection
        self.namespace = connection.namespace
        self.manager_id = manager_id
        self.platform = platform
        self.apps = client.AppsV1Api(connection.api_client)

    def create_or_update(
        self, spec: WorkloadSpec, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """Create the Deployment, or update a leftover of the same connector."""
        try:
            return self.create(spec, manifest)
        except KubernetesApiError as error:
            if error.status != CONFLICT:
                raise
        live = self.read_owned(spec.name, spec.connector_id)
        if live is None:
            raise OrchestratorError(
                f"Deployment {spec.name} existed and then vanished while it was "
                "created; a later cycle will retry"
            )
        logger.warning(
            "Updating a leftover Deployment of the connector",
            **self._fields(spec.connector_id, spec.name),
        )
        return self.update(spec, manifest, live)

    def create(self, spec: WorkloadSpec, manifest: dict[str, Any]) -> dict[str, Any]:
        with self._api_errors(f"create Deployment {spec.name}", spec):
            response: Any = self.apps.create_namespaced_deployment(
                self.namespace,
                cast(Any, manifest),
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        return dict(json.loads(response.data))

    def update(
        self, spec: WorkloadSpec, manifest: dict[str, Any], live: dict[str, Any]
    ) -> dict[str, Any]:
        """Patch the Deployment, or recreate it when its selector rejects the patch."""
        body = manifests.patch_body(manifest, live)
        try:
            return self.patch(spec.name, body, spec)
        except KubernetesApiError as error:
            if error.status != UNPROCESSABLE or not error.selector_conflict:
                raise
            logger.warning(
                "Recreating the Deployment: its selector does not match the "
                "generated labels",
                **self._fields(spec.connector_id, spec.name),
                error=str(error),
            )
        self.delete(live)
        return self.create(spec, manifest)

    def patch(
        self, name: str, body: dict[str, Any], spec: WorkloadSpec | None = None
    ) -> dict[str, Any]:
        with self._api_errors(f"update Deployment {name}", spec):
            response: Any = self.apps.patch_namespaced_deployment(
                name,
                self.namespace,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        return dict(json.loads(response.data))

    def delete(self, live: Mapping[str, Any]) -> None:
        metadata = live["metadata"]
        options = {
            "propagationPolicy": "Background",
            # The uid precondition makes sure the checked object is the one deleted.
            "preconditions": {"uid": metadata["uid"]},
        }
        try:
            with self._api_errors(f"delete Deployment {metadata['name']}"):
                self.apps.delete_namespaced_deployment(
                    metadata["name"],
                    self.namespace,
                    body=cast(Any, options),
                    _request_timeout=REQUEST_TIMEOUT,
                )
        except KubernetesApiError as error:
            if error.status != NOT_FOUND:
                raise

    def read_owned(self, name: str, connector_id: str) -> dict[str, Any] | None:
        """Read a Deployment and check its labels, or return None when it is absent."""
        try:
            with self._api_errors(f"read Deployment {name}"):
                response: Any = self.apps.read_namespaced_deployment(
                    name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
        except KubernetesApiError as error:
            if error.status == NOT_FOUND:
                return None
            raise
        live: dict[str, Any] = json.loads(response.data)
        labels = live.get("metadata", {}).get("labels") or {}
        if not self.owns(labels, connector_id):
            raise OrchestratorError(
                f"Deployment {name} does not belong to connector {connector_id} "
                f"({describe_owner(labels)}); it was left untouched"
            )
        return live

    def owns(self, labels: Mapping[str, str], connector_id: str) -> bool:
        return (
            labels.get(MANAGER_LABEL) == self.manager_id
            and labels.get(PLATFORM_LABEL) == self.platform
            and labels.get(CONNECTOR_ID_LABEL) == connector_id
        )

    def _api_errors(
        self, action: str, spec: WorkloadSpec | None = None, unavailable: bool = False
    ) -> Any:
        """Translate client errors, masking the connector's environment values."""
        secrets = tuple(spec.environment.values()) if spec is not None else ()
        return api_errors(self.connection.server, action, secrets, unavailable)

    def _fields(self, connector_id: str, deployment: str) -> dict[str, str]:
        return {
            "orchestrator": "kubernetes",
            "connector_id": connector_id,
            "deployment": deployment,
            "namespace": self.namespace,
        }


def describe_owner(labels: Mapping[str, str]) -> str:
    """Name the manager, platform and connector a Deployment's labels point to."""
    if CONNECTOR_ID_LABEL not in labels:
        return "it has no connector id label"
    return (
        f"labels: connector id {labels.get(CONNECTOR_ID_LABEL)!r}, "
        f"manager {labels.get(MANAGER_LABEL)!r}, "
        f"platform {labels.get(PLATFORM_LABEL)!r}"
    )
