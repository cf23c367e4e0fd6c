"""Workload status from Deployments and pods (shapes as kubelet 1.20 writes them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from xtm_composer.orchestrators import kubernetes_state as states
from xtm_composer.orchestrators.base import WorkloadStatus

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NAME = "ipinfo-0123456789"
LABELS = {
    "opencti-manager": "manager-1",
    "opencti-platform": "opencti",
    "opencti-connector-id": "connector-1",
}
BACK_OFF_MESSAGE = f'Back-off pulling image "127.0.0.1:5000/opencti/{NAME}:1.0.0"'
PULL_EVENT_MESSAGE = (
    'Failed to pull image "127.0.0.1:5000/opencti/connector-test:1.0.0": rpc error: '
    "code = Unknown desc = Error response from daemon: unauthorized: "
    "authentication required"
)


def deployment(replicas: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": NAME,
            "labels": dict(LABELS),
            "annotations": {"opencti-contract-hash": "hash-1"},
        },
        "spec": {"replicas": replicas},
        "status": status,
    }


def pod(
    state: dict[str, Any] | None,
    restart_count: int = 0,
    last_state: dict[str, Any] | None = None,
    name: str = "a",
    created: str = "2026-01-01T11:00:00Z",
    deleting: bool = False,
    owner: str = NAME,
    **status: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": f"{owner}-5d9c7b8f6-{name}",
        "uid": f"uid-{name}",
        "creationTimestamp": created,
        "labels": {**LABELS, "pod-template-hash": "5d9c7b8f6"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": f"{owner}-5d9c7b8f6"}],
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    pod_status: dict[str, Any] = {"phase": "Running", **status}
    if state is not None:
        pod_status["containerStatuses"] = [
            {
                "name": NAME,
                "state": state,
                "lastState": last_state or {},
                "restartCount": restart_count,
            }
        ]
    return {"metadata": metadata, "status": pod_status}


def running(started: str = "2026-01-01T11:00:05Z") -> dict[str, Any]:
    return {"running": {"startedAt": started}}


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {"waiting": state}


def exited(code: int = 1) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Error"}}


def workload_of(
    deployment_data: dict[str, Any],
    pods: list[dict[str, Any]],
    pull_errors: dict[str, str] | None = None,
) -> Any:
    return states.workload_from_deployment(deployment_data, pods, NOW, pull_errors)


def test_running_pod_is_started() -> None:
    """A running connector container makes the workload started."""
    workload = workload_of(deployment(), [pod(running())])

    assert workload.status == WorkloadStatus.STARTED
    assert datetime(2026, 1, 1, 11, 0, 5, tzinfo=UTC) == workload.started_at
    assert workload.contract_hash == "hash-1"
    assert workload.connector_id == "connector-1"
    assert workload.name == NAME
    assert workload.problem is None
    assert workload.in_reboot_loop is False


def test_scaled_to_zero_is_stopped() -> None:
    """Replicas 0 is stopped even while the last pod still runs."""
    workload = workload_of(deployment(replicas=0), [pod(running())])

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.started_at is None
    assert workload.problem is None


def test_one_replica_without_pod_is_stopped() -> None:
    """Replicas 1 alone does not make a workload started."""
    workload = workload_of(deployment(), [])

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.problem is None


def test_container_creating_is_stopped_without_problem() -> None:
    """A container being created is not a failure."""
    workload = workload_of(deployment(), [pod(waiting("ContainerCreating"))])

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.problem is None


def test_err_image_pull_reports_registry_answer() -> None:
    """The kubelet's pull error becomes the problem."""
    message = (
        "rpc error: code = Unknown desc = Error response from daemon: Head "
        '"http://127.0.0.1:5000/v2/opencti/connector-test/manifests/1.0.0": '
        "no basic auth credentials"
    )
    workload = workload_of(deployment(), [pod(waiting("ErrImagePull", message))])

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.in_reboot_loop is False
    assert f"ErrImagePull: {message}" == workload.problem


def test_image_pull_back_off_adds_event_message() -> None:
    """During back-off the latest pull error event completes the message."""
    workload = workload_of(
        deployment(),
        [pod(waiting("ImagePullBackOff", BACK_OFF_MESSAGE))],
        {"uid-a": PULL_EVENT_MESSAGE},
    )

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.problem.startswith(f"ImagePullBackOff: {BACK_OFF_MESSAGE}")
    assert "unauthorized: authentication required" in workload.problem


def test_image_pull_back_off_without_event() -> None:
    """Without events the kubelet's back-off message is still reported."""
    workload = workload_of(
        deployment(), [pod(waiting("ImagePullBackOff", BACK_OFF_MESSAGE))]
    )

    assert f"ImagePullBackOff: {BACK_OFF_MESSAGE}" == workload.problem


