"""Measure reconciliation on the real testbed dockerd with many connectors.

For each concurrency bound given, the script creates N started connectors in an
in-process platform stand-in, served over HTTP on loopback. It runs the real
reconciler with the Docker orchestrator until every connector is reported
started. Then it times steady-state cycles, which have nothing to change: one
connector listing, one workload listing and the per-connector reports. It
prints a Markdown table row per run and removes its containers.

    python benchmarks/reconcile_docker.py --connectors 40 --concurrency 1 4

It needs the testbed (`scripts/testbed/up.sh`) and reads its env file.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import secrets
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
from cryptography.hazmat.primitives.asymmetric import rsa

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import TESTBED_DIR, read_env_file  # noqa: E402

from xtm_composer import crypto, logs  # noqa: E402
from xtm_composer.orchestrators.docker import DockerOrchestrator  # noqa: E402
from xtm_composer.platform.opencti import OpenCTIClient  # noqa: E402
from xtm_composer.reconciler import Reconciler  # noqa: E402
from xtm_composer.sandbox.admin import SandboxAdmin  # noqa: E402
from xtm_composer.sandbox.server import SandboxServer  # noqa: E402
from xtm_composer.settings import (  # noqa: E402
    DockerSettings,
    ManagerSettings,
    PlatformSettings,
    RegistrySettings,
)


@dataclass
class RunResult:
    connectors: int
    concurrency: int
    converge_seconds: float
    cycle_seconds_median: float
    cycle_seconds_max: float
    max_rss_mib: float


async def converge(
    reconciler: Reconciler, admin: SandboxAdmin, ids: list[str]
) -> float:
    """Run cycles until the platform shows every connector started."""
    started = time.perf_counter()
    while True:
        await reconciler.cycle()
        await reconciler.wait_idle()
        statuses = {c["id"]: c["current_status"] for c in admin.connectors()}
        if all(statuses.get(connector_id) == "started" for connector_id in ids):
            return time.perf_counter() - started


async def time_cycles(reconciler: Reconciler, count: int) -> list[float]:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        await reconciler.cycle()
        await reconciler.wait_idle()
        durations.append(time.perf_counter() - started)
    return durations


def run_once(env: dict[str, str], connectors: int, concurrency: int) -> RunResult:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    token = secrets.token_urlsafe(24)
    manager_id = f"bench-{uuid.uuid4().hex[:8]}"
    server = SandboxServer(token=token)
    server.start()
    admin = SandboxAdmin(server.url, token)
    manager = ManagerSettings(id=manager_id, max_concurrent_operations=concurrency)
    platform = PlatformSettings.model_validate(
        {
            "enable": True,
            "url": server.url,
            "token": token,
            "logs_schedule": 3600,
            "health_schedule": 3600,
        }
    )
    registry = RegistrySettings(
        server=env["XTM_TEST_REGISTRY"],
        username=env["XTM_TEST_REGISTRY_USERNAME"],
        password=env["XTM_TEST_REGISTRY_PASSWORD"],
    )
    platform.daemon.registry = registry
    orchestrator = DockerOrchestrator(
        DockerSettings(network_mode="host"),
        registry,
        manager_id,
        "opencti",
        docker_host=env["XTM_TEST_DOCKER_HOST"],
    )
    try:
        server.state.register_manager(manager_id, "bench", crypto.public_key_pem(key))
        ids = []
        for index in range(connectors):
            created = admin.add_connector(
                "connector-test", f"bench {index}", {"TEST_API_KEY": f"key-{index}"}
            )
            admin.request_status(created["id"], "starting")
            ids.append(created["id"])
        orchestrator.prepare()

        async def scenario() -> tuple[float, list[float]]:
            client = OpenCTIClient(platform, manager)
            reconciler = Reconciler(client, orchestrator, manager, platform, key)
            try:
                converge_seconds = await converge(reconciler, admin, ids)
                cycles = await time_cycles(reconciler, 5)
            finally:
                await client.aclose()
            return converge_seconds, cycles

        converge_seconds, cycles = asyncio.run(scenario())
    finally:
        remove_containers(env["XTM_TEST_DOCKER_HOST"], manager_id)
        orchestrator.close()
        admin.close()
        server.stop()
    return RunResult(
        connectors=connectors,
        concurrency=concurrency,
        converge_seconds=converge_seconds,
        cycle_seconds_median=statistics.median(cycles),
        cycle_seconds_max=max(cycles),
        max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def remove_containers(docker_host: str, manager_id: str) -> None:
    client = docker.DockerClient(base_url=docker_host, version="auto")
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"opencti-manager={manager_id}"}
        ):
            container.remove(force=True)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=40)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    logs.configure_logging("warning", "pretty")
    env = read_env_file(TESTBED_DIR / "testbed.env")
    if "XTM_TEST_DOCKER_HOST" not in env:
        print("the testbed is not up: run scripts/testbed/up.sh", file=sys.stderr)
        return 2

    print(
        "| connectors | concurrency | converge (s) | idle cycle median (s) "
        "| idle cycle max (s) | max RSS (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for concurrency in args.concurrency:
        result = run_once(env, args.connectors, concurrency)
        print(
            f"| {result.connectors} | {result.concurrency} "
            f"| {result.converge_seconds:.1f} | {result.cycle_seconds_median:.3f} "
            f"| {result.cycle_seconds_max:.3f} | {result.max_rss_mib:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
