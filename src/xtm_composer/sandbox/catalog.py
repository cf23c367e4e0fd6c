"""Catalog entries: the connectors that the sandbox can create.

An entry is a folder containing the two metadata files that every connector of the
OpenCTI connectors repository ships in `__metadata__/`:

- `connector_manifest.json`: title, `slug`, `container_image`,
  `container_version`, `container_type` and `manager_supported`;
- `connector_config_schema.json`: the JSON Schema (draft 2020-12) of the
  connector's environment variables.

The catalog id of an entry is its manifest `slug`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

MANIFEST_FILE = "connector_manifest.json"
CONFIG_SCHEMA_FILE = "connector_config_schema.json"
DEFAULT_CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
REQUIRED_MANIFEST_KEYS = (
    "slug",
    "container_image",
    "container_version",
    "container_type",
)


class CatalogError(Exception):
    """A catalog folder or entry cannot be loaded."""


@dataclass(frozen=True, eq=False)
class CatalogEntry:
    """One connector that the sandbox can create, read from its two files."""

    slug: str
    title: str
    container_image: str
    container_version: str
    container_type: str
    manager_supported: bool
    config_schema: Mapping[str, Any]
    directory: Path

    @property
    def image(self) -> str:
        """The image reference that xtm-composer deploys."""
        return f"{self.container_image}:{self.container_version}"

    @property
    def properties(self) -> Mapping[str, Mapping[str, Any]]:
        """The configuration keys of the schema, in schema order."""
        properties: Mapping[str, Mapping[str, Any]] = self.config_schema.get(
            "properties", {}
        )
        return properties

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.config_schema.get("required", ()))

    def summary(self) -> dict[str, Any]:
        """Describe the entry in plain JSON types, without its schema."""
        return {
            "slug": self.slug,
            "title": self.title,
            "container_image": self.container_image,
            "container_version": self.container_version,
            "container_type": self.container_type,
            "image": self.image,
            "manager_supported": self.manager_supported,
        }


def load_catalog(directories: Iterable[Path] | None = None) -> dict[str, CatalogEntry]:
    """Load every entry under `directories` (the bundled catalog by default).

    A directory is either an entry itself or a folder of entries, one per
    subfolder. Two entries with the same slug are an error.
    """
    folders = list(directories) if directories is not None else []
    if not folders:
        folders = [DEFAULT_CATALOG_DIR]

    catalog: dict[str, CatalogEntry] = {}
    for folder in folders:
        for entry in _load_folder(Path(folder)):
            known = catalog.get(entry.slug)
            if known is not None:
                raise CatalogError(
                    f"catalog slug {entry.slug!r} is defined twice: in "
                    f"{known.directory} and in {entry.directory}"
                )
            catalog[entry.slug] = entry
    return catalog


def _load_folder(folder: Path) -> list[CatalogEntry]:
    if not folder.is_dir():
        raise CatalogError(f"catalog directory {folder} does not exist")
    if (folder / MANIFEST_FILE).is_file():
        return [load_entry(folder)]

    entries = [
        load_entry(child)
        for child in sorted(folder.iterdir())
        if (child / MANIFEST_FILE).is_file()
    ]
    if not entries:
        raise CatalogError(
            f"catalog directory {folder} contains no catalog entry: expected "
            f"subfolders with {MANIFEST_FILE} and {CONFIG_SCHEMA_FILE}"
        )
    return entries


def load_entry(folder: Path) -> CatalogEntry:
    """Load and check the manifest and configuration schema in `folder`."""
    manifest = _read_json_object(folder / MANIFEST_FILE)
    schema = _read_json_object(folder / CONFIG_SCHEMA_FILE)

    for key in REQUIRED_MANIFEST_KEYS:
        value = manifest.get(key)
        if not isinstance(value, str) or not value:
            raise CatalogError(
                f"{folder / MANIFEST_FILE}: {key} must be a non-empty string"
            )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise CatalogError(
            f"{folder / CONFIG_SCHEMA_FILE} is not a valid JSON Schema: {error.message}"
        ) from None
    if not isinstance(schema.get("properties", {}), dict):
        raise CatalogError(
            f"{folder / CONFIG_SCHEMA_FILE}: properties must be an object"
        )

    return CatalogEntry(
        slug=manifest["slug"],
        title=str(manifest.get("title") or manifest["slug"]),
        container_image=manifest["container_image"],
        container_version=manifest["container_version"],
        container_type=manifest["container_type"],
        manager_supported=manifest.get("manager_supported") is True,
        config_schema=schema,
        directory=folder,
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{path} is missing") from None
    except OSError as error:
        raise CatalogError(f"cannot read {path}: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CatalogError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path} must contain a JSON object")
    return data
