"""Layered configuration: `default.yaml`, then `$COMPOSER_ENV.yaml`, then env vars.

An environment variable names a key path in upper case with `__` between levels:
`OPENCTI__DAEMON__REGISTRY__SERVER` sets `opencti.daemon.registry.server`. A value
that starts with `[` or `{` is parsed as JSON, so lists and maps fit in one variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from xtm_composer.settings.models import Settings

ROOT_SECTIONS = ("manager", "opencti", "openaev")
SECRET_KEY_PARTS = ("token", "password", "credentials_key", "api_key", "proxy")


class ConfigurationError(Exception):
    """Invalid configuration: the message names the key, the value and the fix."""


def load_settings(
    config_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate the configuration, raising `ConfigurationError`."""
    environ = os.environ if environ is None else environ
    explicit = config_dir is not None or "COMPOSER_CONFIG_DIR" in environ
    config_dir = config_dir or Path(environ.get("COMPOSER_CONFIG_DIR", "config"))
    if explicit and not config_dir.is_dir():
        # The default ./config may be absent, but a folder the operator named
        # must exist: running on built-in defaults would hide the mistake.
        raise ConfigurationError(
            f"configuration folder {config_dir} does not exist; fix --config-dir "
            "or COMPOSER_CONFIG_DIR"
        )
    composer_env = environ.get("COMPOSER_ENV", "production")

    merged: dict[str, Any] = {}
    for path in (config_dir / "default.yaml", config_dir / f"{composer_env}.yaml"):
        deep_merge(merged, read_yaml(path))
    deep_merge(merged, read_environment(environ))
    # An absent manager section is reported as its missing keys, not as a whole.
    merged.setdefault("manager", {})

    try:
        return Settings.model_validate(merged)
    except pydantic.ValidationError as error:
        raise ConfigurationError(describe_validation_error(error, merged)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Return the mapping in `path`, or an empty one when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"configuration file {path} is not UTF-8 text (invalid byte at "
            f"position {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigurationError(
            f"cannot read configuration file {path}: {error.strerror}"
        ) from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigurationError(
            f"configuration file {path} is not valid YAML: {error}"
        ) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigurationError(
            f"configuration file {path} must contain a mapping at the top level, "
            f"not a {type(content).__name__}"
        )
    return content


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn `SECTION__KEY__SUBKEY=value` variables into a nested mapping."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        parts = name.lower().split("__")
        if len(parts) < 2 or parts[0] not in ROOT_SECTIONS or "" in parts:
            continue
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigurationError(
                    f"environment variable {name} sets a key below "
                    f"{'.'.join(parts[:-1])}, which another variable sets to a value"
                )
            node = child
        node[parts[-1]] = parse_environment_value(name, raw)
    return tree


def parse_environment_value(name: str, raw: str) -> Any:
    """Parse JSON lists and maps; keep every other value as the string it is."""
    if not raw.lstrip().startswith(("[", "{")):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"environment variable {name} starts like JSON but is not valid JSON "
            f"({error.msg} at character {error.pos}); write a JSON list or object, "
            "or a plain value that does not start with '[' or '{'"
        ) from None


def deep_merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    """Merge `source` into `target`; maps merge key by key, other values replace."""
    for key, value in source.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            deep_merge(current, value)
        else:
            target[key] = value


def describe_validation_error(
    error: pydantic.ValidationError, raw: Mapping[str, Any]
) -> str:
    """Write one line per invalid key: its path, its value and how to fix it."""
    lines = ["invalid configuration:"]
    for detail in error.errors(include_url=False):
        path = ".".join(str(part) for part in detail["loc"])
        env_name = "__".join(str(part) for part in detail["loc"]).upper()
        if detail["type"] == "missing":
            lines.append(
                f"  {path} is missing: set it in the YAML configuration "
                f"or with the environment variable {env_name}"
            )
            continue
        shown = shown_value(path, lookup(raw, detail["loc"]))
        reason = detail["msg"].removeprefix("Value error, ")
        lines.append(
            f"  {path} = {shown}: {reason}; "
            f"fix it in the YAML configuration or with {env_name}"
        )
    return "\n".join(lines)


def shown_value(path: str, value: Any) -> str:
    """Render a value for an error message, hiding anything that may be a secret."""
    if any(part in path for part in SECRET_KEY_PARTS):
        return "<hidden>"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


def lookup(tree: Any, location: tuple[int | str, ...]) -> Any:
    for part in location:
        in_mapping = isinstance(tree, Mapping) and part in tree
        in_list = isinstance(tree, list) and isinstance(part, int) and part < len(tree)
        if in_mapping or in_list:
            tree = tree[part]
        else:
            return None
    return tree


ADAPTER_SECTIONS = ("docker", "portainer", "swarm")
"""Sections whose orchestrator reports its own unknown keys when it is used."""

REFERENCE_ONLY_KEYS = frozenset({"manager.logger.directory", "manager.logger.console"})
"""Keys of the reference configuration that this agent accepts and ignores."""


def unknown_keys(model: pydantic.BaseModel, prefix: str = "") -> list[str]:
    """List the keys of the configuration that no setting reads (typos, mostly)."""
    found = [
        f"{prefix}{key}"
        for key in (model.model_extra or {})
        if f"{prefix}{key}" not in REFERENCE_ONLY_KEYS
    ]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, pydantic.BaseModel) and name not in ADAPTER_SECTIONS:
            found += unknown_keys(value, f"{prefix}{name}.")
    return found
