"""What the sandbox platform stores: its manager, its managed connectors, its version.

The rules follow the OpenCTI platform:

- one connector manager per platform: a second manager id is rejected. The
  registered manager may register again to change its name or public key;
- creating or editing a connector needs a registered manager, because sensitive
  values and the connector's `OPENCTI_TOKEN` are encrypted for its public key;
- a new connector gets `connector_state_timestamp` set to its creation time,
  which enters its contract hash;
- the contract is the stored configuration followed by `CONNECTOR_ID`,
  `CONNECTOR_NAME`, `CONNECTOR_TYPE` and the encrypted `OPENCTI_TOKEN`;
- logs and health pushed for an unknown connector id are accepted and dropped.

One difference: the platform stores `stopped` as the requested status of a new
connector, a value outside the `ConnectorRequestStatus` enum that xtm-composer
reads as "not starting". The sandbox stores `stopping` by default, the enum value
with that meaning; pass `initial_requested_status="stopped"` to get the
platform's value.

All methods are thread-safe and return copies. With a `state_file`, the managers
and connectors are loaded from it at start and written to it after each change,
atomically. The platform version is not saved: it is a setting of the run.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import contract, crypto, logs
from xtm_composer.sandbox import encryption
from xtm_composer.sandbox.catalog import CatalogEntry, load_catalog
from xtm_composer.sandbox.configuration import (
    ConfigEntry,
    ConfigurationError,
    InputValue,
    build_configuration,
)

log = logs.get_logger(__name__)

DEFAULT_PLATFORM_VERSION = "6.9.0"
REQUESTED_STATUSES = ("starting", "stopping")
CURRENT_STATUSES = ("started", "stopped")
INITIAL_REQUESTED_STATUSES = ("stopping", "stopped")
MANAGER_ACTIVE_WINDOW = timedelta(minutes=5)
"""A manager is active when it pinged within this window, as on the platform."""
STATE_FILE_FORMAT = 1


class SandboxError(Exception):
    """An operation that the platform would reject; the message goes to the client."""

    def __init__(self, message: str, code: str = "FUNCTIONAL_ERROR") -> None:
        super().__init__(message)
        self.extensions = {"code": code}


class StateFileError(Exception):
    """The state file cannot be read or does not contain sandbox state."""


@dataclass
class Manager:
    """The registered connector manager (an xtm-composer instance)."""

    id: str
    name: str
    public_key_pem: str
    registered_at: str
    last_sync_execution: str

    def is_active(self, now: datetime) -> bool:
        last_ping = datetime.fromisoformat(self.last_sync_execution)
        return now - last_ping < MANAGER_ACTIVE_WINDOW


@dataclass(frozen=True)
class HealthMetrics:
    """The last health report of a connector's workload."""

    restart_count: int
    started_at: str
    is_in_reboot_loop: bool
    last_update: str


@dataclass
class Connector:
    """A managed connector, with its configuration as stored (ciphertext included)."""

    id: str
    name: str
    catalog_id: str
    connector_type: str
    connector_user_id: str
    image: str
    configuration: list[ConfigEntry]
    token_ciphertext: str
    requested_status: str
    created_at: str
    updated_at: str
    state_timestamp: str | None = None
    contract_hash: str = ""
    current_status: str | None = None
    logs: list[str] = field(default_factory=list)
    health: HealthMetrics | None = None

    def contract(self) -> list[ConfigEntry]:
        """Return the contract that xtm-composer receives, platform keys last."""
        return [
            *self.configuration,
            ConfigEntry("CONNECTOR_ID", self.id),
            ConfigEntry("CONNECTOR_NAME", self.name),
            ConfigEntry("CONNECTOR_TYPE", self.connector_type),
            ConfigEntry("OPENCTI_TOKEN", self.token_ciphertext, encrypted=True),
        ]

    def compute_hash(self) -> str:
        pairs = [(item.key, item.value) for item in self.contract()]
        return contract.contract_hash(self.image, pairs, self.state_timestamp)


