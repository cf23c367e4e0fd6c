"""Configuration of the agent: models and the layered loader."""

from xtm_composer.settings.loader import ConfigurationError, load_settings
from xtm_composer.settings.models import (
    DockerSettings,
    ManagerSettings,
    Orchestrator,
    PlatformSettings,
    RegistrySettings,
    Settings,
)

__all__ = [
    "ConfigurationError",
    "DockerSettings",
    "ManagerSettings",
    "Orchestrator",
    "PlatformSettings",
    "RegistrySettings",
    "Settings",
    "load_settings",
]
