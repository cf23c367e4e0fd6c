"""The sandbox state: managers, connectors, contract hashes and the state file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import stat
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import contract, crypto
from xtm_composer.sandbox.catalog import load_catalog
from xtm_composer.sandbox.state import (
    Manager,
    SandboxError,
    SandboxState,
    StateFileError,
    timestamp,
)

CATALOG_ID = "connector-test"
IMAGE = "opencti/connector-test"
USER_ID = "user-1"
API_KEY = "test-api-key-value"


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    """A 4096-bit key, generated once for the module (about a second)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture
def state(manager_key: rsa.RSAPrivateKey) -> SandboxState:
    """A state with the bundled catalog and a registered manager."""
    sandbox = SandboxState()
    sandbox.register_manager(
        "manager-1", "composer", crypto.public_key_pem(manager_key)
    )
    return sandbox


def add_test_connector(state: SandboxState, name: str = "Test") -> str:
    created = state.add_connector(
        CATALOG_ID, name, IMAGE, {"TEST_API_KEY": API_KEY}, USER_ID
    )
    return created.id


# Managers


def test_manager_registered(manager_key: rsa.RSAPrivateKey) -> None:
    """Registration stores id, name, key and the time of the last ping."""
    sandbox = SandboxState()
    pem = crypto.public_key_pem(manager_key)

    manager = sandbox.register_manager("manager-1", "composer", pem)

    assert manager.id == "manager-1"
    assert manager.name == "composer"
    assert pem == manager.public_key_pem
    assert manager.registered_at == manager.last_sync_execution
    assert manager == sandbox.manager()


def test_manager_registers_again(
    state: SandboxState, manager_key: rsa.RSAPrivateKey
) -> None:
    """The registered manager may register again with a new name."""
    pem = crypto.public_key_pem(manager_key)

    manager = state.register_manager("manager-1", "renamed", pem)

    assert manager.name == "renamed"


def test_second_manager_rejected(
    state: SandboxState, manager_key: rsa.RSAPrivateKey
) -> None:
    """One manager per platform, as on OpenCTI."""
    with pytest.raises(SandboxError, match="only one connector manager"):
        state.register_manager("manager-2", "other", crypto.public_key_pem(manager_key))


def test_invalid_public_key_rejected() -> None:
    with pytest.raises(SandboxError, match="not a PEM public key"):
        SandboxState().register_manager("manager-1", "composer", "garbage")


def test_ping_updates_last_sync(state: SandboxState) -> None:
    before = state.manager()

    after = state.ping_manager("manager-1")

    assert before is not None
    assert after.last_sync_execution >= before.last_sync_execution


def test_ping_unknown_manager_rejected(state: SandboxState) -> None:
    with pytest.raises(SandboxError, match="manager-9 is not registered"):
        state.ping_manager("manager-9")


def test_manager_active_window() -> None:
    """A manager is active for five minutes after its last ping."""
    now = datetime.now(UTC)
    manager = Manager("m", "n", "pem", timestamp(now), timestamp(now))

    assert manager.is_active(now + timedelta(minutes=4)) is True
    assert manager.is_active(now + timedelta(minutes=6)) is False


# Adding connectors


def test_add_requires_manager() -> None:
    """Without a manager, secrets cannot be encrypted, so adding fails."""
    with pytest.raises(SandboxError, match="no connector manager is registered"):
        SandboxState().add_connector(CATALOG_ID, "Test", IMAGE, {}, USER_ID)


def test_add_creates_stopped_connector(state: SandboxState) -> None:
    """A new connector is requested stopped and has no current status yet."""
    created = state.connector(add_test_connector(state))

    assert created is not None
    assert uuid.UUID(created.id).version == 4
    assert created.name == "Test"
    assert created.image == "opencti/connector-test:1.0.0"
    assert created.connector_type == "EXTERNAL_IMPORT"
    assert created.requested_status == "stopping"
    assert created.current_status is None
    assert created.logs == []
    assert created.health is None
    assert created.created_at == created.state_timestamp


def test_initial_status_stopped_option(manager_key: rsa.RSAPrivateKey) -> None:
    """The platform's own value, `stopped`, is available on request."""
    sandbox = SandboxState(initial_requested_status="stopped")
    sandbox.register_manager("m", "composer", crypto.public_key_pem(manager_key))

    created = sandbox.connector(add_test_connector(sandbox))

    assert created is not None
    assert created.requested_status == "stopped"


