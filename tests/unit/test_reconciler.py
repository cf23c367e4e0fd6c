"""Reconciliation decisions, with an in-memory orchestrator and platform.

These tests cover the decision logic only. What the engines really do is
tested against the real engines under tests/engines and tests/e2e.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer.contract import (
    ContractEntry,
    CurrentStatus,
    ManagedConnector,
    RequestedStatus,
)
from xtm_composer.orchestrators import naming
from xtm_composer.orchestrators.base import (
    EngineUnavailableError,
    ImagePullError,
    Workload,
    WorkloadSpec,
    WorkloadStatus,
)
from xtm_composer.platform.errors import PlatformUnavailableError
from xtm_composer.reconciler import Reconciler
from xtm_composer.settings import ManagerSettings, PlatformSettings


class MemoryOrchestrator:
    """Keeps workloads in a dict and records every call."""

    name = "memory"

    def __init__(self) -> None:
        self.workloads: dict[str, Workload] = {}
        self.specs: dict[str, WorkloadSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_listing = False
        self.fail_deploy: Exception | None = None
        self.hold_deploy: dict[str, threading.Event] = {}
        self.log_lines: list[str] = ["line 1", "line 2"]
        self.start_has_no_effect = False

    def prepare(self) -> None:
        pass

    def list_workloads(self) -> list[Workload]:
        if self.fail_listing:
            raise EngineUnavailableError("engine down")
        return list(self.workloads.values())

    def deploy(self, spec: WorkloadSpec) -> Workload:
        self.calls.append(("deploy", spec.connector_id))
        gate = self.hold_deploy.get(spec.connector_id)
        if gate is not None:
            gate.wait(timeout=10)
        if self.fail_deploy is not None:
            raise self.fail_deploy
        workload = Workload(
            connector_id=spec.connector_id,
            name=spec.name,
            status=WorkloadStatus.STARTED if spec.running else WorkloadStatus.STOPPED,
            contract_hash=spec.contract_hash,
            labels=spec.labels,
        )
        self.workloads[spec.connector_id] = workload
        self.specs[spec.connector_id] = spec
        return workload

    def redeploy(self, spec: WorkloadSpec, current: Workload) -> Workload:
        self.calls.append(("redeploy", spec.connector_id))
        self.workloads.pop(current.connector_id, None)
        return self.deploy(spec)

    def start(self, workload: Workload) -> None:
        self.calls.append(("start", workload.connector_id))
        if self.start_has_no_effect:
            return
        self.workloads[workload.connector_id] = replace(
            workload, status=WorkloadStatus.STARTED
        )

    def stop(self, workload: Workload) -> None:
        self.calls.append(("stop", workload.connector_id))
        self.workloads[workload.connector_id] = replace(
            workload, status=WorkloadStatus.STOPPED
        )

    def remove(self, workload: Workload) -> None:
        self.calls.append(("remove", workload.connector_id))
        self.workloads.pop(workload.connector_id, None)

    def logs(self, workload: Workload, max_lines: int) -> list[str]:
        return self.log_lines[-max_lines:]

    def close(self) -> None:
        pass


class MemoryPlatform:
    platform = "opencti"

    def __init__(self, connectors: list[ManagedConnector]) -> None:
        self.connectors = connectors
        self.fail_listing = False
        self.statuses: list[tuple[str, CurrentStatus]] = []
        self.logs: dict[str, list[list[str]]] = {}
        self.health: dict[str, list[tuple[int, str, bool]]] = {}

    async def list_connectors(self) -> list[ManagedConnector]:
        if self.fail_listing:
            raise PlatformUnavailableError("platform down")
        return list(self.connectors)

    async def update_status(self, connector_id: str, status: CurrentStatus) -> None:
        self.statuses.append((connector_id, status))
        self.connectors = [
            replace(c, current_status=status) if c.id == connector_id else c
            for c in self.connectors
        ]

    async def update_logs(self, connector_id: str, lines: list[str]) -> None:
        self.logs.setdefault(connector_id, []).append(lines)

    async def update_health(
        self,
        connector_id: str,
        restart_count: int,
        started_at: str,
        in_reboot_loop: bool,
    ) -> None:
        self.health.setdefault(connector_id, []).append(
            (restart_count, started_at, in_reboot_loop)
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def connector(
    connector_id: str = "c1",
    requested: RequestedStatus = RequestedStatus.STARTING,
    contract_hash: str = "h1",
    configuration: tuple[ContractEntry, ...] = (
        ContractEntry("CONNECTOR_NAME", "One"),
    ),
) -> ManagedConnector:
    return ManagedConnector(
        id=connector_id,
        name=f"Connector {connector_id}",
        image="opencti/connector-test:1.0.0",
        contract_hash=contract_hash,
        requested_status=requested,
        configuration=configuration,
    )


def make_reconciler(
    platform: MemoryPlatform,
    orchestrator: MemoryOrchestrator,
    key: rsa.RSAPrivateKey,
    clock: Clock | None = None,
) -> Reconciler:
    manager = ManagerSettings(id="manager-1", max_concurrent_operations=2)
    settings = PlatformSettings.model_validate(
        {"enable": True, "daemon": {"registry": {"server": "registry.example.com"}}}
    )
    return Reconciler(platform, orchestrator, manager, settings, key, clock or Clock())


async def run_cycle(reconciler: Reconciler) -> bool:
    completed = await reconciler.cycle()
    await reconciler.wait_idle()
    return completed


def test_missing_workload_deployed(manager_key: rsa.RSAPrivateKey) -> None:
    """A connector without workload is deployed with its env, labels and prefix."""
    platform = MemoryPlatform([connector()])
    orchestrator = MemoryOrchestrator()

    asyncio.run(run_cycle(make_reconciler(platform, orchestrator, manager_key)))

    spec = orchestrator.specs["c1"]
    assert {
        "CONNECTOR_NAME": "One",
        "OPENCTI_URL": "http://localhost:4000",
    } == spec.environment
    assert "registry.example.com/opencti/connector-test:1.0.0" == spec.image.reference
    assert "manager-1" == spec.labels["opencti-manager"]
    assert "c1" == spec.labels["opencti-connector-id"]
    assert "opencti" == spec.labels["opencti-platform"]
    assert spec.running is True
    assert [("c1", CurrentStatus.STARTED)] == platform.statuses


def test_hash_change_redeploys(manager_key: rsa.RSAPrivateKey) -> None:
    """A new contract hash replaces the workload."""
    platform = MemoryPlatform([connector()])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    platform.connectors = [connector(contract_hash="h2")]
    asyncio.run(run_cycle(reconciler))

    assert ("redeploy", "c1") in orchestrator.calls
    assert "h2" == orchestrator.workloads["c1"].contract_hash


def test_rename_redeploys(manager_key: rsa.RSAPrivateKey) -> None:
    """A renamed connector gets a workload with the new name."""
    platform = MemoryPlatform([connector()])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    platform.connectors = [replace(connector(), name="Renamed")]
    asyncio.run(run_cycle(reconciler))

    assert naming.workload_name("Renamed", "c1") == orchestrator.workloads["c1"].name


def test_stop_and_start_follow_request(manager_key: rsa.RSAPrivateKey) -> None:
    """Stopping and starting follow the request; the next listing reports them."""
    platform = MemoryPlatform([connector()])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    platform.connectors = [
        replace(platform.connectors[0], requested_status=RequestedStatus.STOPPING)
    ]
    asyncio.run(run_cycle(reconciler))
    platform.connectors = [
        replace(platform.connectors[0], requested_status=RequestedStatus.STARTING)
    ]
    asyncio.run(run_cycle(reconciler))
    asyncio.run(run_cycle(reconciler))

    assert [("stop", "c1"), ("start", "c1")] == orchestrator.calls[1:]
    assert [CurrentStatus.STARTED, CurrentStatus.STOPPED, CurrentStatus.STARTED] == [
        status for _, status in platform.statuses
    ]


def test_start_without_effect_not_reported_started(
    manager_key: rsa.RSAPrivateKey,
) -> None:
    """A start request the engine cannot fulfil leaves the connector stopped."""
    platform = MemoryPlatform([connector(requested=RequestedStatus.STOPPING)])
    orchestrator = MemoryOrchestrator()
    orchestrator.start_has_no_effect = True
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    platform.connectors = [
        replace(platform.connectors[0], requested_status=RequestedStatus.STARTING)
    ]
    for _ in range(3):
        asyncio.run(run_cycle(reconciler))

    assert 3 == orchestrator.calls.count(("start", "c1"))
    assert [("c1", CurrentStatus.STOPPED)] == platform.statuses


def test_deleted_connector_removed(manager_key: rsa.RSAPrivateKey) -> None:
    """A workload whose connector is gone is removed."""
    platform = MemoryPlatform([connector("c1"), connector("c2")])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    platform.connectors = [connector("c1")]
    asyncio.run(run_cycle(reconciler))

    assert ("remove", "c2") in orchestrator.calls
    assert {"c1"} == set(orchestrator.workloads)


def test_failed_workload_listing_removes_nothing(
    manager_key: rsa.RSAPrivateKey,
) -> None:
    """When the engine cannot list, no workload is removed or deployed."""
    platform = MemoryPlatform([connector("c1")])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))
    calls_before = list(orchestrator.calls)

    platform.connectors = []
    orchestrator.fail_listing = True
    completed = asyncio.run(run_cycle(reconciler))

    assert completed is False
    assert calls_before == orchestrator.calls
    assert {"c1"} == set(orchestrator.workloads)


def test_failed_connector_listing_removes_nothing(
    manager_key: rsa.RSAPrivateKey,
) -> None:
    """When the platform cannot list connectors, workloads stay."""
    platform = MemoryPlatform([connector("c1")])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    platform.fail_listing = True
    completed = asyncio.run(run_cycle(reconciler))

    assert completed is False
    assert {"c1"} == set(orchestrator.workloads)


def test_undecryptable_value_blocks_deploy(manager_key: rsa.RSAPrivateKey) -> None:
    """A value that cannot be decrypted blocks the deploy and is reported by key."""
    bad = (ContractEntry("API_KEY", "QUFBQUFBQUFBQUFB", encrypted=True),)
    platform = MemoryPlatform([connector(configuration=bad)])
    orchestrator = MemoryOrchestrator()

    asyncio.run(run_cycle(make_reconciler(platform, orchestrator, manager_key)))

    assert [] == orchestrator.calls
    pushed = " ".join(platform.logs["c1"][0])
    assert "API_KEY" in pushed
    assert "QUFBQUFBQUFBQUFB" not in pushed


def test_undecryptable_value_keeps_running_workload(
    manager_key: rsa.RSAPrivateKey,
) -> None:
    """An edit with a broken value does not redeploy: the old workload keeps running."""
    platform = MemoryPlatform([connector()])
    orchestrator = MemoryOrchestrator()
    reconciler = make_reconciler(platform, orchestrator, manager_key)
    asyncio.run(run_cycle(reconciler))

    bad = (ContractEntry("API_KEY", "QUFBQUFBQUFBQUFB", encrypted=True),)
    platform.connectors = [connector(contract_hash="h2", configuration=bad)]
    asyncio.run(run_cycle(reconciler))

    assert [("deploy", "c1")] == orchestrator.calls
    assert "h1" == orchestrator.workloads["c1"].contract_hash


def test_deploy_failure_reported_and_retried_with_backoff(
    manager_key: rsa.RSAPrivateKey,
) -> None:
    """A failed pull is pushed as logs, then retried only after the backoff delay."""
    platform = MemoryPlatform([connector()])
    orchestrator = MemoryOrchestrator()
    orchestrator.fail_deploy = ImagePullError("image not found")
    clock = Clock()
    reconciler = make_reconciler(platform, orchestrator, manager_key, clock)

    asyncio.run(run_cycle(reconciler))
    asyncio.run(run_cycle(reconciler))
    attempts_before_delay = orchestrator.calls.count(("deploy", "c1"))
    clock.now += 600
    orchestrator.fail_deploy = None
    asyncio.run(run_cycle(reconciler))

    assert 1 == attempts_before_delay
    assert 2 == orchestrator.calls.count(("deploy", "c1"))
    assert "image not found" in platform.logs["c1"][0][0]
    assert ("c1", CurrentStatus.STOPPED) in platform.statuses
    assert ("c1", CurrentStatus.STARTED) == platform.statuses[-1]


def test_slow_deploy_does_not_block_others(manager_key: rsa.RSAPrivateKey) -> None:
    """While one connector's deploy hangs, others deploy and it is not started twice."""
    platform = MemoryPlatform([connector("slow"), connector("fast")])
    orchestrator = MemoryOrchestrator()
    gate = threading.Event()
    orchestrator.hold_deploy["slow"] = gate
    reconciler = make_reconciler(platform, orchestrator, manager_key)

    async def scenario() -> None:
        await reconciler.cycle()
        for _ in range(100):
            if "fast" in orchestrator.workloads:
                break
            await asyncio.sleep(0.02)
        await reconciler.cycle()
        gate.set()
        await reconciler.wait_idle()

    asyncio.run(scenario())

    assert "fast" in orchestrator.workloads
    assert 1 == orchestrator.calls.count(("deploy", "slow"))


def test_every_running_connector_reports(manager_key: rsa.RSAPrivateKey) -> None:
    """Logs and health are sent for each running connector, on their schedule."""
    platform = MemoryPlatform([connector("c1"), connector("c2")])
    orchestrator = MemoryOrchestrator()
    clock = Clock()
    reconciler = make_reconciler(platform, orchestrator, manager_key, clock)

    asyncio.run(run_cycle(reconciler))
    asyncio.run(run_cycle(reconciler))
    clock.now += 31
    asyncio.run(run_cycle(reconciler))

    assert {"c1", "c2"} == set(platform.logs)
    assert 2 == len(platform.logs["c1"])
    assert 2 == len(platform.health["c2"])
