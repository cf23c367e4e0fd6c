"""Level-triggered reconciliation of connectors with workloads.

Each cycle reads the desired connectors from the platform and this manager's
workloads from the engine, once each, then works on every connector in its own
task. Tasks of different connectors run concurrently, bounded by a semaphore. A
connector whose previous task is still running (a slow pull, say) is skipped
until that task ends, so no two operations ever run on one connector.

Safety rules:
- a failed listing, of connectors or of workloads, ends the cycle: nothing is
  removed on partial knowledge;
- a workload is only ever acted on for the connector its id label names;
- a contract value that cannot be decrypted blocks the deploy or redeploy of
  that connector, and the running workload, if any, is left as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import logs, proxy, registry
from xtm_composer.backoff import Backoff
from xtm_composer.contract import (
    ContractValueError,
    CurrentStatus,
    ManagedConnector,
    build_environment,
)
from xtm_composer.orchestrators import naming
from xtm_composer.orchestrators.base import (
    Orchestrator,
    OrchestratorError,
    Workload,
    WorkloadSpec,
    WorkloadStatus,
)
from xtm_composer.platform.errors import PlatformError
from xtm_composer.proxy import ProxyConfig
from xtm_composer.settings import ManagerSettings, PlatformSettings

log = logs.get_logger(__name__)


class ConnectorApi(Protocol):
    platform: str

    async def list_connectors(self) -> list[ManagedConnector]: ...

    async def update_status(self, connector_id: str, status: CurrentStatus) -> None: ...

    async def update_logs(self, connector_id: str, lines: list[str]) -> None: ...

    async def update_health(
        self,
        connector_id: str,
        restart_count: int,
        started_at: str,
        in_reboot_loop: bool,
    ) -> None: ...


@dataclass
class ConnectorTrack:
    """State the reconciler keeps for one connector between cycles."""

    logs_sent_at: float | None = None
    health_sent_at: float | None = None
    failure_backoff: Backoff = field(
        default_factory=lambda: Backoff(initial_delay=5, max_delay=300)
    )
    retry_after: float = 0.0
    failed_hash: str | None = None
    reported_status: CurrentStatus | None = None


class Reconciler:
    def __init__(
        self,
        api: ConnectorApi,
        orchestrator: Orchestrator,
        manager: ManagerSettings,
        platform_settings: PlatformSettings,
        manager_key: rsa.RSAPrivateKey,
        clock: Callable[[], float] = time.monotonic,
        proxy_config: ProxyConfig | None = None,
    ) -> None:
        self._proxy = proxy_config or ProxyConfig()
        self._proxy_fingerprint = proxy.fingerprint(self._proxy)
        self._api = api
        self._orchestrator = orchestrator
        self._manager = manager
        self._platform_settings = platform_settings
        self._manager_key = manager_key
        self._clock = clock
        self._slots = asyncio.Semaphore(manager.max_concurrent_operations)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tracks: dict[str, ConnectorTrack] = {}
        self._listing_backoff = Backoff(initial_delay=1, max_delay=60)

    @property
    def platform(self) -> str:
        return self._api.platform

    async def run(self, stopping: asyncio.Event) -> None:
        """Run cycles until `stopping` is set, then drain in-flight tasks."""
        from xtm_composer.alive import wait_or_stop

        while not stopping.is_set():
            completed = await self.cycle()
            if completed:
                if self._listing_backoff.attempt:
                    log.info(
                        "Listings work again after failures",
                        failed_cycles=self._listing_backoff.attempt,
                    )
                self._listing_backoff.reset()
                delay = self._manager.execute_schedule
            else:
                delay = max(
                    self._manager.execute_schedule, self._listing_backoff.next_delay()
                )
            await wait_or_stop(stopping, delay)
        await self.drain(self._manager.shutdown_timeout)

    async def cycle(self) -> bool:
        """Run one reconciliation cycle; return False when a listing failed."""
        try:
            connectors = await self._api.list_connectors()
        except PlatformError as error:
            log.warning(
                "Cannot list connectors, nothing changes this cycle",
                platform=self.platform,
                error=str(error),
            )
            return False
        try:
            workloads = await asyncio.to_thread(self._orchestrator.list_workloads)
        except OrchestratorError as error:
            log.warning(
                "Cannot list workloads, nothing changes this cycle",
                orchestrator=self._orchestrator.name,
                error=str(error),
            )
            return False

        by_connector = index_workloads(workloads)
        desired_ids = {connector.id for connector in connectors}
        for connector in connectors:
            self._launch(
                connector.id, self.reconcile(connector, by_connector.get(connector.id))
            )
        for connector_id, workload in by_connector.items():
            if connector_id not in desired_ids:
                self._launch(connector_id, self.remove_orphan(workload))
        self._forget_tracks(desired_ids)
        log.debug(
            "Reconciliation cycle finished",
            connectors=len(connectors),
            workloads=len(workloads),
        )
        return True

    def _launch(self, connector_id: str, operation: Any) -> None:
        """Start `operation` unless the connector already has a task running."""
        running = self._tasks.get(connector_id)
        if running is not None and not running.done():
            operation.close()
            log.debug("Connector busy, skipped this cycle", connector_id=connector_id)
            return
        task = asyncio.create_task(
            self._bounded(operation), name=f"reconcile-{connector_id}"
        )
        self._tasks[connector_id] = task

    async def _bounded(self, operation: Any) -> None:
        async with self._slots:
            try:
                await operation
            except PlatformError as error:
                log.warning("Platform update failed", error=str(error))
            except Exception:
                # A bug in one connector's task must not stop the others.
                log.exception("Unexpected error while reconciling a connector")

    async def wait_idle(self) -> None:
        """Wait until every task launched so far has ended."""
        pending = [task for task in self._tasks.values() if not task.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def drain(self, timeout: float) -> None:
        pending = [task for task in self._tasks.values() if not task.done()]
        if not pending:
            return
        log.info(
            "Waiting for in-flight operations",
            count=len(pending),
            timeout_seconds=timeout,
        )
        _, still_running = await asyncio.wait(pending, timeout=timeout)
        if still_running:
            # Engine calls run in threads and cannot be interrupted halfway: the
            # reporting that follows them is dropped, but an engine call itself
            # (a pull, a create with its labels) completes before the process exits.
            log.warning(
                "In-flight operations outlived the shutdown timeout; their "
                "results will not be reported",
                count=len(still_running),
                connector_ids=sorted(
                    t.get_name().removeprefix("reconcile-") for t in still_running
                ),
            )

    def _forget_tracks(self, desired_ids: set[str]) -> None:
        for connector_id in list(self._tracks):
            if connector_id not in desired_ids and connector_id not in self._tasks:
                del self._tracks[connector_id]

    def track(self, connector_id: str) -> ConnectorTrack:
        return self._tracks.setdefault(connector_id, ConnectorTrack())

    async def reconcile(
        self, connector: ManagedConnector, workload: Workload | None
    ) -> None:
        """Bring one connector's workload in line with what the platform wants."""
        track = self.track(connector.id)
        if track.failed_hash != connector.contract_hash:
            # A new contract deserves an immediate attempt, whatever failed before.
            track.failure_backoff.reset()
            track.retry_after = 0.0
            track.failed_hash = None

        desired_name = naming.workload_name(connector.name, connector.id)
        needs_deploy = workload is None
        needs_redeploy = workload is not None and (
            workload.contract_hash != self.deployment_hash(connector)
            or workload.name != desired_name
        )
        if needs_deploy or needs_redeploy:
            workload = await self._apply_contract(connector, workload, track)
        elif workload is not None:
            await self._align_running_state(connector, workload)

        await self._report(connector, workload, track)

    async def _apply_contract(
        self,
        connector: ManagedConnector,
        workload: Workload | None,
        track: ConnectorTrack,
    ) -> Workload | None:
        """Deploy or redeploy; on failure keep the current workload and report why."""
        if self._clock() < track.retry_after:
            return workload
        try:
            spec = self.build_spec(connector)
            if workload is None:
                # The orchestrators log the operation itself at info level.
                log.debug(
                    "Connector has no workload",
                    connector_id=connector.id,
                    name=spec.name,
                    image=spec.image.reference,
                )
                result = await asyncio.to_thread(self._orchestrator.deploy, spec)
            else:
                log.debug(
                    "Workload differs from the contract",
                    connector_id=connector.id,
                    name=spec.name,
                    image=spec.image.reference,
                    previous_hash=workload.contract_hash,
                    contract_hash=connector.contract_hash,
                )
                result = await asyncio.to_thread(
                    self._orchestrator.redeploy, spec, workload
                )
        except (
            ContractValueError,
            registry.ImageReferenceError,
            OrchestratorError,
        ) as error:
            await self._report_failure(connector, track, error)
            return workload
        track.failure_backoff.reset()
        track.retry_after = 0.0
        track.failed_hash = None
        track.logs_sent_at = None
        return result

    async def _report_failure(
        self, connector: ManagedConnector, track: ConnectorTrack, error: Exception
    ) -> None:
        delay = track.failure_backoff.next_delay()
        track.retry_after = self._clock() + delay
        track.failed_hash = connector.contract_hash
        # Registered secrets are masked here too: engine messages can echo input.
        message = logs.mask_secrets(str(error))
        log.error(
            "Connector deployment failed, will retry",
            connector_id=connector.id,
            error=message,
            attempt=track.failure_backoff.attempt,
            retry_in_seconds=round(delay, 1),
        )
        await self._api.update_logs(
            connector.id,
            [f"[xtm-composer] deployment failed: {message} (retry in {delay:.0f} s)"],
        )
        track.logs_sent_at = self._clock()

    async def _align_running_state(
        self, connector: ManagedConnector, workload: Workload
    ) -> None:
        """Start or stop the workload to match the requested status.

        The status reported to the platform stays the one the engine showed:
        a start request is not a running connector (a pod may be unable to
        pull its image), so the next listing shows whether it worked.
        """
        try:
            if (
                connector.wants_running
                and workload.status is WorkloadStatus.STOPPED
                and not workload.in_reboot_loop
            ):
                log.debug(
                    "Start requested", connector_id=connector.id, name=workload.name
                )
                await asyncio.to_thread(self._orchestrator.start, workload)
                return
            if not connector.wants_running and (
                workload.status is WorkloadStatus.STARTED or workload.in_reboot_loop
            ):
                log.debug(
                    "Stop requested", connector_id=connector.id, name=workload.name
                )
                await asyncio.to_thread(self._orchestrator.stop, workload)
        except OrchestratorError as error:
            log.error(
                "Cannot change the connector's state",
                connector_id=connector.id,
                name=workload.name,
                error=logs.mask_secrets(str(error)),
            )

    def deployment_hash(self, connector: ManagedConnector) -> str:
        """Return the contract hash, extended by the proxy settings when set."""
        if not self._proxy_fingerprint:
            return connector.contract_hash
        return f"{connector.contract_hash}-{self._proxy_fingerprint}"

    def build_spec(self, connector: ManagedConnector) -> WorkloadSpec:
        # The connector's own contract wins over the agent-wide proxy variables.
        environment = proxy.connector_environment(self._proxy)
        # The platform leaves OPENCTI_URL out of contracts: connectors reach the
        # platform at the URL this manager uses, unless the contract sets it.
        environment["OPENCTI_URL"] = self._platform_settings.url
        environment.update(build_environment(connector, self._manager_key))
        encrypted_keys = {
            entry.key for entry in connector.configuration if entry.encrypted
        }
        for key in encrypted_keys:
            logs.register_secret(environment.get(key))
        self._log_environment(connector, environment, encrypted_keys)
        image = registry.resolve_image(
            connector.image, self._platform_settings.daemon.registry
        )
        return WorkloadSpec(
            connector_id=connector.id,
            name=naming.workload_name(connector.name, connector.id),
            image=image,
            environment=environment,
            labels=naming.workload_labels(
                self._manager.id,
                self.platform,
                connector.id,
                self.deployment_hash(connector),
            ),
            contract_hash=self.deployment_hash(connector),
            running=connector.wants_running,
            ca_bundle=self._proxy.ca_bundle,
        )

    def _log_environment(
        self,
        connector: ManagedConnector,
        environment: dict[str, str],
        encrypted_keys: set[str],
    ) -> None:
        debug = self._manager.debug
        if not debug.show_env_vars:
            return
        # Decrypted values stay masked: the log redaction masks them even when
        # show_sensitive_env_vars is set, because the rule is "never log a secret".
        shown = {
            key: ("***" if key in encrypted_keys else value)
            for key, value in environment.items()
        }
        log.info("Connector environment", connector_id=connector.id, environment=shown)

    async def _report(
        self,
        connector: ManagedConnector,
        workload: Workload | None,
        track: ConnectorTrack,
    ) -> None:
        observed = (
            CurrentStatus.STARTED
            if workload is not None and workload.status is WorkloadStatus.STARTED
            else CurrentStatus.STOPPED
        )
        if observed != connector.current_status and observed != track.reported_status:
            await self._api.update_status(connector.id, observed)
            log.info(
                "Connector status reported",
                connector_id=connector.id,
                status=observed.value,
            )
        track.reported_status = (
            observed if observed != connector.current_status else None
        )
        if workload is None:
            return

        now = self._clock()
        if due(track.health_sent_at, self._platform_settings.health_schedule, now):
            await self._api.update_health(
                connector.id,
                workload.restart_count,
                workload.started_at.isoformat() if workload.started_at else "",
                workload.in_reboot_loop,
            )
            track.health_sent_at = now
        if due(track.logs_sent_at, self._platform_settings.logs_schedule, now):
            await self._send_logs(connector, workload)
            track.logs_sent_at = now

    async def _send_logs(self, connector: ManagedConnector, workload: Workload) -> None:
        max_lines = self._platform_settings.logs_max_lines
        try:
            lines = await asyncio.to_thread(
                self._orchestrator.logs, workload, max_lines
            )
        except OrchestratorError as error:
            log.warning(
                "Cannot read connector logs",
                connector_id=connector.id,
                error=str(error),
            )
            return
        if workload.problem:
            lines = [*lines, f"[xtm-composer] {logs.mask_secrets(workload.problem)}"][
                -max_lines:
            ]
        if lines:
            await self._api.update_logs(connector.id, lines)

    async def remove_orphan(self, workload: Workload) -> None:
        """Remove a workload of this manager whose connector the platform deleted."""
        log.info(
            "Removing workload of a deleted connector",
            connector_id=workload.connector_id,
            name=workload.name,
        )
        try:
            await asyncio.to_thread(self._orchestrator.remove, workload)
        except OrchestratorError as error:
            log.error(
                "Cannot remove workload, will retry next cycle",
                connector_id=workload.connector_id,
                name=workload.name,
                error=str(error),
            )


def index_workloads(workloads: list[Workload]) -> dict[str, Workload]:
    """Map connector ids to workloads; duplicates are logged and the first kept."""
    by_connector: dict[str, Workload] = {}
    for workload in workloads:
        kept = by_connector.setdefault(workload.connector_id, workload)
        if kept is not workload:
            log.warning(
                "Several workloads carry the same connector id; using one",
                connector_id=workload.connector_id,
                used=kept.name,
                ignored=workload.name,
            )
    return by_connector


def due(last: float | None, interval: float, now: float) -> bool:
    return last is None or now - last >= interval
