"""Workload names and labels derived from a connector.

A name is the connector's name made safe for every engine (an RFC 1123 label:
lower-case letters, digits and `-`, at most 63 characters), followed by a hash of
the connector id. Two connectors with the same name therefore never share a
workload, and a long or non-ASCII name still gives a valid, stable name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    MANAGER_LABEL,
    PLATFORM_LABEL,
)

MAX_NAME_LENGTH = 63
ID_HASH_LENGTH = 10
FALLBACK_NAME = "connector"


def workload_name(connector_name: str, connector_id: str) -> str:
    """Return the engine name of a connector's workload."""
    suffix = hashlib.sha256(connector_id.encode()).hexdigest()[:ID_HASH_LENGTH]
    room = MAX_NAME_LENGTH - ID_HASH_LENGTH - 1
    stem = slugify(connector_name)[:room].rstrip("-") or FALLBACK_NAME
    return f"{stem}-{suffix}"


def slugify(text: str) -> str:
    """Lower-case ASCII letters and digits, other runs of characters become `-`."""
    ascii_text = (
        unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    )
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def workload_labels(
    manager_id: str, platform: str, connector_id: str, contract_hash: str
) -> dict[str, str]:
    """Return the labels that tie a workload to its manager and connector."""
    return {
        MANAGER_LABEL: manager_id,
        PLATFORM_LABEL: platform,
        CONNECTOR_ID_LABEL: connector_id,
        CONTRACT_HASH_KEY: contract_hash,
    }


def selector_labels(manager_id: str, platform: str) -> dict[str, str]:
    """Return the labels shared by every workload of this manager on `platform`."""
    return {MANAGER_LABEL: manager_id, PLATFORM_LABEL: platform}