def test_contract_ends_with_platform_keys(
    state: SandboxState, manager_key: rsa.RSAPrivateKey
) -> None:
    """The contract is the configuration, then id, name, type and encrypted token."""
    created = state.connector(add_test_connector(state, name="My import"))
    assert created is not None

    entries = created.contract()

    platform = [(entry.key, entry.value) for entry in entries[-4:-1]]
    assert [
        ("CONNECTOR_ID", created.id),
        ("CONNECTOR_NAME", "My import"),
        ("CONNECTOR_TYPE", "EXTERNAL_IMPORT"),
    ] == platform
    token = entries[-1]
    assert token.key == "OPENCTI_TOKEN"
    assert token.encrypted is True
    assert uuid.UUID(crypto.decrypt_value(manager_key, token.value)).version == 4
    assert created.configuration == entries[:-4]


def test_secret_stored_encrypted(
    state: SandboxState, manager_key: rsa.RSAPrivateKey
) -> None:
    created = state.connector(add_test_connector(state))
    assert created is not None

    secret = next(item for item in created.configuration if item.key == "TEST_API_KEY")

    assert secret.encrypted is True
    assert secret.value != API_KEY
    assert crypto.decrypt_value(manager_key, secret.value) == API_KEY


def test_hash_covers_whole_contract(state: SandboxState) -> None:
    """The stored hash is the platform hash of image, contract and state."""
    created = state.connector(add_test_connector(state))
    assert created is not None
    document = {
        "image": created.image,
        "subHash": [f"{item.key}|{item.value}" for item in created.contract()],
        "state": created.state_timestamp,
    }
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)

    assert hashlib.sha256(text.encode()).hexdigest()[:8] == created.contract_hash


def test_hash_without_state_leaves_key_out() -> None:
    """With no state timestamp the JSON has no state key, not a null one."""
    pairs = [("KEY", "value")]
    without = json.dumps(
        {"image": "i:1", "subHash": ["KEY|value"]}, separators=(",", ":")
    )
    with_null = json.dumps(
        {"image": "i:1", "subHash": ["KEY|value"], "state": None}, separators=(",", ":")
    )

    digest = contract.contract_hash("i:1", pairs, None)

    assert hashlib.sha256(without.encode()).hexdigest()[:8] == digest
    assert hashlib.sha256(with_null.encode()).hexdigest()[:8] != digest


def test_hash_sensitive_to_order() -> None:
    """The same keys in another order hash differently."""
    forward = contract.contract_hash("i:1", [("A", "1"), ("B", "2")], "s")
    backward = contract.contract_hash("i:1", [("B", "2"), ("A", "1")], "s")

    assert forward != backward


def test_image_with_tag_accepted(state: SandboxState) -> None:
    """manager_contract_image may name the image with or without its tag."""
    created = state.add_connector(
        CATALOG_ID, "Tagged", f"{IMAGE}:1.0.0", {"TEST_API_KEY": "k"}, USER_ID
    )

    assert created.image == "opencti/connector-test:1.0.0"


@pytest.mark.parametrize(
    ("catalog_id", "name", "image", "message"),
    [
        ("no-such-entry", "Test", IMAGE, "catalog entry 'no-such-entry' not found"),
        (CATALOG_ID, "Test", "opencti/other", "does not match catalog entry"),
        (CATALOG_ID, "  ", IMAGE, "name must not be empty"),
    ],
)
def test_add_rejected(
    state: SandboxState, catalog_id: str, name: str, image: str, message: str
) -> None:
    with pytest.raises(SandboxError, match=message):
        state.add_connector(catalog_id, name, image, {"TEST_API_KEY": "k"}, USER_ID)


def test_duplicate_name_rejected(state: SandboxState) -> None:
    first = add_test_connector(state)

    with pytest.raises(
        SandboxError, match=f"named 'Test' already exists \\({first}\\)"
    ):
        add_test_connector(state)


def test_invalid_configuration_rejected(state: SandboxState) -> None:
    """Configuration errors reach the client as SandboxError, naming the key."""
    with pytest.raises(SandboxError, match="missing required key TEST_API_KEY"):
        state.add_connector(CATALOG_ID, "Test", IMAGE, {}, USER_ID)


