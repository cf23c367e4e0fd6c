"""The admin client against a running sandbox, and its error handling."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import crypto
from xtm_composer.sandbox.admin import SandboxAdmin, SandboxAdminError
from xtm_composer.sandbox.server import SandboxServer
from xtm_composer.sandbox.state import SandboxState

TOKEN = "admin-test-token"
API_KEY = "admin-secret-value"


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    """A 4096-bit key, generated once for the module (about a second)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture
def server(manager_key: rsa.RSAPrivateKey) -> Iterator[SandboxServer]:
    """A running sandbox whose manager is registered."""
    state = SandboxState()
    state.register_manager("manager-1", "composer", crypto.public_key_pem(manager_key))
    with SandboxServer(state, token=TOKEN) as running:
        yield running


@pytest.fixture
def admin(server: SandboxServer) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(server.url, TOKEN) as client:
        yield client


def test_add_describes_connector(
    admin: SandboxAdmin, manager_key: rsa.RSAPrivateKey
) -> None:
    """add_connector returns the connector with its encrypted configuration."""
    created = admin.add_connector(
        "connector-test", "Feed", {"TEST_API_KEY": API_KEY, "TEST_BATCH_SIZE": "5"}
    )

    assert {
        "id",
        "name",
        "image",
        "contract_hash",
        "requested_status",
        "current_status",
        "state_timestamp",
        "logs",
        "health",
        "configuration",
    } == set(created)
    assert created["name"] == "Feed"
    assert created["image"] == "opencti/connector-test:1.0.0"
    assert created["requested_status"] == "stopping"
    assert created["current_status"] is None
    assert created["health"] is None
    assert created["logs"] == []
    values = {item["key"]: item for item in created["configuration"]}
    assert values["TEST_BATCH_SIZE"] == {
        "key": "TEST_BATCH_SIZE",
        "value": "5",
        "encrypted": False,
    }
    assert values["TEST_API_KEY"]["encrypted"] is True
    assert crypto.decrypt_value(manager_key, values["TEST_API_KEY"]["value"]) == API_KEY


def test_edit_keeps_omitted_secret(admin: SandboxAdmin) -> None:
    """An edit without the password key keeps its ciphertext."""
    created = admin.add_connector("connector-test", "Feed", {"TEST_API_KEY": API_KEY})

    edited = admin.edit_connector(created["id"], "Feed", {"TEST_BATCH_SIZE": "7"})

    def secret(connector: dict[str, object]) -> object:
        items = connector["configuration"]
        assert isinstance(items, list)
        return next(item["value"] for item in items if item["key"] == "TEST_API_KEY")

    assert secret(created) == secret(edited)
    assert created["contract_hash"] != edited["contract_hash"]


def test_connector_reads_one(admin: SandboxAdmin) -> None:
    created = admin.add_connector("connector-test", "Feed", {"TEST_API_KEY": API_KEY})

    assert created == admin.connector(created["id"])


def test_connectors_lists_all(admin: SandboxAdmin) -> None:
    first = admin.add_connector("connector-test", "One", {"TEST_API_KEY": "a"})
    second = admin.add_connector("connector-test", "Two", {"TEST_API_KEY": "b"})

    listed = admin.connectors()

    assert [first["id"], second["id"]] == [item["id"] for item in listed]


def test_catalog_and_version(admin: SandboxAdmin) -> None:
    """The sandbox-only routes: catalog listing and platform version."""
    slugs = [entry["slug"] for entry in admin.catalog()]

    assert slugs == ["connector-test"]
    assert admin.version() == "6.9.0"
    assert admin.set_version("7.1.0") == "7.1.0"
    assert admin.version() == "7.1.0"


@pytest.mark.parametrize(
    ("catalog_id", "config", "message"),
    [
        ("nope", {}, "catalog entry 'nope' not found (loaded: connector-test)"),
        ("connector-test", {}, "missing required key TEST_API_KEY"),
        (
            "connector-test",
            {"TEST_API_KEY": "k", "TEST_BATCH_SIZE": "0"},
            "TEST_BATCH_SIZE: 0 is less than the minimum of 1",
        ),
        ("connector-test", {"TEST_API_KEY": "k", "TYPO": "x"}, "TYPO"),
    ],
)
def test_add_errors_named(
    admin: SandboxAdmin, catalog_id: str, config: dict[str, str], message: str
) -> None:
    with pytest.raises(SandboxAdminError) as caught:
        admin.add_connector(catalog_id, "Feed", config)

    assert message in str(caught.value)


@pytest.mark.parametrize("action", ["connector", "delete_connector"])
def test_unknown_connector(admin: SandboxAdmin, action: str) -> None:
    with pytest.raises(SandboxAdminError, match="connector missing not found"):
        getattr(admin, action)("missing")


def test_request_status_checked(admin: SandboxAdmin) -> None:
    with pytest.raises(ValueError, match="starting or stopping"):
        admin.request_status("any", "started")


def test_wrong_token(server: SandboxServer) -> None:
    with (
        SandboxAdmin(server.url, "wrong") as client,
        pytest.raises(SandboxAdminError, match="invalid token"),
    ):
        client.version()


def test_unreachable_sandbox(server: SandboxServer) -> None:
    url = server.url
    server.stop()

    with (
        SandboxAdmin(url, TOKEN) as client,
        pytest.raises(SandboxAdminError, match="cannot reach the sandbox") as caught,
    ):
        client.connectors()

    assert TOKEN not in str(caught.value)


def test_non_json_response() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(502, text="Bad gateway"))

    with (
        SandboxAdmin("http://127.0.0.1:9", TOKEN, transport=transport) as client,
        pytest.raises(SandboxAdminError, match="HTTP 502 and a body that is not JSON"),
    ):
        client.version()


@pytest.mark.parametrize(
    ("url", "token", "message"),
    [
        ("http://192.0.2.10:4000", TOKEN, "not a loopback address"),
        ("http://example.org", TOKEN, "not an IP address"),
        ("ftp://127.0.0.1", TOKEN, "invalid sandbox URL"),
        ("127.0.0.1:4000", TOKEN, "invalid sandbox URL"),
        ("http://127.0.0.1:4000", "", "token must not be empty"),
    ],
)
def test_client_arguments_checked(url: str, token: str, message: str) -> None:
    """The token goes only to a loopback sandbox."""
    with pytest.raises(ValueError, match=message):
        SandboxAdmin(url, token)
