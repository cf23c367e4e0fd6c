"""Swarm services and tasks mapped to workloads: status, restarts, reboot loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    WorkloadStatus,
)
from xtm_composer.orchestrators.swarm_state import (
    RestartCounter,
    workload_from_service,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CONNECTOR_ID = "c0ffee00-0000-4000-8000-000000000001"


def service(replicas: int = 1, contract_hash: str = "h1") -> dict[str, Any]:
    return {
        "ID": "service-1",
        "Spec": {
            "Name": "connector-abc",
            "Labels": {
                CONNECTOR_ID_LABEL: CONNECTOR_ID,
                CONTRACT_HASH_KEY: contract_hash,
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
        },
    }


def task(
    task_id: str,
    state: str,
    desired: str,
    *,
    at: datetime = NOW,
    error: str | None = None,
    contract_hash: str = "h1",
) -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Timestamp": at.isoformat()}
    if error:
        status["Err"] = error
    return {
        "ID": task_id,
        "ServiceID": "service-1",
        "DesiredState": desired,
        "CreatedAt": at.isoformat(),
        "Status": status,
        "Spec": {"ContainerSpec": {"Labels": {CONTRACT_HASH_KEY: contract_hash}}},
    }


def crashed(
    task_id: str, seconds_ago: int, contract_hash: str = "h1"
) -> dict[str, Any]:
    return task(
        task_id,
        "failed",
        "shutdown",
        at=NOW - timedelta(seconds=seconds_ago),
        error="task: non-zero exit (1)",
        contract_hash=contract_hash,
    )


def test_running_task_is_started() -> None:
    """A running task makes the service started, with its start time."""
    started = NOW - timedelta(minutes=10)
    workload = workload_from_service(
        service(), [task("t1", "running", "running", at=started)], RestartCounter(), NOW
    )

    assert workload is not None
    assert WorkloadStatus.STARTED == workload.status
    assert started == workload.started_at
    assert 0 == workload.restart_count
    assert not workload.in_reboot_loop
    assert workload.problem is None
    assert CONNECTOR_ID == workload.connector_id
    assert "connector-abc" == workload.name
    assert "h1" == workload.contract_hash


def test_zero_replicas_is_stopped() -> None:
    """A scaled-down service is stopped, even while its task shuts down."""
    workload = workload_from_service(
        service(replicas=0),
        [task("t1", "running", "remove")],
        RestartCounter(),
        NOW,
    )

    assert workload is not None
    assert WorkloadStatus.STOPPED == workload.status
    assert workload.started_at is None
    assert not workload.in_reboot_loop


def test_first_task_pending_is_stopped_with_reason() -> None:
    """A task that cannot be placed keeps the service stopped, with the reason."""
    waiting = task(
        "t1", "pending", "running", error="no suitable node (scheduling constraints)"
    )

    workload = workload_from_service(service(), [waiting], RestartCounter(), NOW)

    assert workload is not None
    assert WorkloadStatus.STOPPED == workload.status
    assert not workload.in_reboot_loop
    assert "no suitable node (scheduling constraints)" == workload.problem


def test_crash_loop_between_tasks() -> None:
    """Failed tasks and a scheduled replacement are a restart loop."""
    tasks = [
        crashed("t1", 6),
        crashed("t2", 3),
        task("t3", "ready", "ready", at=NOW),
    ]

    workload = workload_from_service(service(), tasks, RestartCounter(), NOW)

    assert workload is not None
    assert WorkloadStatus.STARTED == workload.status
    assert 2 == workload.restart_count
    assert workload.in_reboot_loop
    assert workload.problem is not None
    assert "keep failing (2 restarts" in workload.problem
    assert "task: non-zero exit (1)" in workload.problem


def test_recent_restart_while_running_is_loop() -> None:
    """A task running for less than the window after a restart is still a loop."""
    tasks = [crashed("t1", 5), task("t2", "running", "running", at=NOW)]

    workload = workload_from_service(service(), tasks, RestartCounter(), NOW)

    assert workload is not None
    assert WorkloadStatus.STARTED == workload.status
    assert 1 == workload.restart_count
    assert workload.in_reboot_loop
    assert workload.problem is not None
    assert "1 restart;" in workload.problem


def test_long_run_after_restart_is_healthy() -> None:
    """A task that has run for long after a restart ends the loop."""
    tasks = [
        crashed("t1", 3600),
        task("t2", "running", "running", at=NOW - timedelta(minutes=30)),
    ]

    workload = workload_from_service(service(), tasks, RestartCounter(), NOW)

    assert workload is not None
    assert 1 == workload.restart_count
    assert not workload.in_reboot_loop
    assert workload.problem is None


def test_rejected_image_reaches_problem() -> None:
    """A task rejected for a missing image shows the engine's error."""
    tasks = [
        task("t1", "rejected", "shutdown", error="No such image: registry/c:1"),
        task("t2", "assigned", "running"),
    ]

    workload = workload_from_service(service(), tasks, RestartCounter(), NOW)

    assert workload is not None
    assert workload.in_reboot_loop
    assert workload.problem is not None
    assert "No such image: registry/c:1" in workload.problem


