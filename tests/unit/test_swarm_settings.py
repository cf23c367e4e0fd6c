"""Swarm settings: units, plausibility checks and messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from xtm_composer.settings import ConfigurationError, load_settings
from xtm_composer.settings.swarm import (
    SwarmResources,
    SwarmSettings,
    hosts_line,
    parse_duration,
    parse_memory,
    spread_descriptor,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        (0.5, 0.5),
        ("10", 10.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("250us", 0.00025),
    ],
)
def test_duration_units(value: Any, seconds: float) -> None:
    """Durations are seconds, or Go durations with units."""
    assert seconds == pytest.approx(parse_duration(value))


@pytest.mark.parametrize("value", ["ten", "10 s", "1d", "5sm", ""])
def test_duration_rejects_garbage(value: str) -> None:
    """A duration that is neither a number nor a Go duration is rejected."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


def test_duration_rejects_nanoseconds() -> None:
    """A nanosecond value from a reference configuration is rejected with the fix."""
    with pytest.raises(ValidationError) as raised:
        SwarmSettings(restart_delay=5_000_000_000)

    assert "more than a day" in str(raised.value)
    assert "divide such a value by 1000000000" in str(raised.value)


def test_negative_duration_rejected() -> None:
    with pytest.raises(ValidationError, match="cannot be negative"):
        SwarmSettings(stop_grace_period=-1)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (536870912, 536870912),
        ("536870912", 536870912),
        ("512m", 512 * 1024**2),
        ("512M", 512 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("512mb", 512 * 1024**2),
        ("1.5g", int(1.5 * 1024**3)),
        ("64k", 64 * 1024),
        ("100b", 100),
    ],
)
def test_memory_units(value: Any, size: int) -> None:
    """Memory is bytes, or a number with a binary unit as `docker run --memory`."""
    assert size == parse_memory(value)


@pytest.mark.parametrize("value", ["lots", "512x", "-1m", "1.5.2g"])
def test_memory_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError, match="is not a memory size"):
        parse_memory(value)


def test_resources_in_cores_and_bytes() -> None:
    """CPU settings are decimal cores, memory settings bytes."""
    resources = SwarmResources.model_validate(
        {
            "cpu_limit": "1.5",
            "memory_limit": "1g",
            "cpu_reservation": 0.25,
            "memory_reservation": 268435456,
        }
    )

    assert 1.5 == resources.cpu_limit
    assert 1024**3 == resources.memory_limit
    assert 0.25 == resources.cpu_reservation
    assert 268435456 == resources.memory_reservation


def test_resources_reject_nano_cpus() -> None:
    """A NanoCPUs value from a reference configuration is rejected with the fix."""
    with pytest.raises(ValidationError) as raised:
        SwarmResources(cpu_limit=500_000_000)

    assert "decimal cores" in str(raised.value)


def test_resources_reject_reservation_above_limit() -> None:
    with pytest.raises(ValidationError, match="memory_reservation"):
        SwarmResources.model_validate(
            {"memory_limit": "256m", "memory_reservation": "512m"}
        )


def test_resources_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="cpu_limits"):
        SwarmResources.model_validate({"cpu_limits": 1})


def test_ulimit_hard_defaults_to_soft_and_checks_order() -> None:
    settings = SwarmSettings.model_validate(
        {"ulimits": [{"name": "nofile", "soft": 1024}]}
    )
    assert settings.ulimits is not None
    assert settings.ulimits[0].hard is None

    with pytest.raises(ValidationError, match="above hard limit"):
        SwarmSettings.model_validate(
            {"ulimits": [{"name": "nofile", "soft": 4096, "hard": 1024}]}
        )


def test_extra_hosts_become_hosts_lines() -> None:
    """`host:ip` entries turn into `ip host` lines; IPv6 keeps its colons."""
    assert "192.0.2.10 registry.local" == hosts_line("registry.local:192.0.2.10")
    assert "::1 db" == hosts_line("db:::1")

    for entry in ("registry.local", "registry.local:not-an-ip", ":192.0.2.10"):
        with pytest.raises(ValueError):
            hosts_line(entry)


def test_spread_preferences_accept_prefix() -> None:
    assert "node.labels.zone" == spread_descriptor("spread=node.labels.zone")
    assert "node.labels.zone" == spread_descriptor("node.labels.zone")
    with pytest.raises(ValueError):
        spread_descriptor("spread=")


def test_sysctl_numbers_become_strings() -> None:
    settings = SwarmSettings.model_validate({"sysctls": {"kernel.msgmax": 65536}})

    assert {"kernel.msgmax": "65536"} == settings.sysctls


def test_environment_variables_reach_swarm_settings(tmp_path: Path) -> None:
    """Swarm options load from YAML and environment variables with their units."""
    (tmp_path / "default.yaml").write_text(
        yaml.safe_dump({"manager": {"id": "m"}, "opencti": {"daemon": {"swarm": {}}}})
    )
    environ = {
        "OPENCTI__DAEMON__SWARM__NETWORK": "host",
        "OPENCTI__DAEMON__SWARM__RESTART_DELAY": "1m",
        "OPENCTI__DAEMON__SWARM__RESOURCES__MEMORY_LIMIT": "512m",
        "OPENCTI__DAEMON__SWARM__PLACEMENT_CONSTRAINTS": '["node.role==worker"]',
    }

    swarm = load_settings(tmp_path, environ).opencti.daemon.swarm

    assert "host" == swarm.network
    assert 60.0 == swarm.restart_delay
    assert swarm.resources is not None
    assert 512 * 1024**2 == swarm.resources.memory_limit
    assert ["node.role==worker"] == swarm.placement_constraints


def test_invalid_swarm_setting_names_key(tmp_path: Path) -> None:
    """A bad value stops loading with the full key and the variable to fix."""
    (tmp_path / "default.yaml").write_text(yaml.safe_dump({"manager": {"id": "m"}}))
    environ = {"OPENCTI__DAEMON__SWARM__RESTART_CONDITION": "sometimes"}

    with pytest.raises(ConfigurationError) as raised:
        load_settings(tmp_path, environ)

    message = str(raised.value)
    assert "opencti.daemon.swarm.restart_condition" in message
    assert "OPENCTI__DAEMON__SWARM__RESTART_CONDITION" in message
