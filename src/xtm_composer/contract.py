"""Managed connectors as the platform describes them, and their contract hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import crypto


class RequestedStatus(StrEnum):
    STARTING = "starting"
    STOPPING = "stopping"


class CurrentStatus(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ContractEntry:
    """One configuration key of a connector contract."""

    key: str
    value: str | None
    encrypted: bool = False


@dataclass(frozen=True)
class ManagedConnector:
    """A connector that the platform wants this manager to run."""

    id: str
    name: str
    image: str
    contract_hash: str
    requested_status: RequestedStatus
    current_status: CurrentStatus | None = None
    configuration: tuple[ContractEntry, ...] = field(default_factory=tuple)

    @property
    def wants_running(self) -> bool:
        return self.requested_status is RequestedStatus.STARTING


class ContractValueError(Exception):
    """An encrypted contract value cannot be used; names the key, never the value."""

    def __init__(self, connector_id: str, key: str, reason: str) -> None:
        super().__init__(f"cannot decrypt contract value {key}: {reason}")
        self.connector_id = connector_id
        self.key = key
        self.reason = reason


def build_environment(
    connector: ManagedConnector, manager_key: rsa.RSAPrivateKey
) -> dict[str, str]:
    """Return the container environment, with encrypted values decrypted.

    A value that cannot be decrypted raises `ContractValueError`: an empty string in
    its place would start the connector with a wrong credential.
    """
    environment: dict[str, str] = {}
    for entry in connector.configuration:
        if entry.value is None:
            continue
        if not entry.encrypted:
            environment[entry.key] = entry.value
            continue
        try:
            environment[entry.key] = crypto.decrypt_value(manager_key, entry.value)
        except crypto.DecryptionError as error:
            raise ContractValueError(connector.id, entry.key, str(error)) from None
    return environment


def contract_hash(
    image: str, configuration: Iterable[tuple[str, str]], state: str | None
) -> str:
    """Compute the platform's 8-character contract hash.

    The platform hashes `JSON.stringify({image, subHash, state})`, where `subHash`
    lists `key|value` in contract order and `state` is left out when undefined.
    Encrypted values enter as their ciphertext.
    """
    document: dict[str, object] = {
        "image": image,
        "subHash": [f"{key}|{value}" for key, value in configuration],
    }
    if state is not None:
        document["state"] = state
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
