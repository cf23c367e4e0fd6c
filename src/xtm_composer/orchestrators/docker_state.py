"""Connector workloads from Docker container inspect data.

Status: a `running` or `restarting` container is `started`, every other state
(`created`, `exited`, `dead`, `paused`, `removing`) is `stopped`. The engine
keeps restarting a crashing container as the user requested, so it is reported
`started` and the health report carries the reboot loop. Reporting it `stopped`
would make the reconciler start it by hand, and a manual start resets Docker's
restart count (Docker Engine 20.10), which would hide the loop.

Reboot loop: the container is `restarting` (the engine waits before the next
attempt), or it restarted at least once and its current run began less than
`REBOOT_LOOP_WINDOW` ago. Docker Engine (moby's `restartmanager` package) waits
100 ms before a restart, doubles the wait after each short run up to 1 min, and
resets it after a run of 10 s. So a connector that crashes within a minute of
starting is flagged at any moment, and one that crashes less often is flagged
for a minute after each crash.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    Workload,
    WorkloadStatus,
)

REBOOT_LOOP_WINDOW = timedelta(seconds=60)
"""A run younger than this after an engine restart counts as part of a loop."""

STARTED_STATES = frozenset({"running", "restarting"})

MAX_PROBLEM_LENGTH = 300

# The engine writes this time for a container that never started.
ZERO_TIME_YEAR = 1


def workload_from_inspect(data: dict[str, Any], now: datetime) -> Workload | None:
    """Map `docker inspect` data to a workload, or None without a connector-id label."""
    labels: dict[str, str] = data.get("Config", {}).get("Labels") or {}
    connector_id = labels.get(CONNECTOR_ID_LABEL)
    if not connector_id:
        return None

    state: dict[str, Any] = data.get("State") or {}
    engine_status = state.get("Status", "")
    status = (
        WorkloadStatus.STARTED
        if engine_status in STARTED_STATES
        else WorkloadStatus.STOPPED
    )
    # Docker keeps RestartCount at the top level of inspect data, not in State.
    restart_count = int(data.get("RestartCount") or 0)
    started_at = (
        parse_engine_time(state.get("StartedAt"))
        if status is WorkloadStatus.STARTED
        else None
    )
    in_loop = in_reboot_loop(engine_status, restart_count, started_at, now)

    return Workload(
        connector_id=connector_id,
        name=str(data.get("Name", "")).lstrip("/"),
        status=status,
        contract_hash=labels.get(CONTRACT_HASH_KEY),
        restart_count=restart_count,
        started_at=started_at,
        in_reboot_loop=in_loop,
        problem=describe_problem(state, restart_count, in_loop),
        labels=dict(labels),
    )


def in_reboot_loop(
    engine_status: str,
    restart_count: int,
    started_at: datetime | None,
    now: datetime,
) -> bool:
    """Apply the reboot-loop rule of the module docstring."""
    if engine_status == "restarting":
        return True
    if engine_status != "running" or restart_count == 0 or started_at is None:
        return False
    return now - started_at < REBOOT_LOOP_WINDOW


def describe_problem(
    state: dict[str, Any], restart_count: int, in_loop: bool
) -> str | None:
    """Return why the container does not run as it should, if the engine reports it."""
    if state.get("OOMKilled"):
        return "the container was killed because it ran out of memory"
    error = str(state.get("Error") or "").strip()
    if error:
        return error[:MAX_PROBLEM_LENGTH]
    if in_loop:
        exit_code = state.get("ExitCode")
        # The engine resets ExitCode to 0 when a run starts.
        last_exit = f", last exit code {exit_code}" if exit_code else ""
        return f"the container keeps exiting ({restart_count} restarts{last_exit})"
    return None


def parse_engine_time(value: str | None) -> datetime | None:
    """Parse an RFC 3339 engine time; None for an empty or zero time."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.year <= ZERO_TIME_YEAR:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
