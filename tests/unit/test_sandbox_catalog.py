"""Catalog loading and the contract configurations built from catalog entries."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import crypto
from xtm_composer.sandbox import configuration, encryption
from xtm_composer.sandbox.catalog import (
    DEFAULT_CATALOG_DIR,
    CatalogEntry,
    CatalogError,
    load_catalog,
    load_entry,
)
from xtm_composer.sandbox.configuration import (
    ConfigEntry,
    ConfigurationError,
    build_configuration,
    default_text,
)

SECRET = "do-not-print-me"

WIDGET_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "OPENCTI_URL": {"type": "string"},
        "OPENCTI_TOKEN": {"type": "string", "format": "password"},
        "CONNECTOR_NAME": {"type": "string", "default": "Widget"},
        "CONNECTOR_TYPE": {"type": "string", "default": "STREAM"},
        "CONNECTOR_RUN_AND_TERMINATE": {"type": "boolean", "default": False},
        "WIDGET_RATIO": {"type": "number", "default": 2.5},
        "WIDGET_WHOLE_RATIO": {"type": "number", "default": 3.0},
        "WIDGET_TAGS": {"type": "array", "items": {"type": "string"}, "default": []},
        "WIDGET_PORTS": {
            "type": "array",
            "items": {"type": "integer"},
            "default": [1, 2],
        },
        "WIDGET_SECRET": {"type": "string", "format": "password", "minLength": 20},
        "WIDGET_OPTIONAL_SECRET": {"type": "string", "format": "password"},
        "WIDGET_MODE": {"type": "string", "enum": ["fast", "slow"], "default": "slow"},
        "WIDGET_LIMIT": {"type": "integer", "minimum": 1, "default": 10},
        "WIDGET_ENABLED": {"type": "boolean", "default": False},
        "WIDGET_NULL_DEFAULT": {"type": "string", "default": None},
        "WIDGET_NOTE": {"type": "string"},
    },
    "required": ["OPENCTI_URL", "OPENCTI_TOKEN", "WIDGET_SECRET"],
    "additionalProperties": True,
}


def write_entry(
    folder: Path,
    slug: str,
    schema: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a catalog entry folder with a manifest and a schema."""
    folder.mkdir(parents=True)
    document = {
        "title": slug.title(),
        "slug": slug,
        "manager_supported": True,
        "container_image": f"example/{slug}",
        "container_version": "2.1.0",
        "container_type": "STREAM",
        **(overrides or {}),
    }
    (folder / "connector_manifest.json").write_text(json.dumps(document))
    (folder / "connector_config_schema.json").write_text(
        json.dumps(schema if schema is not None else WIDGET_SCHEMA)
    )
    return folder


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    """A 4096-bit key, generated once for the module (about a second)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture(scope="module")
def public_key(manager_key: rsa.RSAPrivateKey) -> rsa.RSAPublicKey:
    return encryption.load_public_key(crypto.public_key_pem(manager_key))


@pytest.fixture
def widget(tmp_path: Path) -> CatalogEntry:
    return load_entry(write_entry(tmp_path / "widget", "widget"))


def as_dict(entries: list[ConfigEntry]) -> dict[str, str]:
    return {entry.key: entry.value for entry in entries}


# Loading


def test_bundled_catalog_has_test_connector() -> None:
    """Without directories, the bundled connector-test entry is loaded."""
    catalog = load_catalog()

    entry = catalog["connector-test"]
    assert list(catalog) == ["connector-test"]
    assert entry.image == "opencti/connector-test:1.0.0"
    assert entry.container_type == "EXTERNAL_IMPORT"
    assert entry.manager_supported is True
    assert entry.properties["TEST_API_KEY"]["format"] == "password"
    assert entry.directory == DEFAULT_CATALOG_DIR / "connector-test"


def test_folder_of_entries(tmp_path: Path) -> None:
    """A folder of entry subfolders loads each one under its slug."""
    write_entry(tmp_path / "one", "alpha")
    write_entry(tmp_path / "two", "beta")
    (tmp_path / "not-an-entry").mkdir()

    catalog = load_catalog([tmp_path])

    assert sorted(catalog) == ["alpha", "beta"]
    assert catalog["beta"].image == "example/beta:2.1.0"


def test_entry_folder_and_several_folders(tmp_path: Path) -> None:
    """An entry folder is accepted as such, next to other folders."""
    single = write_entry(tmp_path / "single", "gamma")
    write_entry(tmp_path / "many" / "delta", "delta")

    catalog = load_catalog([single, tmp_path / "many"])

    assert sorted(catalog) == ["delta", "gamma"]


def test_duplicate_slug_rejected(tmp_path: Path) -> None:
    """Two entries with one slug are an error naming both folders."""
    first = write_entry(tmp_path / "a", "same")
    second = write_entry(tmp_path / "b", "same")

    with pytest.raises(CatalogError, match="defined twice") as caught:
        load_catalog([first, second])

    assert str(first) in str(caught.value)
    assert str(second) in str(caught.value)


@pytest.mark.parametrize(
    "key", ["slug", "container_image", "container_version", "container_type"]
)
def test_manifest_key_required(tmp_path: Path, key: str) -> None:
    """A manifest without one of the four keys is rejected with the key's name."""
    folder = write_entry(tmp_path / "entry", "entry", overrides={key: ""})

    with pytest.raises(CatalogError, match=key):
        load_entry(folder)


