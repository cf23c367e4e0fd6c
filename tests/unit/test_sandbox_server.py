"""The sandbox over HTTP: token check, GraphQL handling, the agent's documents,
restarts on the same port and the state file across restarts."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import contract, crypto, logs
from xtm_composer.platform import documents
from xtm_composer.sandbox.admin import SandboxAdmin
from xtm_composer.sandbox.server import SandboxServer, require_loopback
from xtm_composer.sandbox.state import SandboxState

TOKEN = "sandbox-test-token"
API_KEY = "secret-api-key-1234"
MANAGER_ID = "2f5bd2b4-4d1b-4c39-9a6e-0d9f1f0e7a11"


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    """A 4096-bit key, generated once for the module (about a second)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxState(), token=TOKEN) as running:
        yield running


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers, trust_env=False) as http:
        yield http


@pytest.fixture
def admin(server: SandboxServer) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(server.url, TOKEN) as sandbox_admin:
        yield sandbox_admin


def send(
    client: httpx.Client, document: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Post one GraphQL request, as the agent does, and return the body."""
    response = client.post("/graphql", json={"query": document, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def register(client: httpx.Client, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    fields = {
        "id": MANAGER_ID,
        "name": "composer",
        "public_key": crypto.public_key_pem(key),
    }
    return send(client, documents.REGISTER_MANAGER, {"input": fields})


def error_code(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["extensions"]["code"])


# Token check


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer {TOKEN}x"],
)
def test_bad_token_rejected(server: SandboxServer, authorization: str | None) -> None:
    """Missing or wrong tokens get HTTP 401 with a GraphQL-style error body."""
    headers = {"Authorization": authorization} if authorization else {}

    response = httpx.post(
        server.graphql_url, json={"query": documents.ABOUT}, headers=headers
    )

    assert response.status_code == 401
    assert error_code(response.json()) == "UNAUTHENTICATED"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "data" not in response.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sandbox/version"),
        ("POST", "/sandbox/version"),
        ("GET", "/sandbox/catalog"),
    ],
)
def test_sandbox_routes_need_token(
    server: SandboxServer, method: str, path: str
) -> None:
    response = httpx.request(method, server.url + path, json={"version": "9.9.9"})

    assert response.status_code == 401
    assert server.state.platform_version == "6.9.0"


def test_token_scheme_case_insensitive(server: SandboxServer) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}

    response = httpx.post(
        server.graphql_url, json={"query": documents.ABOUT}, headers=headers
    )

    assert response.status_code == 200


# Request handling


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "JSON object with a query string"),
        (b"[]", "JSON object with a query string"),
        (b'{"variables": {}}', "JSON object with a query string"),
        (b'{"query": "{ about { version } }", "variables": []}', "variables must be"),
        (b'{"query": "{ about { version } }", "operationName": 1}', "operationName"),
    ],
)
def test_bad_request_body(client: httpx.Client, body: bytes, message: str) -> None:
    response = client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert message in response.json()["errors"][0]["message"]


def test_syntax_error_is_400(client: httpx.Client) -> None:
    response = client.post("/graphql", json={"query": "{ about { version "})

    assert response.status_code == 400
    assert error_code(response.json()) == "GRAPHQL_PARSE_FAILED"


def test_unknown_field_is_400(client: httpx.Client) -> None:
    """Fields outside the subset fail validation, as they would on a real platform."""
    response = client.post(
        "/graphql", json={"query": "{ about { memory { heapUsed } } }"}
    )

    assert response.status_code == 400
    assert error_code(response.json()) == "GRAPHQL_VALIDATION_FAILED"


def test_get_not_allowed(client: httpx.Client) -> None:
    assert client.get("/graphql").status_code == 405


def test_operation_name_selects_operation(client: httpx.Client) -> None:
    document = "query A { about { version } } query B { connectorsForManagers { id } }"

    response = client.post("/graphql", json={"query": document, "operationName": "B"})

    assert response.json() == {"data": {"connectorsForManagers": []}}


def test_null_input_rejected(client: httpx.Client) -> None:
    """Inputs nullable in the OpenCTI schema are still required."""
    body = send(client, "mutation { registerConnectorsManager { id } }")

    assert error_code(body) == "BAD_USER_INPUT"
    assert "input argument is required" in body["errors"][0]["message"]


def test_unexpected_error_hidden(
    client: httpx.Client, server: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a resolver reaches clients as a generic internal error."""

    def broken() -> list[Any]:
        raise RuntimeError("details for the log only")

    monkeypatch.setattr(server.state, "connectors", broken)

    body = send(client, documents.LIST_CONNECTORS)

    assert error_code(body) == "INTERNAL_SERVER_ERROR"
    assert "details for the log only" not in body["errors"][0]["message"]


# The agent's operations


def test_about_returns_version(client: httpx.Client) -> None:
    body = send(client, documents.ABOUT)

    assert body == {"data": {"about": {"version": "6.9.0"}}}


def test_register_and_ping(
    client: httpx.Client, manager_key: rsa.RSAPrivateKey
) -> None:
    registered = register(client, manager_key)
    pinged = send(client, documents.PING_MANAGER, {"input": {"id": MANAGER_ID}})

    expected = {"id": MANAGER_ID, "about_version": "6.9.0"}
    assert {"data": {"registerConnectorsManager": expected}} == registered
    assert {"data": {"updateConnectorManagerStatus": expected}} == pinged


def test_ping_before_register_fails(client: httpx.Client) -> None:
    """A ping from an unknown manager fails, so the agent registers again."""
    body = send(client, documents.PING_MANAGER, {"input": {"id": MANAGER_ID}})

    assert body["data"]["updateConnectorManagerStatus"] is None
    assert error_code(body) == "FUNCTIONAL_ERROR"
    assert "is not registered" in body["errors"][0]["message"]


def test_version_change_reaches_agent(
    client: httpx.Client, admin: SandboxAdmin, manager_key: rsa.RSAPrivateKey
) -> None:
    """After /sandbox/version, about and the ping report the new version."""
    register(client, manager_key)

    assert admin.set_version("6.10.1") == "6.10.1"

    about = send(client, documents.ABOUT)["data"]["about"]
    ping = send(client, documents.PING_MANAGER, {"input": {"id": MANAGER_ID}})
    assert about["version"] == "6.10.1"
    assert ping["data"]["updateConnectorManagerStatus"]["about_version"] == "6.10.1"
    assert admin.version() == "6.10.1"


def test_bad_version_rejected(client: httpx.Client) -> None:
    response = client.post("/sandbox/version", json={"version": ""})

    assert response.status_code == 400
    assert "non-empty" in response.json()["errors"][0]["message"]


def test_catalog_route_lists_entries(client: httpx.Client) -> None:
    entries = client.get("/sandbox/catalog").json()["entries"]

    assert entries == [
        {
            "slug": "connector-test",
            "title": "Test connector",
            "container_image": "opencti/connector-test",
            "container_version": "1.0.0",
            "container_type": "EXTERNAL_IMPORT",
            "image": "opencti/connector-test:1.0.0",
            "manager_supported": True,
        }
    ]


def test_status_of_unknown_connector(client: httpx.Client) -> None:
    variables = {"input": {"id": "missing", "status": "started"}}

    body = send(client, documents.UPDATE_CURRENT_STATUS, variables)

    assert error_code(body) == "NOT_FOUND"


def test_logs_and_health_of_unknown_connector(client: httpx.Client) -> None:
    """As on the platform, reports for an unknown id are accepted."""
    logs_body = send(
        client, documents.UPDATE_LOGS, {"input": {"id": "missing", "logs": ["x"]}}
    )
    health = {
        "id": "missing",
        "restart_count": 0,
        "started_at": "2026-01-01T00:00:00Z",
        "is_in_reboot_loop": False,
    }
    health_body = send(client, documents.UPDATE_HEALTH, {"input": health})

    assert logs_body == {"data": {"updateConnectorLogs": "missing"}}
    assert health_body == {"data": {"updateConnectorHealth": "missing"}}


def test_duplicate_configuration_key_rejected(
    client: httpx.Client, admin: SandboxAdmin, manager_key: rsa.RSAPrivateKey
) -> None:
    register(client, manager_key)
    fields = {
        "name": "Test",
        "connector_user_id": "user",
        "catalog_id": "connector-test",
        "manager_contract_image": "opencti/connector-test",
        "manager_contract_configuration": [
            {"key": "TEST_API_KEY", "value": ["a"]},
            {"key": "TEST_API_KEY", "value": ["b"]},
        ],
    }

    body = admin_add_raw(client, fields)

    assert "TEST_API_KEY is given twice" in body["errors"][0]["message"]


def admin_add_raw(client: httpx.Client, fields: dict[str, Any]) -> dict[str, Any]:
    document = """
    mutation Add($input: AddManagedConnectorInput!) {
      managedConnectorAdd(input: $input) { id }
    }
    """
    return send(client, document, {"input": fields})


def test_agent_and_admin_end_to_end(
    client: httpx.Client, admin: SandboxAdmin, manager_key: rsa.RSAPrivateKey
) -> None:
    """Every operation of the agent and of the administrator, in the usual order."""
    assert send(client, documents.ABOUT)["data"]["about"]["version"] == "6.9.0"
    register(client, manager_key)
    send(client, documents.PING_MANAGER, {"input": {"id": MANAGER_ID}})

    # The administrator creates a connector; the agent lists it.
    created = admin.add_connector("connector-test", "Feed", {"TEST_API_KEY": API_KEY})
    listed = send(client, documents.LIST_CONNECTORS)["data"]["connectorsForManagers"]
    assert len(listed) == 1
    managed = listed[0]
    assert created["id"] == managed["id"]
    assert managed["name"] == "Feed"
    assert managed["manager_contract_image"] == "opencti/connector-test:1.0.0"
    assert created["contract_hash"] == managed["manager_contract_hash"]
    assert managed["manager_requested_status"] == "stopping"
    assert managed["manager_current_status"] is None

    # The hash covers the ciphertexts; the agent decrypts the encrypted values.
    configuration = managed["manager_contract_configuration"]
    pairs = [(entry["key"], entry["value"]) for entry in configuration]
    state_timestamp = admin.connector(created["id"])["state_timestamp"]
    expected_hash = contract.contract_hash(
        managed["manager_contract_image"], pairs, state_timestamp
    )
    assert expected_hash == managed["manager_contract_hash"]
    environment = {}
    for entry in configuration:
        value = entry["value"]
        if entry["encrypted"]:
            value = crypto.decrypt_value(manager_key, value)
        else:
            assert entry["encrypted"] is None
        environment[entry["key"]] = value
    assert environment["TEST_API_KEY"] == API_KEY
    assert managed["id"] == environment["CONNECTOR_ID"]
    assert environment["CONNECTOR_NAME"] == "Feed"
    assert environment["CONNECTOR_TYPE"] == "EXTERNAL_IMPORT"
    assert "OPENCTI_TOKEN" in environment

    # The administrator starts it; the agent reports status, logs and health.
    started = admin.request_status(created["id"], "starting")
    status = send(
        client,
        documents.UPDATE_CURRENT_STATUS,
        {"input": {"id": created["id"], "status": "started"}},
    )
    reported = status["data"]["updateConnectorCurrentStatus"]
    assert started["requested_status"] == "starting"
    assert {"id": created["id"], "manager_current_status": "started"} == reported
    send(
        client,
        documents.UPDATE_LOGS,
        {"input": {"id": created["id"], "logs": ["starting", "running"]}},
    )
    health = {
        "id": created["id"],
        "restart_count": 2,
        "started_at": "2026-08-20T09:15:42.123Z",
        "is_in_reboot_loop": False,
    }
    send(client, documents.UPDATE_HEALTH, {"input": health})

    shown = admin.connector(created["id"])
    assert shown["current_status"] == "started"
    assert shown["requested_status"] == "starting"
    assert shown["logs"] == ["starting", "running"]
    assert shown["health"]["restart_count"] == 2
    assert shown["health"]["started_at"] == "2026-08-20T09:15:42.123Z"
    assert shown["health"]["is_in_reboot_loop"] is False
    assert shown["health"]["last_update"]

    # An edit changes the hash in the agent's listing; stop and delete follow.
    edited = admin.edit_connector(created["id"], "Feed 2", {"TEST_MAX_TLP": "TLP:RED"})
    listed = send(client, documents.LIST_CONNECTORS)["data"]["connectorsForManagers"]
    assert edited["contract_hash"] == listed[0]["manager_contract_hash"]
    assert created["contract_hash"] != edited["contract_hash"]
    stopped = admin.request_status(created["id"], "stopping")
    assert stopped["requested_status"] == "stopping"
    assert [created["id"]] == [item["id"] for item in admin.connectors()]
    assert created["id"] == admin.delete_connector(created["id"])
    listed = send(client, documents.LIST_CONNECTORS)["data"]["connectorsForManagers"]
    assert listed == []


def test_connector_query_hides_ciphertexts(
    client: httpx.Client, admin: SandboxAdmin, manager_key: rsa.RSAPrivateKey
) -> None:
    """`connector(id)` is the user's view: encrypted values are left out."""
    register(client, manager_key)
    created = admin.add_connector("connector-test", "Feed", {"TEST_API_KEY": API_KEY})
    document = """
    query One($id: String!) {
      connector(id: $id) {
        id
        is_managed
        manager_contract_configuration { key value }
      }
    }
    """

    found = send(client, document, {"id": created["id"]})["data"]["connector"]
    missing = send(client, document, {"id": "missing"})["data"]["connector"]

    keys = [item["key"] for item in found["manager_contract_configuration"]]
    assert found["is_managed"] is True
    assert "TEST_API_KEY" not in keys
    assert "OPENCTI_TOKEN" not in keys
    assert "CONNECTOR_ID" in keys
    assert missing is None


def test_debug_log_names_operations_not_secrets(
    client: httpx.Client, admin: SandboxAdmin, manager_key: rsa.RSAPrivateKey
) -> None:
    """Debug logs carry operation names, never the token or a secret value."""
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream=stream)
    try:
        register(client, manager_key)
        admin.add_connector("connector-test", "Feed", {"TEST_API_KEY": API_KEY})
        send(client, documents.LIST_CONNECTORS)
        httpx.post(client.base_url.join("/graphql"), json={"query": "{ __typename }"})
    finally:
        structlog.reset_defaults()

    output = stream.getvalue()
    assert '"operation": "XtmComposerRegister"' in output
    assert '"operation": "SandboxAddConnector"' in output
    assert '"operation": "XtmComposerConnectors"' in output
    assert "request rejected" in output
    assert TOKEN not in output
    assert API_KEY not in output


