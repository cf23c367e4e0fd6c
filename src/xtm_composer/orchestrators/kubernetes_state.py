"""Connector workloads from Deployments and their pods (API JSON, camelCase keys).

Status comes from the pods, not from the replica count. A Deployment scaled to 0
is `stopped`. A Deployment scaled to 1 is `started` only while the connector
container of its pod runs. A pod that is being created, that cannot pull its
image or whose container keeps exiting is `stopped`, and `Workload.problem`
contains the reason when the kubelet reports one. The reconciler pushes that text to the
platform with the logs, and calls `start`, which leaves a Deployment already
scaled to 1 as it is.

Reboot loop: the container waits in `CrashLoopBackOff`, or it exited after at
least one restart, or it runs after a restart and its run began less than
`REBOOT_LOOP_WINDOW` ago. The kubelet doubles its back-off from 10 s up to
5 minutes, so a crashing connector is seen in one of these states almost always.

The kubelet writes the registry's error message into `state.waiting.message` only while
the reason is `ErrImagePull`. During the longer `ImagePullBackOff` phases the
message is just `Back-off pulling image "<image>"` (kubelet 1.20), so the
orchestrator looks up the pod's latest `Failed to pull image` event and passes
it in as `pull_errors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    Workload,
    WorkloadStatus,
)

REBOOT_LOOP_WINDOW = timedelta(seconds=60)
"""A run younger than this after a restart counts as part of a reboot loop."""

MAX_PROBLEM_LENGTH = 500

PULL_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "ImageInspectError",
        "RegistryUnavailable",
    }
)
"""Waiting reasons of the kubelet meaning that the image cannot be pulled."""

CONTAINER_FAILURES = PULL_FAILURES | {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreStartHookError",
    "PostStartHookError",
}
"""Waiting reasons that mean failure, unlike steps such as `ContainerCreating`."""

PodView = Mapping[str, Any]


def workload_from_deployment(
    deployment: Mapping[str, Any],
    pods: Iterable[PodView],
    now: datetime,
    pull_errors: Mapping[str, str] | None = None,
) -> Workload | None:
    """Map a Deployment and its pods to a workload; None without a connector id.

    `pods` may contain pods of other Deployments: only those created by this
    Deployment's ReplicaSets count. `pull_errors` maps pod uids to the message
    of their latest image pull failure.
    """
    metadata = deployment.get("metadata") or {}
    labels: dict[str, str] = dict(metadata.get("labels") or {})
    connector_id = labels.get(CONNECTOR_ID_LABEL)
    if not connector_id:
        return None

    name = str(metadata.get("name", ""))
    annotations = metadata.get("annotations") or {}
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    pod = pick_pod([pod for pod in pods if created_by(pod, name)], name)
    container = container_status(pod, name) if pod is not None else None

    restart_count = int((container or {}).get("restartCount") or 0)
    state = (container or {}).get("state") or {}
    running = state.get("running")
    run_started_at = parse_time(running.get("startedAt")) if running else None
    status = (
        WorkloadStatus.STARTED
        if replicas and running is not None
        else WorkloadStatus.STOPPED
    )
    in_loop = bool(replicas) and in_reboot_loop(
        state, restart_count, run_started_at, now
    )
    # A pod that still runs after a stop is on its way out.
    started_at = run_started_at if status is WorkloadStatus.STARTED else None

    problem = None
    if replicas:
        pull_error = None
        if pod is not None and pull_errors:
            pull_error = pull_errors.get(pod_uid(pod))
        problem = describe_problem(deployment, pod, container, pull_error)
    if in_loop and problem is None and container is not None:
        # The container runs again after a crash, so its last run gives the reason.
        details = [f"{restart_count} restarts", last_exit(container)]
        problem = f"the container keeps restarting ({', '.join(filter(None, details))})"

    return Workload(
        connector_id=connector_id,
        name=name,
        status=status,
        contract_hash=annotations.get(CONTRACT_HASH_KEY),
        restart_count=restart_count,
        started_at=started_at,
        in_reboot_loop=in_loop,
        problem=problem[:MAX_PROBLEM_LENGTH] if problem else None,
        labels=labels,
    )


def created_by(pod: PodView, deployment_name: str) -> bool:
    """Tell whether a ReplicaSet of the Deployment `deployment_name` owns the pod.

    The Deployment controller names a ReplicaSet `<deployment>-<pod-template-hash>`
    and gives its pods the `pod-template-hash` label, so no ReplicaSet lookup is
    needed.
    """
    metadata = pod.get("metadata") or {}
    template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
    if not template_hash:
        return False
    expected = f"{deployment_name}-{template_hash}"
    return any(
        owner.get("kind") == "ReplicaSet" and owner.get("name") == expected
        for owner in metadata.get("ownerReferences") or []
    )


def pick_pod(pods: list[PodView], container_name: str) -> PodView | None:
    """Return the pod that shows the workload's state.

    Terminating pods are skipped. A pod whose connector container runs comes
    first, and the newest pod otherwise."""
    live = [
        pod for pod in pods if not (pod.get("metadata") or {}).get("deletionTimestamp")
    ]
    if not live:
        return None
    newest_first = sorted(live, key=creation_time, reverse=True)
    for pod in newest_first:
        state = (container_status(pod, container_name) or {}).get("state") or {}
        if "running" in state:
            return pod
    return newest_first[0]


def container_status(pod: PodView, name: str) -> dict[str, Any] | None:
    """Return the status of container `name` (the connector's), if reported."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((status for status in statuses if status.get("name") == name), None)


def in_reboot_loop(
    state: Mapping[str, Any],
    restart_count: int,
    started_at: datetime | None,
    now: datetime,
) -> bool:
    """Apply the reboot-loop rule of the module docstring."""
    waiting = state.get("waiting") or {}
    if waiting.get("reason") == "CrashLoopBackOff":
        return True
    if restart_count == 0:
        return False
    if "terminated" in state:
        return True
    return started_at is not None and now - started_at < REBOOT_LOOP_WINDOW


def describe_problem(
    deployment: Mapping[str, Any],
    pod: PodView | None,
    container: Mapping[str, Any] | None,
    pull_error: str | None,
) -> str | None:
    """Return why a Deployment scaled to 1 does not run, if Kubernetes reports it."""
    if pod is None:
        return replica_failure(deployment)
    if container is None:
        return pod_problem(pod)

    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason in CONTAINER_FAILURES:
        message = waiting.get("message") or ""
        if reason == "ImagePullBackOff" and pull_error:
            message = f"{message}; last pull error: {pull_error}".lstrip("; ")
        if reason == "CrashLoopBackOff":
            message = f"{message}; {last_exit(container)}".lstrip("; ")
        return f"{reason}: {message}" if message else str(reason)

    terminated = state.get("terminated")
    if terminated:
        return f"the container exited: {describe_exit(terminated)}"
    return None


def replica_failure(deployment: Mapping[str, Any]) -> str | None:
    """Return why the Deployment's ReplicaSet cannot create a pod (quota...)."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "ReplicaFailure"
            and condition.get("status") == "True"
        ):
            return f"{condition.get('reason')}: {condition.get('message')}"
    return None


def pod_problem(pod: PodView) -> str | None:
    """Return why a pod has no container yet (unschedulable) or failed (evicted)."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"the pod failed: {status.get('reason')}: {status.get('message')}"
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
        ):
            return f"{condition.get('reason')}: {condition.get('message')}"
    return None