def timestamp(moment: datetime | None = None) -> str:
    """Format a UTC time like JavaScript's `toISOString()`: milliseconds and Z."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class SandboxState:
    """The platform's stored objects, shared by the server threads."""

    def __init__(
        self,
        catalog: Mapping[str, CatalogEntry] | None = None,
        *,
        platform_version: str = DEFAULT_PLATFORM_VERSION,
        state_file: Path | None = None,
        encryption_version: int = encryption.DEFAULT_VERSION,
        initial_requested_status: str = "stopping",
    ) -> None:
        if encryption_version not in encryption.VERSIONS:
            raise ValueError(
                f"encryption_version must be 1 or 2, not {encryption_version}"
            )
        if initial_requested_status not in INITIAL_REQUESTED_STATUSES:
            raise ValueError(
                "initial_requested_status must be stopping or stopped, "
                f"not {initial_requested_status!r}"
            )
        _check_version(platform_version)

        self.catalog: dict[str, CatalogEntry] = (
            dict(catalog) if catalog is not None else load_catalog()
        )
        self.state_file = state_file
        self.encryption_version = encryption_version
        self.initial_requested_status = initial_requested_status
        self._platform_version = platform_version
        self._lock = threading.RLock()
        self._managers: dict[str, Manager] = {}
        self._connectors: dict[str, Connector] = {}
        if state_file is not None and state_file.exists():
            self._load(state_file)

    # Platform version

    @property
    def platform_version(self) -> str:
        with self._lock:
            return self._platform_version

    def set_platform_version(self, version: str) -> None:
        """Change `about.version`, as a platform upgrade does."""
        _check_version(version)
        with self._lock:
            previous, self._platform_version = self._platform_version, version
        log.info("platform version changed", previous=previous, version=version)

    # Managers

    def register_manager(
        self, manager_id: str, name: str, public_key_pem: str
    ) -> Manager:
        """Register the manager, or update the name and key of the registered one."""
        key = _load_manager_key(public_key_pem)
        with self._lock:
            other = next(
                (m for m in self._managers.values() if m.id != manager_id), None
            )
            if other is not None:
                raise SandboxError(
                    f"only one connector manager is supported per platform, and "
                    f"manager {other.id} ({other.name}) is already registered"
                )
            now = timestamp()
            manager = self._managers.get(manager_id)
            if manager is None:
                manager = Manager(manager_id, name, public_key_pem, now, now)
                self._managers[manager_id] = manager
            else:
                manager.name = name
                manager.public_key_pem = public_key_pem
                manager.last_sync_execution = now
            self._save()
            log.info(
                "connector manager registered",
                manager_id=manager_id,
                name=name,
                key_bits=key.key_size,
            )
            return copy.deepcopy(manager)

    def ping_manager(self, manager_id: str) -> Manager:
        """Record a ping of the manager; an unknown id is an error."""
        with self._lock:
            manager = self._managers.get(manager_id)
            if manager is None:
                raise SandboxError(
                    f"connector manager {manager_id} is not registered; "
                    "register it with registerConnectorsManager first"
                )
            manager.last_sync_execution = timestamp()
            self._save()
            return copy.deepcopy(manager)

    def manager(self) -> Manager | None:
        """Return the registered manager, if any."""
        with self._lock:
            first = next(iter(self._managers.values()), None)
            return copy.deepcopy(first)

    # Connectors: administration

    def add_connector(
        self,
        catalog_id: str,
        name: str,
        image: str,
        values: Mapping[str, InputValue],
        connector_user_id: str,
    ) -> Connector:
        """Create a connector of a catalog entry, as `managedConnectorAdd` does."""
        entry = self._catalog_entry(catalog_id)
        if image not in (entry.container_image, entry.image):
            raise SandboxError(
                f"manager_contract_image {image!r} does not match catalog entry "
                f"{entry.slug}, whose image is {entry.container_image!r}"
            )
        with self._lock:
            name = self._check_name(name, connector_id=None)
            public_key = self._manager_key()
            configuration = self._build(entry, values, public_key, existing=())
            now = timestamp()
            connector = Connector(
                id=str(uuid.uuid4()),
                name=name,
                catalog_id=entry.slug,
                connector_type=entry.container_type,
                connector_user_id=_check_user_id(connector_user_id),
                image=entry.image,
                configuration=configuration,
                token_ciphertext=self._new_token(public_key),
                requested_status=self.initial_requested_status,
                created_at=now,
                updated_at=now,
                state_timestamp=now,
            )
            connector.contract_hash = connector.compute_hash()
            self._connectors[connector.id] = connector
            self._save()
            log.info(
                "connector added",
                connector_id=connector.id,
                name=name,
                catalog_id=entry.slug,
                image=connector.image,
                contract_hash=connector.contract_hash,
            )
            return copy.deepcopy(connector)

    def edit_connector(
        self,
        connector_id: str,
        name: str,
        values: Mapping[str, InputValue],
        connector_user_id: str,
    ) -> Connector:
        """Replace name and configuration, as `managedConnectorEdit` does.

        Password keys left out keep their ciphertext. The image follows the
        catalog entry as loaded now, so an entry with a new `container_version`
        upgrades the connector.
        """
        with self._lock:
            connector = self._require_connector(connector_id)
            entry = self.catalog.get(connector.catalog_id)
            if entry is None:
                raise SandboxError(
                    f"catalog entry {connector.catalog_id} of connector {connector_id} "
                    "is not loaded; start the sandbox with the catalog that holds it"
                )
            name = self._check_name(name, connector_id=connector_id)
            public_key = self._manager_key()
            configuration = self._build(
                entry, values, public_key, existing=connector.configuration
            )
            connector.name = name
            connector.connector_user_id = _check_user_id(connector_user_id)
            connector.configuration = configuration
            connector.image = entry.image
            connector.updated_at = timestamp()
            previous_hash, connector.contract_hash = (
                connector.contract_hash,
                connector.compute_hash(),
            )
            self._save()
            log.info(
                "connector edited",
                connector_id=connector_id,
                name=name,
                previous_hash=previous_hash,
                contract_hash=connector.contract_hash,
            )
            return copy.deepcopy(connector)

    def request_status(self, connector_id: str, status: str) -> Connector:
        """Set the requested status (`starting` or `stopping`)."""
        if status not in REQUESTED_STATUSES:
            raise SandboxError(
                f"requested status must be starting or stopping, not {status!r}"
            )
        with self._lock:
            connector = self._require_connector(connector_id)
            connector.requested_status = status
            connector.updated_at = timestamp()
            self._save()
            log.info(
                "connector status requested", connector_id=connector_id, status=status
            )
            return copy.deepcopy(connector)

    def delete_connector(self, connector_id: str) -> str:
        with self._lock:
            self._require_connector(connector_id)
            del self._connectors[connector_id]
            self._save()
        log.info("connector deleted", connector_id=connector_id)
        return connector_id

    # Connectors: reports of the manager

    def set_current_status(self, connector_id: str, status: str) -> Connector:
        if status not in CURRENT_STATUSES:
            raise SandboxError(
                f"current status must be started or stopped, not {status!r}"
            )
        with self._lock:
            connector = self._require_connector(connector_id)
            previous, connector.current_status = connector.current_status, status
            connector.updated_at = timestamp()
            self._save()
            if previous != status:
                log.info(
                    "connector current status changed",
                    connector_id=connector_id,
                    previous=previous,
                    status=status,
                )
            return copy.deepcopy(connector)

    def set_logs(self, connector_id: str, lines: Sequence[str]) -> bool:
        """Replace the connector's logs; returns False for an unknown id."""
        with self._lock:
            connector = self._connectors.get(connector_id)
            if connector is None:
                log.debug(
                    "logs for an unknown connector dropped", connector_id=connector_id
                )
                return False
            connector.logs = list(lines)
            self._save()
            return True

    def set_health(
        self,
        connector_id: str,
        restart_count: int,
        started_at: str,
        is_in_reboot_loop: bool,
    ) -> bool:
        """Store the connector's health with `last_update` set to now."""
        with self._lock:
            connector = self._connectors.get(connector_id)
            if connector is None:
                log.debug(
                    "health for an unknown connector dropped", connector_id=connector_id
                )
                return False
            connector.health = HealthMetrics(
                restart_count, started_at, is_in_reboot_loop, timestamp()
            )
            self._save()
            return True

    # Reads

    def connector(self, connector_id: str) -> Connector | None:
        with self._lock:
            return copy.deepcopy(self._connectors.get(connector_id))

    def connectors(self) -> list[Connector]:
        """Return every connector, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._connectors.values()))

    # Helpers; callers hold the lock.

    def _catalog_entry(self, catalog_id: str) -> CatalogEntry:
        entry = self.catalog.get(catalog_id)
        if entry is None:
            known = ", ".join(sorted(self.catalog)) or "none"
            raise SandboxError(
                f"catalog entry {catalog_id!r} not found (loaded: {known})"
            )
        if not entry.manager_supported:
            raise SandboxError(
                f"catalog entry {catalog_id} cannot be managed: its manifest does "
                "not set manager_supported to true"
            )
        return entry

    def _check_name(self, name: str, connector_id: str | None) -> str:
        name = name.strip()
        if not name:
            raise SandboxError("the connector name must not be empty")
        for other in self._connectors.values():
            if other.name == name and other.id != connector_id:
                raise SandboxError(
                    f"a connector named {name!r} already exists ({other.id})"
                )
        return name

    def _manager_key(self) -> rsa.RSAPublicKey:
        manager = next(iter(self._managers.values()), None)
        if manager is None:
            raise SandboxError(
                "no connector manager is registered, so secrets cannot be encrypted; "
                "start xtm-composer against this sandbox first, it registers its "
                "public key"
            )
        return encryption.load_public_key(manager.public_key_pem)

    def _build(
        self,
        entry: CatalogEntry,
        values: Mapping[str, InputValue],
        public_key: rsa.RSAPublicKey,
        existing: Sequence[ConfigEntry],
    ) -> list[ConfigEntry]:
        try:
            return build_configuration(
                entry,
                values,
                public_key,
                encryption_version=self.encryption_version,
                existing=existing,
            )
        except ConfigurationError as error:
            raise SandboxError(str(error)) from None

    def _new_token(self, public_key: rsa.RSAPublicKey) -> str:
        """Encrypt a fresh API token for the connector's user.

        Only the ciphertext is kept: the sandbox never serves the platform API
        that the token would open.
        """
        token = str(uuid.uuid4())
        return encryption.encrypt_value(public_key, token, self.encryption_version)

    def _require_connector(self, connector_id: str) -> Connector:
        connector = self._connectors.get(connector_id)
        if connector is None:
            raise SandboxError(f"connector {connector_id} not found", code="NOT_FOUND")
        return connector

    # Persistence

    def _save(self) -> None:
        if self.state_file is None:
            return
        document = {
            "format": STATE_FILE_FORMAT,
            "managers": [asdict(manager) for manager in self._managers.values()],
            "connectors": [asdict(item) for item in self._connectors.values()],
        }
        try:
            write_atomically(self.state_file, json.dumps(document, indent=2))
        except OSError as error:
            # The change stays in memory; the next successful save records it.
            log.error(
                "cannot write the state file, changes are kept in memory only",
                state_file=str(self.state_file),
                error=error.strerror or str(error),
            )

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise StateFileError(
                f"cannot read state file {path}: {error.strerror}"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StateFileError(
                f"state file {path} is not valid JSON ({error}); fix or delete it"
            ) from None
        if (
            not isinstance(document, dict)
            or document.get("format") != STATE_FILE_FORMAT
        ):
            raise StateFileError(
                f"state file {path} is not a sandbox state file of format "
                f"{STATE_FILE_FORMAT}; fix or delete it"
            )
        try:
            managers = [Manager(**item) for item in document.get("managers", [])]
            connectors = [
                _connector_from_json(item) for item in document.get("connectors", [])
            ]
        except (TypeError, KeyError, ValueError) as error:
            raise StateFileError(
                f"state file {path} contains an invalid record ({error}); "
                "fix or delete it"
            ) from None
        self._managers = {manager.id: manager for manager in managers}
        self._connectors = {connector.id: connector for connector in connectors}
        log.info(
            "state file loaded",
            state_file=str(path),
            managers=len(managers),
            connectors=len(connectors),
        )


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`.

    Readers see the old or the new file, never a part. The file is private to
    the user (mode 0600) because it contains public keys and ciphertexts.
    """
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _connector_from_json(item: dict[str, Any]) -> Connector:
    fields = dict(item)
    fields["configuration"] = [ConfigEntry(**entry) for entry in item["configuration"]]
    if item.get("health") is not None:
        fields["health"] = HealthMetrics(**item["health"])
    return Connector(**fields)


def _load_manager_key(public_key_pem: str) -> rsa.RSAPublicKey:
    try:
        key = encryption.load_public_key(public_key_pem)
    except encryption.PublicKeyError as error:
        raise SandboxError(str(error)) from None
    if key.key_size != crypto.REQUIRED_KEY_BITS:
        # The platform accepts any RSA key; xtm-composer then fails to decrypt.
        log.warning(
            "the manager's public key is not a 4096-bit RSA key, values encrypted "
            "for it will not decrypt in xtm-composer",
            key_bits=key.key_size,
        )
    return key


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not version.strip():
        raise ValueError("the platform version must be a non-empty string")


def _check_user_id(connector_user_id: str) -> str:
    if not connector_user_id.strip():
        raise SandboxError("connector_user_id must not be empty")
    return connector_user_id