def test_invalid_json_rejected(tmp_path: Path) -> None:
    folder = write_entry(tmp_path / "entry", "entry")
    (folder / "connector_config_schema.json").write_text("{not json")

    with pytest.raises(CatalogError, match="not valid JSON"):
        load_entry(folder)


def test_invalid_schema_rejected(tmp_path: Path) -> None:
    """A schema that is no JSON Schema is rejected when loaded, not when used."""
    folder = write_entry(tmp_path / "entry", "entry", schema={"type": "no-such-type"})

    with pytest.raises(CatalogError, match="not a valid JSON Schema"):
        load_entry(folder)


def test_missing_schema_file_rejected(tmp_path: Path) -> None:
    folder = write_entry(tmp_path / "entry", "entry")
    (folder / "connector_config_schema.json").unlink()

    with pytest.raises(CatalogError, match="is missing"):
        load_entry(folder)


def test_empty_or_missing_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="contains no catalog entry"):
        load_catalog([tmp_path])
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog([tmp_path / "absent"])


def test_reference_catalog_loads(reference_dir: Path) -> None:
    """The real catalog samples load under their slugs, with tagged images."""
    catalog = load_catalog([reference_dir / "catalog"])

    assert {
        "abuseipdb",
        "crowdstrike-falcon-intel",
        "ipinfo",
        "nist-nvd-cve",
        "splunk",
    } == set(catalog)
    for slug, entry in catalog.items():
        assert slug == entry.directory.name
        assert entry.image == f"{entry.container_image}:{entry.container_version}"
        assert entry.manager_supported is True


# Building configurations


