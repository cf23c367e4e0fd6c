"""Connector workloads from Docker Swarm services and their tasks.

Swarm keeps no restart count: when a task ends, the orchestrator creates a new
task in the same slot and keeps a few old ones (the swarm's task history
retention limit, 5 by default). So the restart count is the number of tasks of
the current deployment that ended on their own (`failed`, `complete` or
`rejected`), counted across listings by `RestartCounter` so that it keeps
growing after old tasks leave the history. Tasks that Swarm shut down because
of a stop or a redeploy end in `shutdown` and are not counted. The current
deployment is the one whose container labels carry the service's contract hash,
so a redeploy starts the count again, as a new container does on Docker.

Status: a service with 0 replicas is `stopped`. With replicas, it is `started`
while a task runs, and also while Swarm replaces ended tasks of the current
deployment: that is a restart loop, which the health report carries, as Docker
reports a `restarting` container. A first task that is not running yet
(pending, pulling, starting) makes the service `stopped`, and so does a last
task that failed when the restart policy allows no more attempts.

Reboot loop: the rule of `docker_state.in_reboot_loop`. The service is
restarting (no task runs, ended tasks exist and a replacement is scheduled),
or it restarted at least once and its running task started less than
`docker_state.REBOOT_LOOP_WINDOW` ago. A service whose restart policy gave up
after failures is flagged as well, so that the reconciler does not start it
again and again: the operator stops and starts the connector instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from xtm_composer.orchestrators import docker_state
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    Workload,
    WorkloadStatus,
)

ENDED_STATES = frozenset({"failed", "complete", "rejected"})
"""Task states of a task that ended without Swarm asking it to."""

FAILED_STATES = frozenset({"failed", "rejected"})

PENDING_DESIRED_STATES = frozenset({"ready", "running"})
"""Desired states of a task that Swarm still means to run."""

GIVEN_UP = "given-up"
"""Service state: its last task failed and Swarm schedules no replacement."""

MAX_PROBLEM_LENGTH = 300


@dataclass
class _ServiceRestarts:
    contract_hash: str | None
    count: int = 0
    visible: set[str] = field(default_factory=set)


class RestartCounter:
    """Counts the ended tasks of each service's current deployment across listings.

    Only the task ids visible in the last listing are kept, so memory stays
    bounded by the task history of each service.

    NOTE: a task that ends and leaves the history between two listings is never
    seen. With the default history of 5 tasks, the count is a lower bound once
    a service restarts more than 5 times between two reconciliation cycles.
    """

    def __init__(self) -> None:
        self._services: dict[str, _ServiceRestarts] = {}
        self._lock = threading.Lock()

    def observe(
        self, service_id: str, contract_hash: str | None, ended_task_ids: set[str]
    ) -> int:
        """Add the ended tasks not seen before and return the service's count."""
        with self._lock:
            known = self._services.get(service_id)
            if known is None or known.contract_hash != contract_hash:
                known = _ServiceRestarts(contract_hash)
                self._services[service_id] = known
            known.count += len(ended_task_ids - known.visible)
            known.visible = set(ended_task_ids)
            return known.count

    def retain(self, service_ids: Iterable[str]) -> None:
        """Forget the services that are not in `service_ids`."""
        keep = set(service_ids)
        with self._lock:
            for service_id in list(self._services):
                if service_id not in keep:
                    del self._services[service_id]