def test_unmanaged_entry_rejected(state: SandboxState) -> None:
    entry = state.catalog[CATALOG_ID]
    state.catalog[CATALOG_ID] = dataclasses.replace(entry, manager_supported=False)

    with pytest.raises(SandboxError, match="manager_supported"):
        add_test_connector(state)


# Editing, statuses, reports


def test_edit_renames_and_rehashes(state: SandboxState) -> None:
    """A new name changes CONNECTOR_NAME, so the hash; the secret stays."""
    connector_id = add_test_connector(state)
    before = state.connector(connector_id)
    assert before is not None

    edited = state.edit_connector(connector_id, "Renamed", {}, USER_ID)

    assert edited.name == "Renamed"
    assert before.contract_hash != edited.contract_hash
    assert before.state_timestamp == edited.state_timestamp
    secret = [item for item in before.configuration if item.encrypted]
    assert secret == [item for item in edited.configuration if item.encrypted]


def test_edit_unchanged_keeps_hash(state: SandboxState) -> None:
    """An edit that changes nothing keeps the contract hash."""
    connector_id = add_test_connector(state)
    before = state.connector(connector_id)
    assert before is not None

    edited = state.edit_connector(connector_id, "Test", {}, USER_ID)

    assert before.contract_hash == edited.contract_hash


def test_edit_follows_catalog_version(state: SandboxState) -> None:
    """After the catalog entry moves to a new version, an edit upgrades the image."""
    connector_id = add_test_connector(state)
    entry = state.catalog[CATALOG_ID]
    state.catalog[CATALOG_ID] = dataclasses.replace(entry, container_version="1.1.0")

    edited = state.edit_connector(connector_id, "Test", {}, USER_ID)

    assert edited.image == "opencti/connector-test:1.1.0"


def test_edit_unknown_connector_rejected(state: SandboxState) -> None:
    with pytest.raises(SandboxError, match="connector nope not found") as caught:
        state.edit_connector("nope", "Test", {}, USER_ID)

    assert caught.value.extensions == {"code": "NOT_FOUND"}


def test_edit_name_taken_rejected(state: SandboxState) -> None:
    add_test_connector(state, name="First")
    second = add_test_connector(state, name="Second")

    with pytest.raises(SandboxError, match="already exists"):
        state.edit_connector(second, "First", {}, USER_ID)


def test_requested_status_changes(state: SandboxState) -> None:
    connector_id = add_test_connector(state)

    started = state.request_status(connector_id, "starting")
    stopped = state.request_status(connector_id, "stopping")

    assert started.requested_status == "starting"
    assert stopped.requested_status == "stopping"


def test_requested_status_checked(state: SandboxState) -> None:
    connector_id = add_test_connector(state)

    with pytest.raises(SandboxError, match="starting or stopping"):
        state.request_status(connector_id, "started")


def test_current_status_reported(state: SandboxState) -> None:
    connector_id = add_test_connector(state)

    updated = state.set_current_status(connector_id, "started")

    assert updated.current_status == "started"
    with pytest.raises(SandboxError, match="started or stopped"):
        state.set_current_status(connector_id, "running")


def test_logs_replaced(state: SandboxState) -> None:
    """Each push replaces the logs; pushes for unknown ids are dropped."""
    connector_id = add_test_connector(state)

    assert state.set_logs(connector_id, ["one", "two"]) is True
    assert state.set_logs(connector_id, ["three"]) is True
    assert state.set_logs("unknown", ["x"]) is False
    stored = state.connector(connector_id)
    assert stored is not None
    assert stored.logs == ["three"]


def test_health_stored_with_update_time(state: SandboxState) -> None:
    connector_id = add_test_connector(state)

    assert state.set_health(connector_id, 3, "2026-01-01T00:00:00Z", True) is True
    assert state.set_health("unknown", 0, "x", False) is False
    stored = state.connector(connector_id)
    assert stored is not None
    assert stored.health is not None
    assert stored.health.restart_count == 3
    assert stored.health.started_at == "2026-01-01T00:00:00Z"
    assert stored.health.is_in_reboot_loop is True
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stored.health.last_update
    )