# Server lifecycle


def test_restart_same_port(server: SandboxServer, client: httpx.Client) -> None:
    """Stopping closes the port, like an outage; starting serves it again."""
    port = server.port
    send(client, documents.ABOUT)

    server.stop()
    with pytest.raises(httpx.ConnectError):
        client.post("/graphql", json={"query": documents.ABOUT})
    server.start()

    assert port == server.port
    assert send(client, documents.ABOUT)["data"]["about"]["version"] == "6.9.0"


def test_start_twice_rejected(server: SandboxServer) -> None:
    with pytest.raises(RuntimeError, match="already runs"):
        server.start()


def test_stop_when_stopped_is_harmless() -> None:
    sandbox = SandboxServer(SandboxState(), token=TOKEN)

    sandbox.stop()

    assert sandbox.running is False


def test_port_in_use_rejected() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sandbox = SandboxServer(
            SandboxState(), token=TOKEN, port=taken.getsockname()[1]
        )

        with pytest.raises(OSError):
            sandbox.start()

    assert sandbox.running is False


def test_state_file_across_restart(
    tmp_path: Path, manager_key: rsa.RSAPrivateKey
) -> None:
    """A new process on the same state file still serves the connector."""
    path = tmp_path / "state.json"
    with SandboxServer(SandboxState(state_file=path), token=TOKEN) as first:
        port = first.port
        with httpx.Client(
            base_url=first.url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            register(http, manager_key)
        with SandboxAdmin(first.url, TOKEN) as first_admin:
            created = first_admin.add_connector(
                "connector-test", "Kept", {"TEST_API_KEY": API_KEY}
            )

    second = SandboxServer(SandboxState(state_file=path), token=TOKEN, port=port)
    with second, SandboxAdmin(second.url, TOKEN) as second_admin:
        kept = second_admin.connector(created["id"])

    assert created == kept


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_non_loopback_host_rejected(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(SandboxState(), token=TOKEN, host=host)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("::1", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_loopback_hosts_accepted(host: str, expected: str) -> None:
    assert expected == require_loopback(host)


def test_empty_token_rejected() -> None:
    with pytest.raises(ValueError, match="token must not be empty"):
        SandboxServer(SandboxState(), token="")
