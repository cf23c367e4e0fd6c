"""Host options of connector containers, from `DockerSettings` to docker SDK arguments.

The result is a keyword dictionary for `docker.APIClient.create_host_config`. Only
the options an operator set are passed, so the engine's defaults apply to the
rest. Values the SDK would reject late, at the first deploy, are rejected here
with the name of the setting instead.
"""

from __future__ import annotations

from typing import Any

import docker.types

from xtm_composer.settings import DockerSettings

SETTINGS_PREFIX = "daemon.docker"

# Options copied as they are: the setting and the SDK argument share one name.
PLAIN_OPTIONS = (
    "network_mode",
    "extra_hosts",
    "dns",
    "dns_search",
    "privileged",
    "cap_add",
    "cap_drop",
    "security_opt",
    "userns_mode",
    "pid_mode",
    "ipc_mode",
    "uts_mode",
    "runtime",
    "shm_size",
    "sysctls",
)

# The docker SDK (7.1) accepts only "host" for these two namespace modes.
HOST_ONLY_OPTIONS = ("userns_mode", "uts_mode")

ULIMIT_KEYS = frozenset({"name", "soft", "hard"})


class HostOptionError(ValueError):
    """A Docker host option that the engine or the SDK would reject."""


def host_config_options(settings: DockerSettings) -> dict[str, Any]:
    """Return the `create_host_config` keyword arguments for `settings`."""
    options: dict[str, Any] = {}
    for name in PLAIN_OPTIONS:
        value = getattr(settings, name)
        if value is not None:
            options[name] = value

    for name in HOST_ONLY_OPTIONS:
        if options.get(name) not in (None, "host"):
            raise HostOptionError(
                f"invalid {SETTINGS_PREFIX}.{name} {options[name]!r}: "
                'the only supported value is "host"; remove the setting otherwise'
            )

    if settings.ulimits is not None:
        options["ulimits"] = [
            ulimit_from_setting(index, item)
            for index, item in enumerate(settings.ulimits)
        ]

    options["restart_policy"] = {"Name": settings.restart_policy}
    if settings.restart_policy == "on-failure":
        # Zero means no limit: the engine keeps restarting and counting.
        options["restart_policy"]["MaximumRetryCount"] = 0
    return options


def ulimit_from_setting(index: int, item: dict[str, Any]) -> docker.types.Ulimit:
    """Build one `Ulimit` from `{name, soft, hard}`. A missing `hard` equals `soft`."""
    where = f"{SETTINGS_PREFIX}.ulimits[{index}]"
    unknown = sorted(set(item) - ULIMIT_KEYS)
    if unknown:
        raise HostOptionError(
            f"invalid {where}: unknown keys {unknown}; use name, soft and hard"
        )

    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise HostOptionError(f"invalid {where}: missing name (for example nofile)")

    soft = limit_value(where, "soft", item.get("soft"))
    hard = limit_value(where, "hard", item.get("hard", soft))
    if soft > hard:
        raise HostOptionError(
            f"invalid {where}: soft limit {soft} is above hard limit {hard}"
        )
    return docker.types.Ulimit(name=name, soft=soft, hard=hard)


def limit_value(where: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HostOptionError(f"invalid {where}.{key} {value!r}: expected an integer")
    return value
