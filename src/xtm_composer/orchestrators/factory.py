"""Build the orchestrator that `daemon.selector` names.

Adapters are imported here only, and lazily, so an agent that runs on Docker
never loads the Kubernetes client. The Portainer adapter builds on the Docker
one, since both speak the Docker Engine API; no other adapter imports another.
"""

from __future__ import annotations

from collections.abc import Callable

from xtm_composer.orchestrators.base import Orchestrator
from xtm_composer.settings import ManagerSettings, PlatformSettings
from xtm_composer.settings import Orchestrator as Selector


class UnsupportedOrchestratorError(Exception):
    """The configured orchestrator is not available in this version."""


def build_docker(
    manager: ManagerSettings, settings: PlatformSettings, platform: str
) -> Orchestrator:
    from xtm_composer.orchestrators.docker import DockerOrchestrator

    return DockerOrchestrator(
        settings.daemon.docker, settings.daemon.registry, manager.id, platform
    )


def build_kubernetes(
    manager: ManagerSettings, settings: PlatformSettings, platform: str
) -> Orchestrator:
    from xtm_composer.orchestrators.kubernetes import KubernetesOrchestrator

    return KubernetesOrchestrator(
        settings.daemon.kubernetes,
        settings.daemon.registry,
        manager.id,
        platform,
        settings_path=f"{platform}.daemon.kubernetes",
    )


def build_portainer(
    manager: ManagerSettings, settings: PlatformSettings, platform: str
) -> Orchestrator:
    from xtm_composer.orchestrators.portainer import PortainerOrchestrator

    return PortainerOrchestrator(
        settings.daemon.portainer,
        settings.daemon.registry,
        manager.id,
        platform,
        settings_path=f"{platform}.daemon.portainer",
    )


def build_swarm(
    manager: ManagerSettings, settings: PlatformSettings, platform: str
) -> Orchestrator:
    from xtm_composer.orchestrators.swarm import SwarmOrchestrator

    return SwarmOrchestrator(
        settings.daemon.swarm,
        settings.daemon.registry,
        manager.id,
        platform,
        settings_path=f"{platform}.daemon.swarm",
    )


Builder = Callable[[ManagerSettings, PlatformSettings, str], Orchestrator]
BUILDERS: dict[Selector, Builder] = {
    Selector.DOCKER: build_docker,
    Selector.KUBERNETES: build_kubernetes,
    Selector.PORTAINER: build_portainer,
    Selector.SWARM: build_swarm,
}


def build_orchestrator(
    manager: ManagerSettings, settings: PlatformSettings, platform: str
) -> Orchestrator:
    selector = settings.daemon.selector
    builder = BUILDERS.get(selector)
    if builder is None:
        available = ", ".join(sorted(s.value for s in BUILDERS))
        raise UnsupportedOrchestratorError(
            f"{platform}.daemon.selector = {selector.value!r} is not available in "
            f"this version; use one of: {available}"
        )
    return builder(manager, settings, platform)