def test_delete_removes_connector(state: SandboxState) -> None:
    connector_id = add_test_connector(state)

    assert connector_id == state.delete_connector(connector_id)
    assert state.connector(connector_id) is None
    with pytest.raises(SandboxError, match="not found"):
        state.delete_connector(connector_id)


def test_reads_return_copies(state: SandboxState) -> None:
    """Changing a returned connector does not change the state."""
    connector_id = add_test_connector(state)
    copy = state.connector(connector_id)
    assert copy is not None

    copy.name = "changed"
    copy.logs.append("line")

    stored = state.connector(connector_id)
    assert stored is not None
    assert stored.name == "Test"
    assert stored.logs == []


def test_platform_version_changes(state: SandboxState) -> None:
    assert state.platform_version == "6.9.0"

    state.set_platform_version("6.10.0")

    assert state.platform_version == "6.10.0"
    with pytest.raises(ValueError, match="non-empty"):
        state.set_platform_version(" ")


def test_timestamp_like_javascript() -> None:
    """Timestamps read like JavaScript's toISOString()."""
    moment = datetime(2026, 8, 20, 9, 15, 42, 123456, tzinfo=UTC)

    assert timestamp(moment) == "2026-08-20T09:15:42.123Z"


def test_concurrent_adds(state: SandboxState) -> None:
    """Threads adding at once get distinct connectors; a shared name wins once."""
    errors: list[Exception] = []

    def add(name: str) -> None:
        try:
            add_test_connector(state, name=name)
        except SandboxError as error:
            errors.append(error)

    names = [f"c{index}" for index in range(8)] + ["shared"] * 4
    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(state.connectors()) == 9
    assert len(errors) == 3


# State file


def test_state_file_survives_restart(
    tmp_path: Path, manager_key: rsa.RSAPrivateKey
) -> None:
    """A new state on the same file has the manager and connectors back."""
    path = tmp_path / "sandbox.json"
    first = SandboxState(state_file=path)
    first.register_manager("manager-1", "composer", crypto.public_key_pem(manager_key))
    connector_id = add_test_connector(first)
    first.request_status(connector_id, "starting")
    first.set_health(connector_id, 1, "2026-01-01T00:00:00Z", False)

    second = SandboxState(state_file=path)

    assert first.manager() == second.manager()
    assert first.connectors() == second.connectors()


def test_state_file_private_and_atomic(
    tmp_path: Path, manager_key: rsa.RSAPrivateKey
) -> None:
    """The file is mode 0600 and no temporary file is left beside it."""
    path = tmp_path / "sandbox.json"
    sandbox = SandboxState(state_file=path)
    sandbox.register_manager("m", "n", crypto.public_key_pem(manager_key))

    document = json.loads(path.read_text())

    assert document["format"] == 1
    assert [item.name for item in tmp_path.iterdir()] == ["sandbox.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_state_file_has_no_plain_secret(
    tmp_path: Path, manager_key: rsa.RSAPrivateKey
) -> None:
    """Secrets reach the file only as ciphertext."""
    path = tmp_path / "sandbox.json"
    sandbox = SandboxState(state_file=path)
    sandbox.register_manager("m", "n", crypto.public_key_pem(manager_key))

    add_test_connector(sandbox)

    assert API_KEY not in path.read_text()


def test_platform_version_not_saved(
    tmp_path: Path, manager_key: rsa.RSAPrivateKey
) -> None:
    """The version is a setting of each run, not part of the saved state."""
    path = tmp_path / "sandbox.json"
    first = SandboxState(state_file=path, platform_version="7.0.0")
    first.register_manager("m", "n", crypto.public_key_pem(manager_key))

    second = SandboxState(state_file=path)

    assert second.platform_version == "6.9.0"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{broken", "not valid JSON"),
        ('{"format": 99}', "not a sandbox state file"),
        ('{"format": 1, "managers": [{"id": "m"}]}', "invalid record"),
    ],
)
def test_bad_state_file_rejected(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "sandbox.json"
    path.write_text(content)

    with pytest.raises(StateFileError, match=message):
        SandboxState(state_file=path)


def test_bundled_catalog_by_default() -> None:
    assert list(load_catalog()) == list(SandboxState().catalog)
