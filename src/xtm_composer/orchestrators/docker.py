"""Connector workloads as containers of one Docker Engine.

Each connector runs in one container named by `naming.workload_name` and carrying
the labels of `naming.workload_labels`. The labels are given at creation, in the
same API call, so an interrupted deploy can leave a stopped container behind but
never an unlabelled one. A container is touched only after its inspect data
shows this manager, this platform and the expected connector id.

Restart policy: `DockerSettings.restart_policy`, `unless-stopped` by default. The
engine then restarts a crashed connector by itself and counts the restarts,
which the health report needs, while a stopped container stays stopped when the
engine restarts (`always` would start it again). With `no` the restart count
stays 0 and crash loops are not detected. `docker_state` describes how a reboot
loop and a restarting container are reported.

Images are pulled at every deploy and redeploy, also when the engine already
has them: a cached image must not let a deploy bypass the registry's access
control, and a moved tag is followed.

Logs are read with `docker_logs`, which takes the 8-byte frame headers out of
Docker's multiplexed stdout and stderr stream and keeps a long line whole even
when a line of the other stream comes in the middle of it.

`DockerApiOrchestrator` does the container work through any Engine API
connection. Its subclass `DockerOrchestrator` connects to the engine directly,
and the Portainer adapter's subclass connects through Portainer.
"""

from __future__ import annotations

import io
import tarfile
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from xtm_composer.logs import get_logger
from xtm_composer.orchestrators import (
    docker_engine,
    docker_logs,
    docker_options,
    docker_pull,
    docker_state,
)
from xtm_composer.orchestrators.base import (
    CA_BUNDLE_PATH,
    CONNECTOR_ID_LABEL,
    MANAGER_LABEL,
    PLATFORM_LABEL,
    OrchestratorError,
    RegistryAuthError,
    Workload,
    WorkloadSpec,
)
from xtm_composer.orchestrators.naming import selector_labels, workload_labels
from xtm_composer.settings import DockerSettings, RegistrySettings

logger = get_logger(__name__)

STOP_TIMEOUT = 10
"""Seconds a connector gets to exit after SIGTERM before the engine kills it."""
CA_BUNDLE_MODE = 0o444


