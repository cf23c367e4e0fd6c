"""Contract configurations built from a catalog entry, as the platform builds them.

`build_configuration` follows the platform's rules for `managedConnectorAdd` and
`managedConnectorEdit` (OpenCTI `computeConnectorTargetContract`):

- keys come in the order of the schema's `properties`;
- a key takes the given value, else its schema `default` as text (booleans as
  `true`/`false`, arrays joined with `,`, numbers in decimal), else it is left
  out;
- `format: password` keys are encrypted for the manager's public key and stored
  with `encrypted: true`. On edit, a password key that is not given, or given as
  its stored ciphertext, keeps its stored ciphertext;
- the values are validated against the schema, and a required key without a
  value is an error.

Keys that the platform or xtm-composer provide (`PROVIDED_KEYS`) are never
taken from the schema or from the user. Unlike the platform, which drops unknown
keys silently, the sandbox rejects them so that a typo shows at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from xtm_composer.sandbox import encryption
from xtm_composer.sandbox.catalog import CatalogEntry

PLATFORM_KEYS = ("CONNECTOR_ID", "CONNECTOR_NAME", "CONNECTOR_TYPE", "OPENCTI_TOKEN")
"""Keys the platform appends to every contract, in this order."""

PROVIDED_KEYS = frozenset(
    (*PLATFORM_KEYS, "OPENCTI_URL", "CONNECTOR_RUN_AND_TERMINATE")
)
"""Keys never set from the catalog: the platform appends the first four,
xtm-composer sets OPENCTI_URL to its own platform URL, and the platform removes
CONNECTOR_RUN_AND_TERMINATE from every catalog schema."""

PASSWORD_FORMAT = "password"
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")

InputValue = str | Sequence[str] | None
"""A given value: text, the list of texts of GraphQL `ContractConfigInput`, or
None. None, an empty text and an empty list all mean "not given"."""


class ConfigurationError(ValueError):
    """A configuration does not fit its catalog entry. Names keys, not secrets."""


@dataclass(frozen=True)
class ConfigEntry:
    """One key of a connector contract; `value` is ciphertext when encrypted."""

    key: str
    value: str
    encrypted: bool = False


def is_password(schema: Mapping[str, Any]) -> bool:
    return schema.get("format") == PASSWORD_FORMAT


def build_configuration(
    entry: CatalogEntry,
    given: Mapping[str, InputValue],
    public_key: rsa.RSAPublicKey,
    *,
    encryption_version: int = encryption.DEFAULT_VERSION,
    existing: Sequence[ConfigEntry] = (),
) -> list[ConfigEntry]:
    """Build the stored configuration of a connector of `entry`.

    `existing` is the stored configuration on edit. Raises ConfigurationError
    naming every unknown, invalid or missing key.
    """
    _reject_unknown_keys(entry, given)
    stored = {item.key: item for item in existing}
    texts = {
        key: _join(key, entry.properties[key], value) for key, value in given.items()
    }

    kept: dict[str, ConfigEntry] = {}
    plain: dict[str, str] = {}
    for key, schema in entry.properties.items():
        if key in PROVIDED_KEYS:
            continue
        text = texts.get(key) or None
        previous = stored.get(key)
        if previous is not None and _keeps_ciphertext(schema, text, previous):
            kept[key] = previous
            continue
        if text is None:
            text = default_text(schema)
        if text is not None:
            plain[key] = text

    errors = _missing_keys(entry, set(kept) | set(plain))
    errors += _validate(entry, plain)
    if errors:
        raise ConfigurationError(
            f"invalid configuration for catalog entry {entry.slug}: "
            + "; ".join(errors)
        )

    configuration = []
    for key, schema in entry.properties.items():
        if key in kept:
            configuration.append(kept[key])
        elif key in plain and is_password(schema):
            ciphertext = encryption.encrypt_value(
                public_key, plain[key], encryption_version
            )
            configuration.append(ConfigEntry(key, ciphertext, encrypted=True))
        elif key in plain:
            configuration.append(ConfigEntry(key, normalise(schema, plain[key])))
    return configuration


def _keeps_ciphertext(
    schema: Mapping[str, Any], text: str | None, previous: ConfigEntry
) -> bool:
    """Tell whether an edit keeps a stored password: not given, or given unchanged."""
    if not is_password(schema) or not previous.encrypted:
        return False
    return text is None or text == previous.value


def default_text(schema: Mapping[str, Any]) -> str | None:
    """Return the schema default as the platform stores it, or None."""
    default = schema.get("default")
    if default is None:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, list):
        return ",".join(_scalar_text(item) for item in default)
    return _scalar_text(default)


def normalise(schema: Mapping[str, Any], text: str) -> str:
    """Return the stored form of a validated value: integers lose signs and zeros."""
    if schema.get("type") == "integer":
        return str(int(text))
    return text


def _scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _reject_unknown_keys(entry: CatalogEntry, given: Mapping[str, InputValue]) -> None:
    provided = sorted(key for key in given if key in PROVIDED_KEYS)
    if provided:
        raise ConfigurationError(
            f"configuration keys {', '.join(provided)} are set by the platform or "
            "by xtm-composer and cannot be given"
        )
    unknown = sorted(key for key in given if key not in entry.properties)
    if unknown:
        known = ", ".join(key for key in entry.properties if key not in PROVIDED_KEYS)
        raise ConfigurationError(
            f"unknown configuration keys for catalog entry {entry.slug}: "
            f"{', '.join(unknown)} (known keys: {known})"
        )


def _join(key: str, schema: Mapping[str, Any], value: InputValue) -> str:
    """Reduce a given value to one text; only array keys take several values."""
    if value is None or isinstance(value, str):
        return value or ""
    texts = [text for text in value if text != ""]
    if len(texts) > 1 and schema.get("type") != "array":
        raise ConfigurationError(
            f"configuration key {key} takes one value, {len(texts)} were given"
        )
    return ",".join(texts)


def _missing_keys(entry: CatalogEntry, present: set[str]) -> list[str]:
    missing = [
        key for key in entry.required if key not in PROVIDED_KEYS and key not in present
    ]
    return [f"missing required key {key}" for key in missing]


def _validate(entry: CatalogEntry, plain: Mapping[str, str]) -> list[str]:
    """Check each value against its property schema; messages hide secrets."""
    errors: list[str] = []
    instance: dict[str, Any] = {}
    for key, text in plain.items():
        schema = entry.properties[key]
        try:
            instance[key] = _typed(schema, text)
        except ValueError as error:
            errors.append(f"{key} {error}")

    checked = {key: entry.properties[key] for key in instance}
    validator = Draft202012Validator(
        {"type": "object", "properties": checked},
        # NOTE: jsonschema skips a format whose helper package is missing, so
        # `uri` (rfc3987 or rfc3986-validator) and `duration` (isoduration)
        # may pass unchecked. It never checks `password`.
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    for violation in sorted(validator.iter_errors(instance), key=_error_key):
        errors.append(_describe(entry, violation))
    return errors


def _typed(schema: Mapping[str, Any], text: str) -> Any:
    """Convert text to the JSON type that the schema expects.

    The platform validates with Ajv's `coerceTypes`, so array items are
    converted too: `1,2` is valid for an array of integers.
    """
    kind = schema.get("type")
    if kind == "boolean":
        if text not in ("true", "false"):
            raise ValueError("must be true or false")
        return text == "true"
    if kind == "integer":
        if not INTEGER_TEXT.fullmatch(text):
            raise ValueError("must be an integer")
        return int(text)
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if kind == "array":
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [_typed_item(schema, index, item) for index, item in enumerate(items)]
    return text


def _typed_item(schema: Mapping[str, Any], index: int, text: str) -> Any:
    items_schema = schema.get("items")
    if not isinstance(items_schema, Mapping):
        return text
    try:
        return _typed(items_schema, text)
    except ValueError as error:
        raise ValueError(f"item {index + 1} {error}") from None


def _error_key(error: ValidationError) -> str:
    return str(error.path[0]) if error.path else ""


def _describe(entry: CatalogEntry, error: ValidationError) -> str:
    key = _error_key(error)
    schema = entry.properties.get(key, {})
    if is_password(schema):
        # The message of jsonschema quotes the value, so a secret gets only
        # the name of the rule it breaks.
        return f"{key} does not satisfy {error.validator}={error.validator_value!r}"
    return f"{key}: {error.message}"
