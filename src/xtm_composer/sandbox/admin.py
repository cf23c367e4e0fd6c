"""Administration client of the sandbox: what a platform user does in the UI.

Connectors are created, edited, started, stopped, deleted and read through the
OpenCTI GraphQL operations of `schema.graphql`. The platform version and the
catalog go through the sandbox-only routes `/sandbox/version` and
`/sandbox/catalog`.

Every method returns plain JSON types. A connector is a dict with the keys `id`,
`name`, `image`, `contract_hash`, `requested_status`, `current_status`,
`state_timestamp`, `logs`, `health` and `configuration`. The configuration is a
list of `{key, value, encrypted}`, with ciphertext for encrypted values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from xtm_composer import logs
from xtm_composer.sandbox.server import require_loopback

DEFAULT_URL = "http://127.0.0.1:4000"
SANDBOX_USER_ID = "00000000-0000-4000-8000-000000000001"
"""`connector_user_id` sent by default: the sandbox has no users to check it."""
TIMEOUT_SECONDS = 10.0
REQUESTED_STATUSES = ("starting", "stopping")

MANAGED_FIELDS = """
    id
    name
    connector_state_timestamp
    manager_contract_image
    manager_contract_hash
    manager_requested_status
    manager_current_status
    manager_connector_logs
    manager_health_metrics {
      restart_count
      started_at
      is_in_reboot_loop
      last_update
    }
    manager_contract_configuration {
      key
      value
      encrypted
    }