def last_exit(container: Mapping[str, Any]) -> str:
    terminated = (container.get("lastState") or {}).get("terminated")
    if not terminated:
        return ""
    return f"last run: {describe_exit(terminated)}"


def describe_exit(terminated: Mapping[str, Any]) -> str:
    text = f"exit code {terminated.get('exitCode')}"
    if terminated.get("reason"):
        text += f" ({terminated['reason']})"
    if terminated.get("message"):
        text += f": {terminated['message']}"
    return text


def pod_uid(pod: PodView) -> str:
    return str((pod.get("metadata") or {}).get("uid", ""))


def pods_in_pull_back_off(pods: Iterable[PodView]) -> list[PodView]:
    """Return the pods with a container waiting before its next pull attempt."""
    waiting_pods = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "ImagePullBackOff":
                waiting_pods.append(pod)
                break
    return waiting_pods


def latest_pull_errors(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Map pod uids to the message of their latest `Failed to pull image` event."""
    latest: dict[str, tuple[str, str]] = {}
    for event in events:
        message = str(event.get("message") or "")
        if not message.startswith("Failed to pull image"):
            continue
        uid = str((event.get("involvedObject") or {}).get("uid", ""))
        when = str(event.get("lastTimestamp") or event.get("eventTime") or "")
        if uid and (uid not in latest or when >= latest[uid][0]):
            latest[uid] = (when, message)
    return {uid: message for uid, (_, message) in latest.items()}


def creation_time(pod: PodView) -> str:
    # RFC 3339 times in UTC from the apiserver sort as strings.
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def parse_time(value: str | None) -> datetime | None:
    """Parse an apiserver time (`2024-01-01T00:00:00Z`)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