def service_labels(service: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (service.get("Spec") or {}).get("Labels") or {}
    return labels


def service_replicas(service: dict[str, Any]) -> int:
    """Return the replica count of a replicated service, 0 for other modes."""
    mode = (service.get("Spec") or {}).get("Mode") or {}
    return int((mode.get("Replicated") or {}).get("Replicas") or 0)


def task_state(task: dict[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State") or "")


def task_contract_hash(task: dict[str, Any]) -> str | None:
    container = (task.get("Spec") or {}).get("ContainerSpec") or {}
    labels = container.get("Labels") or {}
    value = labels.get(CONTRACT_HASH_KEY)
    return str(value) if value is not None else None


def task_time(task: dict[str, Any]) -> str:
    """Return the task's last status change time, for ordering."""
    return str(
        (task.get("Status") or {}).get("Timestamp") or task.get("CreatedAt") or ""
    )


def ended_tasks(
    tasks: list[dict[str, Any]], contract_hash: str | None
) -> list[dict[str, Any]]:
    """Return the current deployment's tasks that ended on their own, oldest first."""
    ended = [
        task
        for task in tasks
        if task_state(task) in ENDED_STATES
        and task_contract_hash(task) == contract_hash
    ]
    return sorted(ended, key=task_time)


def workload_from_service(
    service: dict[str, Any],
    tasks: list[dict[str, Any]],
    counter: RestartCounter,
    now: datetime,
) -> Workload | None:
    """Map a service and its tasks to a workload, or None without a connector id."""
    labels = service_labels(service)
    connector_id = labels.get(CONNECTOR_ID_LABEL)
    if not connector_id:
        return None
    contract_hash = labels.get(CONTRACT_HASH_KEY)

    ended = ended_tasks(tasks, contract_hash)
    restart_count = counter.observe(
        str(service.get("ID", "")), contract_hash, {str(task["ID"]) for task in ended}
    )
    engine_status = service_status(service, tasks, ended)
    status = (
        WorkloadStatus.STARTED
        if engine_status in docker_state.STARTED_STATES
        else WorkloadStatus.STOPPED
    )
    started_at = running_since(tasks) if engine_status == "running" else None
    # A service whose tasks failed until Swarm gave up is flagged too, so that
    # the reconciler leaves it for the operator instead of starting it again.
    in_loop = engine_status == GIVEN_UP or docker_state.in_reboot_loop(
        engine_status, restart_count, started_at, now
    )

    return Workload(
        connector_id=connector_id,
        name=str((service.get("Spec") or {}).get("Name", "")),
        status=status,
        contract_hash=contract_hash,
        restart_count=restart_count,
        started_at=started_at,
        in_reboot_loop=in_loop,
        problem=describe_problem(tasks, ended, restart_count, engine_status, in_loop),
        labels=dict(labels),
    )


def service_status(
    service: dict[str, Any], tasks: list[dict[str, Any]], ended: list[dict[str, Any]]
) -> str:
    """Return the service's state in the words of `docker_state`, or `GIVEN_UP`.

    An empty string is a service that is stopped or whose first task is not
    running yet.
    """
    if service_replicas(service) == 0:
        return ""
    if running_tasks(tasks):
        return "running"
    if not ended:
        return ""
    if any(task.get("DesiredState") in PENDING_DESIRED_STATES for task in tasks):
        return "restarting"
    if task_state(ended[-1]) in FAILED_STATES:
        return GIVEN_UP
    return ""


def running_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        task
        for task in tasks
        if task_state(task) == "running" and task.get("DesiredState") == "running"
    ]


def running_since(tasks: list[dict[str, Any]]) -> datetime | None:
    """Return when the latest running task started running."""
    latest = max(running_tasks(tasks), key=task_time)
    return docker_state.parse_engine_time(task_time(latest))


def describe_problem(
    tasks: list[dict[str, Any]],
    ended: list[dict[str, Any]],
    restart_count: int,
    engine_status: str,
    in_loop: bool,
) -> str | None:
    """Return why the service does not run as it should, from its task errors."""
    if engine_status == "running" and not in_loop:
        return None
    last_error = task_error(ended[-1]) if ended else None
    detail = f"; last error: {last_error}" if last_error else ""
    restarts = f"{restart_count} restart{'' if restart_count == 1 else 's'}"
    if engine_status == GIVEN_UP:
        problem = (
            f"the service's tasks failed ({restarts}{detail}) and its restart "
            "policy allows no more attempts; stop and start the connector to "
            "try again"
        )
        return problem[:MAX_PROBLEM_LENGTH]
    if in_loop:
        problem = f"the service's tasks keep failing ({restarts}{detail})"
        return problem[:MAX_PROBLEM_LENGTH]
    # A task that waits (for a suitable node, say) has the reason in its error.
    waiting = [
        task
        for task in tasks
        if task.get("DesiredState") in PENDING_DESIRED_STATES and task_error(task)
    ]
    if waiting:
        return task_error(max(waiting, key=task_time))
    return None


def task_error(task: dict[str, Any]) -> str | None:
    error = " ".join(str((task.get("Status") or {}).get("Err") or "").split())
    return error[:MAX_PROBLEM_LENGTH] or None