"""

ADD_CONNECTOR = f"""
mutation SandboxAddConnector($input: AddManagedConnectorInput!) {{
  managedConnectorAdd(input: $input) {{{MANAGED_FIELDS}  }}
}}
"""

EDIT_CONNECTOR = f"""
mutation SandboxEditConnector($input: EditManagedConnectorInput!) {{
  managedConnectorEdit(input: $input) {{{MANAGED_FIELDS}  }}
}}
"""

REQUEST_STATUS = f"""
mutation SandboxRequestStatus($input: RequestConnectorStatusInput!) {{
  updateConnectorRequestedStatus(input: $input) {{{MANAGED_FIELDS}  }}
}}
"""

DELETE_CONNECTOR = """
mutation SandboxDeleteConnector($id: ID!) {
  deleteConnector(id: $id)
}
"""

# `connector(id)` is null for an unknown id. Health metrics exist only on
# `ManagedConnector`, so the details come from `connectorsForManagers`.
GET_CONNECTOR = f"""
query SandboxConnector($id: String!) {{
  connector(id: $id) {{
    id
  }}
  connectorsForManagers {{{MANAGED_FIELDS}  }}
}}
"""

LIST_CONNECTORS = f"""
query SandboxConnectors {{
  connectorsForManagers {{{MANAGED_FIELDS}  }}
}}
"""

DOCUMENTS = {
    "add_connector": ADD_CONNECTOR,
    "edit_connector": EDIT_CONNECTOR,
    "request_status": REQUEST_STATUS,
    "delete_connector": DELETE_CONNECTOR,
    "connector": GET_CONNECTOR,
    "connectors": LIST_CONNECTORS,
}
"""Every GraphQL document of the client, for the schema tests."""


class SandboxAdminError(Exception):
    """The sandbox rejected a request or cannot be reached."""


class SandboxAdmin:
    """Client of a running sandbox, authenticated with its bearer token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ValueError("the sandbox token must not be empty")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid sandbox URL {url!r}; expected {DEFAULT_URL}")
        # The token must not travel to another host: the sandbox listens on
        # loopback only, so any other host is a mistake.
        require_loopback(parts.hostname)
        logs.register_secret(token)
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )
        self._images: dict[str, str] = {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    # Connectors

    def add_connector(
        self,
        catalog_id: str,
        name: str,
        config: Mapping[str, str],
        *,
        connector_user_id: str = SANDBOX_USER_ID,
    ) -> dict[str, Any]:
        """Create a connector of catalog entry `catalog_id` (a slug)."""
        fields = {
            "name": name,
            "connector_user_id": connector_user_id,
            "catalog_id": catalog_id,
            "manager_contract_image": self._image_of(catalog_id),
            "manager_contract_configuration": _config_input(config),
        }
        data = self.graphql(ADD_CONNECTOR, {"input": fields})
        return describe(data["managedConnectorAdd"])

    def edit_connector(
        self,
        connector_id: str,
        name: str,
        config: Mapping[str, str],
        *,
        connector_user_id: str = SANDBOX_USER_ID,
    ) -> dict[str, Any]:
        """Replace name and configuration; password keys left out keep their value."""
        fields = {
            "id": connector_id,
            "name": name,
            "connector_user_id": connector_user_id,
            "manager_contract_configuration": _config_input(config),
        }
        data = self.graphql(EDIT_CONNECTOR, {"input": fields})
        return describe(data["managedConnectorEdit"])

    def request_status(self, connector_id: str, status: str) -> dict[str, Any]:
        """Ask the manager to start (`starting`) or stop (`stopping`) the connector."""
        if status not in REQUESTED_STATUSES:
            raise ValueError(f"status must be starting or stopping, not {status!r}")
        variables = {"input": {"id": connector_id, "status": status}}
        data = self.graphql(REQUEST_STATUS, variables)
        return describe(data["updateConnectorRequestedStatus"])

    def delete_connector(self, connector_id: str) -> str:
        data = self.graphql(DELETE_CONNECTOR, {"id": connector_id})
        return str(data["deleteConnector"])

    def connector(self, connector_id: str) -> dict[str, Any]:
        """Read one connector; raises SandboxAdminError when it does not exist."""
        data = self.graphql(GET_CONNECTOR, {"id": connector_id})
        if data["connector"] is None:
            raise SandboxAdminError(f"connector {connector_id} not found")
        managed = [
            item
            for item in data["connectorsForManagers"] or []
            if item["id"] == connector_id
        ]
        if not managed:
            raise SandboxAdminError(f"connector {connector_id} not found")
        return describe(managed[0])

    def connectors(self) -> list[dict[str, Any]]:
        data = self.graphql(LIST_CONNECTORS)
        return [describe(item) for item in data["connectorsForManagers"] or []]

    # Sandbox-only controls

    def catalog(self) -> list[dict[str, Any]]:
        """List the loaded catalog entries (slug, image, type)."""
        entries: list[dict[str, Any]] = self._call("GET", "/sandbox/catalog")["entries"]
        return entries

    def version(self) -> str:
        return str(self._call("GET", "/sandbox/version")["version"])

    def set_version(self, version: str) -> str:
        """Change the platform version, as an upgrade of the platform does."""
        body = self._call("POST", "/sandbox/version", {"version": version})
        return str(body["version"])

    # Transport

    def graphql(
        self, document: str, variables: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send one GraphQL request and return its `data`; errors raise."""
        body = self._call(
            "POST", "/graphql", {"query": document, "variables": variables or {}}
        )
        data: dict[str, Any] | None = body.get("data")
        if data is None:
            raise SandboxAdminError("the sandbox returned no data")
        return data

    def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise SandboxAdminError(
                f"cannot reach the sandbox at {self.url}: {error}"
            ) from None
        try:
            payload = response.json()
        except ValueError:
            raise SandboxAdminError(
                f"the sandbox responded to {path} with HTTP {response.status_code} "
                "and a body that is not JSON"
            ) from None
        if not isinstance(payload, dict):
            raise SandboxAdminError(
                f"the sandbox responded to {path} with JSON that is not an object"
            )
        errors = payload.get("errors")
        if errors:
            messages = "; ".join(str(error.get("message")) for error in errors)
            raise SandboxAdminError(messages)
        if response.is_error:
            raise SandboxAdminError(
                f"the sandbox responded to {path} with HTTP {response.status_code}"
            )
        return payload

    def _image_of(self, catalog_id: str) -> str:
        if catalog_id not in self._images:
            self._images = {
                entry["slug"]: entry["container_image"] for entry in self.catalog()
            }
        image = self._images.get(catalog_id)
        if image is None:
            known = ", ".join(sorted(self._images)) or "none"
            raise SandboxAdminError(
                f"catalog entry {catalog_id!r} not found (loaded: {known})"
            )
        return image


def describe(managed: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a `ManagedConnector` object into the client's connector dict."""
    return {
        "id": managed["id"],
        "name": managed["name"],
        "image": managed["manager_contract_image"],
        "contract_hash": managed["manager_contract_hash"],
        "requested_status": managed["manager_requested_status"],
        "current_status": managed["manager_current_status"],
        "state_timestamp": managed["connector_state_timestamp"],
        "logs": list(managed["manager_connector_logs"]),
        "health": managed["manager_health_metrics"],
        "configuration": [
            {
                "key": item["key"],
                "value": item["value"],
                "encrypted": bool(item["encrypted"]),
            }
            for item in managed["manager_contract_configuration"]
        ],
    }


def _config_input(config: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"key": key, "value": [value]} for key, value in config.items()]
