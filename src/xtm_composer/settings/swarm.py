"""Settings of the Docker Swarm orchestrator, under `<platform>.daemon.swarm`.

The key names are those of the reference XTM Composer. Units differ where the
reference passed raw Engine API integers, because a configuration file should
read like the docker CLI:

- CPUs are decimal cores (`0.5` is half a core), as `docker service create
  --limit-cpu` takes them. The Engine API receives NanoCPUs (cores x 1e9).
- Memory is a byte count, or a number with a binary unit as `docker run
  --memory` takes it: `512m`, `1.5g`, `256MiB` (k, m, g, t multiply by 1024).
- Durations are seconds, or a Go duration such as `500ms` or `1m30s`. The
  Engine API receives nanoseconds.

Values that only make sense in the reference's units (nanoseconds, NanoCPUs)
are rejected with the conversion, instead of being read as absurdly large.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from xtm_composer.settings.models import Section, StrList

NANOS_PER_SECOND = 1_000_000_000

MAX_DURATION_SECONDS = 86_400
"""Longer durations are rejected: they are almost surely nanosecond values."""

MAX_CPU_CORES = 1_000_000
"""Larger CPU values are rejected: they are almost surely NanoCPUs values."""

DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MEMORY_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)


def parse_duration(value: Any) -> Any:
    """Read seconds, a numeric string or a Go duration string as seconds."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(
            f"{value!r} is not a duration; write seconds (10, 0.5) or a duration "
            "with units (500ms, 10s, 1m30s)"
        )
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def check_duration(value: float | None) -> float | None:
    if value is None:
        return None
    if value < 0:
        raise ValueError("a duration cannot be negative")
    if value > MAX_DURATION_SECONDS:
        raise ValueError(
            f"{value:g} seconds is more than a day; durations are in seconds "
            "(the reference implementation read nanoseconds: divide such a value "
            "by 1000000000)"
        )
    return value


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


def parse_memory(value: Any) -> Any:
    """Read a byte count, or a number with a binary unit (`512m`, `1g`), as bytes."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("a byte count must be a whole number")
        return int(value)
    if not isinstance(value, str):
        return value
    match = MEMORY_SIZE.match(value.strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not a memory size; write bytes (536870912) or a number "
            "with a unit (512m, 1.5g, 256MiB)"
        )
    number, unit = match.groups()
    return int(float(number) * MEMORY_UNITS[unit.lower()])


MemorySize = Annotated[int | None, BeforeValidator(parse_memory), Field(ge=0)]


def stringify_values(value: Any) -> Any:
    """Accept YAML numbers as sysctl values (`net.core.somaxconn: 1024`)."""
    if isinstance(value, dict):
        return {
            key: str(item)
            if isinstance(item, int | float) and not isinstance(item, bool)
            else item
            for key, item in value.items()
        }
    return value


def check_cpu_cores(value: float | None) -> float | None:
    if value is None:
        return None
    if value <= 0:
        raise ValueError("a CPU amount must be above 0 (in cores, for example 0.5)")
    if value >= MAX_CPU_CORES:
        raise ValueError(
            f"{value:g} cores is not plausible; CPUs are decimal cores (0.5 is half "
            "a core), while the reference implementation read NanoCPUs: divide such "
            "a value by 1000000000"
        )
    return value


class SwarmResources(BaseModel):
    """Limits and reservations of each connector task."""

    model_config = ConfigDict(extra="forbid")

    cpu_limit: float | None = None
    """Maximum CPU of a task, in decimal cores."""
    memory_limit: MemorySize = None
    """Maximum memory of a task, in bytes (or `512m`...)."""
    cpu_reservation: float | None = None
    """CPU a node must have free to run a task, in decimal cores."""
    memory_reservation: MemorySize = None
    """Memory a node must have free to run a task, in bytes (or `512m`...)."""

    @field_validator("cpu_limit", "cpu_reservation")
    @classmethod
    def _check_cores(cls, value: float | None) -> float | None:
        return check_cpu_cores(value)

    @model_validator(mode="after")
    def _reservations_within_limits(self) -> SwarmResources:
        pairs = (
            ("cpu", self.cpu_reservation, self.cpu_limit),
            ("memory", self.memory_reservation, self.memory_limit),
        )
        for kind, reservation, limit in pairs:
            if reservation is not None and limit is not None and reservation > limit:
                raise ValueError(
                    f"{kind}_reservation ({reservation:g}) is above {kind}_limit "
                    f"({limit:g}): no task could ever be placed; lower the reservation"
                )
        return self


class Ulimit(BaseModel):
    """One resource limit of the task's processes, as `--ulimit name=soft:hard`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    soft: int = Field(ge=-1)
    hard: int | None = Field(default=None, ge=-1)
    """Defaults to `soft`."""

    @model_validator(mode="after")
    def _soft_within_hard(self) -> Ulimit:
        if self.hard is not None and self.hard != -1 and self.soft > self.hard:
            raise ValueError(f"soft limit {self.soft} is above hard limit {self.hard}")
        return self