def test_restart_policy_gave_up() -> None:
    """Failed tasks without a replacement are stopped, flagged and explained."""
    tasks = [crashed("t1", 20), crashed("t2", 10)]

    workload = workload_from_service(service(), tasks, RestartCounter(), NOW)

    assert workload is not None
    assert WorkloadStatus.STOPPED == workload.status
    assert workload.in_reboot_loop
    assert workload.problem is not None
    assert "allows no more attempts" in workload.problem
    assert "stop and start the connector" in workload.problem


def test_shutdown_tasks_are_not_restarts() -> None:
    """Tasks that Swarm shut down (stop, update) do not count as restarts."""
    tasks = [
        task("t1", "shutdown", "shutdown", at=NOW - timedelta(minutes=5)),
        task("t2", "running", "running", at=NOW - timedelta(minutes=4)),
    ]

    workload = workload_from_service(service(), tasks, RestartCounter(), NOW)

    assert workload is not None
    assert 0 == workload.restart_count
    assert not workload.in_reboot_loop


def test_count_keeps_growing_past_history() -> None:
    """The count keeps growing when old tasks leave the task history."""
    counter = RestartCounter()
    history = [crashed(f"t{index}", 60 - index) for index in range(5)]
    pending = task("next", "ready", "ready")

    first = workload_from_service(service(), [*history, pending], counter, NOW)
    # Swarm keeps the 5 latest tasks: two new failures push out two old ones.
    later_history = [*history[2:], crashed("t5", 2), crashed("t6", 1)]
    later = workload_from_service(service(), [*later_history, pending], counter, NOW)

    assert first is not None
    assert later is not None
    assert 5 == first.restart_count
    assert 7 == later.restart_count


def test_redeploy_resets_count() -> None:
    """Failures of an earlier deployment do not count for the new one."""
    counter = RestartCounter()
    old = [crashed("t1", 30), crashed("t2", 20)]
    workload_from_service(service(), old, counter, NOW)

    workload = workload_from_service(
        service(contract_hash="h2"),
        [*old, task("t3", "running", "running", at=NOW, contract_hash="h2")],
        counter,
        NOW,
    )

    assert workload is not None
    assert 0 == workload.restart_count
    assert not workload.in_reboot_loop


def test_counter_forgets_removed_services() -> None:
    counter = RestartCounter()
    counter.observe("service-1", "h1", {"t1", "t2"})
    counter.retain([])

    assert 1 == counter.observe("service-1", "h1", {"t1"})


def test_service_without_connector_id_is_skipped() -> None:
    unlabelled = service()
    unlabelled["Spec"]["Labels"] = {}

    assert workload_from_service(unlabelled, [], RestartCounter(), NOW) is None
