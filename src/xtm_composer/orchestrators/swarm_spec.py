"""Service specs of connectors, from `SwarmSettings` and a `WorkloadSpec`.

The result is the JSON body of `POST /services/create` and of
`POST /services/{id}/update` in the Docker Engine API. Only the options an
operator set are sent, so Swarm's defaults apply to the rest.

Some options appeared in later API versions. An engine that serves an older
version drops unknown fields without an error, so `unsupported_options`
rejects them up front, at start-up. The versions come from the Engine API
version history (CapabilityAdd, CapabilityDrop and Ulimits in 1.41, Sysctls in
1.40) and from the docker CLI's `service create` flags (Init in 1.37).
"""

from __future__ import annotations

from typing import Any

from docker.utils import version_lt

from xtm_composer.orchestrators.base import CA_BUNDLE_PATH, WorkloadSpec
from xtm_composer.settings.swarm import (
    NANOS_PER_SECOND,
    SwarmResources,
    SwarmSettings,
    hosts_line,
    spread_descriptor,
)

SETTINGS_PREFIX = "daemon.swarm"

MIN_API_VERSION = "1.30"
"""Swarm configs (the proxy CA bundle) and image digest lookups need 1.30."""

OPTION_API_VERSIONS = {
    "init": "1.37",
    "sysctls": "1.40",
    "cap_add": "1.41",
    "cap_drop": "1.41",
    "ulimits": "1.41",
}
"""The first Engine API version that applies each option to services."""

CA_BUNDLE_MODE = 0o444


def unsupported_options(settings: SwarmSettings, api_version: str) -> list[str]:
    """Return a sentence per set option that the engine's API version ignores."""
    problems = []
    for name, needed in OPTION_API_VERSIONS.items():
        # An empty list or a false flag changes nothing, so any engine takes it.
        if getattr(settings, name) and version_lt(api_version, needed):
            problems.append(
                f"{SETTINGS_PREFIX}.{name} needs Docker Engine API {needed}, but the "
                f"engine serves {api_version}"
            )
    return problems


def service_spec(
    settings: SwarmSettings,
    spec: WorkloadSpec,
    image: str,
    labels: dict[str, str],
    ca_config: tuple[str, str] | None,
) -> dict[str, Any]:
    """Return the service spec of a connector.

    `image` is the reference to run, usually pinned to a digest. `ca_config` is
    the (id, name) of the Swarm config with the proxy CA bundle, if any.
    """
    task_template: dict[str, Any] = {
        "ContainerSpec": container_spec(settings, spec, image, labels, ca_config)
    }
    if settings.network:
        task_template["Networks"] = [{"Target": settings.network}]
    if settings.resources is not None:
        task_template["Resources"] = resources(settings.resources)
    placement = placement_spec(settings)
    if placement:
        task_template["Placement"] = placement
    restart_policy = restart_policy_spec(settings)
    if restart_policy:
        task_template["RestartPolicy"] = restart_policy

    return {
        "Name": spec.name,
        "Labels": labels,
        "TaskTemplate": task_template,
        "Mode": {"Replicated": {"Replicas": 1 if spec.running else 0}},
    }


def container_spec(
    settings: SwarmSettings,
    spec: WorkloadSpec,
    image: str,
    labels: dict[str, str],
    ca_config: tuple[str, str] | None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "Image": image,
        "Env": [f"{name}={value}" for name, value in spec.environment.items()],
        "Labels": labels,
    }

    if settings.extra_hosts is not None:
        container["Hosts"] = [hosts_line(entry) for entry in settings.extra_hosts]
    dns_config = {}
    if settings.dns is not None:
        dns_config["Nameservers"] = settings.dns
    if settings.dns_search is not None:
        dns_config["Search"] = settings.dns_search
    if dns_config:
        container["DNSConfig"] = dns_config

    if settings.cap_add is not None:
        container["CapabilityAdd"] = settings.cap_add
    if settings.cap_drop is not None:
        container["CapabilityDrop"] = settings.cap_drop
    if settings.sysctls is not None:
        container["Sysctls"] = settings.sysctls
    if settings.ulimits is not None:
        container["Ulimits"] = [
            {
                "Name": ulimit.name,
                "Soft": ulimit.soft,
                "Hard": ulimit.soft if ulimit.hard is None else ulimit.hard,
            }
            for ulimit in settings.ulimits
        ]

    for setting, field in (
        ("hostname", "Hostname"),
        ("user", "User"),
        ("read_only", "ReadOnly"),
        ("init", "Init"),
    ):
        value = getattr(settings, setting)
        if value is not None:
            container[field] = value
    if settings.stop_grace_period is not None:
        container["StopGracePeriod"] = nanoseconds(settings.stop_grace_period)

    if ca_config is not None:
        config_id, config_name = ca_config
        container["Configs"] = [
            {
                "File": {
                    "Name": CA_BUNDLE_PATH,
                    "UID": "0",
                    "GID": "0",
                    "Mode": CA_BUNDLE_MODE,
                },
                "ConfigID": config_id,
                "ConfigName": config_name,
            }
        ]
    return container


def resources(settings: SwarmResources) -> dict[str, Any]:
    limits = resource_object(settings.cpu_limit, settings.memory_limit)
    reservations = resource_object(
        settings.cpu_reservation, settings.memory_reservation
    )
    result = {}
    if limits:
        result["Limits"] = limits
    if reservations:
        result["Reservations"] = reservations
    return result


def resource_object(
    cpu_cores: float | None, memory_bytes: int | None
) -> dict[str, int]:
    result = {}
    if cpu_cores is not None:
        result["NanoCPUs"] = round(cpu_cores * NANOS_PER_SECOND)
    if memory_bytes is not None:
        result["MemoryBytes"] = memory_bytes
    return result


def placement_spec(settings: SwarmSettings) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if settings.placement_constraints is not None:
        placement["Constraints"] = settings.placement_constraints
    if settings.placement_preferences is not None:
        placement["Preferences"] = [
            {"Spread": {"SpreadDescriptor": spread_descriptor(entry)}}
            for entry in settings.placement_preferences
        ]
    return placement


def restart_policy_spec(settings: SwarmSettings) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if settings.restart_condition is not None:
        policy["Condition"] = settings.restart_condition
    if settings.restart_delay is not None:
        policy["Delay"] = nanoseconds(settings.restart_delay)
    if settings.restart_max_attempts is not None:
        policy["MaxAttempts"] = settings.restart_max_attempts
    return policy


def nanoseconds(seconds: float) -> int:
    return round(seconds * NANOS_PER_SECOND)