class DockerApiOrchestrator:
    """Runs connector containers through one Docker Engine API connection.

    A subclass calls this constructor first, then sets `host_options` and
    `_engine`, and implements `prepare` to check the connection.
    """

    name: str
    host_options: dict[str, Any]
    """Keyword arguments of `create_host_config` for every connector container."""
    _engine: docker_engine.EngineConnection

    def __init__(
        self, registry: RegistrySettings | None, manager_id: str, platform: str
    ) -> None:
        if not manager_id or not platform:
            raise ValueError("manager_id and platform must not be empty")
        self.registry = registry
        self.manager_id = manager_id
        self.platform = platform

    def list_workloads(self) -> list[Workload]:
        """List this manager's containers on this platform, stopped ones included."""
        label_filters = [
            f"{key}={value}"
            for key, value in selector_labels(self.manager_id, self.platform).items()
        ]
        with self._engine.errors("list containers"):
            summaries = self._engine.api.containers(
                all=True, filters={"label": label_filters}
            )
            # The list call has neither restart counts nor start times.
            details = [self._inspect_or_none(summary["Id"]) for summary in summaries]

        now = datetime.now(UTC)
        workloads = []
        for data in details:
            if data is None:
                continue
            workload = docker_state.workload_from_inspect(data, now)
            if workload is None:
                # The orchestrator sets all labels at once, so someone else
                # labelled this container. It is logged at debug level because
                # it would otherwise be logged at every cycle.
                logger.debug(
                    "Skipping a labelled container without a connector id",
                    orchestrator=self.name,
                    container=data.get("Name", "").lstrip("/"),
                )
                continue
            workloads.append(workload)
        return workloads

    def deploy(self, spec: WorkloadSpec) -> Workload:
        """Pull the image, then create the container and start it if requested."""
        logger.info(
            "Deploying connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            container=spec.name,
            image=spec.image.reference,
        )
        self._pull(spec)
        return self._create_and_start(spec)

    def redeploy(self, spec: WorkloadSpec, current: Workload) -> Workload:
        """Replace `current`. A failed pull leaves it running."""
        if spec.connector_id != current.connector_id:
            raise OrchestratorError(
                f"cannot redeploy container {current.name} of connector "
                f"{current.connector_id} for connector {spec.connector_id}"
            )
        logger.info(
            "Redeploying connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            container=current.name,
            image=spec.image.reference,
        )
        self._pull(spec)
        self.remove(current)
        return self._create_and_start(spec)

    def start(self, workload: Workload) -> None:
        data = self._owned_container(workload)
        with self._engine.errors(f"start container {workload.name}"):
            self._engine.api.start(data["Id"])
        logger.info("Started connector", **self._fields(workload))

    def stop(self, workload: Workload) -> None:
        data = self._owned_container(workload)
        with self._engine.errors(f"stop container {workload.name}"):
            self._engine.api.stop(data["Id"], timeout=STOP_TIMEOUT)
        logger.info("Stopped connector", **self._fields(workload))

    def remove(self, workload: Workload) -> None:
        """Remove the container and its anonymous volumes, unless it is already gone."""
        data = self._find_owned(workload)
        if data is None:
            logger.info("Connector container already removed", **self._fields(workload))
            return
        self._remove_container(data["Id"], workload.name)
        logger.info("Removed connector", **self._fields(workload))

    def logs(
        self, workload: Workload, max_lines: int, *, timestamps: bool = False
    ) -> list[str]:
        """Return the last `max_lines` lines of stdout and stderr, oldest first."""
        if max_lines <= 0:
            return []
        data = self._owned_container(workload)
        with self._engine.errors(f"read the logs of container {workload.name}"):
            return docker_logs.fetch_logs(
                self._engine.api,
                data["Id"],
                max_lines,
                timestamps=timestamps,
                tty=bool((data.get("Config") or {}).get("Tty")),
            )

    def close(self) -> None:
        self._engine.close()

    def _pull(self, spec: WorkloadSpec) -> None:
        try:
            with self._engine.errors(f"pull the image {spec.image.reference}"):
                docker_pull.pull_image(self._engine.api, spec.image, self.registry)
        except RegistryAuthError:
            self._check_denied_pull()
            raise
        logger.info(
            "Pulled image",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            image=spec.image.reference,
            with_credentials=spec.image.send_credentials,
        )

    def _create_and_start(self, spec: WorkloadSpec) -> Workload:
        self._release_name(spec)
        container_id = self._create(spec)
        if spec.ca_bundle:
            self._copy_ca_bundle(container_id, spec)
        if spec.running:
            # A start failure leaves the labelled container for a later cycle.
            with self._engine.errors(f"start the new container {spec.name}"):
                self._engine.api.start(container_id)

        with self._engine.errors(f"inspect the new container {spec.name}"):
            data = self._engine.api.inspect_container(container_id)
        workload = docker_state.workload_from_inspect(data, datetime.now(UTC))
        if workload is None:
            raise OrchestratorError(f"container {spec.name} lost its labels")
        logger.info(
            "Deployed connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            container=spec.name,
            status=workload.status.value,
        )
        return workload

    def _check_denied_pull(self) -> None:
        """Raise a more specific error when a denied pull has another cause.

        Returning lets the registry's denial through. A direct connection to
        the engine has no credentials of its own that could cause the denial,
        so nothing is checked here.
        """

    def _extra_labels(self) -> dict[str, str]:
        """Return the labels every container gets besides the connector's own."""
        return {}

    def _create(self, spec: WorkloadSpec) -> str:
        labels = {
            **spec.labels,
            **workload_labels(
                self.manager_id, self.platform, spec.connector_id, spec.contract_hash
            ),
            **self._extra_labels(),
        }
        secrets = tuple(spec.environment.values())
        with self._engine.errors(f"create container {spec.name}", secrets):
            host_config = self._engine.api.create_host_config(**self.host_options)
            try:
                created = self._engine.api.create_container(
                    image=spec.image.reference,
                    name=spec.name,
                    environment=spec.environment,
                    labels=labels,
                    host_config=host_config,
                    detach=True,
                    # Proxies of the agent's ~/.docker/config.json must not leak
                    # into connectors: proxy variables come from the settings.
                    use_config_proxy=False,
                )
            except docker.errors.APIError as error:
                if error.status_code != requests.codes.conflict:
                    raise
                raise OrchestratorError(
                    f"cannot create container {spec.name}: another container took "
                    "the name meanwhile; a later cycle will retry"
                ) from error
        return str(created["Id"])

    def _copy_ca_bundle(self, container_id: str, spec: WorkloadSpec) -> None:
        """Write the proxy CA bundle into the created container, before it starts.

        Copying through the Engine API needs no path shared with the engine's
        host, so it works as well when the agent runs in a container or the
        engine on another host. The file is root-owned and read-only (mode
        0444), and the engine creates a missing parent folder.
        """
        archive = single_file_tar(CA_BUNDLE_PATH.lstrip("/"), spec.ca_bundle.encode())
        with self._engine.errors(f"copy the proxy CA bundle into {spec.name}"):
            self._engine.api.put_archive(container_id, "/", archive)

    def _release_name(self, spec: WorkloadSpec) -> None:
        """Remove a leftover container of the same connector named `spec.name`."""
        with self._engine.errors(f"inspect container {spec.name}"):
            data = self._inspect_or_none(spec.name)
        if data is None:
            return
        labels = data.get("Config", {}).get("Labels") or {}
        if not self._owns(labels, spec.connector_id):
            raise OrchestratorError(
                f"the container name {spec.name} is taken by a container that "
                f"does not belong to connector {spec.connector_id} "
                f"({describe_owner(labels)}); it was left untouched: rename or "
                "remove that container"
            )
        logger.warning(
            "Replacing a leftover container of the connector",
            orchestrator=self.name,
            connector_id=spec.connector_id,
            container=spec.name,
        )
        self._remove_container(data["Id"], spec.name)

    def _owned_container(self, workload: Workload) -> dict[str, Any]:
        data = self._find_owned(workload)
        if data is None:
            raise OrchestratorError(
                f"container {workload.name} of connector {workload.connector_id} "
                "was not found"
            )
        return data

    def _find_owned(self, workload: Workload) -> dict[str, Any] | None:
        """Inspect the workload's container and check that it is the connector's."""
        with self._engine.errors(f"inspect container {workload.name}"):
            data = self._inspect_or_none(workload.name)
        if data is None:
            return None
        labels = data.get("Config", {}).get("Labels") or {}
        if not self._owns(labels, workload.connector_id):
            raise OrchestratorError(
                f"container {workload.name} does not belong to connector "
                f"{workload.connector_id} ({describe_owner(labels)}); "
                "it was left untouched"
            )
        return data

    def _owns(self, labels: dict[str, str], connector_id: str) -> bool:
        return (
            labels.get(MANAGER_LABEL) == self.manager_id
            and labels.get(PLATFORM_LABEL) == self.platform
            and labels.get(CONNECTOR_ID_LABEL) == connector_id
        )

    def _inspect_or_none(self, name_or_id: str) -> dict[str, Any] | None:
        """Inspect a container, or return None when it does not exist."""
        try:
            data: dict[str, Any] = self._engine.api.inspect_container(name_or_id)
        except docker.errors.NotFound:
            return None
        return data

    def _remove_container(self, container_id: str, name: str) -> None:
        action = f"remove container {name}"
        with self._engine.errors(action), suppress(docker.errors.NotFound):
            self._engine.api.remove_container(container_id, v=True, force=True)

    def _fields(self, workload: Workload) -> dict[str, str]:
        return {
            "orchestrator": self.name,
            "connector_id": workload.connector_id,
            "container": workload.name,
        }