def test_crash_loop_is_reboot_loop() -> None:
    """CrashLoopBackOff is stopped, in a reboot loop, with the last exit code."""
    crashing = pod(
        waiting("CrashLoopBackOff", "back-off 20s restarting failed container"),
        restart_count=3,
        last_state=exited(1),
    )
    workload = workload_of(deployment(), [crashing])

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.in_reboot_loop is True
    assert workload.restart_count == 3
    assert workload.problem.startswith("CrashLoopBackOff: back-off 20s")
    assert "exit code 1 (Error)" in workload.problem


def test_exited_after_restart_is_reboot_loop() -> None:
    """Between two restarts the terminated container is part of the loop."""
    workload = workload_of(deployment(), [pod(exited(1), restart_count=2)])

    assert workload.status == WorkloadStatus.STOPPED
    assert workload.in_reboot_loop is True
    assert workload.problem == "the container exited: exit code 1 (Error)"


def test_first_exit_is_not_reboot_loop() -> None:
    """A first exit is reported, but one exit is no loop yet."""
    workload = workload_of(deployment(), [pod(exited(1))])

    assert workload.in_reboot_loop is False
    assert workload.problem == "the container exited: exit code 1 (Error)"


def test_fresh_run_after_restart_is_reboot_loop() -> None:
    """A run that began seconds after a restart still counts as a loop."""
    workload = workload_of(
        deployment(),
        [pod(running("2026-01-01T11:59:30Z"), restart_count=4, last_state=exited(1))],
    )

    assert workload.status == WorkloadStatus.STARTED
    assert workload.in_reboot_loop is True
    assert workload.restart_count == 4
    assert workload.problem == (
        "the container keeps restarting (4 restarts, last run: exit code 1 (Error))"
    )


def test_long_run_after_restart_is_healthy() -> None:
    """A run older than the window ends the loop."""
    workload = workload_of(
        deployment(), [pod(running("2026-01-01T11:00:00Z"), restart_count=4)]
    )

    assert workload.in_reboot_loop is False


def test_terminating_pod_ignored() -> None:
    """A pod being deleted does not set the workload's state."""
    workload = workload_of(deployment(), [pod(running(), deleting=True)])

    assert workload.status == WorkloadStatus.STOPPED


def test_running_pod_preferred_over_newer_pending_one() -> None:
    """During a rollout the running pod counts, not the newest pending one."""
    pods = [
        pod(running(), name="old", created="2026-01-01T10:00:00Z"),
        pod(waiting("ContainerCreating"), name="new", created="2026-01-01T11:00:00Z"),
    ]
    workload = workload_of(deployment(), pods)

    assert workload.status == WorkloadStatus.STARTED


def test_pods_of_other_deployment_ignored() -> None:
    """A pod of another Deployment of the same connector (a rename) is not ours."""
    workload = workload_of(deployment(), [pod(running(), owner="old-name-9876543210")])

    assert workload.status == WorkloadStatus.STOPPED


def test_unschedulable_pod_problem() -> None:
    """A pod that no node accepts reports the scheduler's reason."""
    conditions = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory.",
        }
    ]
    pending = pod(None, phase="Pending", conditions=conditions)
    workload = workload_of(deployment(), [pending])

    assert (
        workload.problem
    ) == "Unschedulable: 0/1 nodes are available: 1 Insufficient memory."


def test_replica_failure_problem() -> None:
    """A ReplicaSet that cannot create its pod reports the Deployment condition."""
    condition = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'pods "x" is forbidden: exceeded quota',
    }
    workload = workload_of(deployment(conditions=[condition]), [])

    assert workload.problem == 'FailedCreate: pods "x" is forbidden: exceeded quota'


def test_deployment_without_connector_id_skipped() -> None:
    """A labelled Deployment without connector id gives no workload."""
    data = deployment()
    del data["metadata"]["labels"]["opencti-connector-id"]

    assert workload_of(data, []) is None


def test_latest_pull_error_per_pod() -> None:
    """Only `Failed to pull image` events count, the latest one per pod."""
    events = [
        {
            "involvedObject": {"uid": "uid-a"},
            "lastTimestamp": "2026-01-01T11:00:00Z",
            "message": "Failed to pull image: older",
        },
        {
            "involvedObject": {"uid": "uid-a"},
            "lastTimestamp": "2026-01-01T11:05:00Z",
            "message": PULL_EVENT_MESSAGE,
        },
        {
            "involvedObject": {"uid": "uid-a"},
            "lastTimestamp": "2026-01-01T11:06:00Z",
            "message": "Error: ImagePullBackOff",
        },
    ]

    assert states.latest_pull_errors(events) == {"uid-a": PULL_EVENT_MESSAGE}


def test_pods_in_pull_back_off() -> None:
    """Only pods waiting in ImagePullBackOff need the event lookup."""
    pods = [
        pod(waiting("ImagePullBackOff", BACK_OFF_MESSAGE), name="a"),
        pod(waiting("ErrImagePull", "denied"), name="b"),
        pod(running(), name="c"),
    ]

    assert [states.pod_uid(item) for item in states.pods_in_pull_back_off(pods)] == [
        "uid-a"
    ]
