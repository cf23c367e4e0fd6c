"""The orchestrator interface: what the reconciler uses, and nothing more.

Adapters (Docker, Kubernetes, Swarm, Portainer) implement `Orchestrator`. Their
methods block, so the reconciler runs them in worker threads. They raise
`OrchestratorError` subclasses and never decide about retries: the reconciler does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from xtm_composer.registry import ResolvedImage

MANAGER_LABEL = "opencti-manager"
CONNECTOR_ID_LABEL = "opencti-connector-id"
PLATFORM_LABEL = "opencti-platform"
CONTRACT_HASH_KEY = "opencti-contract-hash"
CA_BUNDLE_PATH = "/etc/ssl/certs/xtm-proxy-ca.crt"


class WorkloadStatus(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Workload:
    """A connector's container, service or Deployment as the engine reports it."""

    connector_id: str
    name: str
    status: WorkloadStatus
    contract_hash: str | None = None
    restart_count: int = 0
    started_at: datetime | None = None
    in_reboot_loop: bool = False
    problem: str | None = None
    """Reason the workload cannot run (for example an image pull error), if known."""
    labels: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything an orchestrator needs to create one connector's workload."""

    connector_id: str
    name: str
    image: ResolvedImage
    environment: dict[str, str] = field(repr=False)
    labels: dict[str, str]
    contract_hash: str
    """Deployment hash: the platform's contract hash, plus the proxy settings'."""
    running: bool
    ca_bundle: str = field(default="", repr=False)
    """PEM certificates the container must find at `CA_BUNDLE_PATH`, if any."""


class OrchestratorError(Exception):
    """An engine operation failed; the message is safe to show to the platform."""


class ImagePullError(OrchestratorError):
    """The image could not be pulled (missing image, denied credentials...)."""


class RegistryAuthError(ImagePullError):
    """The registry rejected the credentials, or asked for some and got none."""


class EngineUnavailableError(OrchestratorError):
    """The engine did not respond, so nothing can be concluded about workloads."""


@runtime_checkable
class Orchestrator(Protocol):
    """A container engine that runs connector workloads."""

    name: str

    def prepare(self) -> None:
        """Do the start-up work of the engine (connect, create pull secrets...)."""

    def list_workloads(self) -> list[Workload]:
        """List the workloads labelled with this manager and platform."""

    def deploy(self, spec: WorkloadSpec) -> Workload:
        """Create the workload, running or not as `spec.running` requests."""

    def redeploy(self, spec: WorkloadSpec, current: Workload) -> Workload:
        """Replace `current` with a workload built from `spec`."""

    def start(self, workload: Workload) -> None: ...

    def stop(self, workload: Workload) -> None: ...

    def remove(self, workload: Workload) -> None: ...

    def logs(self, workload: Workload, max_lines: int) -> list[str]:
        """Return at most `max_lines` of the workload's latest output lines."""

    def close(self) -> None: ...
