"""Connector workloads as Deployments in one Kubernetes namespace.

Each connector runs as one Deployment named by `naming.workload_name`, with one
replica while it runs and none while it is stopped. The manager, platform and
connector id labels sit on the Deployment, its selector and its pod template.
The contract hash changes with every contract, so it is an annotation
(`opencti-contract-hash`), not a label: a selector is immutable and must not
depend on it. How the manifest is built and merged with the operator's base
Deployment is described in `kubernetes_manifest`, how status is derived from
pods in `kubernetes_state`, and the pull Secret in `kubernetes_pull_secret`.

A Deployment is changed or deleted only after a read shows this manager, this
platform and the expected connector id in its labels.

Updates are JSON merge patches (RFC 7386) without `spec.selector`. A merge
patch replaces lists wholesale, so the container, its env and the pull Secrets
end up exactly as generated. A strategic merge patch would merge `env` by name
and keep the variables that a new contract dropped. When the apiserver rejects a
patch with 422 because the selector is immutable or no longer matches the pod
template (a Deployment written by another version, say), the Deployment is
deleted and created again. Deletes use the `Background` propagation policy: the
Deployment disappears at once, so its name is free for the new one, and the
garbage collector removes its ReplicaSets and pods afterwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xtm_composer.logs import get_logger
from xtm_composer.orchestrators import kubernetes_manifest as manifests
from xtm_composer.orchestrators import kubernetes_state as states
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    MANAGER_LABEL,
    PLATFORM_LABEL,
    OrchestratorError,
    Workload,
    WorkloadSpec,
)
from xtm_composer.orchestrators.kubernetes_api import (
    REQUEST_TIMEOUT,
    TRANSPORT_ERRORS,
    Connection,
    KubernetesApiError,
    api_errors,
    connect,
)
from xtm_composer.orchestrators.kubernetes_pull_secret import (
    SECRET_NAME,
    PullSecretManager,
)
from xtm_composer.orchestrators.naming import selector_labels
from xtm_composer.settings import ConfigurationError, RegistrySettings
from xtm_composer.settings.kubernetes import KubernetesSettings

logger = get_logger(__name__)

BAD_REQUEST = 400
FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409
UNPROCESSABLE = 422

MERGE_PATCH = "application/merge-patch+json"
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class KubernetesOrchestrator:
    """Runs connector Deployments in the namespace that the settings resolve to."""

    name = "kubernetes"

    def __init__(
        self,
        settings: KubernetesSettings,
        registry: RegistrySettings | None,
        manager_id: str,
        platform: str,
        settings_path: str = "opencti.daemon.kubernetes",
        connection: Connection | None = None,
    ) -> None:
        """Check the settings and resolve the cluster, sending nothing yet.

        Raises `ConfigurationError` for settings that cannot work.
        """
        for key, value in (("manager.id", manager_id), ("platform", platform)):
            if not value or not LABEL_VALUE.match(value):
                raise ConfigurationError(
                    f"{key} = {value!r} cannot be a Kubernetes label value: use at "
                    "most 63 letters, digits, '-', '_' or '.', starting and ending "
                    "with a letter or digit"
                )
        self.settings = settings
        self.registry = registry
        self.manager_id = manager_id
        self.platform = platform
        resources = settings.image_resources
        self.options = manifests.ManifestOptions(
            image_pull_policy=settings.image_pull_policy,
            pull_secret_names=tuple(settings.pull_secret_names),
            resources=resources.to_manifest() if resources else {},
            host_network=settings.host_network,
            base=settings.base,
        )
        base_key = (
            "base_deployment"
            if settings.base_deployment is not None
            else "base_deployment_json"
        )
        manifests.check_base_deployment(self.options, f"{settings_path}.{base_key}")

        self.connection = connection or connect(settings, settings_path)
        self.namespace = self.connection.namespace
        self.apps = client.AppsV1Api(self.connection.api_client)
        self.core = client.CoreV1Api(self.connection.api_client)
        self._events_readable = True

    def prepare(self) -> None:
        """Check that the apiserver responds, then write or clean up the pull Secret."""
        with self._api_errors("reach the Kubernetes API", unavailable=True):
            version = client.VersionApi(self.connection.api_client).get_code(
                _request_timeout=REQUEST_TIMEOUT
            )
        logger.info(
            "Connected to the Kubernetes API",
            orchestrator=self.name,
            server=self.connection.server,
            configuration=self.connection.source,
            namespace=self.namespace,
            version=version.git_version,
        )

        secrets = PullSecretManager(
            self.connection.api_client,
            self.namespace,
            selector_labels(self.manager_id, self.platform),
            REQUEST_TIMEOUT,
        )
        names = list(self.settings.pull_secret_names)
        with self._api_errors("write the imagePullSecret", unavailable=True):
            if self.registry is not None and self.registry.has_credentials:
                if secrets.replace(self.registry):
                    names.insert(0, SECRET_NAME)
            else:
                secrets.remove_stale()
        self.options = replace(
            self.options, pull_secret_names=tuple(dict.fromkeys(names))
        )

    def list_workloads(self) -> list[Workload]:
        """List this manager's Deployments on this platform with one call, and
        their pods with another."""
        selector = label_selector(selector_labels(self.manager_id, self.platform))
        with self._api_errors("list Deployments and pods", unavailable=True):
            deployments = self._list(self.apps.list_namespaced_deployment, selector)
            pods = self._list(self.core.list_namespaced_pod, selector)
        pull_errors = self._pull_errors(pods)

        now = datetime.now(UTC)
        workloads = []
        for deployment in deployments:
            workload = states.workload_from_deployment(
                deployment, pods, now, pull_errors
            )
            if workload is None:
                logger.warning(
                    "Skipping a labelled Deployment without a connector id",
                    orchestrator=self.name,
                    deployment=deployment["metadata"]["name"],
                )
                continue
            workloads.append(workload)
        return workloads

    def deploy(self, spec: WorkloadSpec) -> Workload:
        """Create the connector's Deployment, scaled to 1 or 0 by `spec.running`."""
        manifest = self._manifest(spec)
        logger.info(
            "Deploying connector",
            **self._fields(spec.connector_id, spec.name),
            image=spec.image.reference,
        )
        deployment = self._create_or_update(spec, manifest)
        return self._workload(deployment)

    def redeploy(self, spec: WorkloadSpec, current: Workload) -> Workload:
        """Update the Deployment in place, or create the renamed one first and
        delete the old one afterwards."""
        if spec.connector_id != current.connector_id:
            raise OrchestratorError(
                f"cannot redeploy Deployment {current.name} of connector "
                f"{current.connector_id} for connector {spec.connector_id}"
            )
        manifest = self._manifest(spec)
        logger.info(
            "Redeploying connector",
            **self._fields(spec.connector_id, spec.name),
            previous_deployment=current.name,
            image=spec.image.reference,
        )
        if current.name == spec.name:
            live = self._read_owned(spec.name, spec.connector_id)
            if live is None:
                deployment = self._create_or_update(spec, manifest)
            else:
                deployment = self._update(spec, manifest, live)
        else:
            deployment = self._create_or_update(spec, manifest)
            self.remove(current)
        return self._workload(deployment)

    def start(self, workload: Workload) -> None:
        self._scale(workload, 1)

    def stop(self, workload: Workload) -> None:
        self._scale(workload, 0)

    def remove(self, workload: Workload) -> None:
        """Delete the Deployment, leaving its ReplicaSets and pods to the garbage
        collector."""
        live = self._read_owned(workload.name, workload.connector_id)
        if live is None:
            logger.info(
                "Connector Deployment already removed",
                **self._fields(workload.connector_id, workload.name),
            )
            return
        self._delete(live)
        logger.info(
            "Removed connector", **self._fields(workload.connector_id, workload.name)
        )

    def logs(self, workload: Workload, max_lines: int) -> list[str]:
        """Return the last `max_lines` lines of the connector container's output."""
        if max_lines <= 0:
            return []
        labels = {
            **selector_labels(self.manager_id, self.platform),
            CONNECTOR_ID_LABEL: workload.connector_id,
        }
        with self._api_errors(f"list the pods of Deployment {workload.name}"):
            pods = self._list(self.core.list_namespaced_pod, label_selector(labels))
        owned: list[states.PodView] = [
            pod for pod in pods if states.created_by(pod, workload.name)
        ]
        pod = states.pick_pod(owned, workload.name)
        if pod is None:
            return []

        pod_name = pod["metadata"]["name"]
        try:
            with self._api_errors(f"read the logs of pod {pod_name}"):
                response: Any = self.core.read_namespaced_pod_log(
                    pod_name,
                    self.namespace,
                    container=workload.name,
                    tail_lines=max_lines,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
        except KubernetesApiError as error:
            # 400 means that the container has not started yet, 404 that the
            # pod is gone.
            if error.status in (BAD_REQUEST, NOT_FOUND):
                return []
            raise
        return split_log_lines(response.data)[-max_lines:]

    def close(self) -> None:
        self.connection.api_client.close()  # type: ignore[no-untyped-call]

    def _manifest(self, spec: WorkloadSpec) -> dict[str, Any]:
        if not spec.connector_id or not LABEL_VALUE.match(spec.connector_id):
            raise OrchestratorError(
                f"connector id {spec.connector_id!r} cannot be a Kubernetes label "
                "value (at most 63 letters, digits, '-', '_' or '.')"
            )
        labels = {
            key: value for key, value in spec.labels.items() if key != CONTRACT_HASH_KEY
        }
        labels.update(
            {
                MANAGER_LABEL: self.manager_id,
                PLATFORM_LABEL: self.platform,
                CONNECTOR_ID_LABEL: spec.connector_id,
            }
        )
        return manifests.build_deployment(spec, labels, self.options)

    def _create_or_update(
        self, spec: WorkloadSpec, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """Create the Deployment, or update a leftover of the same connector."""
        try:
            return self._create(spec, manifest)
        except KubernetesApiError as error:
            if error.status != CONFLICT:
                raise
        live = self._read_owned(spec.name, spec.connector_id)
        if live is None:
            raise OrchestratorError(
                f"Deployment {spec.name} existed and then vanished while it was "
                "created; a later cycle will retry"
            )
        logger.warning(
            "Updating a leftover Deployment of the connector",
            **self._fields(spec.connector_id, spec.name),
        )
        return self._update(spec, manifest, live)

    def _create(self, spec: WorkloadSpec, manifest: dict[str, Any]) -> dict[str, Any]:
        with self._api_errors(f"create Deployment {spec.name}", spec):
            response: Any = self.apps.create_namespaced_deployment(
                self.namespace,
                cast(Any, manifest),
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        return dict(json.loads(response.data))

    def _update(
        self, spec: WorkloadSpec, manifest: dict[str, Any], live: dict[str, Any]
    ) -> dict[str, Any]:
        """Patch the Deployment, or recreate it when its selector rejects the patch."""
        body = manifests.patch_body(manifest, live)
        try:
            return self._patch(spec.name, body, spec)
        except KubernetesApiError as error:
            if error.status != UNPROCESSABLE or not error.selector_conflict:
                raise
            logger.warning(
                "Recreating the Deployment: its selector does not match the "
                "generated labels",
                **self._fields(spec.connector_id, spec.name),
                error=str(error),
            )
        self._delete(live)
        return self._create(spec, manifest)

    def _patch(
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

    def _scale(self, workload: Workload, replicas: int) -> None:
        fields = self._fields(workload.connector_id, workload.name)
        live = self._read_owned(workload.name, workload.connector_id)
        if live is None:
            raise OrchestratorError(
                f"Deployment {workload.name} of connector {workload.connector_id} "
                "was not found"
            )
        if (live.get("spec") or {}).get("replicas") == replicas:
            logger.debug(
                "Connector Deployment already scaled", **fields, replicas=replicas
            )
            return
        self._patch(workload.name, {"spec": {"replicas": replicas}})
        logger.info("Started connector" if replicas else "Stopped connector", **fields)

    def _delete(self, live: Mapping[str, Any]) -> None:
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

    def _read_owned(self, name: str, connector_id: str) -> dict[str, Any] | None:
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
        if not self._owns(labels, connector_id):
            raise OrchestratorError(
                f"Deployment {name} does not belong to connector {connector_id} "
                f"({describe_owner(labels)}); it was left untouched"
            )
        return live

    def _owns(self, labels: Mapping[str, str], connector_id: str) -> bool:
        return (
            labels.get(MANAGER_LABEL) == self.manager_id
            and labels.get(PLATFORM_LABEL) == self.platform
            and labels.get(CONNECTOR_ID_LABEL) == connector_id
        )

    def _list(self, method: Any, selector: str) -> list[dict[str, Any]]:
        response = method(
            self.namespace,
            label_selector=selector,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return list(json.loads(response.data).get("items") or [])

    def _pull_errors(self, pods: list[dict[str, Any]]) -> dict[str, str]:
        """Return the latest pull error of each pod in `ImagePullBackOff`.

        One event list per call, and only when such a pod exists. Without the
        `list` permission on events, problems contain the kubelet's back-off
        message only, and one warning is logged.
        """
        waiting = {states.pod_uid(pod) for pod in states.pods_in_pull_back_off(pods)}
        if not waiting or not self._events_readable:
            return {}
        try:
            response: Any = self.core.list_namespaced_event(
                self.namespace,
                field_selector="involvedObject.kind=Pod,reason=Failed",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == FORBIDDEN:
                self._events_readable = False
                logger.warning(
                    "Cannot read pod events, so image pull errors are not shown "
                    "until the agent restarts; grant list on events to show them",
                    orchestrator=self.name,
                    namespace=self.namespace,
                )
            return {}
        except TRANSPORT_ERRORS:
            return {}
        events = json.loads(response.data).get("items") or []
        return {
            uid: message
            for uid, message in states.latest_pull_errors(events).items()
            if uid in waiting
        }

    def _workload(self, deployment: dict[str, Any]) -> Workload:
        workload = states.workload_from_deployment(deployment, [], datetime.now(UTC))
        if workload is None:
            raise OrchestratorError(
                f"Deployment {deployment['metadata']['name']} lost its labels"
            )
        return workload

    def _api_errors(
        self, action: str, spec: WorkloadSpec | None = None, unavailable: bool = False
    ) -> Any:
        """Translate client errors, masking the connector's environment values."""
        secrets = tuple(spec.environment.values()) if spec is not None else ()
        return api_errors(self.connection.server, action, secrets, unavailable)

    def _fields(self, connector_id: str, deployment: str) -> dict[str, str]:
        return {
            "orchestrator": self.name,
            "connector_id": connector_id,
            "deployment": deployment,
            "namespace": self.namespace,
        }


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def describe_owner(labels: Mapping[str, str]) -> str:
    """Name the manager, platform and connector a Deployment's labels point to."""
    if CONNECTOR_ID_LABEL not in labels:
        return "it has no connector id label"
    return (
        f"labels: connector id {labels.get(CONNECTOR_ID_LABEL)!r}, "
        f"manager {labels.get(MANAGER_LABEL)!r}, "
        f"platform {labels.get(PLATFORM_LABEL)!r}"
    )


def split_log_lines(raw: bytes) -> list[str]:
    """Decode log output as UTF-8 and split it at newlines."""
    text = raw.decode("utf-8", errors="replace")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()
    return lines