class DockerOrchestrator(DockerApiOrchestrator):
    """Runs connector containers on the Docker Engine at `docker_host`.

    Without `docker_host` the engine is found as `docker.from_env()` finds it.
    """

    name = "docker"

    def __init__(
        self,
        settings: DockerSettings,
        registry: RegistrySettings | None,
        manager_id: str,
        platform: str,
        docker_host: str | None = None,
    ) -> None:
        super().__init__(registry, manager_id, platform)
        self.settings = settings
        self.docker_host = docker_host
        # Raises HostOptionError now rather than at the first deploy.
        self.host_options = docker_options.host_config_options(settings)
        self._engine = docker_engine.EngineConnection(docker_host)

    def prepare(self) -> None:
        """Connect to the engine and check that it responds and accepts the options."""
        with self._engine.errors("ping the engine"):
            self._engine.api.ping()
        try:
            docker.types.HostConfig(self._engine.api.api_version, **self.host_options)
        except (docker.errors.DockerException, ValueError) as error:
            raise OrchestratorError(f"invalid Docker host option: {error}") from error

        ignored = sorted(self.settings.model_extra or {})
        if ignored:
            logger.warning(
                "Ignoring unknown Docker settings", orchestrator=self.name, keys=ignored
            )
        logger.info(
            "Connected to the Docker Engine",
            orchestrator=self.name,
            docker_host=self._engine.address,
            api_version=self._engine.api.api_version,
        )


def describe_owner(labels: dict[str, str]) -> str:
    """Name the manager, platform and connector a container's labels point to."""
    if CONNECTOR_ID_LABEL not in labels:
        return "it has no connector id label"
    return (
        f"labels: connector id {labels.get(CONNECTOR_ID_LABEL)!r}, "
        f"manager {labels.get(MANAGER_LABEL)!r}, "
        f"platform {labels.get(PLATFORM_LABEL)!r}"
    )


def single_file_tar(path: str, content: bytes) -> bytes:
    """Return a tar archive holding one root-owned, read-only file at `path`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(path)
        info.size = len(content)
        info.mode = CA_BUNDLE_MODE
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