class SwarmSettings(Section):
    """Options of the connector services on a Docker Swarm."""

    network: str | None = None
    """Network each task attaches to: `host`, `none` or an overlay network name."""
    extra_hosts: StrList | None = None
    """Lines for /etc/hosts as `host:ip`, as `docker service create --host`."""
    dns: StrList | None = None
    dns_search: StrList | None = None
    cap_add: StrList | None = None
    cap_drop: StrList | None = None
    sysctls: Annotated[dict[str, str] | None, BeforeValidator(stringify_values)] = None
    ulimits: list[Ulimit] | None = None
    hostname: str | None = None
    user: str | None = None
    """User (name or uid[:gid]) that runs the connector process."""
    read_only: bool | None = None
    """A read-only root filesystem for the connector container."""
    init: bool | None = None
    """An init process in the container, to forward signals and reap zombies."""
    stop_grace_period: Duration = None
    """Seconds a task gets to exit after SIGTERM before it is killed."""
    resources: SwarmResources | None = None
    placement_constraints: StrList | None = None
    """Constraints such as `node.role==worker` or `node.labels.zone==a`."""
    placement_preferences: StrList | None = None
    """Spread preferences such as `node.labels.zone` (or `spread=node.labels.zone`)."""
    restart_condition: Literal["none", "on-failure", "any"] | None = None
    """Condition under which Swarm replaces an ended task (Swarm's default: `any`)."""
    restart_delay: Duration = None
    """Seconds between an ended task and its replacement (Swarm's default: 5)."""
    restart_max_attempts: int | None = Field(default=None, ge=0)
    """Replacements before Swarm gives up. 0 or unset means no limit."""

    @field_validator("stop_grace_period", "restart_delay")
    @classmethod
    def _check_durations(cls, value: float | None) -> float | None:
        return check_duration(value)

    @field_validator("extra_hosts")
    @classmethod
    def _check_extra_hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for entry in value:
                hosts_line(entry)
        return value

    @field_validator("placement_preferences")
    @classmethod
    def _check_preferences(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for entry in value:
                spread_descriptor(entry)
        return value


def hosts_line(entry: str) -> str:
    """Turn `host:ip` into the `ip host` line that a service's Hosts field holds.

    The host is cut at the first `:`, so `db::1` maps `db` to `::1`.
    """
    host, separator, address = entry.strip().partition(":")
    if not separator or not host or not address:
        raise ValueError(
            f"{entry!r} is not host:ip (for example registry.local:192.0.2.10)"
        )
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{entry!r}: {address!r} is not an IP address") from None
    return f"{address} {host}"


def spread_descriptor(entry: str) -> str:
    """Return the label a spread preference names (`spread=` prefix optional)."""
    descriptor = entry.strip().removeprefix("spread=")
    if not descriptor or any(char.isspace() for char in descriptor):
        raise ValueError(
            f"{entry!r} is not a spread preference; write a node label such as "
            "node.labels.zone"
        )
    return descriptor
