"""OpenCTI connector-manager API over httpx."""

from __future__ import annotations

import json
from typing import Any

import httpx

from xtm_composer import logs
from xtm_composer.contract import (
    ContractEntry,
    CurrentStatus,
    ManagedConnector,
    RequestedStatus,
)
from xtm_composer.platform import documents, transport
from xtm_composer.platform.errors import (
    PlatformAuthError,
    PlatformError,
    PlatformResponseError,
    PlatformUnavailableError,
    shorten,
)
from xtm_composer.proxy import ProxyConfig
from xtm_composer.settings import ManagerSettings, PlatformSettings

log = logs.get_logger(__name__)


class OpenCTIClient:
    """Calls the operations a connector manager needs, one request each."""

    platform = "opencti"

    def __init__(
        self,
        settings: PlatformSettings,
        manager: ManagerSettings,
        proxy: ProxyConfig | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._manager = manager
        self._endpoint = f"{settings.url}/graphql"
        self._http = transport.build_client(settings, proxy, http_transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def version(self) -> str:
        data = await self._execute(documents.ABOUT)
        return str((data.get("about") or {}).get("version", ""))

    async def register(self, public_key_pem: str) -> str:
        """Register the manager and its public key; return the platform version."""
        variables = {
            "input": {
                "id": self._manager.id,
                "name": self._manager.name,
                "public_key": public_key_pem,
            }
        }
        data = await self._execute(documents.REGISTER_MANAGER, variables)
        return str(
            (data.get("registerConnectorsManager") or {}).get("about_version", "")
        )

    async def ping(self) -> str:
        """Tell the platform the manager is alive; return the platform version."""
        variables = {"input": {"id": self._manager.id}}
        data = await self._execute(documents.PING_MANAGER, variables)
        status = data.get("updateConnectorManagerStatus") or {}
        return str(status.get("about_version", ""))

    async def list_connectors(self) -> list[ManagedConnector]:
        data = await self._execute(documents.LIST_CONNECTORS)
        items = data.get("connectorsForManagers") or []
        return [parse_connector(item) for item in items]

    async def update_status(self, connector_id: str, status: CurrentStatus) -> None:
        variables = {"input": {"id": connector_id, "status": status.value}}
        await self._execute(documents.UPDATE_CURRENT_STATUS, variables)

    async def update_logs(self, connector_id: str, lines: list[str]) -> None:
        variables = {"input": {"id": connector_id, "logs": lines}}
        await self._execute(documents.UPDATE_LOGS, variables)

    async def update_health(
        self,
        connector_id: str,
        restart_count: int,
        started_at: str,
        in_reboot_loop: bool,
    ) -> None:
        variables = {
            "input": {
                "id": connector_id,
                "restart_count": restart_count,
                "started_at": started_at,
                "is_in_reboot_loop": in_reboot_loop,
            }
        }
        await self._execute(documents.UPDATE_HEALTH, variables)

    async def _execute(
        self, document: str, variables: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        payload = {"query": document, "variables": variables or {}}
        try:
            response = await self._http.post(self._endpoint, json=payload)
        except httpx.TimeoutException as error:
            raise PlatformUnavailableError(
                f"request to {self._endpoint} timed out ({type(error).__name__})"
            ) from error
        except httpx.TransportError as error:
            reason = shorten(str(error)) or type(error).__name__
            raise PlatformUnavailableError(
                f"cannot reach {self._endpoint}: {reason}"
            ) from error
        return read_response(self._endpoint, response)


def read_response(endpoint: str, response: httpx.Response) -> dict[str, Any]:
    """Return the `data` of a GraphQL response or raise the matching error."""
    if response.status_code in (401, 403):
        raise PlatformAuthError(
            f"{endpoint} rejected the token (HTTP {response.status_code}); "
            "check opencti.token"
        )
    if response.status_code >= 500:
        raise PlatformUnavailableError(
            f"{endpoint} responded HTTP {response.status_code}: "
            f"{shorten(response.text)}"
        )
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PlatformResponseError(
            f"{endpoint} responded HTTP {response.status_code} with a body that is not "
            f"JSON: {shorten(response.text)}"
        ) from None
    if not isinstance(body, dict):
        raise PlatformResponseError(
            f"{endpoint} responded with JSON that is not an object"
        )
    errors = body.get("errors")
    if errors:
        messages = "; ".join(str(error.get("message", error)) for error in errors)
        raise classify_graphql_error(endpoint, messages)
    if response.status_code >= 400:
        raise PlatformResponseError(
            f"{endpoint} responded HTTP {response.status_code}: "
            f"{shorten(response.text)}"
        )
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def classify_graphql_error(endpoint: str, messages: str) -> PlatformError:
    lowered = messages.lower()
    if "authentication" in lowered or "forbidden" in lowered:
        return PlatformAuthError(
            f"{endpoint} rejected the request: {shorten(messages)}"
        )
    return PlatformResponseError(f"{endpoint} returned errors: {shorten(messages)}")


def parse_connector(item: dict[str, Any]) -> ManagedConnector:
    """Build a `ManagedConnector` from one `connectorsForManagers` item."""
    configuration = tuple(
        ContractEntry(
            key=str(entry["key"]),
            value=None if entry.get("value") is None else str(entry["value"]),
            encrypted=bool(entry.get("encrypted")),
        )
        for entry in item.get("manager_contract_configuration") or []
    )
    current = item.get("manager_current_status")
    requested = item.get("manager_requested_status")
    return ManagedConnector(
        id=str(item["id"]),
        name=str(item.get("name") or ""),
        image=str(item.get("manager_contract_image") or ""),
        contract_hash=str(item.get("manager_contract_hash") or ""),
        requested_status=(
            RequestedStatus.STARTING
            if requested == RequestedStatus.STARTING.value
            else RequestedStatus.STOPPING
        ),
        current_status=(
            CurrentStatus(current) if current in set(CurrentStatus) else None
        ),
        configuration=configuration,
    )


__all__ = ["OpenCTIClient", "PlatformError", "parse_connector", "read_response"]
