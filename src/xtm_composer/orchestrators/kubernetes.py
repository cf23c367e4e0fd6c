"""Connector workloads as Deployments in one Kubernetes namespace.

Each connector runs as one Deployment named by `naming.workload_name`, with one
replica while it runs and none while it is stopped. The manager, platform and
connector id labels sit on the Deployment, its selector and its pod template.
The contract hash changes with every contract, so it is an annotation
(`opencti-contract-hash`), not a label: a selector is immutable and must not
depend on it. Where the details live:
- `kubernetes_manifest`: the manifest and how the base Deployment merges in;
- `kubernetes_deployments`: ownership checks, patches, recreation and deletes;
- `kubernetes_state`: status, health and problems from the pods;
- `kubernetes_pull_secret`: the `opencti-registry-auth` pull Secret;
- `kubernetes_api`: cluster and namespace resolution, error translation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xtm_composer.logs import get_logger
from xtm_composer.orchestrators import kubernetes_ca_bundle as ca_bundles
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
from xtm_composer.orchestrators.kubernetes_deployments import DeploymentStore
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
        self.deployments = DeploymentStore(self.connection, manager_id, platform)
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
        # NOTE: a Secret that could not be written for lack of permission is not
        # tried again until the agent restarts; the error log names what to grant.
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
        deployment = self.deployments.create_or_update(spec, manifest)
        if spec.ca_bundle:
            self._write_ca_bundle(deployment, spec)
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
            live = self.deployments.read_owned(spec.name, spec.connector_id)
            if live is None:
                deployment = self.deployments.create_or_update(spec, manifest)
            else:
                deployment = self.deployments.update(spec, manifest, live)
        else:
            deployment = self.deployments.create_or_update(spec, manifest)
            self.remove(current)
        self._write_ca_bundle(deployment, spec)
        return self._workload(deployment)

    def _write_ca_bundle(self, deployment: dict[str, Any], spec: WorkloadSpec) -> None:
        """Write the proxy CA Secret the pod template mounts; delete a stale one."""
        labels = {
            MANAGER_LABEL: self.manager_id,
            PLATFORM_LABEL: self.platform,
            CONNECTOR_ID_LABEL: spec.connector_id,
        }
        ca_bundles.write_secret(
            self.core,
            self.connection.server,
            self.namespace,
            deployment,
            labels,
            spec.ca_bundle,
        )

    def start(self, workload: Workload) -> None:
        self._scale(workload, 1)

    def stop(self, workload: Workload) -> None:
        self._scale(workload, 0)

    def remove(self, workload: Workload) -> None:
        """Delete the Deployment, leaving its ReplicaSets and pods to the garbage
        collector."""
        live = self.deployments.read_owned(workload.name, workload.connector_id)
        if live is None:
            logger.info(
                "Connector Deployment already removed",
                **self._fields(workload.connector_id, workload.name),
            )
            return
        self.deployments.delete(live)
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

    def _scale(self, workload: Workload, replicas: int) -> None:
        fields = self._fields(workload.connector_id, workload.name)
        live = self.deployments.read_owned(workload.name, workload.connector_id)
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
        self.deployments.patch(workload.name, {"spec": {"replicas": replicas}})
        logger.info("Started connector" if replicas else "Stopped connector", **fields)

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


def split_log_lines(raw: bytes) -> list[str]:
    """Decode log output as UTF-8 and split it at newlines."""
    text = raw.decode("utf-8", errors="replace")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()
    return lines
