"""Swarm requests that carry registry credentials, sent without the SDK's help.

The docker SDK's `create_service`, `update_service` and `inspect_distribution`
add an `X-Registry-Auth` header taken from the user's `~/.docker/config.json`
when they are given none. The agent must send the configured credentials to
their registry only, so these requests are built here, with the header or
without it, as `docker_pull` does for pulls.

With the header, Swarm stores the credentials in the service so that every node
can pull the image (what `docker service create --with-registry-auth` does).
An update without the header keeps the stored credentials, so an update that
moves a service to an image of another registry sends `EMPTY_REGISTRY_AUTH`,
which replaces them with none.
"""

from __future__ import annotations

import base64
from typing import Any

import docker
import docker.errors
import requests

from xtm_composer.orchestrators import docker_pull
from xtm_composer.registry import ResolvedImage
from xtm_composer.settings import RegistrySettings

REGISTRY_AUTH_HEADER = "X-Registry-Auth"
EMPTY_REGISTRY_AUTH = base64.urlsafe_b64encode(b"{}").decode()
"""An auth config without credentials."""

OUT_OF_SEQUENCE = "update out of sequence"
"""Swarm's error when the version sent with an update is not the current one."""

DIGEST_SEPARATOR = "@"


def url(api: docker.APIClient, path: str) -> str:
    return f"{api.base_url}/v{api.api_version}{path}"


def send_json(
    api: docker.APIClient,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """Send one request and return its JSON body; raise `docker.errors.APIError`."""
    response = api.request(
        method,
        url(api, path),
        json=body,
        params=params,
        headers=headers or {},
        timeout=api.timeout,
    )
    try:
        response.raise_for_status()
    except requests.HTTPError as error:
        docker.errors.create_api_error_from_http_exception(error)
    return response.json() if response.content else None


def create_service(
    api: docker.APIClient, body: dict[str, Any], registry_auth: str | None
) -> str:
    """Create a service and return its id."""
    headers = {REGISTRY_AUTH_HEADER: registry_auth} if registry_auth else {}
    created = send_json(api, "POST", "/services/create", body=body, headers=headers)
    return str(created["ID"])


def update_service(
    api: docker.APIClient,
    service_id: str,
    version: int,
    body: dict[str, Any],
    registry_auth: str | None = None,
) -> None:
    """Replace a service's spec; `version` must be the service's current one."""
    headers = {REGISTRY_AUTH_HEADER: registry_auth} if registry_auth else {}
    send_json(
        api,
        "POST",
        f"/services/{service_id}/update",
        body=body,
        params={"version": version},
        headers=headers,
    )


def is_out_of_sequence(error: docker.errors.APIError) -> bool:
    return OUT_OF_SEQUENCE in str(error.explanation or "")


def pinned_image(
    api: docker.APIClient, image: ResolvedImage, registry: RegistrySettings | None
) -> str:
    """Return the image reference pinned to the digest that the registry serves.

    Every node then runs the same image, even if the tag moves during a rolling
    update, and a missing image or denied credentials fail here, classified as
    `docker_pull` classifies pull errors, instead of in a task.
    """
    if DIGEST_SEPARATOR in image.reference:
        return image.reference
    headers = docker_pull.registry_auth_headers(image, registry)
    response = api.get(
        url(api, f"/distribution/{image.reference}/json"),
        headers=headers,
        timeout=api.timeout,
    )
    if response.status_code != requests.codes.ok:
        raise docker_pull.pull_error(
            docker_pull.response_message(response), image, registry
        )
    # The descriptor is an OCI one, with lower-case keys.
    digest = str(response.json()["Descriptor"]["digest"])
    return f"{image.reference}{DIGEST_SEPARATOR}{digest}"
