"""The sandbox's GraphQL schema, bound to resolvers over a `SandboxState`.

Objects are returned as dicts keyed by GraphQL field name, so graphql-core's
default resolver serves their fields. Two views of a connector exist, as on
the platform: `ManagedConnector` (for the manager) lists the whole contract with
ciphertexts, while `Connector` (for users) leaves out the encrypted entries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graphql import GraphQLResolveInfo, GraphQLSchema, build_schema

from xtm_composer import logs
from xtm_composer.sandbox.configuration import InputValue
from xtm_composer.sandbox.state import Connector, Manager, SandboxError, SandboxState

log = logs.get_logger(__name__)

SCHEMA_FILE = Path(__file__).resolve().parent / "schema.graphql"

Resolver = Callable[..., Any]


def load_schema() -> GraphQLSchema:
    """Build the schema from `schema.graphql` and attach the resolvers."""
    schema = build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema.query_type is not None and schema.mutation_type is not None
    for name, resolver in QUERIES.items():
        schema.query_type.fields[name].resolve = _guard(resolver)
    for name, resolver in MUTATIONS.items():
        schema.mutation_type.fields[name].resolve = _guard(resolver)
    return schema


def _guard(resolver: Resolver) -> Resolver:
    """Pass the state to `resolver` and hide unexpected errors from clients."""

    @functools.wraps(resolver)
    def resolve(_root: object, info: GraphQLResolveInfo, **arguments: Any) -> Any:
        try:
            return resolver(info.context, **arguments)
        except SandboxError:
            raise
        except Exception:
            log.exception("resolver failed", field=info.field_name)
            raise SandboxError(
                "internal sandbox error; see the sandbox log",
                code="INTERNAL_SERVER_ERROR",
            ) from None

    return resolve


# Views


def manager_view(manager: Manager, version: str) -> dict[str, Any]:
    return {
        "id": manager.id,
        "name": manager.name,
        "last_sync_execution": manager.last_sync_execution,
        "about_version": version,
        "active": manager.is_active(datetime.now(UTC)),
    }


def managed_connector_view(state: SandboxState, connector: Connector) -> dict[str, Any]:
    """Return a `ManagedConnector`: the whole contract, ciphertexts included.

    `encrypted` is true for encrypted values and null for the others, as the
    platform stores no flag on plain values.
    """
    manager = state.manager()
    health = asdict(connector.health) if connector.health else None
    return {
        "id": connector.id,
        "name": connector.name,
        "connector_user_id": connector.connector_user_id,
        "connector_state_timestamp": connector.state_timestamp,
        "manager": manager_view(manager, state.platform_version) if manager else None,
        "manager_contract_image": connector.image,
        "manager_current_status": connector.current_status,
        "manager_requested_status": connector.requested_status,
        "manager_contract_configuration": [
            {"key": item.key, "value": item.value, "encrypted": item.encrypted or None}
            for item in connector.contract()
        ],
        "manager_contract_hash": connector.contract_hash,
        "manager_connector_logs": list(connector.logs),
        "manager_health_metrics": health,
    }


def connector_view(connector: Connector) -> dict[str, Any]:
    """Return a `Connector`: the user's view, without encrypted values."""
    return {
        "id": connector.id,
        "name": connector.name,
        "active": connector.current_status == "started",
        "connector_type": connector.connector_type,
        "connector_state_timestamp": connector.state_timestamp,
        "connector_user_id": connector.connector_user_id,
        "updated_at": connector.updated_at,
        "created_at": connector.created_at,
        "is_managed": True,
        "manager_current_status": connector.current_status,
        "manager_requested_status": connector.requested_status,
        "manager_contract_image": connector.image,
        "manager_contract_configuration": [
            {"key": item.key, "value": item.value}
            for item in connector.contract()
            if not item.encrypted
        ],
        "manager_connector_logs": list(connector.logs),
        "manager_contract_hash": connector.contract_hash,
    }


# Queries


def about(state: SandboxState) -> dict[str, Any]:
    return {"version": state.platform_version}


def connector(state: SandboxState, id: str) -> dict[str, Any] | None:
    found = state.connector(id)
    return connector_view(found) if found else None


def connectors_for_managers(state: SandboxState) -> list[dict[str, Any]]:
    return [managed_connector_view(state, item) for item in state.connectors()]


# Mutations of the manager


def register_manager(
    state: SandboxState, input: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    fields = _required_input(input)
    manager = state.register_manager(fields["id"], fields["name"], fields["public_key"])
    return manager_view(manager, state.platform_version)


def ping_manager(
    state: SandboxState, input: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    manager = state.ping_manager(_required_input(input)["id"])
    return manager_view(manager, state.platform_version)


def update_current_status(
    state: SandboxState, input: Mapping[str, Any]
) -> dict[str, Any]:
    updated = state.set_current_status(input["id"], input["status"])
    return managed_connector_view(state, updated)


def update_logs(state: SandboxState, input: Mapping[str, Any]) -> str:
    state.set_logs(input["id"], input["logs"])
    return str(input["id"])


def update_health(state: SandboxState, input: Mapping[str, Any]) -> str:
    state.set_health(
        input["id"],
        restart_count=input["restart_count"],
        started_at=input["started_at"],
        is_in_reboot_loop=input["is_in_reboot_loop"],
    )
    return str(input["id"])


# Mutations of the administrator


def add_connector(
    state: SandboxState, input: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    fields = _required_input(input)
    created = state.add_connector(
        catalog_id=fields["catalog_id"],
        name=fields["name"],
        image=fields["manager_contract_image"],
        values=_values(fields["manager_contract_configuration"]),
        connector_user_id=fields["connector_user_id"],
    )
    return managed_connector_view(state, created)


def edit_connector(
    state: SandboxState, input: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    fields = _required_input(input)
    edited = state.edit_connector(
        connector_id=fields["id"],
        name=fields["name"],
        values=_values(fields["manager_contract_configuration"]),
        connector_user_id=fields["connector_user_id"],
    )
    return managed_connector_view(state, edited)


def request_status(state: SandboxState, input: Mapping[str, Any]) -> dict[str, Any]:
    updated = state.request_status(input["id"], input["status"])
    return managed_connector_view(state, updated)


def delete_connector(state: SandboxState, id: str) -> str:
    return state.delete_connector(id)


def _required_input(fields: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # Several inputs are nullable in the OpenCTI schema, yet required in practice.
    if fields is None:
        raise SandboxError("the input argument is required", code="BAD_USER_INPUT")
    return fields


def _values(items: Sequence[Mapping[str, Any]]) -> dict[str, InputValue]:
    """Map `ContractConfigInput` items by key; a key given twice is an error."""
    values: dict[str, InputValue] = {}
    for item in items:
        key = item["key"]
        if key in values:
            raise SandboxError(
                f"configuration key {key} is given twice", code="BAD_USER_INPUT"
            )
        values[key] = item.get("value")
    return values


QUERIES: dict[str, Resolver] = {
    "about": about,
    "connector": connector,
    "connectorsForManagers": connectors_for_managers,
}

MUTATIONS: dict[str, Resolver] = {
    "registerConnectorsManager": register_manager,
    "updateConnectorManagerStatus": ping_manager,
    "managedConnectorAdd": add_connector,
    "managedConnectorEdit": edit_connector,
    "deleteConnector": delete_connector,
    "updateConnectorRequestedStatus": request_status,
    "updateConnectorCurrentStatus": update_current_status,
    "updateConnectorLogs": update_logs,
    "updateConnectorHealth": update_health,
}
