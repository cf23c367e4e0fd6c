"""Connector workloads as Docker Swarm services.

Each connector runs as one replicated service named by `naming.workload_name`,
with 1 replica when started and 0 when stopped. The labels of
`naming.workload_labels` are set on the service and on its container spec in
the create call itself, and a service is touched only after its labels show
this manager, this platform and the expected connector id.

Deploy and redeploy first look up the image's digest in the registry, with the
configured credentials when the image allows them, and pin the service to it.
Every node then runs the same image. A missing image or denied credentials
fail before the service changes. The same credentials go with the service
create or update (`swarm_api`), so that any node can pull.

A redeploy updates the service in place. Swarm replaces its task (stop first,
then start, by default), and a failed digest lookup leaves the running service
as it is. Updates carry the service's current version; when the service
changed in between, Swarm rejects it with "update out of sequence", and the update is
read again and retried once.

The proxy CA bundle, when there is one, is a Swarm config named after the
connector and the bundle's content, mounted read-only at `CA_BUNDLE_PATH`. A
changed bundle gets a new config, and the connector's other configs are
removed once the service no longer uses them, and with the service.

`swarm_state` describes how tasks map to status, restart count and reboot
loop.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import requests
from docker.utils import version_lt

from xtm_composer.logs import get_logger
from xtm_composer.orchestrators import (
    docker_engine,
    docker_pull,
    swarm_api,
    swarm_logs,
    swarm_spec,
    swarm_state,
)
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    MANAGER_LABEL,
    PLATFORM_LABEL,
    OrchestratorError,
    Workload,
    WorkloadSpec,
)
from xtm_composer.orchestrators.naming import selector_labels, workload_labels
from xtm_composer.settings import ConfigurationError, RegistrySettings
from xtm_composer.settings.swarm import SwarmSettings

logger = get_logger(__name__)

UPDATE_ATTEMPTS = 2
"""An update that loses a race with another change is read again and retried once."""

CONFIG_HASH_LENGTH = 12


class SwarmOrchestrator:
    """Runs connector services on the Docker Swarm whose manager is `docker_host`.

    Without `docker_host` the engine is found as `docker.from_env()` finds it.
    """

    name = "swarm"

    def __init__(
        self,
        settings: SwarmSettings,
        registry: RegistrySettings | None,
        manager_id: str,
        platform: str,
        docker_host: str | None = None,
        settings_path: str = "daemon.swarm",
    ) -> None:
        if not manager_id or not platform:
            raise ValueError("manager_id and platform must not be empty")
        self.settings = settings
        self.registry = registry
        self.manager_id = manager_id
        self.platform = platform
        self.settings_path = settings_path
        self._engine = docker_engine.EngineConnection(docker_host)
        self._restarts = swarm_state.RestartCounter()

    def prepare(self) -> None:
        """Check that the engine is a swarm manager that supports the options.

        Options that the engine's API version would ignore raise
        `ConfigurationError`, which stops the agent, since no retry can fix them.
        """
        with self._engine.errors("read the engine's swarm state"):
            info = self._engine.api.info()
        self._check_swarm_manager(info.get("Swarm") or {})

        api_version = self._engine.api.api_version
        if version_lt(api_version, swarm_spec.MIN_API_VERSION):
            raise OrchestratorError(
                f"the Docker Engine at {self._engine.address} serves API "
                f"{api_version}, but Swarm connectors need "
                f"{swarm_spec.MIN_API_VERSION} or later: upgrade the engine"
            )
        problems = swarm_spec.unsupported_options(self.settings, api_version)
        if problems:
            raise ConfigurationError(
                "; ".join(problems).replace(
                    swarm_spec.SETTINGS_PREFIX, self.settings_path
                )
                + ": remove these options or upgrade the engine"
            )
        if self.settings.network:
            self._check_network(self.settings.network)

        ignored = sorted(self.settings.model_extra or {})
        if ignored:
            logger.warning(
                "Ignoring unknown Swarm settings", orchestrator=self.name, keys=ignored
            )
        logger.info(
            "Connected to the Swarm manager",
            orchestrator=self.name,
            docker_host=self._engine.address,
            api_version=api_version,
            node_id=(info.get("Swarm") or {}).get("NodeID"),
        )

    def list_workloads(self) -> list[Workload]:
        """List this manager's services on this platform, with two engine calls."""
        with self._engine.errors("list services"):
            services = self._engine.api.services(filters={"label": self._selector()})
            # Tasks carry their service's labels: one call covers every service.
            tasks = (
                self._engine.api.tasks(filters={"label": self._selector()})
                if services
                else []
            )

        tasks_by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            tasks_by_service.setdefault(str(task.get("ServiceID")), []).append(task)
        now = datetime.now(UTC)
        workloads = []
        for service in services:
            service_id = str(service.get("ID"))
            workload = swarm_state.workload_from_service(
                service, tasks_by_service.get(service_id, []), self._restarts, now
            )
            if workload is None:
                logger.debug(
                    "Skipping a labelled service without a connector id",
                    orchestrator=self.name,
                    service=(service.get("Spec") or {}).get("Name"),
                )
                continue
            workloads.append(workload)
        self._restarts.retain(str(service.get("ID")) for service in services)
        return workloads

    def deploy(self, spec: WorkloadSpec) -> Workload:
        """Create the connector's service, or update a leftover one of the same name."""
        logger.info(
            "Deploying connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            service=spec.name,
            image=spec.image.reference,
        )
        body = self._service_body(spec)
        existing = self._inspect_or_none(spec.name)
        if existing is not None:
            self._check_owner(existing, spec.connector_id, spec.name)
            logger.warning(
                "Updating a leftover service of the connector",
                orchestrator=self.name,
                connector_id=spec.connector_id,
                service=spec.name,
            )
            self._update(spec.name, spec.connector_id, lambda _: body, spec)
        else:
            self._create(spec, body)
        self._remove_stale_ca_configs(spec)
        return self._deployed_workload(spec)

    def redeploy(self, spec: WorkloadSpec, current: Workload) -> Workload:
        """Update the service to `spec`. A failed image lookup leaves it running."""
        if spec.connector_id != current.connector_id:
            raise OrchestratorError(
                f"cannot redeploy service {current.name} of connector "
                f"{current.connector_id} for connector {spec.connector_id}"
            )
        logger.info(
            "Redeploying connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            service=current.name,
            image=spec.image.reference,
        )
        body = self._service_body(spec)
        if current.name != spec.name:
            # Swarm cannot rename a service. The old one goes first, so that
            # two instances of the connector never run at once.
            self._remove_service(current)
            self._create(spec, body)
        else:
            self._update(spec.name, spec.connector_id, lambda _: body, spec)
        self._remove_stale_ca_configs(spec)
        return self._deployed_workload(spec)

    def start(self, workload: Workload) -> None:
        self._scale(workload, 1)
        logger.info("Started connector", **self._fields(workload))

    def stop(self, workload: Workload) -> None:
        self._scale(workload, 0)
        logger.info("Stopped connector", **self._fields(workload))

    def remove(self, workload: Workload) -> None:
        """Remove the service and the connector's configs, unless already gone."""
        self._remove_service(workload)
        self._remove_ca_configs(workload.connector_id, keep=None)

    def logs(
        self, workload: Workload, max_lines: int, *, timestamps: bool = False
    ) -> list[str]:
        """Return the last `max_lines` lines of every task's stdout and stderr."""
        if max_lines <= 0:
            return []
        service = self._owned_service(workload.name, workload.connector_id)
        with self._engine.errors(f"read the logs of service {workload.name}"):
            chunks = self._engine.api.service_logs(
                service["ID"],
                stdout=True,
                stderr=True,
                tail=max_lines,
                timestamps=True,
                is_tty=False,
            )
            raw = b"".join(chunks)
        return swarm_logs.sorted_log_lines(raw, max_lines, timestamps=timestamps)

    def close(self) -> None:
        self._engine.close()

    def _check_swarm_manager(self, swarm: dict[str, Any]) -> None:
        state = swarm.get("LocalNodeState") or "inactive"
        if state != "active":
            raise OrchestratorError(
                f"the Docker Engine at {self._engine.address} is not in an active "
                f"swarm (state: {state}); run `docker swarm init`, or point "
                "DOCKER_HOST at a manager node of the swarm"
            )
        if not swarm.get("ControlAvailable"):
            raise OrchestratorError(
                f"the Docker Engine at {self._engine.address} is a swarm worker; "
                "services are managed through a manager node: point DOCKER_HOST "
                "at one, or promote this node with `docker node promote`"
            )

    def _check_network(self, network: str) -> None:
        with self._engine.errors(f"inspect network {network}"):
            try:
                self._engine.api.inspect_network(network)
            except docker.errors.NotFound:
                raise OrchestratorError(
                    f"the network {network!r} of {self.settings_path}.network was "
                    "not found; create it (for example `docker network create "
                    f"--driver overlay --attachable {network}`) or use host"
                ) from None

    def _service_body(self, spec: WorkloadSpec) -> dict[str, Any]:
        """Pin the image, create the CA config if needed, and build the spec."""
        with self._engine.errors(f"look up the image {spec.image.reference}"):
            image = swarm_api.pinned_image(self._engine.api, spec.image, self.registry)
        ca_config = self._ensure_ca_config(spec) if spec.ca_bundle else None
        labels = {
            **spec.labels,
            **workload_labels(
                self.manager_id, self.platform, spec.connector_id, spec.contract_hash
            ),
        }
        return swarm_spec.service_spec(self.settings, spec, image, labels, ca_config)

    def _create(self, spec: WorkloadSpec, body: dict[str, Any]) -> None:
        registry_auth = docker_pull.registry_auth_headers(spec.image, self.registry)
        secrets = tuple(spec.environment.values())
        with self._engine.errors(f"create service {spec.name}", secrets):
            try:
                swarm_api.create_service(
                    self._engine.api,
                    body,
                    registry_auth.get(swarm_api.REGISTRY_AUTH_HEADER),
                )
            except docker.errors.APIError as error:
                if error.status_code != requests.codes.conflict:
                    raise
                raise OrchestratorError(
                    f"cannot create service {spec.name}: another service took the "
                    "name meanwhile; a later cycle will retry"
                ) from error

    def _update(
        self,
        name: str,
        connector_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        spec: WorkloadSpec | None = None,
    ) -> None:
        """Apply `change` to the service's current spec and send it with its version.

        `change` returns the new spec, or None when there is nothing to change.
        With `spec`, the update replaces the image, so it carries the registry
        credentials when the image allows, and no stored credentials otherwise.
        """
        registry_auth = None
        secrets: tuple[str, ...] = ()
        if spec is not None:
            headers = docker_pull.registry_auth_headers(spec.image, self.registry)
            registry_auth = headers.get(
                swarm_api.REGISTRY_AUTH_HEADER, swarm_api.EMPTY_REGISTRY_AUTH
            )
            secrets = tuple(spec.environment.values())

        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            service = self._owned_service(name, connector_id)
            body = change(copy.deepcopy(service.get("Spec") or {}))
            if body is None:
                return
            version = int(service["Version"]["Index"])
            with self._engine.errors(f"update service {name}", secrets):
                try:
                    swarm_api.update_service(
                        self._engine.api, service["ID"], version, body, registry_auth
                    )
                    return
                except docker.errors.APIError as error:
                    if attempt == UPDATE_ATTEMPTS or not swarm_api.is_out_of_sequence(
                        error
                    ):
                        raise
            logger.info(
                "Service changed during the update, retrying with its new version",
                orchestrator=self.name,
                connector_id=connector_id,
                service=name,
            )

    def _remove_service(self, workload: Workload) -> None:
        service = self._inspect_or_none(workload.name)
        if service is None:
            logger.info("Connector service already removed", **self._fields(workload))
            return
        self._check_owner(service, workload.connector_id, workload.name)
        action = f"remove service {workload.name}"
        with self._engine.errors(action), suppress(docker.errors.NotFound):
            self._engine.api.remove_service(service["ID"])
        logger.info("Removed connector", **self._fields(workload))

    def _scale(self, workload: Workload, replicas: int) -> None:
        def set_replicas(current: dict[str, Any]) -> dict[str, Any] | None:
            mode = current.get("Mode") or {}
            if "Replicated" not in mode:
                raise OrchestratorError(
                    f"service {workload.name} is not a replicated service"
                )
            if (mode["Replicated"] or {}).get("Replicas") == replicas:
                return None
            current["Mode"] = {"Replicated": {"Replicas": replicas}}
            return current

        self._update(workload.name, workload.connector_id, set_replicas)

    def _deployed_workload(self, spec: WorkloadSpec) -> Workload:
        service = self._owned_service(spec.name, spec.connector_id)
        with self._engine.errors(f"list the tasks of service {spec.name}"):
            tasks = self._engine.api.tasks(filters={"service": [service["ID"]]})
        workload = swarm_state.workload_from_service(
            service, tasks, self._restarts, datetime.now(UTC)
        )
        if workload is None:
            raise OrchestratorError(f"service {spec.name} lost its labels")
        logger.info(
            "Deployed connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            service=spec.name,
            replicas=swarm_state.service_replicas(service),
        )
        return workload

    def _ensure_ca_config(self, spec: WorkloadSpec) -> tuple[str, str]:
        """Create the config of `spec.ca_bundle` if needed; return its id and name."""
        name = ca_config_name(spec.connector_id, spec.ca_bundle)
        labels = {
            **selector_labels(self.manager_id, self.platform),
            CONNECTOR_ID_LABEL: spec.connector_id,
        }
        with self._engine.errors(f"create the CA bundle config {name}"):
            try:
                created = self._engine.api.create_config(
                    name, spec.ca_bundle.encode(), labels=labels
                )
                return str(created["ID"]), name
            except docker.errors.APIError as error:
                if error.status_code != requests.codes.conflict:
                    raise
            # The name contains the content hash, so an existing config of
            # the connector contains this very bundle.
            existing = self._engine.api.inspect_config(name)
        existing_labels = (existing.get("Spec") or {}).get("Labels") or {}
        if not self._owns(existing_labels, spec.connector_id):
            raise OrchestratorError(
                f"the config name {name} is taken by a config that does not belong "
                f"to connector {spec.connector_id}; it was left untouched"
            )
        return str(existing["ID"]), name

    def _remove_stale_ca_configs(self, spec: WorkloadSpec) -> None:
        keep = (
            ca_config_name(spec.connector_id, spec.ca_bundle)
            if spec.ca_bundle
            else None
        )
        self._remove_ca_configs(spec.connector_id, keep)

    def _remove_ca_configs(self, connector_id: str, keep: str | None) -> None:
        """Remove the connector's configs except `keep`; one still in use stays."""
        filters = {"label": [*self._selector(), f"{CONNECTOR_ID_LABEL}={connector_id}"]}
        with self._engine.errors(f"list the configs of connector {connector_id}"):
            configs = self._engine.api.configs(filters=filters)
        for config in configs:
            name = (config.get("Spec") or {}).get("Name")
            if name == keep:
                continue
            try:
                with (
                    self._engine.errors(f"remove config {name}"),
                    suppress(docker.errors.NotFound),
                ):
                    self._engine.api.remove_config(config["ID"])
            except OrchestratorError as error:
                # A task that is still shutting down may hold the old config.
                logger.warning(
                    "Cannot remove an old CA bundle config, will retry later",
                    orchestrator=self.name,
                    connector_id=connector_id,
                    config=name,
                    error=str(error),
                )
                continue
            logger.info(
                "Removed an old CA bundle config",
                orchestrator=self.name,
                connector_id=connector_id,
                config=name,
            )

    def _owned_service(self, name: str, connector_id: str) -> dict[str, Any]:
        service = self._inspect_or_none(name)
        if service is None:
            raise OrchestratorError(
                f"service {name} of connector {connector_id} was not found"
            )
        self._check_owner(service, connector_id, name)
        return service

    def _check_owner(
        self, service: dict[str, Any], connector_id: str, name: str
    ) -> None:
        labels = swarm_state.service_labels(service)
        if not self._owns(labels, connector_id):
            raise OrchestratorError(
                f"the service {name} does not belong to connector {connector_id} "
                f"({describe_owner(labels)}); it was left untouched: rename or "
                "remove that service"
            )

    def _owns(self, labels: dict[str, str], connector_id: str) -> bool:
        return (
            labels.get(MANAGER_LABEL) == self.manager_id
            and labels.get(PLATFORM_LABEL) == self.platform
            and labels.get(CONNECTOR_ID_LABEL) == connector_id
        )

    def _inspect_or_none(self, name: str) -> dict[str, Any] | None:
        """Inspect a service by name, or return None when it does not exist."""
        with self._engine.errors(f"inspect service {name}"):
            try:
                data: dict[str, Any] = self._engine.api.inspect_service(name)
            except docker.errors.NotFound:
                return None
        # The engine also resolves id prefixes: only an exact name counts.
        if (data.get("Spec") or {}).get("Name") != name:
            return None
        return data

    def _selector(self) -> list[str]:
        return [
            f"{key}={value}"
            for key, value in selector_labels(self.manager_id, self.platform).items()
        ]

    def _fields(self, workload: Workload) -> dict[str, str]:
        return {
            "orchestrator": self.name,
            "connector_id": workload.connector_id,
            "service": workload.name,
        }


def ca_config_name(connector_id: str, ca_bundle: str) -> str:
    """Name the config of a connector's CA bundle by the connector and the content.

    Swarm config names have at most 64 characters, so hashes stand for both.
    """
    connector = hashlib.sha256(connector_id.encode()).hexdigest()[:CONFIG_HASH_LENGTH]
    content = hashlib.sha256(ca_bundle.encode()).hexdigest()[:CONFIG_HASH_LENGTH]
    return f"xtm-ca-{connector}-{content}"


def describe_owner(labels: dict[str, str]) -> str:
    """Name the manager, platform and connector a service's labels point to."""
    if CONNECTOR_ID_LABEL not in labels:
        return "it has no connector id label"
    return (
        f"labels: connector id {labels.get(CONNECTOR_ID_LABEL)!r}, "
        f"manager {labels.get(MANAGER_LABEL)!r}, "
        f"platform {labels.get(PLATFORM_LABEL)!r}"
    )