def test_defaults_in_schema_order(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """Defaults fill keys not given, as text, in the order of the schema."""
    built = build_configuration(widget, {"WIDGET_SECRET": SECRET * 2}, public_key)

    assert [entry.key for entry in built] == [
        "WIDGET_RATIO",
        "WIDGET_WHOLE_RATIO",
        "WIDGET_TAGS",
        "WIDGET_PORTS",
        "WIDGET_SECRET",
        "WIDGET_MODE",
        "WIDGET_LIMIT",
        "WIDGET_ENABLED",
    ]
    values = as_dict(built)
    assert values["WIDGET_RATIO"] == "2.5"
    assert values["WIDGET_WHOLE_RATIO"] == "3"
    assert values["WIDGET_TAGS"] == ""
    assert values["WIDGET_PORTS"] == "1,2"
    assert values["WIDGET_MODE"] == "slow"
    assert values["WIDGET_LIMIT"] == "10"
    assert values["WIDGET_ENABLED"] == "false"


def test_provided_keys_never_stored(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """Keys set by the platform or by xtm-composer get no schema default."""
    built = build_configuration(widget, {"WIDGET_SECRET": SECRET * 2}, public_key)

    keys = {entry.key for entry in built}
    assert set() == keys & configuration.PROVIDED_KEYS


def test_given_values_override_defaults(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """Given values win; integers are stored without sign or leading zeros."""
    given = {
        "WIDGET_SECRET": SECRET * 2,
        "WIDGET_MODE": "fast",
        "WIDGET_LIMIT": "+007",
        "WIDGET_ENABLED": "true",
        "WIDGET_NOTE": "hello, world",
        "WIDGET_RATIO": "0.25",
    }

    values = as_dict(build_configuration(widget, given, public_key))

    assert values["WIDGET_MODE"] == "fast"
    assert values["WIDGET_LIMIT"] == "7"
    assert values["WIDGET_ENABLED"] == "true"
    assert values["WIDGET_NOTE"] == "hello, world"
    assert values["WIDGET_RATIO"] == "0.25"


@pytest.mark.parametrize("version", encryption.VERSIONS)
def test_password_encrypted(
    widget: CatalogEntry,
    public_key: rsa.RSAPublicKey,
    manager_key: rsa.RSAPrivateKey,
    version: int,
) -> None:
    """Password keys are stored encrypted with the chosen version."""
    built = build_configuration(
        widget, {"WIDGET_SECRET": SECRET * 2}, public_key, encryption_version=version
    )

    secret = next(entry for entry in built if entry.key == "WIDGET_SECRET")
    assert secret.encrypted is True
    assert version == base64.b64decode(secret.value)[0]
    assert crypto.decrypt_value(manager_key, secret.value) == SECRET * 2
    assert all(not entry.encrypted for entry in built if entry is not secret)


def test_list_values_joined_for_arrays(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """GraphQL value lists join with commas for array keys; empty items drop."""
    given: dict[str, configuration.InputValue] = {
        "WIDGET_SECRET": [SECRET * 2],
        "WIDGET_TAGS": ["red", "", "blue"],
        "WIDGET_MODE": ["fast"],
    }

    values = as_dict(build_configuration(widget, given, public_key))

    assert values["WIDGET_TAGS"] == "red,blue"
    assert values["WIDGET_MODE"] == "fast"


def test_several_values_for_scalar_rejected(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    given: dict[str, configuration.InputValue] = {
        "WIDGET_SECRET": SECRET * 2,
        "WIDGET_MODE": ["fast", "slow"],
    }

    with pytest.raises(ConfigurationError, match="WIDGET_MODE takes one value"):
        build_configuration(widget, given, public_key)


@pytest.mark.parametrize("empty", [None, "", [], [""]])
def test_empty_value_means_not_given(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey, empty: Any
) -> None:
    """None, an empty text and an empty list all fall back to the default."""
    given = {"WIDGET_SECRET": SECRET * 2, "WIDGET_MODE": empty}

    values = as_dict(build_configuration(widget, given, public_key))

    assert values["WIDGET_MODE"] == "slow"


def test_missing_required_key_named(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """A required key without value or default is named; provided keys are not."""
    with pytest.raises(ConfigurationError) as caught:
        build_configuration(widget, {}, public_key)

    message = str(caught.value)
    assert "missing required key WIDGET_SECRET" in message
    assert "OPENCTI_URL" not in message
    assert "OPENCTI_TOKEN" not in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("WIDGET_ENABLED", "yes", "WIDGET_ENABLED must be true or false"),
        ("WIDGET_LIMIT", "ten", "WIDGET_LIMIT must be an integer"),
        ("WIDGET_LIMIT", "0", "WIDGET_LIMIT: 0 is less than the minimum of 1"),
        ("WIDGET_MODE", "medium", "WIDGET_MODE: 'medium' is not one of"),
        ("WIDGET_RATIO", "many", "WIDGET_RATIO must be a number"),
        ("WIDGET_RATIO", "nan", "WIDGET_RATIO must be a finite number"),
        ("WIDGET_PORTS", "1,two", "WIDGET_PORTS item 2 must be an integer"),
    ],
)
def test_invalid_value_named(
    widget: CatalogEntry,
    public_key: rsa.RSAPublicKey,
    key: str,
    value: str,
    expected: str,
) -> None:
    """An invalid value gives an error naming the key and the rule."""
    given = {"WIDGET_SECRET": SECRET * 2, key: value}

    with pytest.raises(ConfigurationError) as caught:
        build_configuration(widget, given, public_key)

    assert expected in str(caught.value)
    assert "catalog entry widget" in str(caught.value)


def test_invalid_secret_not_echoed(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """The error for a password value names the rule, never the value."""
    with pytest.raises(ConfigurationError) as caught:
        build_configuration(widget, {"WIDGET_SECRET": SECRET}, public_key)

    assert "WIDGET_SECRET does not satisfy minLength=20" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_unknown_key_rejected(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """A key outside the schema is an error listing the known keys."""
    given = {"WIDGET_SECRET": SECRET * 2, "WIDGET_MOOD": "calm"}

    with pytest.raises(ConfigurationError) as caught:
        build_configuration(widget, given, public_key)

    assert "unknown configuration keys for catalog entry widget: WIDGET_MOOD" in str(
        caught.value
    )
    assert "WIDGET_MODE" in str(caught.value)


@pytest.mark.parametrize("key", sorted(configuration.PROVIDED_KEYS))
def test_provided_key_rejected(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey, key: str
) -> None:
    """Keys the platform or xtm-composer set cannot be given."""
    given = {"WIDGET_SECRET": SECRET * 2, key: "value"}

    with pytest.raises(ConfigurationError, match=f"keys {key} are set by"):
        build_configuration(widget, given, public_key)


def test_edit_keeps_password_not_given(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """On edit, a password left out or given as its ciphertext keeps it."""
    first = build_configuration(widget, {"WIDGET_SECRET": SECRET * 2}, public_key)
    ciphertext = as_dict(first)["WIDGET_SECRET"]

    left_out = build_configuration(widget, {}, public_key, existing=first)
    echoed = build_configuration(
        widget, {"WIDGET_SECRET": ciphertext}, public_key, existing=first
    )

    assert ciphertext == as_dict(left_out)["WIDGET_SECRET"]
    assert ciphertext == as_dict(echoed)["WIDGET_SECRET"]


def test_edit_replaces_given_password(
    widget: CatalogEntry,
    public_key: rsa.RSAPublicKey,
    manager_key: rsa.RSAPrivateKey,
) -> None:
    """A new password value is encrypted again."""
    first = build_configuration(widget, {"WIDGET_SECRET": SECRET * 2}, public_key)

    edited = build_configuration(
        widget,
        {"WIDGET_SECRET": "another-secret-value-long"},
        public_key,
        existing=first,
    )

    ciphertext = as_dict(edited)["WIDGET_SECRET"]
    assert as_dict(first)["WIDGET_SECRET"] != ciphertext
    assert crypto.decrypt_value(manager_key, ciphertext) == "another-secret-value-long"


def test_edit_resets_plain_keys_not_given(
    widget: CatalogEntry, public_key: rsa.RSAPublicKey
) -> None:
    """Plain keys left out on edit fall back to their default, or disappear."""
    first = build_configuration(
        widget,
        {"WIDGET_SECRET": SECRET * 2, "WIDGET_MODE": "fast", "WIDGET_NOTE": "n"},
        public_key,
    )

    edited = as_dict(build_configuration(widget, {}, public_key, existing=first))

    assert edited["WIDGET_MODE"] == "slow"
    assert "WIDGET_NOTE" not in edited


def test_bundled_entry_builds(public_key: rsa.RSAPublicKey) -> None:
    """The bundled entry needs only TEST_API_KEY."""
    entry = load_catalog()["connector-test"]

    values = as_dict(build_configuration(entry, {"TEST_API_KEY": "k"}, public_key))

    assert {key: value for key, value in values.items() if key != "TEST_API_KEY"} == {
        "CONNECTOR_SCOPE": "indicator,report",
        "CONNECTOR_LOG_LEVEL": "info",
        "CONNECTOR_DURATION_PERIOD": "PT1H",
        "TEST_BATCH_SIZE": "100",
        "TEST_CREATE_INDICATORS": "true",
        "TEST_MAX_TLP": "TLP:AMBER",
    }


def test_reference_entries_build(
    reference_dir: Path, public_key: rsa.RSAPublicKey
) -> None:
    """Each real sample builds from its required keys; password keys get encrypted."""
    catalog = load_catalog([reference_dir / "catalog"])
    for entry in catalog.values():
        given = {
            key: "https://example.org/" if "URL" in key else "value"
            for key in entry.required
            if key not in configuration.PROVIDED_KEYS
        }

        built = build_configuration(entry, given, public_key)

        for item in built:
            schema = entry.properties[item.key]
            assert item.encrypted is configuration.is_password(schema), item.key
            assert item.key not in configuration.PROVIDED_KEYS


def test_reference_ipinfo_defaults(
    reference_dir: Path, public_key: rsa.RSAPublicKey
) -> None:
    """ipinfo's defaults come out as the platform writes them."""
    entry = load_catalog([reference_dir / "catalog"])["ipinfo"]

    built = build_configuration(entry, {"IPINFO_TOKEN": "token"}, public_key)

    assert [(item.key, item.value) for item in built if not item.encrypted] == [
        ("CONNECTOR_SCOPE", "IPv4-Addr,IPv6-Addr"),
        ("CONNECTOR_LOG_LEVEL", "error"),
        ("CONNECTOR_AUTO", "true"),
        ("IPINFO_MAX_TLP", "TLP:AMBER"),
        ("IPINFO_USE_ASN_NAME", "true"),
    ]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"default": True}, "true"),
        ({"default": False}, "false"),
        ({"default": 0}, "0"),
        ({"default": 1.0}, "1"),
        ({"default": 0.5}, "0.5"),
        ({"default": ["a", "b"]}, "a,b"),
        ({"default": [True, 2]}, "true,2"),
        ({"default": []}, ""),
        ({"default": "text"}, "text"),
        ({"default": None}, None),
        ({}, None),
    ],
)
def test_default_text(schema: dict[str, Any], expected: str | None) -> None:
    """Defaults become the text that JavaScript's String() would give."""
    assert expected == default_text(schema)
